"""Masked forecast metrics and the masked loss as torchmetrics ``Metric``s.

Their states are sums (of errors, of counts), reduced across processes with a sum and divided only at the end: the
value of a split is the same whatever its batches and however the windows are shared among DDP ranks (a mean of
per-batch or per-rank means is not, with a short last batch or uneven shards).

``mse`` and ``mae`` average over every observed target value; ``mse_per_var`` and ``mae_per_var`` first average
per variable, then over the variables that had a target (the PhysioNet protocol), exactly as
``datamodules.naive_metrics`` scores its baselines. With quantiles: ``wql``, the mean weighted quantile loss
(2 x pinball summed over quantiles and values / sum of |y|), and ``coverage`` of the outermost interval.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from cfc_forecast.forecaster.losses import LossName, Reduction, loss_sums, pinball, point_index, reduce_sums


class ForecastMetrics(Metric):
    """Masked MSE / MAE (overall and per variable first), with quantiles also wQL and interval coverage.

    Args:
        n_targets: C.
        quantiles: the quantile levels of the forecasts' Q outputs, or None for point forecasts.
    """

    full_state_update = False

    def __init__(self, n_targets: int, quantiles: list[float] | None = None) -> None:
        super().__init__()
        self.quantiles = list(quantiles or [])
        self.point = point_index(quantiles)
        for name in ("sq", "ab", "n"):
            self.add_state(name, default=torch.zeros(n_targets, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("ql", "abs_y", "covered"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, y: Tensor, mask: Tensor) -> None:
        """pred (..., C, Q), y (..., C), mask (..., C) bool."""
        # out of place (here and below): states reset under one process's inference mode stay inference tensors,
        # which a later run under gloo DDP (no_grad, not inference mode) may not change in place
        m = mask.to(torch.float64)
        err = (pred[..., self.point].double() - y.double()) * m
        dims = tuple(range(err.dim() - 1))
        self.sq = self.sq + err.pow(2).sum(dims)
        self.ab = self.ab + err.abs().sum(dims)
        self.n = self.n + m.sum(dims)
        if len(self.quantiles) > 1:
            q = torch.tensor(self.quantiles, dtype=pred.dtype, device=pred.device)
            self.ql = self.ql + (pinball(pred, y, q).double() * m[..., None]).sum()
            self.abs_y = self.abs_y + (y.double().abs() * m).sum()
            lo, hi = pred[..., 0], pred[..., -1]  # quantiles are sorted, so these bound the widest interval
            self.covered = self.covered + (((y >= lo) & (y <= hi)).double() * m).sum()

    def compute(self) -> dict[str, Tensor]:
        has = self.n > 0
        total = self.n.sum().clamp(min=1)
        out = {
            "mse": self.sq.sum() / total,
            "mae": self.ab.sum() / total,
            "mse_per_var": (self.sq[has] / self.n[has]).mean(),
            "mae_per_var": (self.ab[has] / self.n[has]).mean(),
        }
        if len(self.quantiles) > 1:
            out["wql"] = 2 * self.ql / len(self.quantiles) / self.abs_y.clamp(min=1e-12)
            out["coverage"] = self.covered / total
        return {k: v.float() for k, v in out.items()}


class MaskedLoss(Metric):
    """The training loss of a whole split (:func:`~.losses.masked_loss` as if on one batch of it).

    Args:
        n_targets: C.
        name, quantiles, huber_delta, reduction: the loss, as :func:`~.losses.masked_loss` takes them.
    """

    full_state_update = False

    def __init__(
        self,
        n_targets: int,
        name: LossName,
        quantiles: list[float] | None = None,
        huber_delta: float = 1.0,
        reduction: Reduction = "values",
    ) -> None:
        super().__init__()
        self.name, self.quantiles, self.huber_delta, self.reduction = name, quantiles, huber_delta, reduction
        for state in ("total", "count"):
            self.add_state(state, default=torch.zeros(n_targets, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, y: Tensor, mask: Tensor) -> None:
        """pred (..., C, Q), y (..., C), mask (..., C) bool."""
        total, count = loss_sums(pred, y, mask, self.name, self.quantiles, self.huber_delta)
        self.total = self.total + total
        self.count = self.count + count

    def compute(self) -> Tensor:
        return reduce_sums(self.total, self.count, self.reduction).float()
