"""Update screening before aggregation: every kind of bad update is refused with its reason,
recorded in the round manifest, and the round goes on while the quorum holds."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from fedchem.config import FaultConfig
from fedchem.federation.commits import commit_round, read_round
from fedchem.federation.coordinator import aggregate_round
from fedchem.federation.validation import check_arrays, screen_updates, update_norm
from fedchem.messages import EvalReport, SiteUpdateManifest
from fedchem.model.state import dump_arrays
from fedchem.storage.hub import HubLayout, HubStore

RUN = "v1"
MEMBERS = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]


def _global() -> dict[str, np.ndarray]:
    return {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}


def _near(v: float) -> dict[str, np.ndarray]:
    return {"w": np.full((4, 3), v, np.float32), "b": np.full(3, v, np.float32)}


def _publish(
    hub: HubStore,
    site: str,
    arrays: dict | bytes,
    base: str,
    *,
    rnd: int = 1,
    run: str = RUN,
    path_site: str | None = None,
) -> SiteUpdateManifest:
    layout = HubLayout(RUN)
    data = arrays if isinstance(arrays, bytes) else dump_arrays(arrays)
    path = layout.site_update(1, path_site or site)
    hub.put_bytes(path, data)
    valid = EvalReport(
        site=site,
        model="m",
        fold="valid",
        n_molecules=5,
        per_task={},
        summary={"mean_roc_auc": 0.6},
    )
    return SiteUpdateManifest(
        run_id=run,
        round=rnd,
        site=site,
        n_examples=10,
        n_labels=10,
        base_sha256=base,
        update_path=path,
        update_sha256=hashlib.sha256(data).hexdigest(),
        train_loss=0.1,
        train_seconds=0.1,
        device="cpu",
        valid=valid,
    )


def test_every_kind_of_bad_update_is_rejected_with_its_reason(tmp_path: Path):
    hub = HubStore(str(tmp_path))
    m0 = commit_round(hub, RUN, 0, dump_arrays(_global()), "init", {}, {})
    base = m0.global_sha256
    good = [_publish(hub, s, _near(0.1 * (i + 1)), base) for i, s in enumerate("abc")]
    altered = _publish(hub, "d", _near(0.2), base)
    hub.put_bytes(altered.update_path, dump_arrays(_near(0.25)))  # changed after its manifest
    truncated = _publish(hub, "e", _near(0.2), base)
    hub.put_bytes(truncated.update_path, dump_arrays(_near(0.2))[:100])
    wrong_shape = _publish(hub, "f", {"w": np.zeros((5, 3), np.float32), "b": np.zeros(3)}, base)
    nan = _near(0.1)
    nan["w"][0, 0] = np.nan
    bad = [
        altered,
        truncated,
        wrong_shape,
        _publish(hub, "g", nan, base),
        _publish(hub, "h", _near(50.0), base),  # 500x the others' distance
        _publish(hub, "i", _near(0.1), base, rnd=2, path_site="i"),  # a future round
        _publish(hub, "j", _near(0.1), "f" * 64),  # started from another model
        _publish(hub, "mallory", _near(0.1), base),  # not a member
        _publish(hub, "a", _near(0.1), base, path_site="a2"),  # a second upload of a
        _publish(hub, "c", b"garbage, not an npz", base, path_site="c2"),
    ]
    m1 = aggregate_round(hub, RUN, 1, good + bad[:-2], members=MEMBERS, quorum=3)
    why = m1.rejected
    assert m1.sites == ["a", "b", "c"] and set(why) == set("defghij") | {"mallory"}
    assert why["d"].startswith("hash mismatch") and "does not match its manifest" in why["d"]
    assert why["e"].startswith("hash mismatch")  # a truncated file changes its hash
    assert "shape (5, 3)" in why["f"] and "NaN/inf" in why["g"]
    assert "median" in why["h"] and "future update" in why["i"] and "stale update" in why["j"]
    assert "unknown site" in why["mallory"]
    np.testing.assert_allclose(read_round(hub, RUN, 1)[1]["w"], 0.2, rtol=1e-6)  # a, b, c
    # a duplicate or an unloadable file (with a matching hash) is refused too
    screened = screen_updates(
        [good[0], bad[-2], _publish(hub, "b", b"garbage", base, path_site="b2")],
        run_id=RUN,
        rnd=1,
        base_sha256=base,
        reference=_global(),
        members=MEMBERS,
        fetch=lambda m: hub.get_verified(m.update_path, m.update_sha256, m.site),
    )
    assert "duplicate upload" in screened.rejected["a"]
    assert "unreadable update" in screened.rejected["b"]
    assert [r.site for r in screened.accepted] == ["a"]


def test_the_round_fails_when_rejections_break_the_quorum(tmp_path: Path):
    hub = HubStore(str(tmp_path))
    m0 = commit_round(hub, RUN, 0, dump_arrays(_global()), "init", {}, {})
    nan = _near(0.1)
    nan["b"][:] = np.inf
    ups = [
        _publish(hub, "a", _near(0.1), m0.global_sha256),
        _publish(hub, "b", nan, m0.global_sha256),
    ]
    failed = aggregate_round(hub, RUN, 1, ups, members=MEMBERS, quorum=2, failures={"c": "late"})
    # recorded as failed: the reason, who was missing or rejected, and the global model unchanged
    assert failed.outcome == "failed" and failed.sites == []
    assert failed.reason.startswith("1 accepted update(s), quorum is 2")
    assert failed.missing_reasons == {"c": "late"} and "NaN/inf" in failed.rejected["b"]
    assert (failed.global_path, failed.global_sha256) == (m0.global_path, m0.global_sha256)
    assert read_round(hub, RUN, 1)[0] == failed
    m1 = aggregate_round(hub, RUN, 1, ups, members=MEMBERS, quorum=1, failures={"c": "late"})
    assert m1.sites == ["a"] and m1.missing_reasons == {"c": "late"} and "b" in m1.rejected
    assert m1.outcome == "aggregated" and m1.global_sha256 != m0.global_sha256


def test_the_norm_check_needs_enough_updates_and_respects_its_ratio():
    ref = _global()
    assert check_arrays(_near(1.0), ref) is None
    assert "dtype float64" in (
        check_arrays({k: v.astype(np.float64) for k, v in ref.items()}, ref) or ""
    )
    assert "names differ" in (check_arrays({"w": ref["w"]}, ref) or "")
    assert update_norm(_near(1.0), ref) == pytest.approx(np.sqrt(15))
    ups = {"a": _near(0.1), "b": _near(5.0), "c": _near(0.12)}
    # with too few updates the median says nothing: all pass; with enough, b is refused
    for n_needed, expect in ((4, {"a", "b", "c"}), (3, {"a", "c"})):
        screened = screen_updates(
            [_manifest(s) for s in ups],
            run_id=RUN,
            rnd=1,
            base_sha256="x",
            reference=ref,
            members=MEMBERS,
            fetch=lambda m: dump_arrays(ups[m.site]),
            max_norm_ratio=FaultConfig().max_norm_ratio,
            min_for_norm=n_needed,
        )
        assert {r.site for r in screened.accepted} == expect


def test_the_norm_check_compares_sites_per_optimizer_step():
    """A site with many molecules takes many steps and moves far: not an outlier per step (a
    many-site federation's largest sites were refused by the plain norm); an update that moves
    far for its steps still is."""
    ref = _global()
    ups = {"a": _near(0.1), "b": _near(0.12), "c": _near(1.2), "d": _near(0.11)}

    def screen(steps: dict[str, int]) -> dict[str, str]:
        return screen_updates(
            [_manifest(s, steps.get(s)) for s in ups],
            run_id=RUN,
            rnd=1,
            base_sha256="x",
            reference=ref,
            members=MEMBERS,
            fetch=lambda m: dump_arrays(ups[m.site]),
            max_norm_ratio=5.0,
        ).rejected

    assert screen({"a": 1, "b": 1, "c": 10, "d": 1}) == {}
    assert set(screen({})) == {"c"}  # no steps stated: the plain distance
    rejected = screen(dict.fromkeys(ups, 1))  # c claims one step: ten times the others' distance
    assert rejected["c"].startswith("update norm a step 4.648 is more than 5x")


def _manifest(site: str, steps: int | None = None) -> SiteUpdateManifest:
    valid = EvalReport(site=site, model="m", fold="valid", n_molecules=1, per_task={}, summary={})
    return SiteUpdateManifest(
        run_id=RUN,
        round=1,
        site=site,
        n_examples=1,
        n_labels=1,
        steps=steps,
        base_sha256="x",
        update_path="u",
        update_sha256="s",
        train_loss=0.0,
        train_seconds=0.0,
        device="cpu",
        valid=valid,
    )


class _Counting(HubStore):
    """The hub as the coordinator reads it, counting reads of each path; ``swap`` gives other
    bytes for a path from its second read on (a site that rewrites its object after the
    coordinator screened it)."""

    def __init__(self, url: str, swap: dict[str, bytes] | None = None) -> None:
        super().__init__(url)
        self.reads: dict[str, int] = {}
        self.swap = swap or {}

    def get_bytes(self, rel: str) -> bytes:
        self.reads[rel] = self.reads.get(rel, 0) + 1
        if rel in self.swap and self.reads[rel] > 1:
            return self.swap[rel]
        return super().get_bytes(rel)

    def get_verified_file(self, rel: str, sha256: str, what: str) -> IO[bytes]:
        self.reads[rel] = self.reads.get(rel, 0) + 1
        if rel in self.swap and self.reads[rel] > 1:  # the object itself is rewritten
            self.put_bytes(rel, self.swap[rel])
        return super().get_verified_file(rel, sha256, what)


def test_the_coordinator_streams_updates_and_refuses_one_changed_after_screening(tmp_path: Path):
    hub = _Counting(str(tmp_path))
    m0 = commit_round(hub, RUN, 0, dump_arrays(_global()), "init", {}, {})
    ups = [
        _publish(hub, s, _near(v), m0.global_sha256)
        for s, v in zip("abc", (0.1, 0.2, 0.3), strict=True)
    ]
    m1 = aggregate_round(hub, RUN, 1, ups, members=MEMBERS, quorum=2)
    assert m1.sites == ["a", "b", "c"]
    # each update read twice (screened, then summed), none kept in between
    assert {hub.reads[u.update_path] for u in ups} == {2}
    _, arrays, _ = read_round(hub, RUN, 1)
    np.testing.assert_allclose(arrays["w"], 0.2, rtol=1e-6)  # the weighted mean (equal weights)
    # site c rewrites its update once it has been screened: refused, the round goes on
    hub2 = _Counting(
        str(tmp_path / "two"), swap={HubLayout(RUN).site_update(1, "c"): dump_arrays(_near(9.0))}
    )
    m0 = commit_round(hub2, RUN, 0, dump_arrays(_global()), "init", {}, {})
    ups = [
        _publish(hub2, s, _near(v), m0.global_sha256)
        for s, v in zip("abc", (0.1, 0.2, 0.3), strict=True)
    ]
    m1 = aggregate_round(hub2, RUN, 1, ups, members=MEMBERS, quorum=2)
    assert m1.outcome == "aggregated" and m1.sites == ["a", "b"]
    assert m1.rejected["c"].startswith("update changed after it was screened")
    _, arrays, _ = read_round(hub2, RUN, 1)
    np.testing.assert_allclose(arrays["w"], 0.15, rtol=1e-6)
    # below the quorum, the round is recorded as failed
    hub3 = _Counting(
        str(tmp_path / "three"),
        swap={HubLayout(RUN).site_update(1, s): dump_arrays(_near(9.0)) for s in "bc"},
    )
    m0 = commit_round(hub3, RUN, 0, dump_arrays(_global()), "init", {}, {})
    ups = [
        _publish(hub3, s, _near(v), m0.global_sha256)
        for s, v in zip("abc", (0.1, 0.2, 0.3), strict=True)
    ]
    failed = aggregate_round(hub3, RUN, 1, ups, members=MEMBERS, quorum=2)
    assert failed.outcome == "failed" and set(failed.rejected) == {"b", "c"}
