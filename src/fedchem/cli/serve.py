"""The serving commands of ``fedchem``: ``registry``, ``predict``, ``serve``, ``token``."""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from fedchem.registry.store import ModelRef, Registry, RegistryError

_log = logging.getLogger("fedchem.serve")

__all__ = ["add_serving_commands", "read_tokens"]


def _registry(args: argparse.Namespace) -> Registry:
    return Registry(args.registry)


def _upload(args: argparse.Namespace, reg: Registry) -> int:
    from fedchem.config import ConfigFileError, load_config
    from fedchem.registry.upload import UploadRefused, UploadSpec, register_outside_model

    if not (args.spec and args.weights and args.key_file):
        print("error: registry upload needs --spec, --weights and --key-file", file=sys.stderr)
        return 2
    try:
        spec = load_config(Path(args.spec), UploadSpec)
        key = Path(args.key_file).read_bytes().strip()
        version = register_outside_model(reg, spec, Path(args.weights), key, alias=args.set_alias)
    except (UploadRefused, ConfigFileError, OSError) as exc:
        print(f"error: refused: {exc}", file=sys.stderr)
        return 2
    print(f"registered {spec.name}:{version}" + (f" ({args.set_alias})" if args.set_alias else ""))
    return 0


def _registry_cmd(args: argparse.Namespace) -> int:
    reg = _registry(args)
    if args.action == "upload":
        return _upload(args, reg)
    try:
        if args.action == "list":
            for name in reg.models():
                aliases = ", ".join(f"{a}={v}" for a, v in sorted(reg.aliases(name).items()))
                print(f"{name}: versions {reg.versions(name)}; {aliases or 'no alias'}")
            return 0
        if args.ref is None:
            print(
                f"error: registry {args.action} needs a model (NAME, NAME@ALIAS, NAME:N)",
                file=sys.stderr,
            )
            return 2
        name, version = reg.resolve(ModelRef.parse(args.ref))
        if args.action == "show":
            print(reg.read(name, version, "card.md").decode())
            files = reg.files(name, version)
            print(f"files of {name}:{version} ({files.created_at}):")
            for f, sha in sorted(files.files.items()):
                print(f"  {f}  sha256 {sha[:16]}")
            history = [e for e in reg.history(name) if e.get("event") == "alias"]
            for e in history[-10:]:
                print(f"  {e['at']} alias {e['alias']}: {e['previous']} -> {e['version']}")
            return 0
        before = reg.set_alias(name, args.alias, version, note=args.note or "")
        print(f"{name}@{args.alias}: {before} -> {version}")
        return 0
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _site_key(args: argparse.Namespace) -> tuple[bytes, dict[str, Registry]]:
    """The consortium key and the site registries: from a site's own config
    (``--site-config``: the site runs the command, nothing is handed over) or given
    (``--key-file``, ``--site-registry``)."""
    if (args.site_config is None) == (args.key_file is None):
        raise ValueError("give --site-config (a site's own config) or --key-file, one of them")
    if args.site_config is not None:
        from fedchem.config import PrepareConfig, load_config
        from fedchem.data.prepare import read_key

        site = load_config(Path(args.site_config), PrepareConfig).site
        return read_key(site), {site.name: Registry(site.registry_url())}
    return Path(args.key_file).read_bytes().strip(), {}


