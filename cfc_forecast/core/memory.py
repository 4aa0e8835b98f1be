"""The LSTM memory cell of the mixed-memory CfC ("CfC-mmRNN", Lechner & Hasani 2020, arXiv:2006.04418).

A gated cell state c carries long-range information that the CfC state alone forgets. The two references wire it
differently (../shared/CFC.md); :class:`~cfc_forecast.core.encoder.CfCEncoder` offers both.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LSTMMemoryCell(nn.Module):
    """An LSTM cell with a fixed forget-gate bias, one step at a time.

    ``z = W_in x + b + W_rec h``; ``i, ig, fg, og = split(z)``;
    ``c' = c * sigmoid(fg + forget_bias) + tanh(i) * sigmoid(ig)``; ``out = tanh(c') * sigmoid(og)``.

    Args:
        input_size: width of the input it reads.
        hidden_size: H, width of the state and of the cell state.
        forget_bias: added to the forget gate's pre-activation (1.0 in both references; the paper's
            Walker2d run used 2.1).
    """

    def __init__(self, input_size: int, hidden_size: int, forget_bias: float = 1.0) -> None:
        super().__init__()
        self.hidden_size, self.forget_bias = hidden_size, forget_bias
        self.input_map = nn.Linear(input_size, 4 * hidden_size)
        self.recurrent_map = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        nn.init.xavier_uniform_(self.input_map.weight)
        nn.init.orthogonal_(self.recurrent_map.weight)
        nn.init.uniform_(self.input_map.bias, -0.1, 0.1)

    def step(self, x_proj: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """x_proj = input_map(x) (B, 4H), h (B, H), c (B, H) -> (out (B, H), c' (B, H))."""
        z = torch.addmm(x_proj, h, self.recurrent_map.weight.t())  # (B, 4H)
        i, ig, fg, og = z.chunk(4, dim=-1)
        c = c * torch.sigmoid(fg + self.forget_bias) + torch.tanh(i) * torch.sigmoid(ig)
        return torch.tanh(c) * torch.sigmoid(og), c
