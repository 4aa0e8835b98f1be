"""The CfC sequence encoder: runs a :class:`CfCCell` over a sequence with elapsed times, padding and memory."""

from __future__ import annotations

import re
from typing import Literal

import torch
from torch import Tensor, nn

from cfc_forecast.core.cell import Activation, CfCCell, HeadActivation, Mode
from cfc_forecast.core.checks import check_sequence_inputs, initial_state, load_converted
from cfc_forecast.core.graphs import LoopGraphs, graph_reason
from cfc_forecast.core.kernels import fused_by_default, fused_reason, run_fused
from cfc_forecast.core.memory import LSTMMemoryCell
from cfc_forecast.core.native import native_available, run_native

State = Tensor | tuple[Tensor, Tensor]


class CfCEncoder(nn.Module):
    """A closed-form continuous-time network over a whole sequence.

    Args:
        input_size: F, features per step.
        hidden_size: H, state units.
        mode, backbone_units, backbone_layers, backbone_dropout, activation, head_activation: the cell's
            options, see :class:`~cfc_forecast.core.cell.CfCCell`.
        mixed_memory: add an LSTM memory cell (CfC-mmRNN); the state becomes the pair (h, c).
        memory_wiring: ``"ncps"``: the LSTM runs first on (x_t, h) and the CfC reads its output as previous
            state (the torch reference); ``"paper"``: the LSTM runs on (x_t, h) and its output is the CfC's
            *input* while the CfC keeps its own state (the paper's TensorFlow code).
        forget_bias: the memory cell's forget-gate bias.
        impl: ``"auto"`` uses the native loop when it builds and the pure-PyTorch loop otherwise;
            ``"native"`` insists on the native loop; ``"python"`` forces the pure-PyTorch loop; ``"fused"`` runs
            the fused Triton kernel on CUDA (:mod:`cfc_forecast.core.kernels`: what it covers; ``forward`` raises a
            ValueError saying why when it cannot run). ``"auto"`` picks the fused kernel on CUDA only with
            ``CFC_FORECAST_FUSED=1`` (off by default until measured on a device).
        check_values: check x for NaN and dt for negative or non-finite values on every call (shapes are
            always checked); switch off on a GPU hot path, where the check forces a device sync.
        cuda_graphs: run training steps on CUDA from CUDA graphs of the loop, one per batch shape, forward and
            backward (:mod:`cfc_forecast.core.graphs`: the conditions; otherwise the loop runs eagerly). Not the
            fused kernel's path: with the fused kernel running, it is off.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        mode: Mode = "default",
        backbone_units: int = 128,
        backbone_layers: int = 1,
        backbone_dropout: float = 0.0,
        activation: Activation = "lecun_tanh",
        head_activation: HeadActivation = "tanh",
        mixed_memory: bool = False,
        memory_wiring: Literal["ncps", "paper"] = "ncps",
        forget_bias: float = 1.0,
        impl: Literal["auto", "native", "python", "fused"] = "auto",
        check_values: bool = True,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__()
        if memory_wiring not in ("ncps", "paper"):
            raise ValueError(f"unknown memory_wiring {memory_wiring!r}; choose one of ['ncps', 'paper']")
        if impl not in ("auto", "native", "python", "fused"):
            raise ValueError(f"unknown impl {impl!r}; choose one of ['auto', 'fused', 'native', 'python']")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.mixed_memory, self.memory_wiring = mixed_memory, memory_wiring
        self.impl, self.check_values, self.cuda_graphs = impl, check_values, cuda_graphs
        self.graphs = LoopGraphs()  # CUDA graphs of the loop per batch shape (core/graphs.py); not in the state dict
        paper_memory = mixed_memory and memory_wiring == "paper"
        self.cell = CfCCell(
            hidden_size if paper_memory else input_size,
            hidden_size,
            mode=mode,
            backbone_units=backbone_units,
            backbone_layers=backbone_layers,
            backbone_dropout=backbone_dropout,
            activation=activation,
            head_activation=head_activation,
        )
        self.memory = LSTMMemoryCell(input_size, hidden_size, forget_bias) if mixed_memory else None

    def uses_native(self) -> bool:
        """Whether ``forward`` runs the native loop (builds it on first call)."""
        if self.impl in ("python", "fused"):
            return False
        if native_available():
            return True
        if self.impl == "native":
            raise RuntimeError("impl='native' but the native CfC loop could not be built (see the warning)")
        return False

    def forward(
        self,
        x: Tensor,
        dt: Tensor | None = None,
        mask: Tensor | None = None,
        state: State | None = None,
    ) -> tuple[Tensor, State]:
        """Encode a batch of sequences.

        Args:
            x: inputs (B, T, F); no NaN (fill missing values and say so with extra input features).
            dt: elapsed time before each step, (B, T) or (B, T, 1), >= 0; default 1.0 everywhere.
            mask: (B, T) bool, True at real steps; at a False step (padding) the state is carried over
                unchanged and ``states`` repeats it. Default: every step is real.
            state: initial state (B, H), or (h, c) with mixed memory; default zeros.

        Returns:
            ``(states, last_state)``: the state after every step (B, T, H), and the final state in the form of
            ``state``, so a sequence fed in chunks gives what it gives whole.

        Raises:
            ValueError: on wrong ranks or sizes, a dt of the wrong shape, negative or non-finite dt, NaN in x.
        """
        dt, mask = check_sequence_inputs(x, dt, mask, self.input_size, self.check_values)
        h, c = self._initial_state(state, x)
        drop = self._dropout_masks(x)
        if self.cuda_graphs and self.training and graph_reason(x) is None and not self._runs_fused(x):
            if mask is None:
                mask = torch.ones(dt.shape, dtype=torch.bool, device=x.device)
            args = [x, dt, mask, h] + ([c] if c is not None else []) + ([drop] if drop is not None else [])
            out = self.graphs.run(self, args, has_c=c is not None, has_drop=drop is not None)
            if out is not None:
                return out[0], (out[1] if c is None else (out[1], out[2]))
        return self._run(x, dt, mask, h, c, drop)

    def _runs_fused(self, x: Tensor) -> bool:
        """Whether the fused kernel runs ``x``; raises the reason when ``impl="fused"`` cannot."""
        if not (self.impl == "fused" or (self.impl == "auto" and x.is_cuda and fused_by_default())):
            return False
        reason = fused_reason(self, x)
        if reason is not None and self.impl == "fused":
            raise ValueError(f"impl='fused' cannot run here: {reason}")
        return reason is None

    def _run(self, x, dt, mask, h, c, drop) -> tuple[Tensor, State]:
        """The loop on checked inputs: the fused kernel, the native loop or the pure-PyTorch loop."""
        cell = self.cell
        if self._runs_fused(x):
            states = run_fused(cell, x, h, dt, mask, drop)
            return states, states[:, -1]
        if self.uses_native():
            states, c_states = run_native(cell, x, h, dt, mask, drop, self.memory, c, self.memory_wiring)
            return states, (states[:, -1] if c_states is None else (states[:, -1], c_states[:, -1]))
        states, h, c = self._python_loop(x, dt, mask, h, c, drop)
        return states, (h if c is None else (h, c))

    def _python_loop(self, x, dt, mask, h, c, drop):
        cell, memory = self.cell, self.memory
        paper_memory = memory is not None and self.memory_wiring == "paper"
        steps = x.shape[1]
        # unbind once: indexing x[:, t] in the loop would cost a full-size zero gradient per step
        per_step = lambda t, dim=1: [None] * steps if t is None else t.unbind(dim)  # noqa: E731
        xs = per_step(None if paper_memory else cell.input_projection(x))  # T x (B, N1)
        ms = per_step(None if memory is None else memory.input_map(x))  # T x (B, 4H)
        dts, masks, drops = per_step(dt), per_step(mask), per_step(drop, 2)  # (B, 1), (B, 1), (L, B, U)
        w_h = cell.recurrent_weight()
        states = []
        for t in range(steps):
            c_new = c
            if memory is None:
                h_new = cell.step(xs[t], h, dts[t], drops[t], w_h)
            elif paper_memory:
                out, c_new = memory.step(ms[t], h, c)
                h_new = cell.step(cell.input_projection(out), h, dts[t], drops[t], w_h)
            else:
                h_mem, c_new = memory.step(ms[t], h, c)
                h_new = cell.step(xs[t], h_mem, dts[t], drops[t], w_h)
            if mask is not None:  # padding carries the state over
                h_new = torch.where(masks[t], h_new, h)
                c_new = c_new if c is None else torch.where(masks[t], c_new, c)
            h, c = h_new, c_new
            states.append(h)
        return torch.stack(states, dim=1), h, c

    def _initial_state(self, state: State | None, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return initial_state(state, x, self.hidden_size, self.memory is not None)

    def _dropout_masks(self, x: Tensor) -> Tensor | None:
        """Keep masks for every backbone layer and step, (L, B, T, U) scaled by 1 / (1 - p)."""
        p, cell = self.cell.backbone_dropout, self.cell
        if not (self.training and p > 0 and cell.backbone_layers):
            return None
        shape = (cell.backbone_layers, x.shape[0], x.shape[1], cell.backbone_units)
        return torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - p).div_(1 - p)

    def load_ncps_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load the weights of an ``ncps.torch.CfC(input_size, units)`` (int units, no ``proj_size``).

        Any mode and backbone depth, with or without mixed memory (which needs ``memory_wiring="ncps"`` and
        ``forget_bias=1.0``, what ncps hard-codes). Afterwards this encoder computes what the ncps model computes
        for the same inputs and elapsed times. One difference remains in training mode: ncps applies backbone
        dropout only after the second and later layers, this encoder after every layer.

        Raises:
            ValueError: when the state dict does not fit this encoder's configuration, naming what differs.
        """
        sd = {k.removeprefix("rnn_cell."): v for k, v in state_dict.items()}
        unsupported = [k for k in sd if k.startswith(("fc.", "sparsity_mask"))]
        if unsupported:
            raise ValueError(f"wired or projected ncps models are not supported (keys {unsupported})")
        layer_ids = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"backbone\.(\d+)\.weight", k)))
        cell = self.cell
        if len(layer_ids) != cell.backbone_layers:
            raise ValueError(
                f"the ncps model has {len(layer_ids)} backbone layers, this encoder {cell.backbone_layers}"
            )
        is_pure = "w_tau" in sd
        if is_pure != (cell.mode == "pure"):
            raise ValueError(f"the ncps model is {'pure' if is_pure else 'gated'}, this encoder {cell.mode!r}")
        has_memory = any(k.startswith("lstm.") for k in sd)
        if has_memory != self.mixed_memory:
            raise ValueError(f"mixed memory: ncps model {has_memory}, this encoder {self.mixed_memory}")
        if has_memory and (self.memory_wiring != "ncps" or self.memory.forget_bias != 1.0):
            raise ValueError("ncps mixed memory needs memory_wiring='ncps' and forget_bias=1.0")
        ours: dict[str, Tensor] = {}
        for i, idx in enumerate(layer_ids):
            ours[f"cell.backbone.{i}.weight"] = sd[f"backbone.{idx}.weight"]
            ours[f"cell.backbone.{i}.bias"] = sd[f"backbone.{idx}.bias"]
        names = ["ff1"] if is_pure else ["ff1", "ff2", "time_a", "time_b"]
        ours["cell.heads.weight"] = torch.cat([sd[f"{n}.weight"] for n in names])
        ours["cell.heads.bias"] = torch.cat([sd[f"{n}.bias"] for n in names])
        if is_pure:
            ours["cell.A"], ours["cell.w_tau"] = sd["A"], sd["w_tau"]
        if has_memory:
            for name in ("input_map.weight", "input_map.bias", "recurrent_map.weight"):
                ours[f"memory.{name}"] = sd[f"lstm.{name}"]
        load_converted(self, ours, "input_size, hidden_size and backbone_units")
