"""``fedchem`` command line: ``demo`` (the main job); ``validate`` and ``prepare`` (data engineers).

The library imports no orchestration; ``demo`` loads the Prefect flows from ``flows/`` only
when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings, CliSettingsSource, SettingsConfigDict

from fedchem.cli.serve import add_serving_commands
from fedchem.cli.trust import add_trust_commands
from fedchem.config import ConfigFileError, DemoConfig, read_config, validate_config
from fedchem.contracts import (
    ContractError,
    compile_table,
    default_contracts_dir,
    load_contract,
    read_table,
    validate_frame,
)

__all__ = ["main"]


class _DemoFlags(DemoConfig, BaseSettings):
    """Only the source of ``fedchem demo``'s flags (never built itself: its values come from
    the parsed flags, never from the environment)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)


#: short spellings of the most used demo flags (their long forms work too)
_DEMO_SHORTCUTS = {"train.local-epochs": "local-epochs", "chem.fp-size": "fp-size"}


def _add_demo_flags(parser: argparse.ArgumentParser) -> CliSettingsSource[_DemoFlags]:
    """One flag per :class:`DemoConfig` setting, nested ones dotted (``--train.lr``,
    ``--chem.standardize.tautomer``), derived from the model with pydantic-settings."""
    return CliSettingsSource(
        _DemoFlags,
        root_parser=parser,
        cli_kebab_case=True,
        cli_avoid_json=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
        cli_shortcuts=_DEMO_SHORTCUTS,
        cli_use_class_docs_for_groups=True,
    )


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, section by section (a non-mapping value replaces)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def demo_config(args: argparse.Namespace) -> DemoConfig:
    """The demo's settings: the ``--config`` YAML (if any), then the flags given on top."""
    given = {k for k, v in vars(args).items() if v is not None}
    if "strategy" in given and any(k.startswith("strategy.") for k in given):
        raise ConfigFileError(
            "--strategy NAME takes that strategy with its defaults; to set its parameters "
            "too, name it with --strategy.name NAME"
        )
    raw = read_config(Path(args.config), DemoConfig) if args.config else {}
    raw = _merge(raw, args.demo_flags(parsed_args=args)())
    cfg = validate_config(raw, DemoConfig, args.config or "the command line")
    if "seed" not in cfg.train.model_fields_set:  # one seed for split and training by default
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": cfg.seed})})
    return cfg


