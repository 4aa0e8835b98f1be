"""Per-variable encoding: each input variable on its own clock, then an exchange between the variables.

The shared encoding (:class:`~.network.Forecaster`'s default) advances one state at every step where
*any* variable was observed, reading the others' carried-forward values. Here every input variable v of every
window becomes a sequence of its own: its observed values only, at their own times, each step's elapsed time being
the time since *that variable's* previous observation, so a variable measured twice a day advances twice, with
dt ~ 12 h, and a step where it is missing neither advances nor feeds a zero. The recurrence is the forecaster's
encoder (the CfC on its native loop, or the GRU / LSTM baselines), shared by all variables; a learned variable
embedding (input at every observation, and the variable's initial state) tells them apart.

Then the variables exchange what they know (the idea of t-PatchGNN, Zhang et al. ICML 2024: per-variable
encoding plus a graph between variables; VIMTS, ICML 2025, and GraFITi do the same with attention / graphs):
one multi-head attention over the V variable states at the end of the history, and, with the continuous-time
head, again at each query time, where every variable's token also carries how stale it is at that query
(``log1p`` of the time since its last observation). Each mixing is added to the variable states through an
output projection that starts at zero, so training starts from the unmixed model. The existing heads then
forecast each target from its own variable's state with that variable's own elapsed time (the head is built for
one target and shared).

Cost: the recurrence runs over the observed values only. The B * V sequences are bucketed by length (powers of 2)
and padded to the longest of each bucket, so at most about one padded step per observed value is computed
(:attr:`PerVariable.padding` counts them; PhysioNet: see the README). Imports torch only.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cfc_forecast.errors import UserError
from cfc_forecast.forecaster.heads import ContinuousHead
from cfc_forecast.forecaster.inputs import ElapsedTime

Mixing = Literal["attention", "none"]
MIXINGS = ("attention", "none")


class Packed(NamedTuple):
    """The observed values of every (window, variable) sequence, moved to the front in time order.

    values, step_dt: (B * V, T) each row's observed values and the elapsed time since that variable's previous
    observation (the first one: since the window start), padding after ``counts``. counts: (B * V,) observations
    per row. t_last: (B * V,) time of each row's last observation (the window start if never observed).
    """

    values: Tensor
    step_dt: Tensor
    counts: Tensor
    t_last: Tensor


def pack(x: Tensor, x_mask: Tensor, t: Tensor, dt: Tensor, step_mask: Tensor) -> Packed:
    """Window-major rows (row ``b * V + v``) of each variable's observations; see :class:`Packed`.

    Args:
        x: (B, T, V) values, 0 where missing. x_mask: (B, T, V) observed. t: (B, T) input times. dt: (B, T) the
        elapsed times of the shared grid (only the first is read: where the window starts). step_mask: (B, T).
    """
    b, steps, v = x.shape
    seen = (x_mask & step_mask[..., None]).transpose(1, 2).reshape(b * v, steps)  # (B*V, T)
    counts = seen.sum(1)
    # observed steps first, in time order (a stable sort of "missing")
    order = torch.argsort((~seen).to(torch.uint8), dim=1, stable=True)  # (B*V, T)
    values = x.transpose(1, 2).reshape(b * v, steps).gather(1, order)
    times = t.repeat_interleave(v, 0).gather(1, order)  # (B*V, T)
    start = (t[:, 0] - dt[:, 0]).repeat_interleave(v)  # (B*V,) the window's start
    prev = torch.cat([start[:, None], times[:, :-1]], dim=1)
    step_dt = (times - prev).clamp(min=0)
    last = times.gather(1, (counts - 1).clamp(min=0)[:, None])[:, 0]
    return Packed(values, step_dt, counts, torch.where(counts > 0, last, start))


def buckets(counts: Tensor) -> list[Tensor]:
    """Row indices of the observed rows grouped by length: lengths in (2^(k-1), 2^k] share a bucket."""
    seen = counts > 0
    level = torch.ceil(torch.log2(counts.clamp(min=1).to(torch.float32))).to(torch.long)  # (N,)
    level = torch.where(seen, level, -1)
    return [torch.nonzero(level == k)[:, 0] for k in sorted(set(level.tolist()) - {-1})]


class PerVariable(nn.Module):
    """Per-variable recurrence, cross-variable mixing and per-target readout (see the module docstring).

    Args:
        n_variables: V, input variables (the batch's F).
        hidden_size: H, the encoder's state size.
        targets: (C,) the input column of each target: its forecast is read from that variable's state.
        embedding: E, size of the learned variable embedding (the encoder's input is ``[value, embedding]``).
        mixing: "attention" (at the end of the history and, with the continuous head, at each query) or "none".
        heads: attention heads (H must be divisible by it).
    """

    def __init__(
        self,
        n_variables: int,
        hidden_size: int,
        targets: list[int],
        embedding: int = 16,
        mixing: Mixing = "attention",
        heads: int = 4,
    ) -> None:
        super().__init__()
        if mixing not in MIXINGS:
            raise UserError(f"unknown variable_mixing {mixing!r}; choose one of {list(MIXINGS)}")
        if mixing == "attention" and hidden_size % heads:
            raise UserError(f"hidden_size {hidden_size} must be divisible by mixing_heads {heads}")
        if embedding < 1:
            raise UserError(f"variable_embedding must be >= 1, got {embedding}")
        if not targets or any(not 0 <= c < n_variables for c in targets):
            raise UserError(
                f"encoding='per_variable' reads each target from its own input variable: every target must be "
                f"among the {n_variables} inputs (target_inputs={targets})"
            )
        self.n_variables, self.hidden_size, self.mixing = n_variables, hidden_size, mixing
        self.register_buffer("targets", torch.tensor(targets, dtype=torch.long), persistent=False)
        self.embedding = nn.Parameter(torch.randn(n_variables, embedding) / math.sqrt(embedding))  # (V, E)
        self.initial = nn.Linear(embedding, hidden_size)  # each variable's state before its first observation
        if mixing == "attention":
            self.token = nn.Linear(embedding, hidden_size, bias=False)
            self.staleness = nn.Linear(1, hidden_size)  # log1p(time since the variable's last observation)
            self.mix_norm = nn.LayerNorm(hidden_size)
            self.mix = nn.MultiheadAttention(hidden_size, heads, batch_first=True)
            nn.init.zeros_(self.mix.out_proj.weight)  # a zero residual branch: training starts from no mixing
            self.query_mix = QueryMixing(hidden_size, heads, self.staleness)
        self.padding = {"observed": 0, "padded": 0}  # running counts since the last reset (not saved)

    @property
    def input_size(self) -> int:
        """Features per step the encoder is built for: the value and the variable embedding."""
        return 1 + self.embedding.shape[1]

    def variable_states(
        self, x: Tensor, x_mask: Tensor, t: Tensor, dt: Tensor, step_mask: Tensor, encoder: nn.Module,
        clock: ElapsedTime, static: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Every variable's state after its own last observation, before any mixing.

        Args:
            x, x_mask, t, dt, step_mask: the batch's fields (B, T, V) / (B, T). encoder: the recurrence
            (``encoder(x, dt, mask, state) -> (states, last)``). clock: data time -> model time.
            static: (B, H) pre-activation from static covariates added to every initial state, or None.

        Returns:
            ``(h, t_last)``: (B, V, H) states and (B, V) each variable's last observation time.
        """
        b, _, v = x.shape
        if v != self.n_variables:
            raise ValueError(f"the per-variable encoder was built for {self.n_variables} variables, x has {v}")
        packed = pack(x, x_mask, t, dt, step_mask)
        init = self.initial(self.embedding)[None]  # (1, V, H)
        if static is not None:
            init = init + static[:, None]
        h = torch.tanh(init.expand(b, -1, -1)).reshape(b * v, -1)  # (B*V, H)
        variable = torch.arange(v, device=x.device).repeat(b)  # (B*V,) each row's variable
        for rows in buckets(packed.counts):
            n = packed.counts[rows]
            length = int(n.max())
            values = packed.values[rows, :length, None]  # (N, L, 1)
            emb = self.embedding[variable[rows]][:, None].expand(-1, length, -1)  # (N, L, E)
            mask = torch.arange(length, device=x.device)[None] < n[:, None]  # (N, L)
            state = h[rows]
            if getattr(encoder, "mixed_memory", False):
                state = (state, torch.zeros_like(state))
            _, last = encoder(torch.cat([values, emb], -1), clock(packed.step_dt[rows, :length]), mask, state)
            h = h.index_put((rows,), last[0] if isinstance(last, tuple) else last)
            self.padding["observed"] += int(n.sum())
            self.padding["padded"] += len(rows) * length - int(n.sum())
        return h.view(b, v, -1), packed.t_last.view(b, v)

    def forward(
        self, x: Tensor, x_mask: Tensor, t: Tensor, dt: Tensor, step_mask: Tensor, query_t: Tensor,
        query_mask: Tensor, encoder: nn.Module, head: nn.Module, clock: ElapsedTime, static: Tensor | None = None,
        future: Tensor | None = None, context: Tensor | None = None, needed: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """Forecasts (B, K, C, Q): the head, built for one target, reads each target's variable state.

        Args: as :meth:`variable_states`, plus query_t / query_mask (B, K), the head, and what the head reads:
        future (B, K, Fk) known-future covariates, context (B, S) static covariates into the head.
        needed: (B, K, C) bool, the only forecasts wanted (training, validation, test: the observed targets);
        the others are 0. None: every target at every real query (padded queries are 0).
        """
        h, t_last = self.variable_states(x, x_mask, t, dt, step_mask, encoder, clock, static)  # (B, V, H), (B, V)
        # each variable's own elapsed time from its last observation to every query
        query_dt = clock((query_t[:, None, :] - t_last[..., None]).clamp(min=0) * query_mask[:, None])  # (B, V, K)
        if self.mixing == "attention":
            age = clock((-t_last).clamp(min=0))  # (B, V) at the origin
            tokens = h + self.token(self.embedding) + self.staleness(torch.log1p(age)[..., None])
            z = self.mix_norm(tokens)
            h = h + self.mix(z, z, z, need_weights=False)[0]  # (B, V, H)
        if not isinstance(head, ContinuousHead):  # a direct head forecasts every step from the one state
            b, k, c = *query_t.shape, len(self.targets)
            last = h[:, self.targets].reshape(b * c, -1)  # (B*C, H)
            rep = lambda v: None if v is None else v.repeat_interleave(c, 0)  # noqa: E731
            qdt = query_dt[:, self.targets].reshape(b * c, k)
            pred = head(last[:, None], last, qdt, rep(future), rep(context))  # (B*C, K, 1, Q)
            return pred.reshape(b, c, k, -1).transpose(1, 2)  # (B, K, C, Q)
        return self._at_queries(h, query_dt, query_mask, head, future, context, needed)

    def _at_queries(
        self, h: Tensor, query_dt: Tensor, query_mask: Tensor, head: nn.Module, future: Tensor | None,
        context: Tensor | None, needed: Tensor | None,
    ) -> Tensor:  # fmt: skip
        """Mix again at each real query (tokens carry their staleness there), then the head, for the wanted
        (query, target) pairs only: every target of every real query, or (``needed``) the observed pairs alone.

        The mixing always runs in groups of one real query and its C targets (G = Nq): its keys and values are
        per (query, variable), so a group per observed pair instead (PhysioNet: ~6 observed targets per query,
        12k pairs against 2k queries a batch) would cost 6x more there than the head rows it saves. ``needed``
        then keeps only the observed pairs' rows for the head (PhysioNet: 12k of 82k), with the same values."""
        b, v, k = query_dt.shape
        c = len(self.targets)
        bi, ki = torch.nonzero(query_mask, as_tuple=True)  # (Nq,) the real queries
        if needed is not None:  # only the real queries with an observed target
            keep = needed[bi, ki].any(-1)  # (Nq,)
            bi, ki = bi[keep], ki[keep]
        dq = query_dt[bi, :, ki]  # (G, V)
        gt = self.targets.expand(len(bi), -1)  # (G, C)
        mixed = self.mixing == "attention"
        u = self.query_mix(h, bi, torch.log1p(dq), gt) if mixed else h[bi[:, None], gt]  # (G, C, H)
        stale = dq.gather(1, gt)  # (G, C) each target's own time since its last observation
        if needed is None:  # rows: every (query, target), query-major
            rows = (slice(None), slice(None))
            rc = torch.arange(c, device=bi.device).repeat(len(bi))
            rb, rk = bi.repeat_interleave(c), ki.repeat_interleave(c)
        else:  # rows: the observed (query, target) pairs
            g, rc = torch.nonzero(needed[bi, ki], as_tuple=True)  # (Np,)
            rows, rb, rk = (g, rc), bi[g], ki[g]
        last = u[rows].reshape(-1, u.shape[-1])  # (rows, H) in the order of (rb, rk, rc)
        fut = None if future is None else future[rb, rk][:, None]  # (rows, 1, Fk)
        ctx = None if context is None else context[rb]
        pred = head(last[:, None], last, stale[rows].reshape(-1, 1), fut, ctx)  # (rows, 1, 1, Q)
        out = pred.new_zeros(b, k, c, pred.shape[-1])
        return out.index_put((rb, rk, rc), pred[:, 0, 0])  # (B, K, C, Q)

    def reset_padding(self) -> dict[str, int]:
        """Return the padding counts since the last reset and start counting again."""
        counts, self.padding = self.padding, {"observed": 0, "padded": 0}
        return counts


class QueryMixing(nn.Module):
    """Attention at each query: every target's token attends to every variable's token at that query time.

    A variable's token at query j is its (mixed) state plus ``staleness(log1p(dq))``, dq its own time since its
    last observation at that query. Keys and values are linear in the token, so they are projected once per
    (window, variable) and shifted per query by ``log1p(dq)`` times a projected slope: the same numbers as
    projecting every (query, variable) token, at the cost of an add. The result is added to the target's state
    through an output projection that starts at zero, so training starts from the unmixed model (zero-initialised
    residual branches: Goyal et al. 2017, Bachlechner et al. 2020 "ReZero"). A first version put a LayerNorm after
    the residual (post-norm, Vaswani et al. 2017) and fed the head the normalised token: in the short PhysioNet
    validation ablation (README) it trained slower than no mixing at all.

    Args:
        hidden_size: H. heads: attention heads. staleness: the ``Linear(1, H)`` shared with the history mixing.
    """

    def __init__(self, hidden_size: int, heads: int, staleness: nn.Linear) -> None:
        super().__init__()
        self.heads, self.staleness = heads, staleness
        self.q, self.k, self.v, self.out = (nn.Linear(hidden_size, hidden_size) for _ in range(4))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor, bi: Tensor, stale: Tensor, targets: Tensor) -> Tensor:
        """h (B, V, H) variable states; per group g (a query): bi (G,) its window, stale (G, V) log1p(dq) of every
        variable, targets (G, n) the variables whose tokens attend -> (G, n, H) those variables' states after mixing."""
        slope, bias = self.staleness.weight[:, 0], self.staleness.bias  # (H,), (H,)

        def project(lin: nn.Linear) -> Tensor:  # lin(h + staleness(stale)) without forming (Nq, V, H) tokens first
            return lin(h + bias)[bi] + stale[..., None] * (lin.weight @ slope)  # (G, V, H)

        def split(z: Tensor) -> Tensor:  # (G, n, H) -> (G, heads, n, H / heads)
            return z.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        state = h[bi[:, None], targets]  # (G, n, H)
        tokens = state + self.staleness(stale.gather(1, targets)[..., None])
        att = F.scaled_dot_product_attention(split(self.q(tokens)), split(project(self.k)), split(project(self.v)))
        return state + self.out(att.transpose(1, 2).flatten(2))  # (G, n, H)
