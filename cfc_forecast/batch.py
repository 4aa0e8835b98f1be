"""The batch: the only contract between the DataModules and the model.

A ``Batch`` holds padded, time-stamped windows of B series. Times are float32 in the DataModule's declared time
unit (``dm.time_unit``), relative to each window's forecast origin: input times are <= 0, query times are >= 0
(> 0 for windows cut by observation count; 0 only when a target falls exactly on a duration-window origin).
Values are scaled by the DataModule; ``target_loc`` and ``target_scale`` undo it (``raw = y * scale + loc``).

Dimension letters (STYLE.md): B batch, T input steps, F input features, K forecast queries, C targets,
S static covariates, Fk known-future covariates (Fc, Sc, Fkc: categorical past inputs, static and known-future
covariates, as int64 codes: 0 unknown, 1 missing, 2 + i the i-th training label; ``datamodules.categories``).
Masks are bool, True where a value was observed (or a step is real rather than padding). Missing and padded values
are 0.

Imports torch only: no lightning, no polars.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class Batch:
    """Padded forecast windows of B series; see the module docstring for units and conventions.

    Attributes:
        x: (B, T, F) float32 scaled input values, 0 where missing or padded.
        x_mask: (B, T, F) bool, True where the input value was observed.
        t: (B, T) float32 input times relative to the origin (<= 0), 0 at padded steps.
        dt: (B, T) float32 elapsed time since the series' previous observation (>= 0), 0 at padded steps.
            It reaches across the window start: the first step's dt is measured from the observation
            before the window, as an unwindowed run would see it.
        step_mask: (B, T) bool, True at real steps, False at padding (padding is at the end).
        query_t: (B, K) float32 forecast query times relative to the origin (>= 0), 0 at padded queries.
        query_mask: (B, K) bool, True at real queries.
        series: (B,) int64 index of each window's series in ``dm.series_ids``.
        origin: (B,) float64 absolute origin time in the time unit (``dm.decode_times`` turns it back into
            the data's time stamps).
        target_loc: (B, C) float32 scaling offset of each target: ``raw = scaled * target_scale + target_loc``.
        target_scale: (B, C) float32 scaling factor of each target (> 0).
        y: (B, K, C) float32 scaled targets at the query times, 0 where missing; None at prediction time.
        y_mask: (B, K, C) bool, True where a target was observed; None at prediction time.
        y_step: (B, T, C) float32 per-step targets (sequence-to-sequence tasks such as Walker2d), or None.
        y_step_mask: (B, T, C) bool mask of ``y_step``, or None.
        static: (B, S) float32 scaled static covariates, or None.
        future: (B, K, Fk) float32 known-future covariates at the query times, or None.
        t_abs: (B, T) float64 absolute input times in the time unit (0 at padded steps), or None.
        query_t_abs: (B, K) float64 absolute query times in the time unit (0 at padded queries), or None. The
            forecast's time stamps come from these: ``origin + query_t`` in float32 is off by up to a few tens of
            microseconds (a forecast at 03:37 written as 03:37:00.000086), so it never joins the data's stamps.
        x_cat: (B, T, Fc) int64 codes of categorical past inputs (0 at padded steps), or None.
        static_cat: (B, Sc) int64 codes of static categorical covariates, or None.
        future_cat: (B, K, Fkc) int64 codes of categorical known-future covariates (0 at padded queries), or None.
    """

    x: Tensor
    x_mask: Tensor
    t: Tensor
    dt: Tensor
    step_mask: Tensor
    query_t: Tensor
    query_mask: Tensor
    series: Tensor
    origin: Tensor
    target_loc: Tensor
    target_scale: Tensor
    y: Tensor | None = None
    y_mask: Tensor | None = None
    y_step: Tensor | None = None
    y_step_mask: Tensor | None = None
    static: Tensor | None = None
    future: Tensor | None = None
    t_abs: Tensor | None = None
    query_t_abs: Tensor | None = None
    x_cat: Tensor | None = None
    static_cat: Tensor | None = None
    future_cat: Tensor | None = None

    def __post_init__(self) -> None:
        self.check()

    @property
    def batch_size(self) -> int:
        """B, for ``self.log(..., batch_size=batch.batch_size)``."""
        return self.x.shape[0]

    def check(self) -> None:
        """Raise a ``ValueError`` naming the field and both shapes when the fields do not fit together."""
        b, t, _ = _shape_of("x", self.x, 3)
        k = _shape_of("query_t", self.query_t, 2)[1]
        c = _shape_of("target_loc", self.target_loc, 2)[1]
        expected = {
            "x_mask": self.x.shape,
            "t": (b, t),
            "dt": (b, t),
            "step_mask": (b, t),
            "query_t": (b, k),
            "query_mask": (b, k),
            "series": (b,),
            "origin": (b,),
            "target_loc": (b, c),
            "target_scale": (b, c),
            "y": (b, k, c),
            "y_mask": (b, k, c),
            "y_step": (b, t, c),
            "y_step_mask": (b, t, c),
            "t_abs": (b, t),
            "query_t_abs": (b, k),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != tuple(shape):
                raise ValueError(f"Batch.{name} must have shape {tuple(shape)}, got {tuple(value.shape)}")
        if self.static is not None and (self.static.dim() != 2 or self.static.shape[0] != b):
            raise ValueError(f"Batch.static must have shape ({b}, S), got {tuple(self.static.shape)}")
        if self.future is not None and (self.future.dim() != 3 or self.future.shape[:2] != (b, k)):
            raise ValueError(f"Batch.future must have shape ({b}, {k}, Fk), got {tuple(self.future.shape)}")
        for name, lead in (("x_cat", (b, t)), ("static_cat", (b,)), ("future_cat", (b, k))):
            value = getattr(self, name)
            if value is not None and (value.dim() != len(lead) + 1 or tuple(value.shape[:-1]) != lead):
                raise ValueError(f"Batch.{name} must have shape {(*lead, 'n')}, got {tuple(value.shape)}")

    def to_original_units(self, pred: Tensor) -> Tensor:
        """Scaled forecasts (B, K, C, Q) -> float64 in the data's units: ``scaled * target_scale + target_loc``."""
        scale, loc = self.target_scale.double(), self.target_loc.double()
        return pred.double() * scale[:, None, :, None] + loc[:, None, :, None]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Return a copy with every tensor on ``device`` (what Lightning's device transfer calls)."""
        moved = {
            f.name: v.to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(v := getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)

    def pin_memory(self) -> Batch:
        """Return a copy in pinned memory (what ``DataLoader(pin_memory=True)`` calls)."""
        pinned = {f.name: v.pin_memory() for f in fields(self) if isinstance(v := getattr(self, f.name), Tensor)}
        return replace(self, **pinned)

    def unscale(self, values: Tensor) -> Tensor:
        """Map scaled target values (B, K, C) or (B, T, C) back to the data's units."""
        if values.dim() != 3 or values.shape[0] != self.batch_size or values.shape[2] != self.target_loc.shape[1]:
            raise ValueError(
                f"values must have shape ({self.batch_size}, K, {self.target_loc.shape[1]}), got {tuple(values.shape)}"
            )
        return values * self.target_scale[:, None, :] + self.target_loc[:, None, :]


def _shape_of(name: str, value: object, ndim: int) -> tuple[int, ...]:
    if not isinstance(value, Tensor) or value.dim() != ndim:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"Batch.{name} must be a tensor with {ndim} dimensions, got {got}")
    return tuple(value.shape)
