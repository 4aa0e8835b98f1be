"""The forecasting network: batch -> scaled forecasts, composed of input encoding, a sequence encoder and a head.

A plain ``nn.Module`` (no Lightning): :class:`~cfc_forecast.module.ForecastModule` builds it from plain values.
Imports torch only.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from cfc_forecast.batch import Batch
from cfc_forecast.inputs import ElapsedTime, InputEncoding
from cfc_forecast.revin import RevIN

StaticInto = Literal["state", "head", "both"]
STATIC_INTO = ("state", "head", "both")


class Forecaster(nn.Module):
    """Encode a window's history, then forecast with a head.

    Args:
        inputs: builds the per-step features (missing values, masks, times since observed).
        clock: maps elapsed times in the data's unit to the model's time scale.
        encoder: a :class:`CfCEncoder` or :class:`~cfc_forecast.rnn.RNNEncoder` over the features.
        head: one of the heads in :mod:`cfc_forecast.heads`.
        n_static: S, static covariates (0: none expected).
        static_into: where they go: "state" maps them into the encoder's initial state, "head" hands them to the
            head's readout beside the state (build the head with ``n_context=S``), "both" does both.
        n_future: Fk, known-future covariates the head reads at the query times (0: none expected).
        revin: reversible instance normalisation, or None.
    """

    def __init__(
        self,
        inputs: InputEncoding,
        clock: ElapsedTime,
        encoder: nn.Module,
        head: nn.Module,
        n_static: int = 0,
        n_future: int = 0,
        revin: RevIN | None = None,
        static_into: StaticInto = "state",
    ) -> None:
        super().__init__()
        if static_into not in STATIC_INTO:
            raise ValueError(f"unknown static_into {static_into!r}; choose one of {list(STATIC_INTO)}")
        self.inputs, self.clock, self.encoder, self.head, self.revin = inputs, clock, encoder, head, revin
        self.n_static, self.n_future = n_static, n_future
        hidden = encoder.hidden_size
        self.static_map = nn.Linear(n_static, hidden) if n_static and static_into != "head" else None
        self.static_to_head = bool(n_static) and static_into != "state"

    def forward(self, batch: Batch) -> Tensor:
        """Forecasts in the batch's scaled units: (B, K, C, Q), or (B, T, C, Q) from the per-step head.

        Raises:
            ValueError: static or known-future covariates that the model was not built for, or that it expects
                and the batch lacks (they are never silently dropped).
        """
        self._check_covariates(batch)
        x, stats = batch.x, None
        if self.revin is not None:
            x, stats = self.revin.normalise(batch.x, batch.x_mask)
        feats = self.inputs(x, batch.x_mask, batch.t, batch.dt, self.clock)  # (B, T, F')
        dt = self.clock(batch.dt)  # (B, T)
        state = None
        if self.static_map is not None:  # static covariates set where every series starts from
            state = torch.tanh(self.static_map(batch.static))  # (B, H)
            if getattr(self.encoder, "mixed_memory", False):
                state = (state, torch.zeros_like(state))
        states, last = self.encoder(feats, dt, batch.step_mask, state)  # (B, T, H), (B, H) or (h, c)
        last = last[0] if isinstance(last, tuple) else last
        # elapsed time from the last observation to each query: the continuous-time head's step length
        last_step = (batch.step_mask.sum(1) - 1).clamp(min=0)  # (B,)
        t_last = batch.t.gather(1, last_step[:, None])  # (B, 1)
        query_dt = self.clock((batch.query_t - t_last).clamp(min=0) * batch.query_mask)  # (B, K)
        future = batch.future if self.n_future else None
        context = batch.static if self.static_to_head else None
        pred = self.head(states, last, query_dt, future, context)
        if self.revin is not None:
            pred = self.revin.denormalise(pred, stats)
        return pred

    def _check_covariates(self, batch: Batch) -> None:
        for name, value, size in (("static", batch.static, self.n_static), ("future", batch.future, self.n_future)):
            got = 0 if value is None else value.shape[-1]
            if got != size:
                raise ValueError(
                    f"the model was built for {size} {name} covariates, the batch has {got}: "
                    f"link model.n_{name} to the DataModule (the CLI does) or rebuild the model"
                )
