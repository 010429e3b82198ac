"""The fault-injection suite (benchmarks/fault_injection.py) as a test: real processes, the
real S3 protocol, faults injected mid-run; every scenario completes its rounds, loses no
update and no row, and ends on the fault-free model exactly when it should."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system
REPO = Path(__file__).resolve().parents[1]


def test_the_federation_keeps_going_through_faults(tmp_path: Path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from fault_injection import ROUNDS, render, run_suite
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    outcomes = run_suite(tmp_path)
    table = render(outcomes)
    by_name = {o.scenario: o for o in outcomes}
    for o in outcomes:
        assert o.rounds == ROUNDS, table
        assert o.updates_lost == 0 and o.rows_lost == 0, table
        assert o.identical == o.expect_identical, table
    assert "r2 site-c missing (missed the deadline" in by_name["site worker killed"].recorded
    rejected = by_name["altered and garbage updates"].recorded
    assert "r2 site-b rejected (hash mismatch" in rejected
    assert "r3 site-c rejected (unreadable update" in rejected
    assert by_name["coordinator killed, resumed"].exit_codes.endswith("then 0")
