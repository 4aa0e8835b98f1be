"""The closed-form continuous-time (CfC) cell: one step of Hasani et al. (2022), written from scratch.

The cell maps an input x_t (B, F), the previous state h (B, H) and the elapsed time dt (B, 1) to the next
state. A shared *backbone* reads concat[x_t, h] and branches into fused *heads* (ff1, ff2, time_a, time_b);
see ../shared/CFC.md for the derivation from the LTC ODE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from cfc_forecast.core.checks import check_cell_inputs

Mode = Literal["default", "no_gate", "pure"]
Activation = Literal["lecun_tanh", "silu", "relu", "tanh", "gelu"]
HeadActivation = Literal["tanh", "lecun_tanh"]

# LeCun's "improved tanh" (Efficient BackProp, 1998): 1.7159 * tanh(2/3 x), with the constants of the references.
LECUN_SCALE = 1.7159
LECUN_SLOPE = 0.666


def lecun_tanh(x: Tensor) -> Tensor:
    """LeCun's scaled tanh, ``1.7159 * tanh(0.666 * x)``."""
    return LECUN_SCALE * torch.tanh(LECUN_SLOPE * x)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "lecun_tanh": lecun_tanh,
    "silu": nn.functional.silu,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": nn.functional.gelu,
}
HEAD_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"tanh": torch.tanh, "lecun_tanh": lecun_tanh}
MODES = ("default", "no_gate", "pure")


def choose(name: str, options, what: str):
    """Look ``name`` up in a registry, raising a ``ValueError`` that lists the valid names."""
    if name not in options:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(options)}")
    return options[name] if isinstance(options, dict) else name


class CfCCell(nn.Module):
    """One step of a closed-form continuous-time network.

    With ``z = backbone(concat[x, h])`` and the fused heads ``ff1, ff2, t_a, t_b = split(W z + b)``::

        gate = sigmoid(t_a * dt + t_b)                                 # the time gate
        default:  h' = act(ff1) * (1 - gate) + gate * act(ff2)
        no_gate:  h' = act(ff1) + gate * act(ff2)
        pure:     h' = -A * exp(-dt * (|w_tau| + |ff1|)) * ff1 + A      # the direct closed form (Cf-S)

    ``act`` is ``head_activation`` (tanh in the torch reference, lecun_tanh in the paper's TensorFlow code).

    Args:
        input_size: F, features per step.
        hidden_size: H, state units.
        mode: ``"default"`` (gated), ``"no_gate"`` or ``"pure"``.
        backbone_units: width U of every backbone layer.
        backbone_layers: number of backbone layers (Linear -> activation -> dropout); 0 feeds
            concat[x, h] straight to the heads.
        backbone_dropout: dropout probability after every backbone layer, the first included.
        activation: backbone activation.
        head_activation: activation of the ff1 / ff2 heads (not used in ``pure`` mode).
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
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if backbone_layers < 0 or (backbone_layers > 0 and backbone_units < 1):
            raise ValueError(
                f"backbone_layers must be >= 0 and backbone_units >= 1, "
                f"got backbone_layers={backbone_layers}, backbone_units={backbone_units}"
            )
        if not 0.0 <= backbone_dropout < 1.0:
            raise ValueError(f"backbone_dropout must lie in [0, 1), got {backbone_dropout}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.mode = choose(mode, MODES, "mode")
        self.activation = activation
        self.act = choose(activation, ACTIVATIONS, "activation")
        self.head_activation = head_activation
        self.head_act = choose(head_activation, HEAD_ACTIVATIONS, "head_activation")
        self.backbone_units, self.backbone_layers = backbone_units, backbone_layers
        self.backbone_dropout = backbone_dropout

        widths = [input_size + hidden_size] + [backbone_units] * backbone_layers
        self.backbone = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=False))
        self.dropout = nn.Dropout(backbone_dropout)
        # ff1, ff2, time_a, time_b fused into one matmul (pure mode has ff1 only)
        self.n_heads = 1 if self.mode == "pure" else 4
        self.heads = nn.Linear(widths[-1], self.n_heads * hidden_size)
        if self.mode == "pure":
            # the paper's initial values (ncps re-initialises both with Xavier, see CFC.md)
            self.A = nn.Parameter(torch.ones(1, hidden_size))
            self.w_tau = nn.Parameter(torch.zeros(1, hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights per original (unfused) layer; PyTorch's default biases."""
        for layer in self.backbone:
            nn.init.xavier_uniform_(layer.weight)
        for block in self.heads.weight.data.chunk(self.n_heads, dim=0):
            nn.init.xavier_uniform_(block)

    @property
    def first_layer(self) -> nn.Linear:
        """The layer that reads concat[x, h]: the first backbone layer, or the heads without backbone."""
        return self.backbone[0] if self.backbone_layers else self.heads

    def input_projection(self, x: Tensor) -> Tensor:
        """The input half of the first layer, ``x @ W_x^T + b``: (..., F) -> (..., N1).

        It does not depend on the state, so a sequence encoder computes it for all steps in one matmul.
        """
        layer = self.first_layer
        return nn.functional.linear(x, layer.weight[:, : self.input_size], layer.bias)

    def recurrent_weight(self) -> Tensor:
        """The state half of the first layer, (N1, H)."""
        return self.first_layer.weight[:, self.input_size :]

    def step(
        self, x_proj: Tensor, h: Tensor, dt: Tensor, drop: Tensor | None = None, w_h: Tensor | None = None
    ) -> Tensor:
        """One step from the projected input: x_proj (B, N1), h (B, H), dt (B, 1) -> h' (B, H).

        ``drop`` (L, B, U), scaled keep masks, replaces the module's own dropout: the encoder draws the masks of
        a whole sequence at once so that every implementation of the loop sees the same ones. ``w_h`` is
        :meth:`recurrent_weight`, which a sequence loop slices once instead of once per step (every slice
        costs a full-size gradient in the backward).
        """
        w_h = self.recurrent_weight() if w_h is None else w_h
        z = torch.addmm(x_proj, h, w_h.t())  # (B, N1)
        if self.backbone_layers:
            for i in range(self.backbone_layers):
                if i:
                    z = self.backbone[i](z)
                z = self.act(z)
                z = self.dropout(z) if drop is None else z * drop[i]
            z = self.heads(z)  # (B, n_heads * H)
        if self.mode == "pure":
            return -self.A * torch.exp(-dt * (self.w_tau.abs() + z.abs())) * z + self.A
        ff1, ff2, t_a, t_b = z.chunk(4, dim=-1)  # 4 x (B, H)
        ff1, ff2 = self.head_act(ff1), self.head_act(ff2)
        gate = torch.sigmoid(t_a * dt + t_b)
        if self.mode == "no_gate":
            return ff1 + gate * ff2
        return ff1 * (1.0 - gate) + gate * ff2

    def forward(self, x: Tensor, h: Tensor, dt: Tensor | float = 1.0) -> Tensor:
        """Advance the state by one step.

        Args:
            x: input (B, F).
            h: previous state (B, H).
            dt: elapsed time since the previous step, (B, 1) or a float; same unit as in training.

        Returns:
            The next state (B, H).

        Raises:
            ValueError: on a wrong shape, or a negative or non-finite ``dt``, or NaN in ``x``.
        """
        dt = check_cell_inputs(x, h, dt, self.input_size, self.hidden_size)
        return self.step(self.input_projection(x), h, dt)
