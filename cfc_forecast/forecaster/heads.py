"""Forecast heads: hidden states -> forecasts, one class per forecasting strategy.

Every head returns (B, K, C, Q) values: K forecast steps (or T input steps for the per-step head), C targets and
Q outputs per target (Q = 1 for a point forecast, the number of quantiles for the pinball loss). They share one
call signature, ``head(states, last, query_dt, future, context)``, so the module never branches on the head;
``context`` (B, S) holds per-series values the readout MLP reads beside the state (static covariates routed into
the head), None when the head was built with ``n_context=0``.

Imports torch only.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from cfc_forecast.core.cell import Activation, CfCCell, Mode
from cfc_forecast.errors import UserError

HeadName = Literal["direct", "continuous", "step"]
MLPActivation = Literal["relu", "gelu", "silu", "tanh"]
_MLP_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def mlp(
    in_size: int, hidden_sizes: list[int], out_size: int, activation: MLPActivation = "gelu", dropout: float = 0.0
) -> nn.Sequential:
    """Linear -> activation -> dropout for every hidden size, then a linear readout to ``out_size``."""
    if activation not in _MLP_ACTIVATIONS:
        raise UserError(f"unknown head activation {activation!r}; choose one of {sorted(_MLP_ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [nn.Linear(in_size, width), _MLP_ACTIVATIONS[activation](), nn.Dropout(dropout)]
        in_size = width
    return nn.Sequential(*layers, nn.Linear(in_size, out_size))


def with_context(h: Tensor, context: Tensor | None) -> Tensor:
    """``h`` (..., H) with the per-series ``context`` (B, S) appended along the last axis: (..., H + S)."""
    if context is None:
        return h
    shape = (*h.shape[:-1], context.shape[-1])
    return torch.cat([h, context.reshape(context.shape[0], *([1] * (h.dim() - 2)), -1).expand(shape)], dim=-1)


class DirectHead(nn.Module):
    """Direct multi-step forecast: the last state (and the known-future covariates of all K steps) -> K x C x Q.

    For regular horizons (count windows). Args: see :func:`build_head`.
    """

    def __init__(
        self,
        hidden_size: int,
        n_targets: int,
        n_outputs: int,
        horizon: int,
        n_future: int = 0,
        hidden_sizes: list[int] | None = None,
        activation: MLPActivation = "gelu",
        dropout: float = 0.0,
        n_context: int = 0,
    ) -> None:
        super().__init__()
        if horizon < 1:
            raise UserError(f"the direct head needs a regular horizon >= 1, got {horizon}")
        self.shape = (horizon, n_targets, n_outputs)
        self.n_future = n_future
        self.net = mlp(
            hidden_size + n_context + horizon * n_future,
            list(hidden_sizes or []),
            horizon * n_targets * n_outputs,
            activation,
            dropout,
        )

    def forward(
        self, states: Tensor, last: Tensor, query_dt: Tensor, future: Tensor | None, context: Tensor | None = None
    ) -> Tensor:
        k = query_dt.shape[1]
        if k != self.shape[0]:
            raise ValueError(f"the direct head forecasts {self.shape[0]} steps, the batch asks for {k}")
        inputs = with_context(last, context)  # (B, H + S)
        if self.n_future:
            inputs = torch.cat([inputs, future.flatten(1)], dim=-1)  # (B, H + S + K * Fk)
        return self.net(inputs).view(last.shape[0], *self.shape)  # (B, K, C, Q)


class ContinuousHead(nn.Module):
    """Continuous-time forecast at arbitrary query times.

    The last state h (B, H) is evolved to every query by one CfC step with the elapsed time from the last
    observation to the query (the closed form needs no solver, so any time is one step away); the step's input is
    the query's known-future covariates, or a learned vector when there are none. An MLP reads the evolved state
    out, together with that elapsed time: ``y(q) = MLP([CfC(u_q, h, d), d])`` with ``d = q - t_last``. One closed-form
    step moves every state unit monotonically in ``d`` (a sigmoid blend of two state-dependent values); with ``d``
    beside it the readout also forecasts curves that turn within the horizon (in tests/test_irregular_queries.py
    the error at irregular times fell from 0.20 to 0.02 with it). Args: see :func:`build_head`.
    """

    def __init__(
        self,
        hidden_size: int,
        n_targets: int,
        n_outputs: int,
        n_future: int = 0,
        hidden_sizes: list[int] | None = None,
        activation: MLPActivation = "gelu",
        dropout: float = 0.0,
        cell_mode: Mode = "default",
        cell_units: int = 64,
        cell_layers: int = 1,
        cell_activation: Activation = "lecun_tanh",
        n_context: int = 0,
    ) -> None:
        super().__init__()
        self.n_targets, self.n_outputs, self.n_future = n_targets, n_outputs, n_future
        self.cell = CfCCell(
            n_future or 1,
            hidden_size,
            mode=cell_mode,
            backbone_units=cell_units,
            backbone_layers=cell_layers,
            activation=cell_activation,
        )
        self.query_input = None if n_future else nn.Parameter(torch.zeros(1))
        readout = hidden_size + 1 + n_context  # the evolved state, the elapsed time, the context
        self.net = mlp(readout, list(hidden_sizes or []), n_targets * n_outputs, activation, dropout)

    def forward(
        self, states: Tensor, last: Tensor, query_dt: Tensor, future: Tensor | None, context: Tensor | None = None
    ) -> Tensor:
        b, k = query_dt.shape
        u = future if self.n_future else self.query_input.expand(b, k, 1)  # (B, K, Fk or 1)
        x_proj = self.cell.input_projection(u).reshape(b * k, -1)  # (B*K, N1)
        h = last[:, None, :].expand(-1, k, -1).reshape(b * k, -1)  # (B*K, H)
        h_q = self.cell.step(x_proj, h, query_dt.reshape(b * k, 1))  # (B*K, H) the state at each query time
        readout = torch.cat([h_q.view(b, k, -1), query_dt[..., None].to(h_q.dtype)], dim=-1)  # (B, K, H + 1)
        return self.net(with_context(readout, context)).view(b, k, self.n_targets, self.n_outputs)


class StepHead(nn.Module):
    """Per-step forecast: every input step's state -> the next value (sequence to sequence; streaming).

    Args: see :func:`build_head`.
    """

    def __init__(
        self,
        hidden_size: int,
        n_targets: int,
        n_outputs: int,
        hidden_sizes: list[int] | None = None,
        activation: MLPActivation = "gelu",
        dropout: float = 0.0,
        n_context: int = 0,
    ) -> None:
        super().__init__()
        self.n_targets, self.n_outputs = n_targets, n_outputs
        self.net = mlp(hidden_size + n_context, list(hidden_sizes or []), n_targets * n_outputs, activation, dropout)

    def forward(
        self, states: Tensor, last: Tensor, query_dt: Tensor, future: Tensor | None, context: Tensor | None = None
    ) -> Tensor:
        b, t, _ = states.shape
        return self.net(with_context(states, context)).view(b, t, self.n_targets, self.n_outputs)  # (B, T, C, Q)


def build_head(
    name: HeadName,
    hidden_size: int,
    n_targets: int,
    n_outputs: int,
    horizon: int | None,
    n_future: int,
    hidden_sizes: list[int],
    activation: MLPActivation = "gelu",
    dropout: float = 0.0,
    cell_units: int = 64,
    n_context: int = 0,
) -> nn.Module:
    """Build a head by name.

    Args:
        name: "direct" (regular horizon), "continuous" (any query times) or "step" (next value at every step).
        hidden_size: H, the encoder's state size.
        n_targets: C. n_outputs: Q, values per target (1, or the number of quantiles).
        horizon: K of a regular horizon (the direct head needs it).
        n_future: Fk, known-future covariates per query (the per-step head cannot use them).
        hidden_sizes: widths of the readout MLP's hidden layers. activation, dropout: of that MLP.
        cell_units: backbone width of the continuous head's CfC cell.
        n_context: S, per-series values the readout reads beside the state (static covariates into the head).

    Raises:
        ValueError: an unknown name, or a head that cannot serve the data (see the message).
    """
    common = dict(hidden_sizes=hidden_sizes, activation=activation, dropout=dropout, n_context=n_context)
    if name == "direct":
        if not horizon:
            raise UserError("head='direct' needs a regular horizon (count windows); use head='continuous'")
        return DirectHead(hidden_size, n_targets, n_outputs, horizon, n_future, **common)
    if name == "continuous":
        return ContinuousHead(hidden_size, n_targets, n_outputs, n_future, cell_units=cell_units, **common)
    if name == "step":
        if n_future:
            raise UserError(f"head='step' cannot use the {n_future} known-future covariates; drop them from the data")
        return StepHead(hidden_size, n_targets, n_outputs, **common)
    raise UserError(f"unknown head {name!r}; choose one of ['continuous', 'direct', 'step']")
