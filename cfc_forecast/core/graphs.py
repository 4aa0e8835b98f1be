"""CUDA graphs of the CfC loop: one capture per batch shape, replayed forward and backward.

On a GPU the loop is launch-bound: each of the T steps launches a handful of small kernels (the recurrent matmul,
the heads, the gated update), forward and backward, so a 64 x 96 training step spends its time in the CPU launching
them (``benchmarks/results/gpu_check_h200.json``: 24.1 ms against cuDNN LSTM's 1.7 ms). A CUDA graph records those
launches once and replays them as one (NVIDIA, "CUDA Graphs", CUDA C++ Programming Guide §3.2.8.10); torch's
:func:`torch.cuda.make_graphed_callables` records a callable's forward and its backward as two graphs inside one
autograd node, which is what :class:`LoopGraphs` uses.

What a graph needs, and what happens otherwise (the eager loop runs, nothing is refused):

- CUDA tensors, training mode with gradients on (validation and prediction run eagerly: they are a small part of the
  cost and their last batch has another shape);
- fixed shapes: one graph per (B, T, F) and state layout, up to ``max_graphs`` (default 4: the training batch and
  the last, shorter one); more shapes run eagerly;
- no autocast: torch graphs a callable under autocast only with its cache off (``cache_enabled=False``), which
  Lightning's mixed precision does not set;
- parameters that stay where they are: the optimiser updates them in place (the graph sees the new values); a
  ``.to()`` that moves them makes new storage, and a new capture (the key holds their addresses).

The value checks (NaN in x, negative dt) read the data and force a device sync; with graphs the encoder's
``check_values`` runs them before the replay when it is True, so switch it off for speed (the forecaster does: the
DataModule has checked the data). Dropout masks are drawn outside the graph and passed in, so each replay draws anew.

Not yet run on a GPU (this project's machines have none; ``benchmarks/gpu_check.py`` checks a graphed step against
the eager one, values and gradients, and times both).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

MAX_GRAPHS = 4


def graph_reason(x: Tensor) -> str | None:
    """Why a training step on ``x`` (B, T, F) runs eagerly instead of from a CUDA graph (one clause), or None."""
    if x.device.type != "cuda":
        return f"the input is on {x.device.type}: CUDA graphs need a CUDA device"
    if not torch.is_grad_enabled():
        return "gradients are off (validation, prediction): the loop runs eagerly"
    if torch.is_autocast_enabled("cuda"):
        return "autocast is on: torch graphs a callable under autocast only with its cache off"
    return None


class _Run(nn.Module):
    """The encoder's loop as a module of tensors only (what ``make_graphed_callables`` takes)."""

    def __init__(self, encoder: nn.Module, has_drop: bool, has_c: bool) -> None:
        super().__init__()
        self.encoder, self.has_drop, self.has_c = encoder, has_drop, has_c

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        x, dt, mask, h = args[:4]
        rest = list(args[4:])
        c = rest.pop(0) if self.has_c else None
        drop = rest.pop(0) if self.has_drop else None
        states, last = self.encoder._run(x, dt, mask, h, c, drop)
        return (states, *last) if isinstance(last, tuple) else (states, last)


class LoopGraphs:
    """CUDA graphs of one :class:`~cfc_forecast.core.encoder.CfCEncoder`'s loop, keyed by what a graph fixes.

    Held outside the module tree (a plain attribute), so state dicts, checkpoints and copies of the encoder never
    see it; :meth:`clear` drops every capture.
    """

    def __init__(self, max_graphs: int = MAX_GRAPHS) -> None:
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, nn.Module] = {}
        self._pool: Any = None

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        self._graphs.clear()

    def __deepcopy__(self, memo: dict) -> LoopGraphs:  # a copied encoder captures its own graphs
        return LoopGraphs(self.max_graphs)

    def __getstate__(self) -> dict:
        return {"max_graphs": self.max_graphs, "_graphs": {}, "_pool": None}

    def run(self, encoder: nn.Module, args: list[Tensor], has_c: bool, has_drop: bool) -> tuple[Tensor, ...] | None:
        """The loop's outputs from the graph for these arguments' shapes (captured on first use), or None when a
        new graph would pass ``max_graphs`` (the caller runs the loop eagerly).

        Args:
            encoder: the encoder whose ``_run(x, dt, mask, h, c, drop)`` is graphed.
            args: x (B, T, F), dt (B, T, 1), mask (B, T, 1) bool, h (B, H), then c (B, H) with mixed memory and the
                dropout masks (L, B, T, U) when training with backbone dropout.
        """
        params = tuple(p.data_ptr() for p in encoder.parameters())
        key = (tuple((tuple(a.shape), a.dtype, a.requires_grad) for a in args), args[0].device, has_c, has_drop,
               params)  # fmt: skip
        graphed = self._graphs.get(key)
        if graphed is None:
            if len(self._graphs) >= self.max_graphs:
                return None
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            sample = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
            graphed = torch.cuda.make_graphed_callables(
                _Run(encoder, has_drop, has_c), sample, allow_unused_input=True, pool=self._pool
            )
            self._graphs[key] = graphed
        return graphed(*args)
