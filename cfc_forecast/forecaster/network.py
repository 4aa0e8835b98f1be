"""The forecasting network: batch -> scaled forecasts, composed of input encoding, a sequence encoder and a head.

A plain ``nn.Module`` (no Lightning): :class:`~.module.ForecastModule` builds it from plain values.
Imports torch only.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from cfc_forecast.batch import Batch
from cfc_forecast.errors import UserError
from cfc_forecast.forecaster.inputs import CategoricalEmbedding, ElapsedTime, InputEncoding
from cfc_forecast.forecaster.linear import LastValueSkip, LinearPath
from cfc_forecast.forecaster.revin import RevIN
from cfc_forecast.forecaster.variables import PerVariable

StaticInto = Literal["state", "head", "both"]
STATIC_INTO = ("state", "head", "both")


class _Sequences(NamedTuple):
    """What the encoder and head read of a batch: one row per window, or per (window, target)."""

    x: Tensor
    x_mask: Tensor
    t: Tensor
    dt: Tensor
    step_mask: Tensor
    query_t: Tensor
    query_mask: Tensor
    static: Tensor | None
    future: Tensor | None
    x_cat: Tensor | None
    static_cat: Tensor | None
    future_cat: Tensor | None

    @classmethod
    def of(cls, batch: Batch, x: Tensor) -> _Sequences:
        return cls(x, batch.x_mask, batch.t, batch.dt, batch.step_mask, batch.query_t, batch.query_mask,
                   batch.static, batch.future, batch.x_cat, batch.static_cat, batch.future_cat)  # fmt: skip


def _join(numeric: Tensor | None, embedded: Tensor | None) -> Tensor | None:
    """Numeric covariates with the embeddings of the categorical ones after them (either may be None)."""
    if embedded is None:
        return numeric
    return embedded if numeric is None else torch.cat([numeric, embedded.to(numeric.dtype)], dim=-1)


class Forecaster(nn.Module):
    """Encode a window's history, then forecast with a head.

    Args:
        inputs: builds the per-step features (missing values, masks, times since observed).
        clock: maps elapsed times in the data's unit to the model's time scale.
        encoder: a :class:`CfCEncoder`, :class:`~cfc_forecast.core.wired.WiredCfCEncoder` or
            :class:`~.rnn.RNNEncoder` over the features (a wired one hands the head its motor neurons).
        head: one of the heads in :mod:`cfc_forecast.forecaster.heads`.
        n_static: S, static covariates (0: none expected).
        static_into: where they go: "state" maps them into the encoder's initial state, "head" hands them to the
            head's readout beside the state (build the head with ``n_context=S``), "both" does both.
        n_future: Fk, known-future covariates the head reads at the query times (0: none expected).
        revin: reversible instance normalisation, or None.
        linear: a :class:`~cfc_forecast.forecaster.linear.LinearPath` whose forecast from each target's (normalised)
            history is added to the head's, or None.
        skip: a :class:`~cfc_forecast.forecaster.linear.LastValueSkip` (the head forecasts the change from each target's
            last observed value), or None.
        channels: channel independence (PatchTST, Nie et al. ICLR 2023): the (C,) input column of each target.
            Every target becomes a sequence of its own, read by the same encoder and head: its input column beside
            the inputs that are no target's (covariates, calendar features), the batch's times and masks; the
            head forecasts that one target (build ``inputs`` for ``1 + F - C`` inputs and the head for 1 target).
            None: one sequence of all F inputs per window.
        categorical: embeddings of the categorical covariates by role (``"inputs"``, ``"static"``,
            ``"known_future"``; :class:`~.inputs.CategoricalEmbedding`), or None. Each is concatenated
            after its numeric counterpart: past inputs with the encoded features at every step (build the encoder for
            ``inputs.size`` plus their width), static ones with the static vector (S plus their width where static
            covariates go), known-future ones with the future covariates at each query (Fk plus their width in the
            head).
        per_variable: a :class:`~.variables.PerVariable` (``encoding='per_variable'``): each input
            variable's observations at their own times through ``encoder`` (built for its ``input_size``), mixing
            between the variables, and ``head`` (built for one target) per target; ``inputs`` is not read.
            None: the shared encoding.
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
        linear: LinearPath | None = None,
        channels: list[int] | None = None,
        skip: LastValueSkip | None = None,
        categorical: dict[str, CategoricalEmbedding | None] | None = None,
        per_variable: PerVariable | None = None,
    ) -> None:
        super().__init__()
        if static_into not in STATIC_INTO:
            raise UserError(f"unknown static_into {static_into!r}; choose one of {list(STATIC_INTO)}")
        self.inputs, self.clock, self.encoder, self.head, self.revin = inputs, clock, encoder, head, revin
        self.linear, self.skip, self.per_variable = linear, skip, per_variable
        if per_variable is not None and channels is not None:
            raise UserError(
                "encoding='per_variable' already gives every variable its own sequence: drop channel_independent"
            )
        self.channel_independent = channels is not None
        if channels is not None:
            if any(c < 0 for c in channels) or len(set(channels)) != len(channels):
                raise UserError(
                    f"channel independence needs a distinct input column for every target, got {channels}"
                )
            n_in = inputs.n_inputs + len(channels) - 1
            others = [i for i in range(n_in) if i not in channels]
            self.register_buffer("channels", torch.tensor(channels, dtype=torch.long), persistent=False)
            self.register_buffer("others", torch.tensor(others, dtype=torch.long), persistent=False)
        self.n_static, self.n_future = n_static, n_future
        cat = categorical or {}
        self.cat_inputs, self.cat_static, self.cat_future = (cat.get(k) for k in ("inputs", "static", "known_future"))
        n_context = n_static + (self.cat_static.size if self.cat_static is not None else 0)
        hidden = encoder.hidden_size
        self.static_map = nn.Linear(n_context, hidden) if n_context and static_into != "head" else None
        self.static_to_head = bool(n_context) and static_into != "state"

    def forward(self, batch: Batch, observed_only: bool = False) -> Tensor:
        """Forecasts in the batch's scaled units: (B, K, C, Q), or (B, T, C, Q) from the per-step head.

        ``observed_only`` (evaluation; training always does so): the per-variable encoding forecasts only the
        (query, target) pairs observed in ``batch.y_mask`` (B, K, C), the only ones a loss or metric reads, and leaves
        the others at what the skip, linear path and RevIN give a zero there; the shared encoding ignores it.

        Raises:
            ValueError: static or known-future covariates that the model was not built for, or that it expects
                and the batch lacks (they are never silently dropped).
        """
        self._check_covariates(batch)
        x, stats = batch.x, None
        if self.revin is not None:
            x, stats = self.revin.normalise(batch.x, batch.x_mask)
        shared = self.per_variable is None
        pred = self._shared(batch, x) if shared else self._per_variable(batch, x, observed_only)  # (B, K, C, Q)
        if self.skip is not None:
            pred = pred + self.skip(x, batch.x_mask)
        if self.linear is not None:
            pred = pred + self.linear(x, batch.x_mask, batch.step_mask)  # (B, K, C, 1) onto every output
        if self.revin is not None:
            pred = self.revin.denormalise(pred, stats)
        return pred

    def _shared(self, batch: Batch, x: Tensor) -> Tensor:
        """One sequence per window (or per target) through the encoder and head: (B, K, C, Q)."""
        seq = self._per_channel(batch, x) if self.channel_independent else _Sequences.of(batch, x)
        feats = self.inputs(seq.x, seq.x_mask, seq.t, seq.dt, self.clock)  # (B', T, F')
        if self.cat_inputs is not None:  # (B', T, F' + Ec): each step's category embeddings beside its values
            feats = torch.cat([feats, self.cat_inputs(seq.x_cat).to(feats.dtype)], dim=-1)
        static = _join(seq.static, None if self.cat_static is None else self.cat_static(seq.static_cat))  # (B', S')
        dt = self.clock(seq.dt)  # (B', T)
        state = None
        if self.static_map is not None:  # static covariates set where every series starts from
            state = torch.tanh(self.static_map(static))  # (B', H)
            if getattr(self.encoder, "mixed_memory", False):
                state = (state, torch.zeros_like(state))
        states, last = self.encoder(feats, dt, seq.step_mask, state)  # (B', T, H), (B', H) or (h, c)
        last = last[0] if isinstance(last, tuple) else last
        if hasattr(self.encoder, "readout"):  # a wired CfC's output: its motor neurons, what ``states`` holds
            last = self.encoder.readout(last)  # (B', M)
        # elapsed time from the last observation to each query: the continuous-time head's step length
        last_step = (seq.step_mask.sum(1) - 1).clamp(min=0)  # (B',)
        t_last = seq.t.gather(1, last_step[:, None])  # (B', 1)
        query_dt = self.clock((seq.query_t - t_last).clamp(min=0) * seq.query_mask)  # (B', K)
        future = _join(seq.future if self.n_future else None,
                       None if self.cat_future is None else self.cat_future(seq.future_cat))  # (B', K, Fk')
        context = static if self.static_to_head else None
        pred = self.head(states, last, query_dt, future, context)  # (B', K, C', Q)
        if self.channel_independent:  # (B * C, K, 1, Q) -> (B, K, C, Q)
            b, c = batch.batch_size, len(self.channels)
            pred = pred.reshape(b, c, pred.shape[1], pred.shape[-1]).transpose(1, 2)
        return pred

    def _per_variable(self, batch: Batch, x: Tensor, observed_only: bool = False) -> Tensor:
        """Each variable on its own clock, mixed, then the head per target: (B, K, C, Q). In training and with
        ``observed_only`` only the observed targets are forecast (the rest are 0; the loss and the metrics read only
        those), saving most of the head: on PhysioNet ~82k head rows per batch of every (query, target) pair."""
        needed = batch.y_mask if (self.training or observed_only) else None  # (B, K, C) or None: every pair
        static = self.static_map(batch.static) if self.static_map is not None else None  # (B, H) pre-activation
        return self.per_variable(
            x, batch.x_mask, batch.t, batch.dt, batch.step_mask, batch.query_t, batch.query_mask, self.encoder,
            self.head, self.clock, static, batch.future if self.n_future else None,
            batch.static if self.static_to_head else None, needed,
        )  # fmt: skip

    def _per_channel(self, batch: Batch, x: Tensor) -> _Sequences:
        """One sequence per (window, target), window-major: (B * C, T, 1 + F - C) inputs, everything else repeated."""
        c = len(self.channels)

        def split(v: Tensor) -> Tensor:  # (B, T, F) -> (B * C, T, 1 + F - C): the target's column, then the others
            own = v[:, :, self.channels].transpose(1, 2).reshape(-1, v.shape[1], 1)
            return torch.cat([own, v[:, :, self.others].repeat_interleave(c, 0)], dim=-1)

        rep = lambda v: None if v is None else v.repeat_interleave(c, 0)  # noqa: E731
        whole = _Sequences.of(batch, x)
        return _Sequences(split(x), split(batch.x_mask), *(rep(getattr(whole, f)) for f in _Sequences._fields[2:]))

    def _check_covariates(self, batch: Batch) -> None:
        for name, value, size in (("static", batch.static, self.n_static), ("future", batch.future, self.n_future)):
            got = 0 if value is None else value.shape[-1]
            if got != size:
                raise UserError(
                    f"the model was built for {size} {name} covariates, the batch has {got}: "
                    f"link model.n_{name} to the DataModule (the CLI does) or rebuild the model"
                )
        for name, value, emb in (("x_cat", batch.x_cat, self.cat_inputs), ("static_cat", batch.static_cat,
                                 self.cat_static), ("future_cat", batch.future_cat, self.cat_future)):  # fmt: skip
            got, size = (0 if value is None else value.shape[-1]), (0 if emb is None else len(emb.tables))
            if got != size:
                raise UserError(
                    f"the model was built for {size} categorical columns in Batch.{name}, the batch has {got}: "
                    "link model.categorical_sizes to the DataModule (the CLI does) or rebuild the model"
                )
