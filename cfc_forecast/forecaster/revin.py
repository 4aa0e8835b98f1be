"""Reversible instance normalisation (Kim et al., ICLR 2022), masked for irregular windows with missing values.

Each window's input variables are standardised by their own mean and standard deviation over the observed values
of that window; forecasts of a target are mapped back with the statistics of the input that holds the same
quantity. Imports torch only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def register_target_sources(module: nn.Module, target_inputs: list[int]) -> None:
    """Buffers ``source`` (C,) long, each target's input column (0 where none), and ``has_source`` (C,) bool.

    Shared by the modules that read each target's own input column (RevIN, the linear path, the last-value skip).
    """
    module.register_buffer("source", torch.tensor([max(i, 0) for i in target_inputs], dtype=torch.long))
    module.register_buffer("has_source", torch.tensor([i >= 0 for i in target_inputs], dtype=torch.bool))


class RevIN(nn.Module):
    """Masked per-window, per-variable normalisation of the inputs and its inverse for the forecasts.

    Args:
        n_inputs: F, input variables.
        target_inputs: (C,) input column of each target, -1 where a target has no input counterpart (its
            forecasts are left as they are).
        eps: added to the variance.
        affine: learn a per-input scale and shift applied after normalising (and undone before denormalising).
    """

    def __init__(self, n_inputs: int, target_inputs: list[int], eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if any(not -1 <= i < n_inputs for i in target_inputs):
            raise ValueError(f"target_inputs must lie in [-1, {n_inputs}), got {target_inputs}")
        self.eps = eps
        register_target_sources(self, target_inputs)
        self.weight = nn.Parameter(torch.ones(n_inputs)) if affine else None
        self.bias = nn.Parameter(torch.zeros(n_inputs)) if affine else None

    def normalise(self, x: Tensor, mask: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """(B, T, F) values and mask -> normalised values (0 where missing) and the (B, F) mean and std."""
        n = mask.sum(1).clamp(min=1)  # (B, F)
        mean = (x * mask).sum(1) / n
        var = (((x - mean[:, None]) * mask) ** 2).sum(1) / n
        std = (var + self.eps).sqrt()
        z = (x - mean[:, None]) / std[:, None]
        if self.weight is not None:
            z = z * self.weight + self.bias
        return z * mask, (mean, std)

    def denormalise(self, y: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
        """Forecasts (B, K, C, Q) in normalised units -> the batch's scaled units."""
        mean, std = stats  # (B, F)
        out = y
        if self.weight is not None:
            w, b = self.weight[self.source], self.bias[self.source]  # (C,)
            out = (out - b[:, None]) / (w[:, None] + self.eps)
        mean_c, std_c = mean[:, self.source], std[:, self.source]  # (B, C)
        out = out * std_c[:, None, :, None] + mean_c[:, None, :, None]
        return torch.where(self.has_source[:, None], out, y)
