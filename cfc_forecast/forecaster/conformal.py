"""Split-conformal prediction intervals, calibrated per target and horizon bucket, stored as plain values.

Two nonconformity scores, both in the model's scaled units (the units it trains in; each window's forecasts map back
to the data's units through its own target scale and location, ``Batch.to_original_units``):

- point models: the absolute residual ``|y - f(x)|`` and the interval ``f(x) -/+ q`` (split conformal, Lei, G'Sell,
  Rinaldo, Tibshirani and Wasserman, "Distribution-free predictive inference for regression", JASA 2018, sec. 2.2);
- quantile models: ``max(lo(x) - y, y - hi(x))`` with ``lo`` / ``hi`` the model's outermost quantiles and the
  interval ``[lo(x) - q, hi(x) + q]`` (conformalised quantile regression, Romano, Patterson and Candes, NeurIPS
  2019, eq. 6-7; ``q`` may be negative and shrinks the interval). Every level corrects the same pair, so the
  intervals of several levels are nested.

``q`` is the finite-sample conformal quantile of the n calibration scores of a cell: the ``ceil((n + 1) level)``-th
smallest (Lei et al. 2018, sec. 2.2; Romano et al. 2019, Theorem 1): with exchangeable calibration and test values it
covers at least ``level``. A cell is one target variable and one horizon bucket: the forecast step for a regular
grid (direct head), or for irregular query times (continuous head) a range of the query offset after the origin,
with edges at the equal-count quantiles of the calibration values' offsets (``n_buckets`` ranges; the last is open,
so a query beyond the calibrated span takes the last one). A cell with fewer than ``min_scores`` scores (or fewer
than a level needs: ``ceil((n + 1) level) <= n``) takes its variable's scores over every bucket; a variable with too
few takes every variable's; both are counted in :attr:`Calibration.pooled` and reported, never silent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from cfc_forecast.errors import UserError

OWN, VARIABLE, ALL = 0, 1, 2  # where a cell's scores come from


def conformal_quantile(scores: Tensor, level: float) -> float:
    """The ``ceil((n + 1) level)``-th smallest of n scores (1-based): split conformal's finite-sample quantile.

    Args:
        scores: (n,) nonconformity scores. level: the interval's nominal coverage in (0, 1).

    Raises:
        UserError: too few scores for the level (``ceil((n + 1) level) > n``: the interval would be unbounded).
    """
    n = scores.numel()
    k = math.ceil(round((n + 1) * level, 9))  # round: (n + 1) * 0.8 is 8.000000000000002 in floating point
    if k > n:
        raise UserError(f"{n} calibration scores are too few for a {level:g} interval (it needs {needed(level)})")
    return float(scores.reshape(-1).sort().values[k - 1])


def needed(level: float) -> int:
    """The fewest scores with ``ceil((n + 1) level) <= n``."""
    n = 1
    while math.ceil(round((n + 1) * level, 9)) > n:
        n += 1
    return n


def interval_bounds(levels: list[float]) -> list[tuple[float, float]]:
    """The quantile levels ``((1 - L) / 2, (1 + L) / 2)`` of each central interval level L (rounded to 10 places,
    so 0.8 gives the column names ``q0.1`` and ``q0.9``)."""
    return [(round((1 - lv) / 2, 10), round((1 + lv) / 2, 10)) for lv in levels]


@dataclass
class Calibration:
    """A fitted calibration: what ``apply`` needs, as plain values (safe with ``weights_only`` loads).

    Attributes:
        levels: the L central interval levels, increasing, in (0, 1).
        method: "residual" (point model) or "cqr" (quantile model).
        quantiles: the model's Q quantile levels ("cqr"), or None.
        buckets: "step" (bucket = forecast step k) or "offset" (bucket = range of the query offset).
        edges: "offset": the inner bucket edges (time units, increasing; bucket j is [edges[j-1], edges[j])).
        qhat: (L, NB, C) conformal quantiles in scaled units.
        counts: (NB, C) calibration scores per cell.
        pooled: (NB, C) where each cell's scores came from: 0 its own, 1 its variable's buckets, 2 every variable.
        split: the split the scores were computed on. min_scores: the fewest scores a cell used alone (``--min_scores``,
            or more where a level needs more).
    """

    levels: list[float]
    method: str
    quantiles: list[float] | None
    buckets: str
    edges: list[float]
    qhat: list[list[list[float]]]
    counts: list[list[int]]
    pooled: list[list[int]]
    split: str = "val"
    min_scores: int = 30

    @property
    def n_buckets(self) -> int:
        return len(self.counts)

    @property
    def output_levels(self) -> list[float]:
        """The quantile levels of :meth:`apply`'s outputs: each interval's two bounds, the model's own quantiles
        (cqr) or 0.5 (the point forecast, the centre of the symmetric intervals), increasing."""
        out = {b for pair in interval_bounds(self.levels) for b in pair}
        out |= set(self.quantiles or [0.5])
        return sorted(out)

    def bucket_of(self, query_t: Tensor) -> Tensor:
        """(B, K) query offsets (time units) -> (B, K) bucket indices (long)."""
        b, k = query_t.shape
        if self.buckets == "step":
            steps = torch.arange(k, device=query_t.device).clamp(max=self.n_buckets - 1)
            return steps.expand(b, k)
        edges = torch.tensor(self.edges, dtype=torch.float64, device=query_t.device)
        return torch.bucketize(query_t.double().contiguous(), edges, right=True)

    def apply(self, pred: Tensor, query_t: Tensor) -> Tensor:
        """Scaled forecasts (B, K, C, Q) -> (B, K, C, len(output_levels)) scaled, the intervals' bounds among them.

        ``query_t`` (B, K): the query offsets (time units). The outputs are sorted along the last dimension
        (:meth:`_combine`); the model's own point forecast is not among them (it is ``pred``'s, unchanged).
        """
        if pred.dim() != 4 or query_t.shape != pred.shape[:2]:
            raise ValueError(f"pred must be (B, K, C, Q) and query_t (B, K), got {tuple(pred.shape)}, "
                             f"{tuple(query_t.shape)}")  # fmt: skip
        qhat = torch.tensor(self.qhat, dtype=pred.dtype, device=pred.device)[:, self.bucket_of(query_t)]
        return self._combine(pred, qhat)  # qhat (L, B, K, C)

    def apply_values(self, pred: Tensor, bucket: Tensor, variable: Tensor) -> Tensor:
        """:meth:`apply` for single values: pred (N, Q) scaled, bucket (N,), variable (N,) -> (N, output levels)."""
        qhat = torch.tensor(self.qhat, dtype=pred.dtype, device=pred.device)
        return self._combine(pred, qhat[:, bucket.clamp(max=self.n_buckets - 1), variable])  # qhat (L, N)

    def _combine(self, pred: Tensor, qhat: Tensor) -> Tensor:
        """The model's outputs with the calibrated bounds among them, sorted per forecast (the monotone
        rearrangement of Chernozhukov, Fernández-Val and Galichon 2010, as the model's own quantiles are): a CQR
        correction that shrinks an interval past its centre turns the inverted pair into the interval between them.
        The column named for a quantile then holds the rearranged value, so the model's point forecast is carried
        apart (``ForecastModule.predict_step``'s ``point``): ``prediction`` never changes with calibration."""
        if self.method == "cqr":
            lo, hi = pred[..., 0], pred[..., -1]
            values = dict(zip(self.quantiles or [], pred.unbind(-1), strict=True))
        else:
            lo = hi = pred[..., 0]
            values = {0.5: lo}
        for (a, b), q in zip(interval_bounds(self.levels), qhat.unbind(0), strict=True):
            values[a], values[b] = lo - q, hi + q
        return torch.stack([values[lv] for lv in self.output_levels], dim=-1).sort(dim=-1).values

    def to_dict(self) -> dict:
        """Plain values for a checkpoint (``checkpoint["conformal"]``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict) -> Calibration:
        return cls(**state)


def scores_of(pred: Tensor, y: Tensor, method: str) -> Tensor:
    """Nonconformity scores: pred (..., C, Q) scaled, y (..., C) -> (..., C) (see the module docstring)."""
    if method == "cqr":
        return torch.maximum(pred[..., 0] - y, y - pred[..., -1])
    return (y - pred[..., 0]).abs()


def fit(
    scores: Tensor,
    bucket: Tensor,
    variable: Tensor,
    n_buckets: int,
    names: list[str],
    levels: list[float],
    min_scores: int = 30,
) -> tuple[list[list[list[float]]], list[list[int]], list[list[int]]]:
    """The conformal quantile of every (bucket, variable) cell, pooling cells with too few scores.

    Args:
        scores: (N,) scores of the observed calibration values. bucket: (N,) their bucket. variable: (N,) their
            target index. n_buckets: NB. names: the C target names (for the error). levels: the L levels.
        min_scores: the fewest scores a cell (or a variable) uses alone.

    Returns:
        ``qhat`` (L, NB, C), ``counts`` (NB, C), ``pooled`` (NB, C) as :class:`Calibration` holds them.

    Raises:
        UserError: fewer calibration scores in all than the levels need.
    """
    need = max([min_scores] + [needed(lv) for lv in levels])
    if scores.numel() < need:
        raise UserError(f"{scores.numel()} observed calibration values in all, {need} needed for levels {levels}: "
                        "calibrate on more data, or lower --min_scores")  # fmt: skip
    c = len(names)
    qhat = [[[0.0] * c for _ in range(n_buckets)] for _ in levels]
    counts = [[0] * c for _ in range(n_buckets)]
    pooled = [[OWN] * c for _ in range(n_buckets)]
    for v in range(c):
        mine = variable == v
        for j in range(n_buckets):
            cell = scores[mine & (bucket == j)]
            counts[j][v] = cell.numel()
            if cell.numel() < need:
                cell, pooled[j][v] = scores[mine], VARIABLE
            if cell.numel() < need:
                cell, pooled[j][v] = scores, ALL
            for i, lv in enumerate(levels):
                qhat[i][j][v] = conformal_quantile(cell, lv)
    return qhat, counts, pooled


def offset_edges(offsets: Tensor, n_buckets: int) -> list[float]:
    """Inner edges of ``n_buckets`` equal-count ranges of the (N,) query offsets (duplicates merged)."""
    if n_buckets <= 1 or offsets.numel() == 0:
        return []
    probs = torch.arange(1, n_buckets, dtype=torch.float64) / n_buckets
    edges = torch.quantile(offsets.double(), probs).unique()
    return [float(e) for e in edges if float(e) > float(offsets.min())]
