"""Small updates: the codecs give back what they sent within their step, leave zero rows out,
lose nothing for good under error feedback, refuse what does not fit, and a federation run
with them sends a quarter of the bytes and learns as fp32 does."""

from __future__ import annotations

import numpy as np
import pytest

from fedchem.config import ModelConfig, TrainConfig
from fedchem.model.compress import decode_update, encode_update
from fedchem.model.state import dump_arrays
from fedchem.storage.hub import HubLayout
from tests.conftest import PreparedSites


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "input.weight": rng.normal(0, 0.05, (2048, 128)).astype(np.float32),
        "input.bias": rng.normal(0, 0.05, 128).astype(np.float32),
        "head.weight": rng.normal(0, 0.05, (12, 128)).astype(np.float32),
        "steps": np.array(7, dtype=np.int64),
    }


@pytest.mark.parametrize(("codec", "ratio"), [("fp16", 0.5), ("bf16", 0.5), ("int8", 0.25)])
def test_a_codec_gives_back_the_delta_within_its_step_in_a_fraction_of_the_bytes(
    codec: str, ratio: float
) -> None:
    rng = np.random.default_rng(0)
    ref = _model(rng)
    new = {k: v + rng.normal(0, 1e-3, v.shape).astype(v.dtype) for k, v in ref.items()}
    new["steps"] = np.array(8, dtype=np.int64)
    data, lost = encode_update(new, ref, codec)  # type: ignore[arg-type]
    back = decode_update(data, ref, codec)  # the codec its manifest names
    with pytest.raises(ValueError, match=f"sent as {codec!r}, its manifest says 'none'"):
        decode_update(data, ref, "none")
    with pytest.raises(ValueError, match=f"sent as 'none', its manifest says {codec!r}"):
        decode_update(dump_arrays(ref), ref, codec)
    assert back["steps"] == 8 and back["input.weight"].dtype == np.float32
    for k in ("input.weight", "input.bias", "head.weight"):
        delta = new[k] - ref[k]
        err = np.abs((back[k] - ref[k]) - delta)
        step = np.abs(delta).max() / 127 if codec == "int8" else np.abs(delta).max() / 2**7
        assert err.max() <= step, k
        np.testing.assert_allclose(lost[k], delta - (back[k] - ref[k]), atol=1e-7)
    assert len(data) <= ratio * len(dump_arrays(new))


def test_rows_that_did_not_move_are_left_out() -> None:
    rng = np.random.default_rng(1)
    ref = _model(rng)
    new = {k: v.copy() for k, v in ref.items()}
    touched = rng.choice(2048, 100, replace=False)  # the input columns a site's molecules have
    new["input.weight"][touched] += 0.01
    data, _ = encode_update(new, ref, "int8")
    assert len(data) < 0.05 * len(dump_arrays(new))
    back = decode_update(data, ref)
    moved = np.flatnonzero(np.any(back["input.weight"] != ref["input.weight"], axis=1))
    assert sorted(moved) == sorted(touched)


def test_error_feedback_loses_nothing_for_good() -> None:
    """A weight whose per-round change is far below its row's int8 step is never sent without
    feedback; with it, what arrives over many rounds tracks the truth within one step."""
    ref = {"w": np.zeros((1, 2), dtype=np.float32)}
    delta = np.array([[1.0, 0.002]], dtype=np.float32)  # step 1/127 = 0.0079 > 0.002
    total = {True: np.zeros(2), False: np.zeros(2)}
    for feedback in (True, False):
        residual = None
        for _ in range(200):
            data, lost = encode_update({"w": ref["w"] + delta}, ref, "int8", residual)
            total[feedback] += (decode_update(data, ref)["w"] - ref["w"])[0]
            residual = lost if feedback else None
    assert total[False][1] == 0.0  # lost for good
    assert abs(total[True][1] - 200 * 0.002) <= 1.0 / 127 + 1e-6


def test_an_update_that_does_not_fit_is_refused() -> None:
    rng = np.random.default_rng(2)
    ref = _model(rng)
    data, _ = encode_update(ref, ref, "fp16")
    small = {k: v for k, v in ref.items() if k != "head.weight"}
    with pytest.raises(ValueError, match="parameter names differ"):
        decode_update(data, small)
    other = {**ref, "input.bias": np.zeros(64, dtype=np.float32)}
    with pytest.raises(ValueError, match="shape"):
        decode_update(data, other)


def test_a_compressed_federation_sends_a_quarter_and_learns_as_fp32(
    tox21_sites: PreparedSites,
) -> None:
    runs = {}
    for codec in ("none", "int8"):
        config = tox21_sites.config(
            f"codec-{codec}",
            rounds=3,
            model=ModelConfig(hidden=256),
            train=TrainConfig(batch_size=128),
            compression=codec,
        )
        outcome, hub = tox21_sites.federate(config)
        last = outcome.rounds[-1]
        assert last.outcome == "aggregated" and len(last.sites) == 4
        assert tox21_sites.audit_problems(hub, config.run_id) == []  # signed as sent
        replies = [hub.get_json(HubLayout(config.run_id).site_manifest(3, s)) for s in last.sites]
        assert {r["codec"] for r in replies} == {codec}
        sent = [r["update_bytes"] for r in replies]
        auc = np.mean([v["mean_roc_auc"] for v in last.valid_summary.values()])
        runs[codec] = (sum(sent), auc)
    assert runs["int8"][0] <= 0.25 * runs["none"][0], runs
    assert abs(runs["int8"][1] - runs["none"][1]) < 0.01