def _predict_cmd(args: argparse.Namespace) -> int:
    from fedchem.federation.consistency import ConsistencyError
    from fedchem.serve.batch import predict_file
    from fedchem.serve.predictor import Predictor

    try:
        key, own = _site_key(args)
        site_registry = Registry(args.site_registry) if args.site_registry else None
        if site_registry is None and own:
            site_registry = next(iter(own.values()))
        predictor = Predictor.load(_registry(args), args.model, key, site_registry)
        scored = predict_file(
            predictor,
            Path(args.input),
            Path(args.out),
            args.smiles_col,
            args.id_col,
            args.alpha,
            n_workers=args.workers,
        )
    except (RegistryError, ConsistencyError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    site = f" with {predictor.site}'s part" if predictor.site else ""
    print(
        f"{predictor.name}:{predictor.version}{site}: {scored.rows} rows to {scored.output} "
        f"({scored.errors} with an error)",
        file=sys.stderr,
    )
    if scored.duplicate_ids:
        print(
            f"warning: {scored.duplicate_ids} id(s) carried by more than one row",
            file=sys.stderr,
        )
    return 0


def _sections(text: str) -> int:
    """How many ``tokens:`` sections a tokens file holds."""
    return sum(1 for line in text.splitlines() if line.startswith("tokens:"))


def _token_entries(path: Path) -> list[dict[str, Any]]:
    """The raw entries of a tokens file: a list, or ``tokens:`` over that list (one section
    only: with two, the last would silently win)."""
    text = path.read_text()
    sections = _sections(text)
    if sections > 1:
        raise ValueError(
            f"{path}: {sections} 'tokens:' sections (only the last would count); make it one "
            "list (fedchem token new now prints list entries that >> appends)"
        )
    doc = yaml.safe_load(text) or []
    entries = doc.get("tokens", []) if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise ValueError(f"{path}: a list of token entries is expected")
    return [dict(e) for e in entries]


def read_tokens(path: Path) -> dict[str, Any]:
    """``tokens.yaml`` -> {sha256: TokenGrant}: a list of entries (what ``fedchem token new``
    prints, so that ``>>`` appends), or ``tokens:`` over that list; each holds a token's sha256
    (or, for a local trial, the token itself), its holder's name, models, sites and optional
    ``expires`` (ISO time). Two ``tokens:`` sections (the last would silently win) are an
    error, and so is one token twice."""
    from fedchem.serve.app import TokenGrant, hash_token

    out: dict[str, Any] = {}
    for i, entry in enumerate(_token_entries(path)):
        sha = entry.pop("token_sha256", None) or (
            hash_token(entry.pop("token")) if "token" in entry else None
        )
        if sha is None:
            raise ValueError(f"{path}: entry {i} has neither token_sha256 nor token")
        if str(sha) in out:
            raise ValueError(f"{path}: entry {i} repeats the token of {out[str(sha)].name!r}")
        out[str(sha)] = TokenGrant.model_validate(entry)
    return out


class TokenFile(Mapping[str, Any]):
    """The grants of a tokens file, read again when the file changes: a token added, revoked
    (removed) or expired takes effect without a restart. A file that turns invalid keeps the
    last valid grants (and says so in the log) rather than locking everyone out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = self._stat()
        self._grants = read_tokens(path)

    def _stat(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_mtime_ns, st.st_size

    def _current(self) -> dict[str, Any]:
        try:
            stamp = self._stat()
            if stamp != self._stamp:
                self._grants, self._stamp = read_tokens(self.path), stamp
        except (OSError, ValueError, yaml.YAMLError) as exc:
            _log.warning("tokens file %s not reloaded: %s", self.path, exc)
        return self._grants

    def __getitem__(self, key: str) -> Any:
        return self._current()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


def _serve_cmd(args: argparse.Namespace) -> int:
    import uvicorn

    from fedchem.serve.app import ServiceConfig, create_app

    try:
        key, sites = _site_key(args)
        for item in args.site_registry or []:
            site, _, url = item.partition("=")
            if not url:
                raise ValueError(f"--site-registry {item!r}: SITE=URL")
            sites[site] = Registry(url)
        cfg = ServiceConfig(
            registry=_registry(args),
            key=key,
            tokens=TokenFile(Path(args.tokens)),
            site_registries=sites,
            max_batch=args.max_batch,
            max_smiles_length=args.max_smiles_length,
            max_body_bytes=args.max_body_bytes,
            max_heavy_atoms=args.max_heavy_atoms,
            max_seconds=args.max_seconds,
            audit_path=Path(args.audit_log) if args.audit_log else None,
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(cfg), host=args.host, port=args.port, log_level="warning")
    return 0


def _token_list(file: Path) -> int:
    """Who holds what: a line per token, never the token."""
    for sha, grant in read_tokens(file).items():
        expires = grant.expires.isoformat() if grant.expires else "-"
        print(
            f"{grant.name}\tmodels={','.join(grant.models)}\tsites={','.join(grant.sites)}"
            f"\texpires={expires}\t{'expired' if grant.expired() else 'valid'}"
            f"\tsha256={sha[:12]}"
        )
    return 0


def _token_revoke(file: Path, name: str) -> int:
    """The file rewritten without ``name``'s tokens, under a lock, atomically."""
    import fcntl

    with open(file, "r+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = _token_entries(file)
        kept = [e for e in entries if e.get("name") != name]
        if len(kept) == len(entries):
            raise ValueError(f"{file} holds no token of {name!r}")
        tmp = file.with_name(f".{file.name}.new")
        tmp.write_text(yaml.safe_dump(kept, sort_keys=False))
        read_tokens(tmp)
        tmp.replace(file)
    print(f"revoked {len(entries) - len(kept)} token(s) of {name}", file=sys.stderr)
    return 0


def _token_append(file: Path, text: str) -> None:
    """``text`` (list entries) appended to ``file`` under a lock, once the result reads."""
    import fcntl

    with open(file, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        before = fh.read()
        if sections := _sections(before):
            raise ValueError(
                f"{file}: written as 'tokens:' ({sections} section(s)); entries cannot be "
                "appended to it; make it a plain list first"
            )
        joined = before + ("\n" if before and not before.endswith("\n") else "") + text
        check = file.with_name(f".{file.name}.check")
        check.write_text(joined)
        try:
            read_tokens(check)
        finally:
            check.unlink()
        fh.write(joined[len(before) :])


def _token_cmd(args: argparse.Namespace) -> int:
    """``new``: a token, shown once; its entry printed (for ``>>``) or, with ``--file``,
    appended to the file under a lock and checked (an entry that would break the file is not
    written). ``list``: who holds what, never a token. ``revoke``: the file rewritten without
    NAME's tokens, atomically (the service reloads it; no restart)."""
    from fedchem.serve.app import hash_token

    file = Path(args.file) if args.file else None
    needs = {"list": ["file"], "revoke": ["file", "name"], "new": ["name", "models"]}
    lacking = [k for k in needs[args.action] if not getattr(args, k)]
    if lacking:
        flags = " and ".join(f"--{k}" for k in lacking)
        print(f"error: token {args.action} needs {flags}", file=sys.stderr)
        return 2
    try:
        if args.action == "list":
            assert file is not None
            return _token_list(file)
        if args.action == "revoke":
            assert file is not None
            return _token_revoke(file, args.name)
        token = secrets.token_urlsafe(32)
        entry: dict[str, Any] = {
            "name": args.name,
            "token_sha256": hash_token(token),
            "models": args.models,
            "sites": args.sites or [],
        }
        if args.expires:
            entry["expires"] = args.expires
        text = yaml.safe_dump([entry], sort_keys=False)
        if file is not None:
            _token_append(file, text)
    except (ValueError, OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"token (give it to {args.name}; it is shown once): {token}", file=sys.stderr)
    if file is None:
        print(text.rstrip())
    else:
        print(f"appended to {file}", file=sys.stderr)
    return 0


def _finetune_cmd(args: argparse.Namespace) -> int:
    import os

    from fedchem.config import ConfigFileError, PrepareConfig, load_config
    from fedchem.federation.consistency import ConsistencyError
    from fedchem.federation.finetune import FinetuneConfig

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        site = load_config(Path(args.config), PrepareConfig).site
        cfg = FinetuneConfig(max_epochs=args.epochs, train_trunk=args.train_trunk)
        from fedchem.flows.finetune import finetune

        reports = finetune(
            site=site, registry=args.registry, model=args.model, name=args.name, config=cfg
        )
    except (ConfigFileError, ConsistencyError, RegistryError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for model, rep in reports.items():
        if rep is not None:
            means = {k: round(v, 3) for k, v in rep.summary.items() if k.startswith("mean_")}
            print(f"{model:10s} test fold: {means}")
    return 0


def add_serving_commands(sub: Any) -> None:
    r = sub.add_parser(
        "registry", help="list models, show a version's card, move an alias, upload a model"
    )
    r.add_argument("action", choices=["list", "show", "alias", "upload"])
    r.add_argument("ref", nargs="?", help="NAME, NAME@ALIAS or NAME:VERSION (show, alias)")
    r.add_argument("--registry", required=True, help="the registry: a directory or fsspec URL")
    r.add_argument("--alias", default="production", help="alias: the alias to move")
    r.add_argument("--note", help="alias: why (kept in the model's history)")
    r.add_argument("--spec", help="upload: YAML (name, architecture, model, chem, tasks)")
    r.add_argument("--weights", help="upload: the weights, as safetensors")
    r.add_argument("--key-file", help="upload: the consortium key (the featurizer's)")
    r.add_argument("--set-alias", help="upload: the alias that then points at it")
    r.set_defaults(func=_registry_cmd)

    p = sub.add_parser("predict", help="predict a CSV of SMILES with a registered model")
    p.add_argument("--registry", required=True)
    p.add_argument("--model", required=True, help="NAME, NAME@ALIAS or NAME:VERSION")
    p.add_argument(
        "--in",
        dest="input",
        required=True,
        help="CSV (, ; tab or |) with a SMILES column, or an SD file",
    )
    p.add_argument("--out", required=True, help="CSV: one row per input row, in input order")
    p.add_argument("--smiles-col", default="smiles")
    p.add_argument("--id-col", help="default: the row number")
    p.add_argument("--key-file", help="the consortium key (never leaves you)")
    p.add_argument(
        "--site-config",
        help="a site's own YAML instead: its key and its registry (the site predicts)",
    )
    p.add_argument("--site-registry", help="a site's registry: its private heads, calibration")
    p.add_argument("--alpha", type=float, help="conformal error rate (default 0.1)")
    p.add_argument("--workers", type=int, default=1, help="featurization processes")
    p.set_defaults(func=_predict_cmd)

    s = sub.add_parser("serve", help="the HTTP prediction service and its page")
    s.add_argument("--registry", required=True)
    s.add_argument("--key-file", help="the consortium key (or --site-config)")
    s.add_argument(
        "--site-config",
        help="a site's own YAML: the service runs at the site, with its key and its registry "
        "(its private heads); the key is not handed to anyone",
    )
    s.add_argument("--tokens", required=True, help="YAML of bearer tokens (fedchem token new)")
    s.add_argument("--site-registry", action="append", help="SITE=URL (repeatable)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch", type=int, default=1000, help="molecules per request at most")
    s.add_argument(
        "--max-smiles-length", type=int, default=1000, help="characters per SMILES at most (422)"
    )
    s.add_argument(
        "--max-body-bytes", type=int, default=8 * 1024 * 1024, help="request body at most (413)"
    )
    s.add_argument(
        "--max-heavy-atoms", type=int, default=500, help="heavy atoms per SMILES at most (422)"
    )
    s.add_argument(
        "--max-seconds", type=float, default=120.0, help="a request's prediction time (413)"
    )
    s.add_argument("--audit-log", help="JSON lines: who asked what (SMILES as keyed hashes)")
    s.set_defaults(func=_serve_cmd)

    f = sub.add_parser(
        "finetune", help="fine-tune a registered model on a site's own tasks (stays at the site)"
    )
    f.add_argument("--config", required=True, help="the site's YAML (its `site:` section)")
    f.add_argument("--registry", required=True, help="where the model to fine-tune is")
    f.add_argument("--model", required=True, help="NAME, NAME@ALIAS or NAME:VERSION")
    f.add_argument("--name", help="its name in the site's registry (default: MODEL-SITE)")
    f.add_argument("--epochs", type=int, default=30, help="the budget (early stopping inside)")
    f.add_argument("--train-trunk", action="store_true", help="also the trunk's last layer")
    f.set_defaults(func=_finetune_cmd)

    t = sub.add_parser("token", help="bearer tokens of the service: new, list, revoke")
    t.add_argument("action", choices=["new", "list", "revoke"])
    t.add_argument("--file", help="the tokens file (new: append to it; list, revoke: read it)")
    t.add_argument("--name", help="whose token (new, revoke)")
    t.add_argument("--models", nargs="+", help="new: model names, or '*'")
    t.add_argument("--expires", help="ISO time after which the token is refused (401)")
    t.add_argument("--sites", nargs="*", help="sites whose private heads it may use")
    t.set_defaults(func=_token_cmd)