def _embedded_prefect_defaults() -> None:
    """Prefect's settings for the embedded (ephemeral) server, where the user set none: no
    analytics, and two minutes for the server to start (its first start in a fresh install
    compiles Prefect's modules; Prefect's 20 s default times out on a loaded 2-core machine)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _demo(args: argparse.Namespace) -> int:
    _embedded_prefect_defaults()
    from fedchem.demo.report import render_markdown
    from fedchem.demo.sites import resolve_dataset

    try:
        cfg = demo_config(args)
        resolve_dataset(cfg.dataset, cfg.smiles_col)  # a missing dataset: said before Prefect
    except (ConfigFileError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from fedchem.flows.demo import demo_from_config  # Prefect: only the commands that run flows

    out = Path(args.out).resolve()
    run_id = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-s{cfg.seed}"
    start = time.perf_counter()
    report = demo_from_config(cfg, out, run_id)
    print(render_markdown(report))
    print(
        f"wrote {out / 'report.json'} and {out / 'report.md'} in {time.perf_counter() - start:.0f}s"
    )
    copies = " ".join(
        f"--site-copy {p.name}={p / 'work' / 'ledger'}"
        for p in sorted((out / "sites").iterdir())
        if (p / "work" / "ledger").is_dir()
    )
    print(
        "check the run's trust (every chain, signature and object; the sites' own copies):\n"
        f"  fedchem audit verify --config {out / 'federation.yaml'} {copies}"
    )
    return 0


def _validate(args: argparse.Namespace) -> int:
    contracts = Path(args.contracts_dir) if args.contracts_dir else default_contracts_dir()
    try:
        assay_table = compile_table(load_contract(contracts / "assays.odcs.yaml"))
        assays = validate_frame(
            read_table(args.assays, assay_table.multiline_records),
            assay_table,
            source=args.assays,
        )
        table = compile_table(
            load_contract(contracts / "measurements.odcs.yaml"),
            references={"assays.assay_id": set(assays.accepted["assay_id"])},
        )
        result = validate_frame(
            read_table(args.measurements, table.multiline_records),
            table,
            source=args.measurements,
        )
    except (ContractError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.quarantine.to_csv(out / "quarantine_measurements.csv", index=False)
    assays.quarantine.to_csv(out / "quarantine_assays.csv", index=False)
    reasons = result.quarantine["reason"].value_counts().to_dict()
    summary = {
        "assays": assays.account.model_dump(),
        "measurements": result.account.model_dump(),
        "reasons": reasons,
    }
    (out / "validation.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


class ProgressBar:
    """A one-line text progress bar on stderr (redrawn in place on a terminal)."""

    def __init__(self, label: str, width: int = 30) -> None:
        self.label, self.width, self.start = label, width, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        if total <= 0 or (not self.tty and done == self._last):
            return
        filled = self.width * done // total
        bar = "#" * filled + "." * (self.width - filled)
        line = (
            f"{self.label} [{bar}] {done}/{total} partitions, "
            f"{time.perf_counter() - self.start:.0f}s"
        )
        end = "\n" if done == total or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)
        self._last = done


def _prepare(args: argparse.Namespace) -> int:
    from fedchem.config import ConfigFileError, PrepareConfig, load_config
    from fedchem.data.prepare import prepare_site

    try:
        cfg = load_config(Path(args.config), PrepareConfig)
        report = prepare_site(
            cfg.site,
            cfg.chem,
            cfg.tasks,
            progress=None if args.quiet else ProgressBar(f"prepare {cfg.site.name}"),
        )
    except (ConfigFileError, ContractError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.model_dump_json(indent=2, exclude={"label_stats"}))
    out = cfg.site.workdir / "prepared" / report.cache_key
    print(f"{'cache hit: ' if report.cache_hit else ''}training data in {out}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _federate(args: argparse.Namespace) -> int:
    """Run (or with ``--check`` only validate) a federation from its YAML config."""
    from fedchem.config import SiteConfig, load_federation_config

    try:
        cfg = load_federation_config(Path(args.config))
    except (ConfigFileError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"run {cfg.run_id}: {len(cfg.sites)} sites ({', '.join(cfg.site_names)}), {cfg.rounds} "
        f"rounds, strategy {cfg.strategy.name}, heads {cfg.heads}, mode {cfg.mode}, quorum "
        f"{cfg.quorum()} ({cfg.faults.policy}), hub {cfg.hub_url}"
    )
    if args.check:
        return 0
    _embedded_prefect_defaults()
    from fedchem.flows.coordinator import coordinator
    from fedchem.flows.site_prepare import site_prepare

    if cfg.mode == "local":  # the simulation prepares its sites here (cached when unchanged)
        for site in cfg.sites:
            if isinstance(site, SiteConfig):
                site_prepare(site=site, chem=cfg.chem, tasks=cfg.tasks, hub_url=cfg.hub_url)
    committed = coordinator(cfg)
    last = committed[-1]
    print(f"committed round {last.round}: global {last.global_sha256[:12]} at {last.global_path}")
    return 0


def _stack(args: argparse.Namespace) -> int:
    from fedchem.demo.sites import bundled_dataset
    from fedchem.deployments import stack as st

    directory = Path(args.dir)
    if args.action == "down":
        stopped = st.stack_down(directory)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    dataset = Path(args.dataset) if args.dataset else bundled_dataset()
    stack = st.stack_up(
        directory,
        dataset,
        n_sites=args.sites,
        rounds=args.rounds,
        database_url=args.database_url,
        run_id=args.run_id,
        postgres={"auto": None, "postgres": True, "sqlite": False}[args.database],
        worker=args.worker,
    )
    ui = stack.api_url.removesuffix("/api")
    print(json.dumps({"ui": ui, **{k: v for k, v in vars(stack).items() if k != "dir"}}, indent=2))
    print(f"""
Prefect UI: {ui}   (everything below runs against it: export PREFECT_API_URL={stack.api_url})
The API refuses every request without its auth string (the UI asks for it):
   export PREFECT_API_AUTH_STRING="$(cat {stack.auth_file})"
1. each site prepares its data on its own worker:
   prefect deployment run 'site-prepare/<site>-prepare' --watch  (sites: {" ".join(stack.sites)})
2. the federation:
   prefect deployment run 'coordinator/coordinator' --watch
