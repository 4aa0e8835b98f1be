"""An independent float64 re-implementation of the CfC equations (../shared/CFC.md), for tests only.

It reads the weights of a :class:`cfc_forecast.CfCCell` but none of its code: explicit formulas, a concat
instead of the split first layer, four separate heads instead of the fused matmul, a plain Python loop.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ACT = {
    "lecun_tanh": lambda z: 1.7159 * torch.tanh(0.666 * z),
    "tanh": torch.tanh,
    "relu": lambda z: torch.clamp(z, min=0.0),
    "silu": lambda z: z / (1.0 + torch.exp(-z)),
    "gelu": lambda z: 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0))),
}


def sigmoid(z: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-z))


def cell_params(cell) -> dict:
    heads_w = cell.heads.weight.double()
    heads_b = cell.heads.bias.double()
    n = 1 if cell.mode == "pure" else 4
    p = {
        "backbone": [(lay.weight.double(), lay.bias.double()) for lay in cell.backbone],
        "heads": list(zip(heads_w.chunk(n), heads_b.chunk(n), strict=False)),
        "mode": cell.mode,
        "act": cell.activation,
        "head_act": cell.head_activation,
    }
    if cell.mode == "pure":
        p["A"], p["w_tau"] = cell.A.double(), cell.w_tau.double()
    return p


def step(p: dict, x: Tensor, h: Tensor, dt: Tensor, drop: list[Tensor] | None = None) -> Tensor:
    z = torch.cat([x, h], dim=1)
    for i, (w, b) in enumerate(p["backbone"]):
        z = ACT[p["act"]](z @ w.T + b)
        if drop is not None:
            z = z * drop[i]
    lin = [z @ w.T + b for w, b in p["heads"]]
    if p["mode"] == "pure":
        ff1, a, w_tau = lin[0], p["A"], p["w_tau"]
        return -a * torch.exp(-dt * (w_tau.abs() + ff1.abs())) * ff1 + a
    ff1, ff2 = ACT[p["head_act"]](lin[0]), ACT[p["head_act"]](lin[1])
    gate = sigmoid(lin[2] * dt + lin[3])
    if p["mode"] == "no_gate":
        return ff1 + gate * ff2
    return ff1 * (1.0 - gate) + gate * ff2


def lstm_params(memory) -> dict:
    return {
        "w_in": memory.input_map.weight.double(),
        "b_in": memory.input_map.bias.double(),
        "w_rec": memory.recurrent_map.weight.double(),
        "forget_bias": memory.forget_bias,
    }


def lstm_step(p: dict, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    z = x @ p["w_in"].T + p["b_in"] + h @ p["w_rec"].T
    i, ig, fg, og = z.chunk(4, dim=1)
    c = c * sigmoid(fg + p["forget_bias"]) + torch.tanh(i) * sigmoid(ig)
    return torch.tanh(c) * sigmoid(og), c


def sequence(encoder, x, dt=None, mask=None, h=None, c=None, drop=None):
    """Reference states (B, T, H) and final (h, c) of a CfCEncoder, in float64."""
    x = x.double()
    batch, steps, _ = x.shape
    hidden = encoder.hidden_size
    dt = torch.ones(batch, steps, 1, dtype=torch.float64) if dt is None else dt.double().reshape(batch, steps, 1)
    h = torch.zeros(batch, hidden, dtype=torch.float64) if h is None else h.double()
    c = torch.zeros(batch, hidden, dtype=torch.float64) if c is None else c.double()
    p = cell_params(encoder.cell)
    m = lstm_params(encoder.memory) if encoder.memory is not None else None
    out = []
    for t in range(steps):
        drop_t = None if drop is None else [d.double() for d in drop[:, :, t]]
        c_new = c
        if m is None:
            h_new = step(p, x[:, t], h, dt[:, t], drop_t)
        elif encoder.memory_wiring == "ncps":
            h_mem, c_new = lstm_step(m, x[:, t], h, c)
            h_new = step(p, x[:, t], h_mem, dt[:, t], drop_t)
        else:
            o, c_new = lstm_step(m, x[:, t], h, c)
            h_new = step(p, o, h, dt[:, t], drop_t)
        if mask is not None:
            keep = mask[:, t : t + 1]
            h_new, c_new = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
        h, c = h_new, c_new
        out.append(h)
    return torch.stack(out, dim=1), h, c
