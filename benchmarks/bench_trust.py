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
4. A hostile coordinator (or anyone who reaches the Prefect API): redirecting a site's flow
   (its config, hub, registry, batch files, a plug-in featurizer), settings it did not sign or
   beyond the site's limits, re-committing a round to make the site retrain it, another run
   id, an earlier round again, and, to the audit, deleted entries, a rolled-back round,
   deleted objects and a substituted key; each must be refused or named.
5. Cost: the same federation with signatures and ledgers off and on, side by side: seconds and
   hub bytes per round, and the ratio.
"""

from __future__ import annotations

import argparse
import itertools
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
from fedchem.trust.ledger import Ledger, copy_dir, ledger_dir, verify_run
from fedchem.trust.signing import COORDINATOR, KeyRing, Signer
from fedchem.trust.site import PolicyRefused, SiteGuard

Outcome = tuple[str, bool, str]  # (what was tried, rejected?, the reason given)


def _try(what: str, fn: Callable[[], str | None]) -> Outcome:
    """``fn`` returns the rejection's reason, or None when the attack went through."""
    try:
        why = fn()
    except (PolicyRefused, PermissionError, ValueError) as exc:
        why = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line for the table
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


def hostile(sites: Sites, root: Path) -> list[Outcome]:
    """A validly signed but hostile coordinator, and callers of the sites' flows."""
    import os

    from fedchem.config import SITE_CONFIG_ENV, PrepareConfig, SiteRef
    from fedchem.federation.commits import commit_round
    from fedchem.federation.coordinator import initial_model, start_run
    from fedchem.federation.driver import CoordinatorSteps, fit_instructions
    from fedchem.federation.rounds import await_round_open
    from fedchem.federation.site import take_part
    from fedchem.messages import SiteRefusal
    from fedchem.model.state import model_to_arrays
    from fedchem.policy import TrustConfig
    from fedchem.trust.budget import PrivacyBudget
    from fedchem.trust.sovereign import check_featurizer, own_site

    hub_dir = root / "hub-hostile"
    a = sites.split.sites[0]
    assert a.policy_file is not None
    own = a.model_copy(update={"hub_url": str(hub_dir)})
    worker_cfg = root / "site-a-worker.yaml"
    worker_cfg.write_text(
        yaml.safe_dump(PrepareConfig(site=own, chem=sites.chem).model_dump(mode="json"))
    )
    out: list[Outcome] = []

    def as_worker(fn: Callable[[], object]) -> Callable[[], str | None]:
        def attempt() -> str | None:
            os.environ[SITE_CONFIG_ENV] = str(worker_cfg)
            try:
                fn()
            except PolicyRefused as exc:
                return f"{exc.clause}: {exc.reason}"
            finally:
                os.environ.pop(SITE_CONFIG_ENV, None)
            return None

        return attempt

    evil = own.model_copy(update={"workdir": root / "evil", "dask_address": "tcp://10.0.0.9:8786"})
    ref = SiteRef(name=a.name)
    out += [
        _try("redirect: a full site config (Dask, workdir)", as_worker(lambda: own_site(evil))),
        _try(
            "redirect: another hub",
            as_worker(lambda: own_site(ref, hub_url=str(root / "attacker-hub"))),
        ),
        _try(
            "redirect: another registry",
            as_worker(lambda: own_site(ref, registries=["s3://attacker/registry"])),
        ),
        _try(
            "redirect: batch files outside the site's directories",
            as_worker(lambda: own_site(ref, paths=["/etc/passwd"])),
        ),
        _try(
            "a plug-in featurizer the policy does not name",
            as_worker(
                lambda: check_featurizer(
                    own, sites.chem.model_copy(update={"featurizer": "os:system"})
                )
            ),
        ),
    ]
    # a federation this coordinator runs, signed
    privacy = PrivacyConfig(level="record", clip=1.0, target_epsilon=3.0)
    config = config_for(sites, str(hub_dir), "hostile", rounds=1, privacy=privacy)
    strict = yaml.safe_load(Path(a.policy_file).read_text())
    strict["dp"] = {"max_epsilon": 4.0, "delta": 1e-5}
    strict["runs"] = ["hostile", "honest-*"]
    strict_file = root / "site-a-strict-policy.yaml"
    strict_file.write_text(yaml.safe_dump(strict))
    site = a.model_copy(update={"policy_file": strict_file, "workdir": root / "site-a-work"})
    shutil.copytree(a.workdir, site.workdir)
    hub = HubStore(config.hub_url)
    start_run(hub, config, sites.label_stats, trust=coordinator_trust(config))

    def opened(cfg: Any, rnd: int, plan: RoundPlan | None = None) -> RoundOpen:
        steps = CoordinatorSteps(cfg, HubStore(cfg.hub_url))
        if plan is not None:
            steps.plan = plan
        ticket = new_ticket()
        steps.open(rnd, ticket, fit_instructions(cfg, steps.strategy, rnd))
        return await_round_open(HubStore(cfg.hub_url), cfg.run_id, rnd, ticket, timeout_s=0)

    def answer(cfg: Any, op: RoundOpen, **over: Any) -> str | None:
        settings = {"chem": cfg.chem, "model": cfg.model, "train": cfg.train, **over}
        reply = take_part(
            site,
            HubStore(cfg.hub_url),
            op,
            **{
                "chem": settings["chem"],
                "model_cfg": settings["model"],
                "train_cfg": settings["train"],
            },
        )
        return f"{reply.clause}: {reply.reason}" if isinstance(reply, SiteRefusal) else None

    first = answer(config, opened(config, 1))
    assert first is None, first
    greedy = config.train.model_copy(update={"local_epochs": 40})
    out.append(
        _try(
            "train settings the coordinator did not sign (a flow parameter)",
            lambda: answer(config, opened(config, 1), train=greedy),
        )
    )
    signed_greedy = round_plan(config.model_copy(update={"train": greedy}))
    out.append(
        _try(
            "signed settings beyond the site's limits (40 epochs)",
            lambda: answer(
                config.model_copy(update={"train": greedy}), opened(config, 1, signed_greedy)
            ),
        )
    )

    def recommit(seed: int) -> str | None:
        tasks = [(t.name, t.kind) for t in config.tasks]
        model = initial_model(config.chem.fp_size, tasks, config.model, seed, [])
        data = dump_arrays(model_to_arrays(model))
        commit_round(hub, "hostile", 0, data, "init", {}, {}, trust=coordinator_trust(config))
        return answer(config, opened(config, 1))

    recommit(7)  # the second release: charged (3.0 and 3.0 compose to 3.93)
    spent = PrivacyBudget.of_site(site.workdir).spent(1e-5)
    out.append(
        _try(
            f"re-commit round 0 again to make the site retrain round 1 (spent {spent:.2f} of 4)",
            lambda: recommit(8),
        )
    )
    other = config.model_copy(update={"run_id": "another-run"})
    start_run(HubStore(other.hub_url), other, sites.label_stats, trust=coordinator_trust(other))
    out.append(_try("a run id the site did not agree to", lambda: answer(other, opened(other, 1))))
    # the audit: a signed 2-round run, then the coordinator hides what happened
    audited = config_for(sites, str(root / "hub-audited"), "audited", rounds=2)
    federate(sites, audited, score=False)
    keys = KeyRing(audited.trust.keyring_entries()) if audited.trust else None
    assert keys is not None
    url = HubStore(audited.hub_url).url
    copies = {s.name: copy_dir(s.workdir / "ledger", url) for s in sites.split.sites}
    tries = itertools.count()

    def tampered(change: Callable[[Path], None], with_copies: bool = True) -> str | None:
        target = root / f"audit-{next(tries)}"
        shutil.copytree(root / "hub-audited", target)
        change(target)
        problems = verify_run(
            HubStore(str(target)), "audited", keys, copies if with_copies else None
        ).problems
        return problems[0] if problems else None

    def tail(h: Path) -> None:
        for p in sorted((h / ledger_dir("audited", a.name)).iterdir())[-3:]:
            p.unlink()

    def rollback(h: Path) -> None:
        shutil.rmtree(h / "runs" / "audited" / "rounds" / "0002")
        for actor in (COORDINATOR, *audited.site_names):
            for p in sorted((h / ledger_dir("audited", actor)).iterdir()):
                if (yaml.safe_load(p.read_text()).get("round") or 0) >= 2:
                    p.unlink()

    def coordinator_rollback(h: Path) -> None:
        (h / "runs" / "audited" / "rounds" / "0002" / "manifest.json").unlink()
        for p in sorted((h / ledger_dir("audited", COORDINATOR)).iterdir()):
            if (yaml.safe_load(p.read_text()).get("round") or 0) >= 2:
                p.unlink()

    out += [
        _try("audit: a site's last ledger entries deleted", lambda: tampered(tail)),
        _try(
            "audit: round 2 rolled back, every party's entries with it", lambda: tampered(rollback)
        ),
        _try(
            "audit: the coordinator's chain rolled back (no site copies given)",
            lambda: tampered(coordinator_rollback, with_copies=False),
        ),
        _try(
            "audit: an update deleted",
            lambda: tampered(
                lambda h: (h / "runs/audited/rounds/0001/sites/site-b/update.npz").unlink()
            ),
        ),
        _try(
            "audit: a global model deleted",
            lambda: tampered(lambda h: (h / "runs/audited/rounds/0001/global.npz").unlink()),
        ),
        _try(
            "audit: the server state edited",
            lambda: tampered(
                lambda h: (h / "runs/audited/rounds/0001/server_state.npz").write_bytes(b"x")
            ),
        ),
    ]
    rogue = new_key_pair(root / "rogue", "rogue").public

    def substitute() -> str | None:
        assert audited.trust is not None
        doc = audited.trust.model_dump(mode="json")
        TrustConfig.model_validate({**doc, "sites": {**doc["sites"], "coordinator": rogue}})
        return None

    out.append(_try("a trust.sites member named coordinator (key substitution)", substitute))
    return out


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
        failed += _table("a hostile coordinator", hostile(sites, root))
        cost(sites, root, args.rounds)
        print(f"\nnot rejected: {failed}")
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
