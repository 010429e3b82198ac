"""The trust commands of ``fedchem``: ``keys new``, ``audit verify``, ``audit list``.

``audit verify`` is the coordinator's or an auditor's check of a whole run on the hub (exit 1
with the first broken link); ``audit list`` is a site security team's view: what its own copy
of its ledger says left the site, compared entry by entry with the hub's copy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedchem.config import ConfigFileError, PrepareConfig, load_config, load_federation_config
from fedchem.storage.hub import HubStore

__all__ = ["add_trust_commands"]


def _keys_new(args: argparse.Namespace) -> int:
    from fedchem.trust.keys import new_key_pair

    try:
        pair = new_key_pair(Path(args.dir), args.name, overwrite=args.force)
    except FileExistsError as exc:
        print(f"error: {exc} (--force replaces it: a rotation)", file=sys.stderr)
        return 2
    print(f"private key: {pair.private_path} (keep it on this machine, mode 0600)")
    print(f"public key:  {pair.public}")
    print(f"key id:      {pair.key_id}")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from fedchem.trust.ledger import copy_dir, verify_run
    from fedchem.trust.signing import KeyRing

    try:
        cfg = load_federation_config(Path(args.config))
    except (ConfigFileError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.trust is None:
        print(f"error: {args.config} pins no keys (its trust: section)", file=sys.stderr)
        return 2
    keys = KeyRing(cfg.trust.keyring_entries())
    run_id = args.run_id or cfg.run_id
    hub = HubStore(args.hub or cfg.hub_url)
    copies = {}
    for item in args.site_copy or []:
        site, _, directory = item.partition("=")
        if site not in cfg.trust.sites or not directory:
            print(f"error: --site-copy {item!r}: expected SITE=DIR, SITE one of the federation's")
            return 2
        # a site's <workdir>/ledger holds a copy per hub: the one of the hub audited (or the
        # folder given, when it is one such copy already)
        per_hub = copy_dir(Path(directory), hub.url)
        copies[site] = per_hub if per_hub.is_dir() else Path(directory)
    report = verify_run(hub, run_id, keys, copies)
    chains = ", ".join(f"{a} {n}" for a, n in sorted(report.chains.items())) or "none"
    print(f"run {run_id}: chains {chains}; {report.objects_checked} objects checked")
    if report.ok:
        print("OK: every chain links and is signed by its pinned key; every object matches")
        return 0
    print(f"FAILED: first broken link: {report.problems[0]}")
    for problem in report.problems[1:]:
        print(f"  also: {problem}")
    return 1


def _audit_list(args: argparse.Namespace) -> int:
    from fedchem.messages import LedgerEntry
    from fedchem.trust.ledger import copy_dir, entry_sha256, read_chain

    try:
        cfg = load_config(Path(args.site_config), PrepareConfig)
    except (ConfigFileError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    site = cfg.site
    hub_url = args.hub or site.hub_url
    local_dir = site.workdir / "ledger"
    kept = sorted(p for p in local_dir.glob("hub-*") if p.is_dir()) if local_dir.is_dir() else []
    if hub_url and copy_dir(local_dir, HubStore(hub_url).url).is_dir():
        local_dir = copy_dir(local_dir, HubStore(hub_url).url)  # what it sent to that hub
    elif len(kept) == 1:
        local_dir = kept[0]  # the one hub it sent to (compared with --hub, wherever it is now)
    elif kept:
        print(
            f"error: {site.name} sent to {len(kept)} hubs; name the one to list with --hub",
            file=sys.stderr,
        )
        return 2
    files = sorted(local_dir.glob("*.jsonl")) if local_dir.is_dir() else []
    if args.scope:
        files = [f for f in files if f.stem == args.scope]
    if not files:
        print(f"no ledger at {local_dir}: nothing recorded as sent by {site.name}")
        return 0
    hub = HubStore(args.hub) if args.hub else None
    differs = 0
    for f in files:
        local = [LedgerEntry.model_validate_json(x) for x in f.read_text().splitlines() if x]
        print(f"== {f.stem}: {len(local)} entries sent by {site.name}")
        remote = {entry_sha256(e): e for e in read_chain(hub, f.stem, site.name)} if hub else {}
        for e in local:
            mark = ""
            if hub is not None:
                mark = "  [on hub]" if entry_sha256(e) in remote else "  [NOT ON HUB AS SENT]"
                differs += mark != "  [on hub]"
            what = f"{e.kind}" + (f" round {e.round}" if e.round is not None else "")
            size = f" {e.size} bytes" if e.size is not None else ""
            sha = f" sha256 {e.sha256[:12]}" if e.sha256 else ""
            print(f"{e.seq:4d} {e.at} {what}: {e.path or e.subject or '-'}{size}{sha}{mark}")
        if hub is not None and len(remote) > len(local):
            print(f"  the hub holds {len(remote) - len(local)} entries this site never wrote")
            differs += len(remote) - len(local)
    if hub is not None:
        print("hub and site agree" if not differs else f"{differs} entries differ from the hub")
    return 1 if differs else 0


def add_trust_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = sub.add_parser("keys", help="a party's Ed25519 signing key pair")
    k.add_argument("action", choices=["new"])
    k.add_argument("--name", required=True, help="the party: a site's name or coordinator")
    k.add_argument("--dir", default=".", help="where <name>.key and <name>.pub go")
    k.add_argument("--force", action="store_true", help="replace an existing key (rotation)")
    k.set_defaults(func=_keys_new)
    a = sub.add_parser(
        "audit",
        help="the signed ledger: verify a run on the hub, or list what a site sent",
        description="verify: every chain of a run (sequence, links, signatures by the pinned "
        "keys of the federation YAML), every object on the hub against its recorded hash, "
        "every committed round and site update recorded; exit 1 with the first broken link. "
        "list: a site's own copy of its ledger (what left it), compared with the hub's with "
        "--hub.",
    )
    a.add_argument("action", choices=["verify", "list"])
    a.add_argument("--config", help="verify: the federation YAML (its trust: keys, hub)")
    a.add_argument("--run-id", help="verify: the run (default: the config's run_id)")
    a.add_argument("--hub", help="the hub URL (verify: instead of the config's)")
    a.add_argument("--site-config", help="list: the site's YAML (its workdir holds the ledger)")
    a.add_argument("--scope", help="list: one run id (or _site) only")
    a.add_argument(
        "--site-copy",
        action="append",
        metavar="SITE=DIR",
        help="verify: a site's own copy of its ledger (its <workdir>/ledger), compared entry by "
        "entry with the hub's: what was deleted or rolled back there shows (repeatable)",
    )
    a.set_defaults(func=_audit)


def _audit(args: argparse.Namespace) -> int:
    if args.action == "verify":
        if not args.config:
            print("error: audit verify needs --config (the federation YAML)", file=sys.stderr)
            return 2
        return _audit_verify(args)
    if not args.site_config:
        print("error: audit list needs --site-config", file=sys.stderr)
        return 2
    return _audit_list(args)
