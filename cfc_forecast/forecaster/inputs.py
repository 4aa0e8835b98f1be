"""What the encoder reads at each step: missing values filled, observation masks, elapsed times in a chosen scale.

The CfC paper's recipe for irregular data with missing values (its PhysioNet code, ../shared/CFC.md): carry each
feature's last observation forward, append the observation mask, and optionally each feature's time since it
was last observed. Each part is a switch here, so "plain zeros" is ``fill="zeros", append_mask=False``.

Imports torch only.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

Fill = Literal["zeros", "locf"]


def carry_forward(x: Tensor, mask: Tensor) -> Tensor:
    """Each feature's last observed value at every step, 0 before its first observation.

    Args:
        x: (B, T, F) values, 0 where missing. mask: (B, T, F) bool, True where observed.

    Returns:
        (B, T, F) carried-forward values.
    """
    steps = torch.arange(x.shape[1], device=x.device).view(1, -1, 1)
    last = torch.where(mask, steps, -1).cummax(dim=1).values  # (B, T, F) index of the last observation
    return torch.gather(x, 1, last.clamp(min=0)) * (last >= 0)


def time_since_observed(t: Tensor, dt: Tensor, mask: Tensor) -> Tensor:
    """Each feature's time since its last observation, (B, T, F); before the first one, since the window start.

    Args:
        t: (B, T) input times (<= 0). dt: (B, T) elapsed times (the first reaches before the window).
        mask: (B, T, F) bool observation mask.
    """
    start = (t[:, :1] - dt[:, :1])[..., None]  # (B, 1, 1) the time of the observation before the window
    seen_at = torch.where(mask, t[..., None], torch.full_like(mask, -math.inf, dtype=t.dtype))
    last = torch.maximum(seen_at.cummax(dim=1).values, start)  # (B, T, F)
    return (t[..., None] - last).clamp(min=0)


class ElapsedTime(nn.Module):
    """Elapsed times in the data's unit -> the model's time scale: ``dt * scale``, the scale fixed or learned.

    Args:
        scale: factor applied to every elapsed time (e.g. 1/60 for data in seconds that move over minutes).
        learn: learn the factor (kept positive as ``exp(log_scale)``, initialised at ``scale``).
    """

    def __init__(self, scale: float = 1.0, learn: bool = False) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"time_scale must be > 0, got {scale}")
        log_scale = torch.tensor(math.log(scale))
        if learn:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, dt: Tensor) -> Tensor:
        return dt * self.log_scale.exp()


class InputEncoding(nn.Module):
    """Per-step encoder inputs from a batch's values, masks and times.

    Args:
        n_inputs: F, input variables.
        fill: "locf" carries each feature's last observation forward; "zeros" leaves missing values at 0.
        append_mask: append the (B, T, F) observation mask as F more features.
        append_delta: append each feature's scaled time since its last observation as F more features.
    """

    def __init__(self, n_inputs: int, fill: Fill = "locf", append_mask: bool = True, append_delta: bool = False):
        super().__init__()
        if fill not in ("zeros", "locf"):
            raise ValueError(f"unknown fill {fill!r}; choose one of ['locf', 'zeros']")
        self.n_inputs, self.fill = n_inputs, fill
        self.append_mask, self.append_delta = append_mask, append_delta

    @property
    def size(self) -> int:
        """Features per step after encoding."""
        return self.n_inputs * (1 + int(self.append_mask) + int(self.append_delta))

    def forward(self, x: Tensor, mask: Tensor, t: Tensor, dt: Tensor, clock: ElapsedTime) -> Tensor:
        """(B, T, F) values and mask, (B, T) times -> (B, T, size) features."""
        parts = [carry_forward(x, mask) if self.fill == "locf" else x * mask]
        if self.append_mask:
            parts.append(mask.to(x.dtype))
        if self.append_delta:
            parts.append(clock(time_since_observed(t, dt, mask)))
        return torch.cat(parts, dim=-1)


def embedding_size(n_codes: int) -> int:
    """Width of a column's embedding from its number of codes n (training labels + unknown + missing):
    ``min(16, ceil(1.6 * n ** 0.56))``, fastai's rule of thumb (Howard & Gugger, "fastai", Information 2020) with a
    cap of 16 instead of 600 (these covariates sit beside a few numeric inputs, not in a tabular model)."""
    return int(min(16, math.ceil(1.6 * n_codes**0.56)))


class CategoricalEmbedding(nn.Module):
    """Learned embeddings of categorical covariates, one table per column, concatenated.

    Codes follow ``datamodules.categories``: 0 unknown (a label unseen in training), 1 missing, 2 + i the i-th
    training label; row 0 of every table is therefore "the unknown embedding", learned only where training rows
    carry it (never: it keeps its random initialisation, the same for every unseen label).

    Args:
        sizes: (n,) codes per column (training labels + 2).
        dims: (n,) embedding width per column (``datamodules.categories.embedding_size`` by default).
    """

    def __init__(self, sizes: list[int], dims: list[int]) -> None:
        super().__init__()
        if len(sizes) != len(dims) or min(list(sizes) + list(dims) + [1]) < 1:
            raise ValueError(f"categorical sizes {sizes} and widths {dims} must pair up and be >= 1")
        self.tables = nn.ModuleList(nn.Embedding(n, d) for n, d in zip(sizes, dims, strict=True))
        self.size = sum(dims)

    def forward(self, codes: Tensor) -> Tensor:
        """(..., n) int64 codes -> (..., size) float embeddings."""
        if codes.shape[-1] != len(self.tables):
            raise ValueError(f"expected {len(self.tables)} categorical columns, got codes of shape "
                             f"{tuple(codes.shape)}")  # fmt: skip
        return torch.cat([table(codes[..., i]) for i, table in enumerate(self.tables)], dim=-1)
