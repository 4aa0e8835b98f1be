"""A linear path from each target's own history to its horizon, added beside the recurrent head.

On regular long-horizon benchmarks (ETT) one linear map per window from the last L values of a variable to its next
K values, shared by all variables and applied after instance normalisation, is a strong forecaster on its own
(DLinear, Zeng et al. AAAI 2023; RLinear, Li et al. 2023). With ``linear_path=True`` the forecaster predicts
``linear(history) + head(states)``: the encoder and head learn what a linear extrapolation of each series misses.
The map starts as the last-value forecast (weight 1 on the last step), so an untrained model is the naive forecast.

Imports torch only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cfc_forecast.forecaster.revin import register_target_sources


class LinearPath(nn.Module):
    """Per-target linear forecast from the target's last ``lookback`` input values, one map for all targets.

    Args:
        lookback: L, input steps the map reads (the DataModule's count-window lookback).
        horizon: K, forecast steps.
        target_inputs: (C,) input column holding each target; a target without one (-1) gets 0 from this path.
    """

    def __init__(self, lookback: int, horizon: int, target_inputs: list[int]) -> None:
        super().__init__()
        if lookback < 1 or horizon < 1:
            raise ValueError(f"linear_path needs count windows: lookback and horizon >= 1, got {lookback}, {horizon}")
        self.lookback, self.horizon = lookback, horizon
        self.linear = nn.Linear(lookback, horizon)
        with torch.no_grad():  # start as the last-value forecast
            self.linear.weight.zero_()
            self.linear.weight[:, -1] = 1.0
            self.linear.bias.zero_()
        register_target_sources(self, target_inputs)

    def forward(self, x: Tensor, x_mask: Tensor, step_mask: Tensor) -> Tensor:
        """Inputs (B, T, F) with missing values as 0 under ``x_mask`` and padding at the end -> (B, K, C, 1).

        A window's last real step is aligned with the map's last step; a window shorter than L (or padded) reads
        zeros before its first step.
        """
        b, t, _ = x.shape
        hist = (x * x_mask)[:, :, self.source]  # (B, T, C)
        length = step_mask.sum(1)  # (B,) real steps; padding is at the end
        pos = torch.arange(self.lookback, device=x.device) + (length[:, None] - self.lookback)  # (B, L)
        inside = pos >= 0
        idx = pos.clamp(min=0, max=max(t - 1, 0))[:, :, None].expand(-1, -1, hist.shape[2])
        window = hist.gather(1, idx) * inside[:, :, None]  # (B, L, C), right-aligned
        out = self.linear(window.transpose(1, 2)).transpose(1, 2)  # (B, K, C)
        return (out * self.has_source)[..., None]


class LastValueSkip(nn.Module):
    """The last observed value of each target's input column, added to the head's forecast at every query.

    With it the head forecasts the change from the last measurement, not the level: slowly drifting variables (lab
    values in PhysioNet, say) then start from the value a clinician would carry forward instead of from what
    the state happens to encode. Per target it learns how much of the last value to carry (a weight, starting at 1)
    and a level for windows that never observed it (starting at 0), so a target often missing from the history
    is not anchored at 0. A target without an input column gets 0. Works for every window kind, regular or
    irregular.

    Args:
        target_inputs: (C,) input column holding each target; -1 for none.
    """

    def __init__(self, target_inputs: list[int]) -> None:
        super().__init__()
        register_target_sources(self, target_inputs)
        self.weight = nn.Parameter(torch.ones(len(target_inputs)))
        self.fallback = nn.Parameter(torch.zeros(len(target_inputs)))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        """Inputs (B, T, F), missing values under ``x_mask`` -> (B, 1, C, 1), broadcast over queries and outputs."""
        values, seen = x[:, :, self.source], x_mask[:, :, self.source]  # (B, T, C)
        steps = torch.arange(x.shape[1], device=x.device)[None, :, None]
        last = torch.where(seen, steps, -1).amax(1)  # (B, C): the last observed step, -1 if none
        value = values.gather(1, last.clamp(min=0)[:, None, :])[:, 0]  # (B, C)
        value = torch.where(last >= 0, self.weight * value, self.fallback) * self.has_source
        return value[:, None, :, None]
