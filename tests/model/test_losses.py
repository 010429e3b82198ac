from __future__ import annotations

import math

import torch

from fedchem.model.losses import censored_mse, masked_bce, multitask_loss


def test_masked_bce_ignores_unobserved_labels():
    logits = torch.tensor([[0.0, 5.0], [2.0, -1.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[True, False], [False, False]])
    assert math.isclose(float(masked_bce(logits, y, mask)), math.log(2), rel_tol=1e-6)
    # changing an unobserved label or logit changes nothing
    y2, logits2 = y.clone(), logits.clone()
    y2[0, 1], logits2[1, 1] = 1.0, 100.0
    assert float(masked_bce(logits2, y2, mask)) == float(masked_bce(logits, y, mask))


def test_censored_values_are_bounds():
    pred = torch.tensor([3.0, 1.0, 3.0, 1.0, 2.0])
    y = torch.tensor([2.0, 2.0, 2.0, 2.0, 0.0])
    censor = torch.tensor([-1, -1, 1, 1, 0], dtype=torch.int8)  # <, <, >, >, =
    mask = torch.tensor([True, True, True, True, True])
    per = [
        float(censored_mse(pred[i : i + 1], y[i : i + 1], censor[i : i + 1], mask[i : i + 1]))
        for i in range(5)
    ]
    assert per == [1.0, 0.0, 0.0, 1.0, 4.0]  # '<2' violated by 3; '<2' met by 1; ...


def test_multitask_loss_averages_over_observed_labels_only():
    out = torch.zeros(2, 2)
    y = torch.tensor([[1.0, float("nan")], [float("nan"), 0.5]])
    censor = torch.zeros(2, 2, dtype=torch.int8)
    is_reg = torch.tensor([False, True])
    loss, n = multitask_loss(out, y, censor, is_reg, torch.zeros(2), torch.ones(2))
    assert n == 2
    assert math.isclose(float(loss), (math.log(2) + 0.25) / 2, rel_tol=1e-6)


def test_task_weights_scale_each_tasks_terms():
    out = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([[1.0, 3.0]])
    censor = torch.zeros(1, 2, dtype=torch.int8)
    is_reg = torch.tensor([False, True])
    mean, std = torch.zeros(2), torch.ones(2)
    plain, n = multitask_loss(out, y, censor, is_reg, mean, std)
    ones, _ = multitask_loss(out, y, censor, is_reg, mean, std, torch.ones(2))
    weighted, _ = multitask_loss(out, y, censor, is_reg, mean, std, torch.tensor([2.0, 0.5]))
    assert n == 2 and math.isclose(float(plain), float(ones), rel_tol=1e-6)
    # (2 * ln 2 + 0.5 * (1 - 3)^2) / 2 labels
    assert math.isclose(float(weighted), (2 * math.log(2) + 0.5 * 4.0) / 2, rel_tol=1e-6)
