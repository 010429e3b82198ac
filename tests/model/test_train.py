from __future__ import annotations

import itertools

import numpy as np

from fedchem.config import ModelConfig, TrainConfig
from fedchem.data.dataset import SiteDataset
from fedchem.model.network import build_model
from fedchem.model.state import model_to_arrays
from fedchem.model.train import train_epochs


def _dataset(n: int = 96, fp: int = 64, seed: int = 0) -> SiteDataset:
    rng = np.random.default_rng(seed)
    rows = [np.sort(rng.choice(fp, size=8, replace=False)) for _ in range(n)]
    y = np.stack([(r[:4].sum() > 2 * fp) * 1.0 for r in rows])[:, None].astype(np.float32)
    return SiteDataset(
        indptr=np.arange(0, 8 * (n + 1), 8, dtype=np.int64),
        indices=np.concatenate(rows).astype(np.int32),
        fold=np.zeros(n, np.int8),
        y=y,
        censor=np.zeros_like(y, np.int8),
        task_names=("t",),
        task_kinds=("classification",),
        fp_size=fp,
    )


def _distance(a: dict, b: dict) -> float:
    return float(sum(np.square(a[k] - b[k]).sum() for k in a))


def test_training_is_deterministic_for_a_seed():
    ds, cfg = _dataset(), TrainConfig(batch_size=16, device="cpu")
    outs = []
    for _ in range(2):
        model = build_model(ds.fp_size, 1, ModelConfig(hidden=16), seed=3)
        stats, _ = train_epochs(model, ds, cfg, 2, seed=11)
        outs.append(model_to_arrays(model))
    assert stats.steps == 12 and stats.n_examples == 96
    for k in outs[0]:
        np.testing.assert_array_equal(outs[0][k], outs[1][k])


def test_fedprox_term_keeps_weights_near_the_global_model():
    ds, cfg = _dataset(), TrainConfig(batch_size=16, lr=1e-2, device="cpu")
    moved = {}
    for mu in (0.0, 10.0):
        model = build_model(ds.fp_size, 1, ModelConfig(hidden=16), seed=3)
        start = model_to_arrays(model)
        stats, _ = train_epochs(model, ds, cfg, 3, seed=11, proximal_mu=mu)
        moved[mu] = _distance(model_to_arrays(model), start)
        assert np.isfinite(stats.mean_loss)
    assert moved[10.0] < 0.5 * moved[0.0]


def test_lr_schedules_decay_from_lr_to_the_floor():
    from fedchem.model.train import epoch_lr_factors, lr_factor

    const = TrainConfig()
    assert [lr_factor(const, r, 5) for r in range(5)] == [1.0] * 5
    cos = TrainConfig(lr_schedule="cosine", lr_min_factor=0.1)
    f = [lr_factor(cos, r, 5) for r in range(5)]
    assert f[0] == 1.0 and abs(f[-1] - 0.1) < 1e-12 and abs(f[2] - 0.55) < 1e-12
    assert all(a > b for a, b in itertools.pairwise(f))
    lin = TrainConfig(lr_schedule="linear", lr_min_factor=0.0)
    assert [lr_factor(lin, r, 3) for r in range(3)] == [1.0, 0.5, 0.0]
    # a baseline trained for rounds*local_epochs epochs in one go follows the same schedule
    two = TrainConfig(lr_schedule="linear", lr_min_factor=0.0, local_epochs=2)
    assert epoch_lr_factors(two, 6) == [1.0, 1.0, 0.5, 0.5, 0.0, 0.0]


def test_a_zero_learning_rate_epoch_leaves_the_weights_alone():
    ds = _dataset()
    cfg = TrainConfig(batch_size=16, device="cpu", weight_decay=0.0)
    model = build_model(ds.fp_size, 1, ModelConfig(hidden=16), seed=3)
    start = model_to_arrays(model)
    train_epochs(model, ds, cfg, 1, seed=11, lr_factors=[0.0])
    assert _distance(model_to_arrays(model), start) == 0.0
    train_epochs(model, ds, cfg, 1, seed=11, lr_factors=[1.0])
    assert _distance(model_to_arrays(model), start) > 0.0


def test_the_epoch_best_on_validation_is_kept_and_restored():
    from fedchem.model.evaluate import evaluate_at_site
    from fedchem.model.selection import EpochSelector

    def balanced(n: int, seed: int) -> SiteDataset:  # active: any of the first 8 bits set
        ds = _dataset(n=n, seed=seed)
        rows = ds.indices.reshape(n, 8)
        y = (rows < 8).any(axis=1).astype(np.float32)[:, None]
        return SiteDataset(
            indptr=ds.indptr,
            indices=ds.indices,
            fold=ds.fold,
            y=y,
            censor=np.zeros_like(y, np.int8),
            task_names=ds.task_names,
            task_kinds=ds.task_kinds,
            fp_size=ds.fp_size,
        )

    train, valid = balanced(192, 0), balanced(96, 1)
    assert 0.3 < valid.y.mean() < 0.9
    cfg = TrainConfig(batch_size=16, device="cpu", lr=0.05)
    model = build_model(train.fp_size, 1, ModelConfig(hidden=16), seed=3)
    selector = EpochSelector(model, valid, "a")
    train_epochs(model, train, cfg, 6, seed=11, after_epoch=selector)
    scores = [s["mean_roc_auc"] for s in selector.summaries]
    assert len(scores) == 6
    last = evaluate_at_site(model, valid, site="a", model_name="m", fold="valid").summary
    assert last["mean_roc_auc"] == scores[-1]  # scoring in between did not disturb training
    best = selector.restore()
    assert best == int(np.argmax(scores)) + 1 < 6, scores  # (here the best is not the last)
    again = evaluate_at_site(model, valid, site="a", model_name="m", fold="valid").summary
    assert again["mean_roc_auc"] == max(scores)
