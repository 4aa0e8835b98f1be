"""A CfC with a sparse wiring (Neural Circuit Policies, Lechner et al. 2020) over a whole sequence.

The semantics of ncps 1.0.1's wired CfC (``ncps.torch.CfC(input_size, wiring)``), written from scratch: one CfC cell
per wiring layer, without backbone, run layer after layer at every step; layer l reads the new state of layer l - 1
(the inputs, for the first layer) and its own previous state. The wiring's 0/1 mask multiplies the input half of the
ff1 and ff2 heads (not the time heads t_a, t_b), freshly at every forward, so a masked weight gets no gradient. The
output is the last layer's state: the motor neurons of an NCP.

Since a layer reads only its own past and the layer before's present, the stack is a stacked RNN: without mixed
memory the layers can run one after the other, each over the whole sequence, in the native loop. Mixed memory reads
the whole state at every step and couples the layers: it runs the pure-PyTorch loop, step by step.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cfc_forecast.core.cell import CfCCell, HeadActivation, Mode
from cfc_forecast.core.checks import check_sequence_inputs, initial_state, load_converted
from cfc_forecast.core.memory import LSTMMemoryCell
from cfc_forecast.core.native import native_available, run_native
from cfc_forecast.core.wiring import Wiring, WiringName, from_ncps, make_wiring
from cfc_forecast.errors import UserError

State = Tensor | tuple[Tensor, Tensor]


class WiredCfCEncoder(nn.Module):
    """A closed-form continuous-time network with sparse, layered connectivity, over a whole sequence.

    Per step, for the layers l = 0..L-1 with states h_l (B, n_l) and inputs u_0 = x_t, u_l = h_{l-1}' (the new state
    of the layer before), each layer is one :class:`~cfc_forecast.core.cell.CfCCell` step without backbone::

        ff1, ff2, t_a, t_b = split([W_u ⊙ M_l, W_h] concat[u_l, h_l] + b)    # M_l masks the ff1 and ff2 rows only
        h_l' = the cell's equation in ``mode`` with dt

    The state is the concatenation of the layers' states in layer order (NCP: inter, command, motor), as in ncps.

    Args:
        input_size: F, features per step (the wiring's sensory neurons).
        wiring: a :class:`~cfc_forecast.core.wiring.Wiring`, or an ncps 1.0.1 wiring object (``AutoNCP``, ``NCP``,
            ``FullyConnected``, a hand-built ``Wiring``), built for ``input_size`` if it is not yet. The masks are
            buffers of the layers (``layers.<l>.mask``), so a state dict carries its wiring.
        mode: ``"default"``, ``"no_gate"`` or ``"pure"`` (see :class:`~cfc_forecast.core.cell.CfCCell`).
        head_activation: of the ff1 / ff2 heads; ncps uses tanh.
        mixed_memory: an LSTM memory cell over the whole state, wired as ncps wires it: it runs first on (x_t, h) and
            the layers read its output as their previous state. The state becomes (h, c), both (B, N).
        forget_bias: the memory cell's forget-gate bias (ncps: 1.0).
        impl: ``"auto"``: the native loop, one layer after the other, when it builds and there is no mixed memory,
            else the pure-PyTorch loop; ``"native"`` insists on the native loop; ``"python"`` forces the other.
        check_values: check x for NaN and dt for negative or non-finite values on every call.

    Raises:
        ValueError: an ncps wiring built for another input size, a wiring whose first mask does not read F inputs,
            an unknown ``impl``, or ``impl="native"`` with mixed memory.
    """

    def __init__(
        self,
        input_size: int,
        wiring: Wiring | Any,
        *,
        mode: Mode = "default",
        head_activation: HeadActivation = "tanh",
        mixed_memory: bool = False,
        forget_bias: float = 1.0,
        impl: Literal["auto", "native", "python"] = "auto",
        check_values: bool = True,
    ) -> None:
        super().__init__()
        if impl not in ("auto", "native", "python"):
            raise ValueError(f"unknown impl {impl!r}; choose one of ['auto', 'native', 'python']")
        if impl == "native" and mixed_memory:
            raise ValueError("impl='native' runs wired CfCs without mixed memory only (it couples their layers)")
        if not isinstance(wiring, Wiring):
            wiring = from_ncps(wiring, input_size)
        if wiring.input_size != input_size:
            raise ValueError(f"the wiring reads {wiring.input_size} inputs, the encoder was given {input_size}")
        self.input_size, self.hidden_size = input_size, wiring.units
        self.layer_sizes, self.output_size = list(wiring.layer_sizes), wiring.output_size
        self.mode, self.mixed_memory, self.impl, self.check_values = mode, mixed_memory, impl, check_values
        self.layers = nn.ModuleList()
        for m in wiring.masks:  # (n_l, in_l)
            cell = CfCCell(m.shape[1], m.shape[0], mode=mode, backbone_layers=0, head_activation=head_activation)
            cell.register_buffer("mask", m.clone())
            self.layers.append(cell)
        self.memory = LSTMMemoryCell(input_size, self.hidden_size, forget_bias) if mixed_memory else None

    @property
    def wiring(self) -> Wiring:
        """The wiring in the layers' mask buffers (after loading a state dict, the loaded one)."""
        return Wiring(self.input_size, tuple(cell.mask.detach().cpu().float() for cell in self.layers))

    def readout(self, state: Tensor) -> Tensor:
        """The output neurons (the last layer, NCP: the motor neurons) of a state: (..., N) -> (..., M)."""
        return state[..., self.hidden_size - self.output_size :]

    def uses_native(self) -> bool:
        """Whether ``forward`` runs the native loop (builds it on first call)."""
        if self.impl == "python" or self.memory is not None:
            return False
        if native_available():
            return True
        if self.impl == "native":
            raise RuntimeError("impl='native' but the native CfC loop could not be built (see the warning)")
        return False

    @staticmethod
    def _head_mask(cell: CfCCell) -> Tensor:
        """The synapses on the input half of the fused heads, (n_heads * n, in): ff1 (and ff2) masked, t_a, t_b not."""
        masked = 1 if cell.mode == "pure" else 2
        return torch.cat([cell.mask] * masked + [torch.ones_like(cell.mask)] * (cell.n_heads - masked))

    def _weights(self, cell: CfCCell) -> tuple[Tensor, Tensor | None, Tensor]:
        """(W_u ⊙ mask, b, W_h) of one layer: the masked input half of the fused heads, their bias, the state half."""
        w = cell.heads.weight  # (n_heads * n, in + n)
        return w[:, : cell.input_size] * self._head_mask(cell), cell.heads.bias, w[:, cell.input_size :]

    def forward(
        self,
        x: Tensor,
        dt: Tensor | None = None,
        mask: Tensor | None = None,
        state: State | None = None,
    ) -> tuple[Tensor, State]:
        """Encode a batch of sequences.

        Args:
            x: inputs (B, T, F); no NaN.
            dt: elapsed time before each step, (B, T) or (B, T, 1), >= 0; default 1.0 everywhere.
            mask: (B, T) bool, True at real steps; a padded step carries the state over. Default: all real.
            state: initial state (B, N), or (h, c) with mixed memory; default zeros.

        Returns:
            ``(outputs, last_state)``: the output neurons after every step (B, T, M) (ncps's output sequence) and
            the final state, (B, N) or (h, c), so a sequence fed in chunks gives what it gives whole.

        Raises:
            ValueError: on wrong ranks or sizes, a dt of the wrong shape, negative or non-finite dt, NaN in x.
        """
        dt, mask = check_sequence_inputs(x, dt, mask, self.input_size, self.check_values)
        h, c = initial_state(state, x, self.hidden_size, self.memory is not None)
        if self.uses_native():  # layer after layer, each over the whole sequence
            inputs, last = x, []
            for cell, h_l in zip(self.layers, h.split(self.layer_sizes, 1), strict=True):
                synapses = self._head_mask(cell)
                inputs, _ = run_native(cell, inputs, h_l, dt, mask, None, input_mask=synapses)  # (B, T, n_l)
                last.append(inputs[:, -1])  # padding carries the state over, so the last step holds the last state
            return inputs, torch.cat(last, dim=1)
        weights = [self._weights(cell) for cell in self.layers]
        w_x, b, _ = weights[0]
        # unbind once: indexing x[:, t] in the loop would cost a full-size zero gradient per step
        xs = nn.functional.linear(x, w_x, b).unbind(1)  # T x (B, n_heads * n_0): the first layer's input half
        ms = self.memory.input_map(x).unbind(1) if self.memory is not None else None  # T x (B, 4N)
        dts = dt.unbind(1)  # T x (B, 1)
        masks = mask.unbind(1) if mask is not None else None  # T x (B, 1)
        states = []
        for t in range(x.shape[1]):
            h_in, c_new = (h, c) if ms is None else self.memory.step(ms[t], h, c)
            new, out = [], None
            for i, (cell, (w_x, b, w_h), h_l) in enumerate(zip(self.layers, weights, h_in.split(self.layer_sizes, 1),
                                                                strict=True)):  # fmt: skip
                proj = xs[t] if i == 0 else nn.functional.linear(out, w_x, b)  # (B, n_heads * n_l)
                out = cell.step(proj, h_l, dts[t], None, w_h)  # (B, n_l)
                new.append(out)
            h_new = torch.cat(new, dim=1)  # (B, N)
            if masks is not None:  # padding carries the state over
                h_new = torch.where(masks[t], h_new, h)
                c_new = c_new if c is None else torch.where(masks[t], c_new, c)
            h, c = h_new, c_new
            states.append(h)
        outputs = self.readout(torch.stack(states, dim=1))  # (B, T, M)
        return outputs, (h if c is None else (h, c))

    def load_ncps_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load the weights of a wired ``ncps.torch.CfC(input_size, wiring)`` (ncps 1.0.1, no ``proj_size``).

        Any wiring, mode and mixed memory. The masks come with the weights (ncps keeps them in the state dict as
        ``sparsity_mask``) and replace this encoder's: afterwards it computes what the ncps model computes, for the
        same inputs and elapsed times, even when it was built with another wiring of the same layer sizes.

        Raises:
            ValueError: when the state dict does not fit this encoder (layer sizes, mode, mixed memory, an unwired
                or projected model), naming what differs.
        """
        sd = {k.removeprefix("rnn_cell."): v for k, v in state_dict.items()}
        if any(k.startswith("fc.") for k in sd):
            raise ValueError("projected ncps models (proj_size) are not supported")
        ids = sorted({int(m.group(1)) for k in sd if (m := re.match(r"layer_(\d+)\.", k))})
        if not ids:
            raise ValueError("not a wired ncps CfC (no layer_<l> weights): load it into a CfCEncoder")
        sizes = [sd[f"layer_{i}.ff1.weight"].shape[0] for i in ids]
        if sizes != self.layer_sizes:
            raise ValueError(f"the ncps model's layers have {sizes} neurons, this encoder's {self.layer_sizes}")
        is_pure = "layer_0.w_tau" in sd
        if is_pure != (self.mode == "pure"):
            raise ValueError(f"the ncps model is {'pure' if is_pure else 'gated'}, this encoder {self.mode!r}")
        has_memory = any(k.startswith("lstm.") for k in sd)
        if has_memory != self.mixed_memory:
            raise ValueError(f"mixed memory: ncps model {has_memory}, this encoder {self.mixed_memory}")
        if has_memory and self.memory.forget_bias != 1.0:
            raise ValueError("ncps mixed memory needs forget_bias=1.0")
        names = ["ff1"] if is_pure else ["ff1", "ff2", "time_a", "time_b"]
        ours: dict[str, Tensor] = {}
        for j, (i, cell) in enumerate(zip(ids, self.layers, strict=True)):
            mask = sd[f"layer_{i}.sparsity_mask"]  # (n, in + n): the wiring, then ncps's dense within-layer block
            if mask.shape != (cell.hidden_size, cell.input_size + cell.hidden_size):
                raise ValueError(f"ncps layer_{i} reads {mask.shape[1] - cell.hidden_size} inputs, ours "
                                 f"{cell.input_size}: check input_size")  # fmt: skip
            if not bool((mask[:, cell.input_size :] == 1).all()):
                raise ValueError(f"ncps layer_{i} masks its own recurrent weights, which ncps 1.0.1 never does")
            prefix = f"layers.{j}."
            ours[prefix + "mask"] = mask[:, : cell.input_size]
            ours[prefix + "heads.weight"] = torch.cat([sd[f"layer_{i}.{n}.weight"] for n in names])
            ours[prefix + "heads.bias"] = torch.cat([sd[f"layer_{i}.{n}.bias"] for n in names])
            if is_pure:
                ours[prefix + "A"], ours[prefix + "w_tau"] = sd[f"layer_{i}.A"], sd[f"layer_{i}.w_tau"]
        if has_memory:
            for name in ("input_map.weight", "input_map.bias", "recurrent_map.weight"):
                ours[f"memory.{name}"] = sd[f"lstm.{name}"]
        load_converted(self, ours, "input_size")


def build_wired_encoder(
    input_size: int,
    wiring: WiringName,
    units: int,
    outputs: int | None = None,
    seed: int = 22222,
    sparsity: float = 0.5,
    ncp_sizes: dict[str, int] | None = None,
    *,
    mode: Mode = "default",
    head_activation: HeadActivation = "tanh",
    mixed_memory: bool = False,
    memory_wiring: str = "ncps",
    forget_bias: float = 1.0,
    impl: Literal["auto", "native", "python"] = "auto",
) -> WiredCfCEncoder:
    """A :class:`WiredCfCEncoder` from the forecaster's plain values (see :func:`.wiring.make_wiring`).

    Raises:
        UserError: ``impl="native"`` with mixed memory (which runs the pure-PyTorch loop only),
            ``memory_wiring="paper"`` (its LSTM output would replace the sensory inputs the wiring is drawn for), or a
            wiring that cannot be built (see :func:`~.wiring.make_wiring`).
    """
    if impl == "native" and mixed_memory:
        raise UserError("a wired CfC with mixed memory runs the pure-PyTorch loop only: set impl to auto or python")
    if mixed_memory and memory_wiring != "ncps":
        raise UserError(f"a wired CfC takes mixed memory as ncps wires it: memory_wiring='ncps', got {memory_wiring!r}")
    return WiredCfCEncoder(
        input_size,
        make_wiring(wiring, input_size, units, outputs, seed, sparsity, ncp_sizes),
        mode=mode,
        head_activation=head_activation,
        mixed_memory=mixed_memory,
        forget_bias=forget_bias,
        impl=impl,
    )
