"""Fault-injection suite: real processes, the real S3 protocol, faults injected mid-run.

    .venv/bin/python benchmarks/fault_injection.py [--write-readme]

Starts the stack (`fedchem.deployments.stack`: Prefect server, moto S3 server, one worker per
site, the coordinator's worker), prepares 3 sites, then runs the coordinator deployment through
``prefect deployment run --watch`` once without faults and once per scenario, each with its
own run id and the same seeds:

- a site's worker (and its flow run) is SIGKILLed mid-round, trained but its update not yet
  sent (the run holds at its upload until killed), and restarted after the round;
- the S3 server is stopped (SIGSTOP) for 30 s mid-round, then continued (SIGCONT);
- a site stores altered bytes under its honest manifest (hash mismatch), and a site returns
  garbage (random bytes with a matching hash): both deployed as that site's round deployment;
- the coordinator's flow-run process is SIGKILLed while it aggregates, then the run is
  started again with the same run id and resumes.

It prints a table (faults, rounds committed, final model vs the fault-free run, updates and
rows lost) and, with ``--write-readme``, puts it into ``benchmarks/README.md``. The suite is
also a test (``tests/test_faults.py``). Every process it starts is stopped by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from faulty_site import stall_marker  # noqa: E402  (benchmarks/, next to this file)

from fedchem.config import ChemConfig  # noqa: E402
from fedchem.demo.sites import bundled_dataset  # noqa: E402
from fedchem.deployments.stack import (  # noqa: E402
    Stack,
    deploy,
    stack_down,
    stack_up,
    start_site_worker,
)
from fedchem.messages import RoundManifest  # noqa: E402
from fedchem.storage.hub import HubLayout, HubStore  # noqa: E402

ROUNDS = 3
MARK_BEGIN, MARK_END = "<!-- fault-table:begin -->", "<!-- fault-table:end -->"


@dataclass
class Outcome:
    scenario: str
    faults: str
    expect_identical: bool
    rounds: int = 0
    identical: bool = False
    updates_lost: int = 0
    rows_lost: int = 0
    recorded: str = ""
    exit_codes: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.rounds == ROUNDS
            and self.identical == self.expect_identical
            and self.updates_lost == 0
            and self.rows_lost == 0
        )


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class Suite:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        env = stack.env()
        for k in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ENDPOINT_URL",
            "AWS_DEFAULT_REGION",
        ):
            os.environ[k] = env[k]
        self.hub = HubStore(stack.hub_url)
        doc = yaml.safe_load((Path(stack.dir) / "prefect.yaml").read_text())
        coord = next(d for d in doc["deployments"] if d["name"] == "coordinator")
        self.config: dict[str, Any] = coord["parameters"]["config"]
        self.reference: str | None = None

    # -- driving the stack -------------------------------------------------------------
    def _cmd(self, deployment: str, params: dict[str, Any] | None = None) -> list[str]:
        exe = str(Path(sys.executable).with_name("prefect"))
        extra = ["--params", json.dumps(params)] if params else []
        return [exe, "deployment", "run", deployment, "--watch", *extra]

    def run(self, deployment: str, params: dict[str, Any] | None = None) -> int:
        res = subprocess.run(
            self._cmd(deployment, params),
            env=self.stack.env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
        return res.returncode

    def start(self, run_id: str, **deployment: Any) -> subprocess.Popen[str]:
        """The coordinator run, in the background (``run`` waits for it)."""
        cmd = self._cmd("coordinator/coordinator", self._params(run_id, **deployment))
        return subprocess.Popen(
            cmd,
            env=self.stack.env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def wait_for(self, path: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not self.hub.exists(path):
            if time.time() > deadline:
                raise TimeoutError(f"{path} did not appear within {timeout:.0f}s")
            time.sleep(0.2)

    # -- what the hub says -------------------------------------------------------------
    def committed(self, run_id: str) -> list[RoundManifest]:
        from fedchem.federation.commits import committed_rounds

        return committed_rounds(self.hub, run_id)

    def outcome(self, o: Outcome, run_id: str, started: float) -> Outcome:
        rounds = self.committed(run_id)
        o.rounds = rounds[-1].round if rounds else 0
        o.identical = bool(rounds) and rounds[-1].global_sha256 == self.reference
        notes = []
        for m in rounds[1:]:
            accounted = {*m.sites, *m.rejected, *m.excluded, *m.missing}
            layout = HubLayout(run_id)
            published = [
                s for s in self.stack.sites if self.hub.exists(layout.site_manifest(m.round, s))
            ]
            o.updates_lost += len([s for s in published if s not in accounted])
            notes += [f"r{m.round} {s} missing ({w})" for s, w in m.missing_reasons.items()]
            notes += [f"r{m.round} {s} rejected ({w.split(':')[0]})" for s, w in m.rejected.items()]
        for s in self.stack.sites:
            rep = self.hub.get_json(HubLayout.site_prepared(s))
            o.rows_lost += rep["rows_in"] - rep["rows_accepted"] - rep["rows_quarantined"]
        o.recorded = "; ".join(notes) or "-"
        o.seconds = time.time() - started
        return o

    # -- scenarios ---------------------------------------------------------------------
    def fault_free(self) -> Outcome:
        t = time.time()
        o = Outcome("fault-free", "none", True)
        o.exit_codes = str(self.run("coordinator/coordinator", self._params("f0-fault-free")))
        self.reference = self.committed("f0-fault-free")[-1].global_sha256
        return self.outcome(o, "f0-fault-free", t)

    def _params(self, run_id: str, **deployment: Any) -> dict[str, Any]:
        return {
            "config": {
                **self.config,
                "run_id": run_id,
                "rounds": ROUNDS,
                "deployment": {**self.config["deployment"], **deployment},
            }
        }

    @contextlib.contextmanager
    def faulty(self, run_id: str, plan: dict[str, dict[str, str]]) -> Iterator[None]:
        """Deploy ``plan``'s sites' round deployments as `faulty_site` (faults: ``plan``)."""
        (Path(self.stack.dir) / "faults.json").write_text(json.dumps({run_id: plan}))
        original = Path(self.stack.dir) / "prefect.yaml"
        faulty = Path(self.stack.dir) / "prefect-faulty.yaml"
        text = original.read_text()
        here = Path(__file__).resolve().parent / "faulty_site.py"
        for s in plan:
            text = re.sub(
                rf"(- name: {s}-round\n    entrypoint: )fedchem.flows.site_round:site_round",
                rf"\g<1>{here}:faulty_site_round",
                text,
            )
        faulty.write_text(text)
        deploy(self.stack, faulty)
        try:
            yield
        finally:
            deploy(self.stack, original)

    def site_worker_killed(self) -> Outcome:
        t, run_id, site = time.time(), "f1-site-killed", self.stack.sites[-1]
        o = Outcome(
            "site worker killed",
            f"SIGKILL {site}'s worker + flow run mid-round 2 "
            "(trained, update not yet sent), restarted after the round",
            False,
        )
        with self.faulty(run_id, {site: {"2": "stall"}}):
            proc = self.start(run_id, min_sites=len(self.stack.sites) - 1, round_deadline_s=30)
            marker = stall_marker(Path(self.stack.dir), run_id, site, 2)
            deadline = time.time() + 300
            while not marker.exists():  # the round-2 run holds its update, unsent
                if time.time() > deadline or proc.poll() is not None:
                    raise TimeoutError(f"{site}'s round-2 run never reached its upload")
                time.sleep(0.05)
            pid = self.stack.pids[f"worker-{site}"]
            for p in [pid, *_descendants(pid)]:
                with _quiet():
                    os.kill(p, signal.SIGKILL)
            self.wait_for(HubLayout(run_id).round_manifest(2))
            start_site_worker(self.stack, site)
            o.exit_codes = str(proc.wait(timeout=600))
        return self.outcome(o, run_id, t)

    def s3_stopped(self) -> Outcome:
        t, run_id = time.time(), "f2-s3-stopped"
        o = Outcome(
            "S3 server stopped", "SIGSTOP the S3 server for 30 s mid-round 2, then SIGCONT", True
        )
        proc = self.start(run_id, round_deadline_s=300)
        self.wait_for(HubLayout(run_id).round_manifest(1))
        time.sleep(1.0)
        os.kill(self.stack.pids["s3"], signal.SIGSTOP)
        try:
            time.sleep(30)
        finally:
            os.kill(self.stack.pids["s3"], signal.SIGCONT)
        o.exit_codes = str(proc.wait(timeout=600))
        return self.outcome(o, run_id, t)

    def bad_updates(self) -> Outcome:
        t, run_id = time.time(), "f3-bad-updates"
        b, c = self.stack.sites[1:3]
        o = Outcome(
            "altered and garbage updates",
            f"{b} stores an altered update under its "
            f"honest manifest (round 2); {c} uploads random bytes with a matching hash "
            "(round 3)",
            False,
        )
        with self.faulty(run_id, {b: {"2": "corrupt"}, c: {"3": "garbage"}}):
            o.exit_codes = str(
                self.run("coordinator/coordinator", self._params(run_id, min_sites=2))
            )
        return self.outcome(o, run_id, t)

    def coordinator_killed(self) -> Outcome:
        t, run_id = time.time(), "f4-coordinator-killed"
        o = Outcome(
            "coordinator killed, resumed",
            "SIGKILL the coordinator's flow run as "
            "round 2's updates are in (mid-aggregation), then run it again with the "
            "same run id",
            True,
        )
        proc = self.start(run_id, round_deadline_s=300)
        layout = HubLayout(run_id)
        self.wait_for(layout.round_manifest(1))
        for s in self.stack.sites:
            self.wait_for(layout.site_manifest(2, s))
        worker = self.stack.pids["worker-coordinator"]
        for p in _descendants(worker):
            with _quiet():
                os.kill(p, signal.SIGKILL)
        first = proc.wait(timeout=300)
        committed_at_kill = len(self.committed(run_id)) - 1
        second = self.run("coordinator/coordinator", self._params(run_id, round_deadline_s=300))
        o.exit_codes = f"{first} (killed after round {committed_at_kill}), then {second}"
        return self.outcome(o, run_id, t)


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is ProcessLookupError


def run_suite(workdir: Path) -> list[Outcome]:
    data = workdir / "tox21-600.csv"
    pd.read_csv(bundled_dataset()).head(600).to_csv(data, index=False)
    state = workdir / "stack"
    stack = stack_up(state, data, n_sites=3, rounds=ROUNDS, chem=ChemConfig(fp_size=512))
    try:
        suite = Suite(stack)
        for site in stack.sites:
            if suite.run(f"site-prepare/{site}-prepare") != 0:
                raise RuntimeError(f"{site} preparation failed; see {state}")
        return [
            suite.fault_free(),
            suite.site_worker_killed(),
            suite.s3_stopped(),
            suite.bad_updates(),
            suite.coordinator_killed(),
        ]
    finally:
        stack_down(state)


def render(outcomes: list[Outcome]) -> str:
    lines = [
        f"3 sites (600 Tox21 molecules, scaffold split) × {ROUNDS} rounds, deployed mode, S3 hub "
        "on moto, one worker per site; every scenario a separate run id with the same seeds.",
        "",
        "| scenario | faults injected | rounds committed | final model = fault-free | "
        "updates lost | rows lost | recorded in the round manifests | coordinator exit | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        same = ("yes" if o.identical else "no") + (
            "" if o.identical == o.expect_identical else " (UNEXPECTED)"
        )
        if not o.expect_identical and not o.identical:
            same += " (expected: other updates went in)"
        lines.append(
            f"| {o.scenario} | {o.faults} | {o.rounds}/{ROUNDS} | {same} | {o.updates_lost} | "
            f"{o.rows_lost} | {o.recorded} | {o.exit_codes} | {o.seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_readme(table: str) -> None:
    readme = REPO / "benchmarks" / "README.md"
    text = readme.read_text()
    block = f"{MARK_BEGIN}\n{table}{MARK_END}"
    if MARK_BEGIN in text:
        text = re.sub(re.escape(MARK_BEGIN) + ".*?" + re.escape(MARK_END), block, text, flags=re.S)
    else:
        cmd = ".venv/bin/python benchmarks/fault_injection.py --write-readme"
        text += f"\n## Fault injection (issue 6)\n\n`{cmd}`\n\n{block}\n"
    readme.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-readme", action="store_true", help="update benchmarks/README.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedchem-faults-") as tmp:
        outcomes = run_suite(Path(tmp))
    table = render(outcomes)
    print(table)
    if args.write_readme:
        write_readme(table)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
