"""LSTM and GRU sequence encoders with the CfC encoder's interface: the baselines on equal footing.

They read the same encoded inputs plus the (scaled) elapsed time as one more feature, since a discrete-time RNN
has no other way to know how far apart two steps are. Imports torch only.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn


class RNNEncoder(nn.Module):
    """A ``torch.nn.LSTM`` or ``torch.nn.GRU`` over (x_t, dt_t), with padding at the end of each sequence.

    Args:
        kind: "lstm" or "gru".
        input_size: F, features per step (dt is appended inside).
        hidden_size: H, state units.
        num_layers: stacked layers.
        dropout: dropout between stacked layers.
    """

    def __init__(
        self,
        kind: Literal["lstm", "gru"],
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        rnns = {"lstm": nn.LSTM, "gru": nn.GRU}
        if kind not in rnns:
            raise ValueError(f"unknown kind {kind!r}; choose one of {sorted(rnns)}")
        self.kind, self.hidden_size, self.num_layers = kind, hidden_size, num_layers
        self.rnn = rnns[kind](input_size + 1, hidden_size, num_layers, batch_first=True, dropout=dropout)

    def forward(
        self, x: Tensor, dt: Tensor, mask: Tensor | None = None, state: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Encode (B, T, F) inputs with (B, T) elapsed times; padded steps (mask False) must be at the end.

        Args:
            x: (B, T, F) inputs. dt: (B, T) elapsed times. mask: (B, T) bool, True at real steps.
            state: (B, H) initial hidden state of every layer (LSTM cell states start at 0), or None.

        Returns:
            ``(states, last)``: (B, T, H) outputs (after the last real step they repeat it) and (B, H) the
            output at each sequence's last real step.
        """
        if x.dim() != 3 or dt.shape != x.shape[:2]:
            raise ValueError(f"x must be (B, T, F) and dt (B, T), got {tuple(x.shape)} and {tuple(dt.shape)}")
        inputs = torch.cat([x, dt[..., None]], dim=-1)  # (B, T, F + 1)
        h0 = None
        if state is not None:
            h = state[None].expand(self.num_layers, -1, -1).contiguous()  # (layers, B, H)
            h0 = (h, torch.zeros_like(h)) if self.kind == "lstm" else h
        states, _ = self.rnn(inputs, h0)  # (B, T, H)
        if mask is None:
            return states, states[:, -1]
        last_index = (mask.sum(1) - 1).clamp(min=0)  # (B,)
        steps = torch.arange(x.shape[1], device=x.device)
        # padding carries the last real output over, as the CfC encoder carries its state
        hold = torch.minimum(steps[None], last_index[:, None])  # (B, T)
        states = torch.gather(states, 1, hold[..., None].expand(-1, -1, states.shape[2]))
        return states, states[:, -1]
