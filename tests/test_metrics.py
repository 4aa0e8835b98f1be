"""Summed-state metrics: a split scored in any batches scores what it scores as one batch."""

from __future__ import annotations

import pytest
import torch

from cfc_forecast.forecaster.losses import masked_loss
from cfc_forecast.forecaster.metrics import ForecastMetrics, MaskedLoss


@pytest.mark.parametrize("reduction", ["values", "variables"])
@pytest.mark.parametrize(("name", "quantiles"), [("mse", None), ("mae", None), ("huber", None),
                                                 ("pinball", [0.1, 0.5, 0.9])])  # fmt: skip
def test_the_loss_of_uneven_batches_is_the_loss_of_the_whole_split(name, quantiles, reduction):
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(11, 4, 3, len(quantiles or [0]), generator=gen)  # (B, K, C, Q)
    y = torch.randn(11, 4, 3, generator=gen)
    mask = torch.rand(11, 4, 3, generator=gen) < 0.6
    mask[:, :, 2] &= torch.arange(11)[:, None] < 2  # one variable seen in two windows only: weights differ a lot
    whole = masked_loss(pred, y, mask, name, quantiles, 0.5, reduction)
    metric = MaskedLoss(3, name, quantiles, 0.5, reduction)
    for lo, hi in [(0, 1), (1, 8), (8, 11)]:  # a mean of the three batch means would weigh window 0 7x too much
        metric.update(pred[lo:hi], y[lo:hi], mask[lo:hi])
    assert metric.compute().item() == pytest.approx(whole.item(), rel=1e-6)


def test_a_window_without_targets_changes_no_metric():
    gen = torch.Generator().manual_seed(1)
    pred, y = torch.randn(3, 4, 2, 1, generator=gen), torch.randn(3, 4, 2, generator=gen)
    mask = torch.ones(3, 4, 2, dtype=torch.bool)
    plain, loss = ForecastMetrics(2), MaskedLoss(2, "mse")
    plain.update(pred[:2], y[:2], mask[:2])
    loss.update(pred[:2], y[:2], mask[:2])
    padded, padded_loss = ForecastMetrics(2), MaskedLoss(2, "mse")
    mask[2] = False  # the placeholder an evaluation rank without windows runs
    padded.update(pred, y, mask)
    padded_loss.update(pred, y, mask)
    assert padded.compute() == plain.compute() and padded_loss.compute() == loss.compute()
