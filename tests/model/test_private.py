"""DP-SGD at a site (:func:`fedchem.model.private.train_epochs_private`) steps on the mean of
the clipped per-molecule gradients, as the accountant assumes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fedchem.config import ModelConfig, TrainConfig
from fedchem.model.batches import iter_batches
from fedchem.model.losses import multitask_loss
from fedchem.model.network import build_model
from fedchem.model.private import train_epochs_private
from fedchem.model.state import model_to_arrays
from tests.model.test_train import _dataset

SGD = {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0, "device": "cpu"}


def _reference_step(model, ds, lr: float) -> dict[str, np.ndarray]:
    """Plain SGD on the sum of every molecule's loss over ``n``: DP-SGD with the whole data
    set sampled, nothing clipped and no noise."""
    ref = copy.deepcopy(model).train()
    (b,) = iter_batches(ds, len(ds), None, torch.device("cpu"))
    is_reg = torch.zeros(1, dtype=torch.bool)
    loss, k = multitask_loss(
        ref(b.indices, b.offsets), b.y, b.censor, is_reg, ref.y_mean, ref.y_std
    )
    (loss * k / len(ds)).backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= lr * p.grad
    return model_to_arrays(ref)


def test_a_private_step_without_clipping_or_noise_is_the_mean_gradient_step():
    ds = _dataset(n=32)
    model = build_model(ds.fp_size, 1, ModelConfig(hidden=16, dropout=0.0), seed=3)
    expected = _reference_step(model, ds, lr=0.1)
    cfg = TrainConfig(batch_size=len(ds), lr=0.1, **SGD)  # q = 1: every molecule, every step
    _, _, steps = train_epochs_private(model, ds, cfg, 1, seed=0, noise_multiplier=0.0, clip=1e9)
    assert steps == 1
    got = model_to_arrays(model)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_clipping_bounds_the_step_by_lr_times_clip():
    ds = _dataset(n=32)
    model = build_model(ds.fp_size, 1, ModelConfig(hidden=16, dropout=0.0), seed=3)
    before = model_to_arrays(model)
    cfg = TrainConfig(batch_size=len(ds), lr=1.0, **SGD)
    train_epochs_private(model, ds, cfg, 1, seed=0, noise_multiplier=0.0, clip=1e-3)
    after = model_to_arrays(model)
    moved = np.sqrt(sum(np.square(after[k] - before[k]).sum() for k in before))
    assert 0.2e-3 < moved <= 1e-3 * (1 + 1e-5)  # the mean of vectors of norm <= clip


@pytest.mark.parametrize("trainable", ["head", "top"])
def test_frozen_parameters_get_no_noise(trainable: str):
    ds = _dataset(n=32)
    model = build_model(ds.fp_size, 1, ModelConfig(hidden=16, dropout=0.0), seed=3)
    before = model_to_arrays(model)
    cfg = TrainConfig(batch_size=8, lr=0.1, trainable=trainable, **SGD)
    train_epochs_private(model, ds, cfg, 2, seed=0, noise_multiplier=5.0, clip=1.0)
    after = model_to_arrays(model)
    np.testing.assert_array_equal(after["input.weight"], before["input.weight"])
    assert (trainable == "top") != bool(np.array_equal(after["input_bias"], before["input_bias"]))
    assert not np.array_equal(after["head.weight"], before["head.weight"])
