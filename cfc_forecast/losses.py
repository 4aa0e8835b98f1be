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
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {list(LOSSES)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown loss reduction {reduction!r}; choose one of {list(REDUCTIONS)}")
    weight = mask.to(pred.dtype)[..., None]  # (..., C, 1)
    if name == "pinball":
        if not quantiles or pred.shape[-1] != len(quantiles):
            raise ValueError(f"the pinball loss needs one output per quantile, got Q={pred.shape[-1]}, {quantiles}")
        per = pinball(pred, y, torch.tensor(quantiles, dtype=pred.dtype, device=pred.device))
        return _reduce(per * weight, weight.expand_as(per), reduction)
    if pred.shape[-1] != 1:
        raise ValueError(f"loss {name!r} needs a point forecast (Q = 1), got Q = {pred.shape[-1]}")
    target = y[..., None]
    if name == "mse":
        per = (pred - target) ** 2
    elif name == "mae":
        per = (pred - target).abs()
    else:
        per = F.huber_loss(pred, target, reduction="none", delta=huber_delta)
    return _reduce(per * weight, weight, reduction)


def _reduce(loss: Tensor, weight: Tensor, reduction: Reduction) -> Tensor:
    """Masked losses (..., C, Q) and their weights -> the mean over values, or over variables of their means."""
    if reduction == "values":
        return loss.sum() / weight.sum().clamp(min=1)
    dims = [d for d in range(loss.dim()) if d != loss.dim() - 2]
    total, count = loss.sum(dims), weight.sum(dims)  # (C,)
    seen = count > 0
    if not seen.any():
        return loss.sum() * 0.0  # nothing observed: 0, with a gradient
    return (total[seen] / count[seen]).mean()
