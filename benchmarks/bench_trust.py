"""Trust, tried: every tampering, every policy clause, every forbidden hub access, and what
signing costs a round.

    .venv/bin/python benchmarks/bench_trust.py [--head 2000] [--rounds 3]

1. Tampering: on a signed federation of 4 Tox21 sites (the demo's split of the first ``head``
   molecules), each attack is tried against the real checks (the coordinator's, the sites',
   the audit's) and must be rejected; the table names the reason given.
2. Policy: one opening per clause of a site's policy, breaking that clause only; each must be
   refused naming the clause.
3. Hub permissions: an S3 server (moto on loopback) with IAM authorization on and one user per
   party; each forbidden read or write must be denied.
4. Cost: the same federation with signatures and ledgers off and on, side by side: seconds and
   hub bytes per round, and the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from libloop import Sites, config_for, federate, prepare_sites

from fedchem.federation.coordinator import coordinator_trust, round_plan
from fedchem.federation.rounds import new_ticket, open_round
from fedchem.federation.site import fetch_global, run_site_round
from fedchem.messages import FitInstructions, RoundOpen, RoundPlan, SiteUpdateManifest
from fedchem.model.state import dump_arrays, load_arrays
from fedchem.policy import PrivacyConfig
from fedchem.storage.hub import HubLayout, HubStore, json_bytes
from fedchem.trust.keys import new_key_pair
from fedchem.trust.ledger import Ledger, ledger_dir, verify_run
from fedchem.trust.signing import COORDINATOR, KeyRing, Signer
from fedchem.trust.site import PolicyRefused, SiteGuard

Outcome = tuple[str, bool, str]  # (what was tried, rejected?, the reason given)


def _try(what: str, fn: Callable[[], str | None]) -> Outcome:
    """``fn`` returns the rejection's reason, or None when the attack went through."""
    try:
        why = fn()
    except (PolicyRefused, PermissionError, ValueError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    return what, why is not None, (why or "ACCEPTED")[:110]


def tampering(sites: Sites, root: Path) -> list[Outcome]:
    config = config_for(sites, str(root / "hub"), "tamper", rounds=3)
    federate(sites, config.model_copy(update={"rounds": 1}), score=False)
    federate(sites, config_for(sites, str(root / "hub"), "other", rounds=3), score=False)
    hub = HubStore(config.hub_url)
    trust = coordinator_trust(config)
    assert trust is not None
    layout = HubLayout("tamper")
    a, b = sites.split.sites[0], sites.split.sites[1]
    assert a.signing_key_file is not None and b.signing_key_file is not None
    r1a = SiteUpdateManifest.model_validate(hub.get_json(layout.site_manifest(1, a.name)))
    other_b = SiteUpdateManifest.model_validate(
        hub.get_json(HubLayout("other").site_manifest(1, b.name))
    )
    opened, data = open_round(
        hub, "tamper", 2, new_ticket(), FitInstructions(), round_plan(config), trust.sign
    )
    trust.ledger(hub, "tamper").append("round-open", round=2, path=layout.round_open(2), data=data)
    guard = SiteGuard.load(a)
    m2 = run_site_round(
        a, hub, "tamper", 2, config.chem, config.model, config.train, opened=opened, guard=guard
    )
    mallory = new_key_pair(root / "mallory", "mallory")

    def resign(m: SiteUpdateManifest, key: Path) -> SiteUpdateManifest:
        return Signer.from_file(a.name, key).sign(
            "site-update", m.model_copy(update={"signature": None})
        )

    def screened(m: SiteUpdateManifest) -> str | None:
        from fedchem.federation.validation import screen_updates

        why = trust.check_update(hub, m)
        if why is not None:
            return why
        base = fetch_global(hub, "tamper", 1)
        s = screen_updates(
            [m],
            run_id="tamper",
            rnd=2,
            base_sha256=base[1],
            reference=base[0],
            members=config.site_names,
            fetch=lambda x: hub.get_verified(x.update_path, x.update_sha256, x.site),
        )
        return s.rejected.get(m.site)

    out = [
        _try(
            "update signed with an unknown key", lambda: screened(resign(m2, mallory.private_path))
        ),
        _try(
            "update signed with another site's key",
            lambda: screened(resign(m2, b.signing_key_file)),
        ),  # type: ignore[arg-type]
        _try(
            "manifest altered after signing",
            lambda: screened(m2.model_copy(update={"n_examples": 10 * m2.n_examples})),
        ),
        _try(
            "manifest without signature",
            lambda: screened(m2.model_copy(update={"signature": None})),
        ),
        _try("replay: another run's update", lambda: screened(other_b)),
        _try("replay: an earlier round's update", lambda: screened(r1a)),
    ]
    # the update's bytes swapped on the hub after the manifest was signed
    good = hub.get_bytes(m2.update_path)
    arrays = load_arrays(good)
    arrays["head.bias"] = arrays["head.bias"] + 1.0
    hub.put_bytes(m2.update_path, dump_arrays(arrays))
    out.append(_try("update bytes swapped after signing", lambda: screened(m2)))
    hub.put_bytes(m2.update_path, good)
    # a second update for the same round, recorded by the site's own key
    ledger = Ledger(
        hub, "tamper", Signer.from_file(a.name, a.signing_key_file), a.workdir / "ledger"
    )
    data2 = dump_arrays(arrays)
    path2 = m2.update_path.replace(".npz", "-2.npz")
    hub.put_bytes(path2, data2)
    ledger.append("update", round=2, path=path2, data=data2)
    out.append(_try("a second update for the round (the first one)", lambda: screened(m2)))
    # the coordinator's messages, as a site receives them
    forged_open = Signer.from_file(COORDINATOR, mallory.private_path).sign(
        "round-open", opened.model_copy(update={"signature": None, "round": 3})
    )
    out.append(_try("round opened with a key not pinned", lambda: _site_refuses(a, forged_open)))
    widened = opened.model_copy(
        update={"plan": opened.plan.model_copy(update={"quorum": 1})}  # type: ignore[union-attr]
    )
    out.append(_try("round plan altered after signing", lambda: _site_refuses(a, widened)))
    commit = root / "hub" / layout.round_manifest(1)
    saved = commit.read_bytes()
    doc = yaml.safe_load(saved)
    doc["aggregation"] = "forged"
    commit.write_bytes(json_bytes(doc))
    out.append(_try("committed global model's manifest altered", lambda: _fetch(guard, hub)))
    commit.write_bytes(saved)
    g = root / "hub" / layout.global_model(1)
    saved_g = g.read_bytes()
    g.write_bytes(saved_g[:-8] + b"\0" * 8)
    out.append(_try("global model's bytes altered", lambda: _fetch(guard, hub)))
    g.write_bytes(saved_g)
    # the audit of a run, after the fact
    assert config.trust is not None
    keys = KeyRing({COORDINATOR: config.trust.coordinator, **config.trust.sites})

    def audited(change: Callable[[Path], None]) -> Callable[[], str | None]:
        def run() -> str | None:
            copy = root / f"audit-{time.perf_counter_ns()}"
            shutil.copytree(root / "hub", copy)
            change(copy)
            problems = verify_run(HubStore(str(copy)), "tamper", keys).problems
            shutil.rmtree(copy)
            return problems[0] if problems else None

        return run

    def alter_entry(h: Path) -> None:
        p = h / ledger_dir("tamper", a.name) / "00000000.json"
        d = yaml.safe_load(p.read_text())
        d["note"] = "rewritten"
        p.write_bytes(json_bytes(d))

    out += [
        _try(
            "audit: an object altered after it was sent",
            audited(lambda h: (h / layout.site_update(1, a.name)).write_bytes(b"x")),
        ),
        _try("audit: a ledger entry rewritten", audited(alter_entry)),
        _try(
            "audit: a ledger entry removed",
            audited(lambda h: (h / ledger_dir("tamper", a.name) / "00000001.json").unlink()),
        ),
        _try(
            "audit: a site's reply replaced on the hub",
            audited(lambda h: (h / layout.site_manifest(1, b.name)).write_bytes(b"{}")),
        ),
    ]
    return out


def _site_refuses(site: Any, opened: RoundOpen) -> str | None:
    SiteGuard.load(site).check_round(opened, ["t"])
    return None


def _fetch(guard: SiteGuard, hub: HubStore) -> str | None:
    def verify(m: Any) -> None:
        guard.verify_coordinator("round-commit", m)

    fetch_global(hub, "tamper", 1, verify)
    return None


def policy_clauses(root: Path) -> list[Outcome]:
    from fedchem.config import SiteConfig

    coord = new_key_pair(root / "pc", "coordinator")
    site_key = new_key_pair(root / "pc", "site")
    base = {
        "site": "site-a",
        "coordinator_key": coord.public,
        "allowed_strategies": ["fedavgm"],
        "min_sites_per_round": 3,
        "max_rounds": 5,
    }
    plan = {
        "strategy": "fedavgm",
        "sites": ["site-a", "b", "c"],
        "quorum": 3,
        "rounds": 5,
        "heads": "shared",
    }
    dp_site = PrivacyConfig(level="site", noise_multiplier=0.5)
    cases: list[tuple[str, dict[str, Any], dict[str, Any], int, bool]] = [
        ("allowed_strategies", {}, {"strategy": "krum"}, 1, False),
        ("min_sites_per_round", {}, {"quorum": 2}, 1, False),
        ("max_rounds", {}, {}, 6, False),
        ("share_heads", {"share_heads": False}, {}, 1, False),
        ("dp.required", {"dp": {"required": True}}, {}, 1, False),
        ("dp.level", {"dp": {"required": True, "level": "record"}}, {"privacy": dp_site}, 1, False),
        ("dp.delta", {"dp": {"delta": 1e-7}}, {"privacy": dp_site}, 1, False),
        ("dp.max_epsilon", {"dp": {"max_epsilon": 1.0}}, {"privacy": dp_site}, 1, True),
        (
            "dp.min_noise_multiplier",
            {"dp": {"min_noise_multiplier": 1.0}},
            {"privacy": dp_site},
            1,
            True,
        ),
    ]
    out = []
    for clause, pol, over, rnd, at_budget in cases:
        d = root / "pc" / clause
        d.mkdir(parents=True, exist_ok=True)
        (d / "policy.yaml").write_text(yaml.safe_dump({**base, **pol}))
        site = SiteConfig(
            name="site-a",
            measurements=d / "m.csv",
            assays=d / "a.csv",
            workdir=d / "w",
            key_file=d / "k",
            signing_key_file=site_key.private_path,
            policy_file=d / "policy.yaml",
        )
        opened = Signer.from_file(COORDINATOR, coord.private_path).sign(
            "round-open",
            RoundOpen(
                run_id="r",
                round=rnd,
                ticket="t",
                fit=FitInstructions(),
                opened_at="now",
                plan=RoundPlan(**{**plan, **over}),
            ),
        )

        def attempt(
            site: SiteConfig = site,
            opened: RoundOpen = opened,
            at_budget: bool = at_budget,
            clause: str = clause,
        ) -> str | None:
            guard = SiteGuard.load(site)
            try:
                p = guard.check_round(opened, ["t"])
                if at_budget:
                    guard.privacy("r", p, 1000, 64, 1)
            except PolicyRefused as exc:
                return exc.clause if exc.clause == clause else None
            return None

        out.append(_try(f"clause {clause}", attempt))
    for what, policy_file in (("no policy file", None), ("another site's policy", "copied")):
        d = root / "pc" / what.replace(" ", "-")
        d.mkdir(parents=True, exist_ok=True)
        pf = None
        if policy_file:
            pf = d / "policy.yaml"
            pf.write_text(yaml.safe_dump({**base, "site": "site-b"}))
        site = SiteConfig(
            name="site-a",
            measurements=d / "m",
            assays=d / "a",
            workdir=d / "w",
            key_file=d / "k",
            signing_key_file=site_key.private_path,
            policy_file=pf,
        )
        out.append(_try(f"fail-closed: {what}", lambda s=site: _load(s)))
    return out


def _load(site: Any) -> str | None:
    SiteGuard.load(site)
    return None


def permissions(root: Path) -> list[Outcome]:
    from fedchem.deployments.s3hub import provision_hub

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        creds = provision_hub(url, ["a", "b"], bucket="bench")
        hubs = {
            p: HubStore(
                "s3://bench/hub",
                key=c.access_key,
                secret=c.secret_key,
                client_kwargs={"endpoint_url": url},
            )
            for p, c in creds.items()
        }
        a, b, co = hubs["a"], hubs["b"], hubs["coordinator"]
        up = "runs/r/rounds/0001/sites/a/update.npz"
        glob = "runs/r/rounds/0001/global.npz"
        a.put_bytes(up, b"a")
        co.put_bytes(glob, b"g")
        a.put_bytes("private/a/x", b"p")

        def denied(fn: Callable[[], object]) -> Callable[[], str | None]:
            def run() -> str | None:
                try:
                    fn()
                except PermissionError as exc:
                    return f"denied by the server ({exc})"
                return None

            return run

        tries = {
            "site b reads site a's update": lambda: b.get_bytes(up),
            "site b overwrites site a's update": lambda: b.put_bytes(up, b"x"),
            "site b writes the global model": lambda: b.put_bytes(glob, b"x"),
            "site b commits a round": lambda: b.put_bytes(
                "runs/r/rounds/0001/manifest.json", b"{}"
            ),
            "site b opens a round": lambda: b.put_bytes("runs/r/rounds/0002/open.json", b"{}"),
            "site b writes site a's ledger": lambda: b.put_bytes("ledger/r/a/00000000.json", b"{}"),
            "site b writes the coordinator's ledger": lambda: b.put_bytes(
                "ledger/r/coordinator/00000000.json", b"{}"
            ),
            "site b reads site a's private area": lambda: b.get_bytes("private/a/x"),
            "coordinator reads a site's private area": lambda: co.get_bytes("private/a/x"),
            "coordinator writes a site's update": lambda: co.put_bytes(up, b"x"),
            "coordinator writes a site's ledger": lambda: co.put_bytes(
                "ledger/r/a/00000001.json", b"{}"
            ),
        }
        return [_try(what, denied(fn)) for what, fn in tries.items()]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _hub_bytes(root: Path, run_id: str) -> int:
    total = 0
    for sub in (f"runs/{run_id}", f"ledger/{run_id}"):
        d = root / sub
        if d.exists():
            total += sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    return total


def cost(sites: Sites, root: Path, rounds: int) -> None:
    hub = root / "hub-cost"
    rows = {}
    for signed in (False, True, False, True):  # interleaved: the machine's noise hits both
        run_id = f"cost-{'on' if signed else 'off'}-{len(rows)}"
        cfg = config_for(sites, str(hub), run_id, rounds, signed=signed)
        res = federate(sites, cfg, score=False)
        rows.setdefault(signed, []).append(
            (
                min(res.round_seconds),
                sum(res.round_seconds) / rounds,
                _hub_bytes(hub, run_id) / rounds,
            )
        )
    print(f"\nper round ({rounds} rounds, 4 sites, runs interleaved off/on/off/on):")
    print("| signatures and ledgers | round s (mean) | round s (min) | hub bytes per round |")
    print("|---|---|---|---|")
    for signed, runs in rows.items():
        mean = sum(r[1] for r in runs) / len(runs)
        low = min(r[0] for r in runs)
        size = sum(r[2] for r in runs) / len(runs)
        print(f"| {'on' if signed else 'off'} | {mean:.2f} | {low:.2f} | {size:,.0f} |")
    off, on = rows[False], rows[True]
    t = (sum(r[1] for r in on) / len(on)) / (sum(r[1] for r in off) / len(off))
    b = (sum(r[2] for r in on) / len(on)) / (sum(r[2] for r in off) / len(off))
    print(f"ratio on / off: time {t:.3f}, bytes {b:.4f}")


def _table(title: str, rows: list[Outcome]) -> int:
    print(f"\n{title}: {sum(r[1] for r in rows)} of {len(rows)} rejected")
    print("| tried | rejected | reason given |")
    print("|---|---|---|")
    for what, ok, why in rows:
        print(f"| {what} | {'yes' if ok else '**NO**'} | {why.replace('|', '/')} |")
    return sum(not r[1] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sites = prepare_sites(root, head=args.head)
        failed = _table("tampering", tampering(sites, root))
        failed += _table("policy clauses", policy_clauses(root))
        failed += _table("hub permissions", permissions(root))
        cost(sites, root, args.rounds)
        print(f"\nnot rejected: {failed}")
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