stop everything: fedchem stack down --dir {directory}""")
    return 0


def _base_model(args: argparse.Namespace) -> int:
    _embedded_prefect_defaults()
    from fedchem.config import ChemConfig
    from fedchem.demo.base_model import BaseModelConfig

    try:
        doc = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
        chem = ChemConfig.model_validate(doc.get("chem", DemoConfig().chem.model_dump()))
        cfg = BaseModelConfig.model_validate(
            _merge(
                doc.get("base_model", {}),
                {
                    k: v
                    for k, v in {
                        "rows": args.rows,
                        "epochs": args.epochs,
                        "name": args.name,
                    }.items()
                    if v is not None
                },
            )
        )
        key_file = Path(args.key_file)
        if not key_file.is_file():
            raise FileNotFoundError(f"--key-file {key_file}: no such file")
    except (OSError, ValueError, AttributeError) as exc:
        print(f"fedchem base-model: {exc}", file=sys.stderr)
        return 2
    from fedchem.flows.base_model import public_base_model

    out = public_base_model(cfg, chem, key_file, Path(args.workdir), args.registry)
    print(json.dumps(out, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedchem", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo",
        help="simulated federation on a public dataset, with baselines",
        description="Splits a public table into sites, prepares each, federates, and compares "
        "the federated model with each site's local-only model and the pooled model. Settings "
        "come from --config (a DemoConfig YAML; see benchmarks/configs/) and the flags given "
        "on top of it; the defaults run Tox21 over 4 sites for 10 rounds.",
    )
    d.add_argument("--config", help="YAML with the demo's settings (flags override it)")
    d.add_argument("--out", default="./fedchem-demo", help="where the report and sites go")
    d.set_defaults(demo_flags=_add_demo_flags(d))
    d.set_defaults(func=_demo)
    v = sub.add_parser("validate", help="check a site's files against the data contracts")
    v.add_argument("--measurements", required=True)
    v.add_argument("--assays", required=True)
    v.add_argument("--contracts-dir", help="default: the repository's data_contracts/")
    v.add_argument("--out", default="./fedchem-validation", help="report and quarantine files")
    v.set_defaults(func=_validate)
    pr = sub.add_parser(
        "prepare",
        help="a site config → training-ready data (validate, standardize, featurize, label)",
        description="Runs the site pipeline once per data version (cached by content) and "
        "prints the site's preparation report: row accounts, counts, consistency hashes. "
        "Quarantined rows go to <workdir>/prepared/<key>/quarantine_*.csv.",
    )
    pr.add_argument(
        "--config", required=True, help="YAML: `site:` (SiteConfig), optional `chem:`, `tasks:`"
    )
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=_prepare)
    fe = sub.add_parser(
        "federate",
        help="run a federation from its YAML config (resumes a run id already on the hub)",
        description="The coordinator from a FederationConfig YAML (sites, tasks, rounds, "
        "strategy, heads, quorum and deadlines, model and training). mode: local prepares and "
        "trains every site here; mode: deployed triggers each site's deployment (set "
        "PREFECT_API_URL). Errors name the offending key.",
    )
    fe.add_argument("--config", required=True, help="federation YAML")
    fe.add_argument("--check", action="store_true", help="validate and summarize only")
    fe.set_defaults(func=_federate)
    sk = sub.add_parser(
        "stack",
        help="a real multi-site deployment on this machine: up or down",
        description="up: Prefect server, S3-compatible hub server, one worker per site (its "
        "own data only) and a coordinator worker, deployed from a generated prefect.yaml. "
        "down: stop every process up started, by pid.",
    )
    sk.add_argument("action", choices=["up", "down"])
    sk.add_argument("--dir", default="./fedchem-stack", help="state, logs and site files")
    sk.add_argument("--sites", type=int, default=2)
    sk.add_argument("--rounds", type=int, default=2)
    sk.add_argument("--dataset", help="wide CSV to split into sites (default: bundled Tox21)")
    sk.add_argument("--database-url", help="any other database for the Prefect server")
    sk.add_argument("--run-id", default="stack-run")
    sk.add_argument(
        "--database",
        choices=["auto", "postgres", "sqlite"],
        default="auto",
        help="the Prefect server's database: a PostgreSQL server of the stack's own (Debian's "
        "postgresql package), or SQLite; auto: PostgreSQL when it is installed",
    )
    sk.add_argument(
        "--worker",
        choices=["fedchem", "process"],
        default="fedchem",
        help="the workers' type: fedchem's (flow runs forked from a preloaded process) or "
        "Prefect's process worker (a fresh interpreter per flow run)",
    )
    sk.set_defaults(func=_stack)
    bm = sub.add_parser(
        "base-model",
        help="train the public base model on bundled public data and register it",
        description="Prepares the bundled ChEMBL set with the consortium's keyed featurizer, "
        "trains a multitask network on it and registers it (with its card) under --name, "
        "alias 'public'. Federations start from it with init_from: {registry: REG, model: "
        "public-base@public, parts: trunk}. No site's data is read.",
    )
    bm.add_argument("--registry", required=True, help="registry URL or directory")
    bm.add_argument("--key-file", required=True, help="the consortium's featurizer key")
    bm.add_argument("--config", help="YAML with optional chem: and base_model: sections")
    bm.add_argument("--workdir", default="./fedchem-base-model", help="the prepared public set")
    bm.add_argument("--rows", type=int, help="the public set's first rows only (smoke runs)")
    bm.add_argument("--epochs", type=int)
    bm.add_argument("--name", help="registry name (default public-base)")
    bm.set_defaults(func=_base_model)
    add_serving_commands(sub)
    add_trust_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
