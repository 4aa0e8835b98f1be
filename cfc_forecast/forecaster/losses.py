"""Masked training losses: MSE, MAE, Huber and the pinball (quantile) loss.

Every loss averages over the observed target values only (``mask`` True); missing and padded targets contribute
nothing. Forecasts are (..., C, Q): Q = 1 for the point losses, Q = len(quantiles) for the pinball loss.
Imports torch only.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from cfc_forecast.errors import UserError

LossName = Literal["mse", "mae", "huber", "pinball"]
LOSSES = ("mse", "mae", "huber", "pinball")
Reduction = Literal["values", "variables"]
REDUCTIONS = ("values", "variables")


def pinball(pred: Tensor, y: Tensor, quantiles: Tensor) -> Tensor:
    """Elementwise pinball loss: pred (..., C, Q), y (..., C), quantiles (Q,) -> (..., C, Q)."""
    diff = y[..., None] - pred
    return torch.maximum(quantiles * diff, (quantiles - 1) * diff)


def point_index(quantiles: list[float] | None) -> int:
    """The output used as the point forecast: the quantile nearest the median (the only output otherwise)."""
    if not quantiles:
        return 0
    return min(range(len(quantiles)), key=lambda i: abs(quantiles[i] - 0.5))


def masked_loss(
    pred: Tensor,
    y: Tensor,
    mask: Tensor,
    name: LossName,
    quantiles: list[float] | None = None,
    huber_delta: float = 1.0,
    reduction: Reduction = "values",
) -> Tensor:
    """Mean loss over the observed targets.

    Args:
        pred: (..., C, Q) forecasts. y: (..., C) targets, 0 where missing. mask: (..., C) bool, True where observed.
        name: "mse", "mae", "huber" or "pinball".
        quantiles: (Q,) levels in (0, 1) for "pinball".
        huber_delta: the Huber loss's threshold (in scaled units).

    Returns:
        A scalar; 0 (with a gradient) when nothing is observed.

    Raises:
        ValueError: an unknown name, or Q that does not fit the loss.
    """
    if reduction not in REDUCTIONS:
        raise UserError(f"unknown loss reduction {reduction!r}; choose one of {list(REDUCTIONS)}")
    return reduce_sums(*_per_variable(*_weighted(pred, y, mask, name, quantiles, huber_delta)), reduction)


def loss_sums(
    pred: Tensor,
    y: Tensor,
    mask: Tensor,
    name: LossName,
    quantiles: list[float] | None = None,
    huber_delta: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per-variable sums of the loss and of its weights: the additive state of :func:`masked_loss`.

    Summed over batches (and processes), they give the loss of the whole split with :func:`reduce_sums`, exactly,
    whatever the batches were (the mean of per-batch means is not: it weighs a short last batch like a full one).

    Args:
        pred, y, mask, name, quantiles, huber_delta: as :func:`masked_loss`.

    Returns:
        (C,) float64 summed masked losses and (C,) float64 weights (observed values, times Q for "pinball").
    """
    loss, weight = _weighted(pred, y, mask, name, quantiles, huber_delta)
    return _per_variable(loss.double(), weight.double())


def reduce_sums(total: Tensor, count: Tensor, reduction: Reduction = "values") -> Tensor:
    """The loss from per-variable sums (:func:`loss_sums`): total / count over all values ("values"), or the mean of
    the per-variable means over the variables with a count ("variables"). total, count: (C,) -> a scalar; 0 (with a
    gradient) when nothing was observed.

    Raises:
        ValueError: an unknown reduction.
    """
    if reduction not in REDUCTIONS:
        raise UserError(f"unknown loss reduction {reduction!r}; choose one of {list(REDUCTIONS)}")
    if reduction == "values":
        return total.sum() / count.sum().clamp(min=1)
    seen = count > 0
    return (total[seen] / count[seen]).mean() if seen.any() else total.sum() * 0.0


def _weighted(
    pred: Tensor, y: Tensor, mask: Tensor, name: LossName, quantiles: list[float] | None, huber_delta: float
) -> tuple[Tensor, Tensor]:
    """Elementwise masked losses (..., C, Q) and their weights (..., C, Q) or (..., C, 1) (1 where observed)."""
    if name not in LOSSES:
        raise UserError(f"unknown loss {name!r}; choose one of {list(LOSSES)}")
    weight = mask.to(pred.dtype)[..., None]  # (..., C, 1)
    if name == "pinball":
        if not quantiles or pred.shape[-1] != len(quantiles):
            raise ValueError(f"the pinball loss needs one output per quantile, got Q={pred.shape[-1]}, {quantiles}")
        per = pinball(pred, y, torch.tensor(quantiles, dtype=pred.dtype, device=pred.device))
        return per * weight, weight.expand_as(per)
    if pred.shape[-1] != 1:
        raise ValueError(f"loss {name!r} needs a point forecast (Q = 1), got Q = {pred.shape[-1]}")
    target = y[..., None]
    if name == "mse":
        per = (pred - target) ** 2
    elif name == "mae":
        per = (pred - target).abs()
    else:
        per = F.huber_loss(pred, target, reduction="none", delta=huber_delta)
    return per * weight, weight


def _per_variable(loss: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Masked losses (..., C, Q) and their weights -> (C,) sums of each."""
    dims = [d for d in range(loss.dim()) if d != loss.dim() - 2]  # all but C
    return loss.sum(dims), weight.expand_as(loss).sum(dims)
