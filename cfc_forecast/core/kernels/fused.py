"""The autograd wrapper of the fused Triton CfC kernels (imports triton; reach it
through :mod:`cfc_forecast.core.kernels`).

The forward runs :func:`~cfc_forecast.core.kernels.cfc_triton.cfc_forward_kernel`, the backward
:func:`~cfc_forecast.core.kernels.cfc_triton.cfc_backward_kernel` and then the weight gradients as one matmul each over
all (sequence, step) rows. The lecun_tanh constants are folded into the weights by
:func:`cfc_forecast.core.native.fold_weights` in differentiable torch ops, so autograd carries the gradients back to the
cell's own parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from cfc_forecast.core.cell import CfCCell
from cfc_forecast.core.kernels.cfc_triton import cfc_backward_kernel, cfc_forward_kernel
from cfc_forecast.core.native import fold_weights

# the batch tile of one program: a power of two >= 16 (tl.dot's smallest tile on a GPU)
BLOCK_B = 16
# float32 dots: "tf32" (tensor cores, about 1e-3 relative) or "ieee"; a device run records both (gpu_check.py)
PRECISION = "tf32"
_ACT = {"tanh": 1, "lecun_tanh": 1, "relu": 2}


def tile(n: int) -> int:
    """The register tile for a dimension of size n: the next power of two, at least 16."""
    return max(16, 1 << (n - 1).bit_length())


def check_tiles(block_b: int, block_h: int, block_u: int) -> None:
    """Assert the tile shapes a GPU's ``tl.dot`` needs (the interpreter does not check them): powers of two >= 16."""
    for name, size in (("BLOCK_B", block_b), ("BLOCK_H", block_h), ("BLOCK_U", block_u)):
        assert size >= 16 and size & (size - 1) == 0, f"{name} = {size}: tl.dot needs a power of two >= 16"


def _launch_forward(xproj, h0, dt, mask, keep, w_rec, w_head, b_head, meta, save):
    batch, steps, units = xproj.shape
    hidden = h0.shape[1]
    states = torch.empty(batch, steps, hidden, dtype=xproj.dtype, device=xproj.device)
    z = torch.empty(batch, steps, units, dtype=xproj.dtype, device=xproj.device) if save else states
    y = torch.empty(batch, steps, 4 * hidden, dtype=xproj.dtype, device=xproj.device) if save else states
    block_h, block_u = tile(hidden), tile(units)
    check_tiles(meta["block_b"], block_h, block_u)
    grid = (triton_cdiv(batch, meta["block_b"]),)
    cfc_forward_kernel[grid](
        xproj, h0, dt, dt if mask is None else mask, xproj if keep is None else keep, w_rec, w_head, b_head,
        states, z, y, batch, steps, hidden, units,
        HEAD_SCALE=meta["head_scale"], ACT=meta["act"], NO_GATE=meta["no_gate"], HAS_MASK=mask is not None,
        HAS_DROP=keep is not None, SAVE=save, PRECISION=meta["precision"], BLOCK_B=meta["block_b"],
        BLOCK_H=block_h, BLOCK_U=block_u,
    )  # fmt: skip
    return states, z, y


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _FusedCfC(torch.autograd.Function):
    """states (B, T, H) from the input projections (B, T, U), h0 (B, H), dt (B, T) and the folded weights."""

    @staticmethod
    def forward(ctx, meta, xproj, h0, dt, mask, keep, w_rec, w_head, b_head):
        save = any(ctx.needs_input_grad)
        if meta["dot_dtype"] is not None:  # autocast: the dots' operands in bfloat16, state and sums in float32
            w_rec, w_head = w_rec.to(meta["dot_dtype"]), w_head.to(meta["dot_dtype"])
        states, z, y = _launch_forward(xproj, h0, dt, mask, keep, w_rec, w_head, b_head, meta, save)
        if save:
            ctx.meta = meta
            ctx.save_for_backward(h0, dt, mask, keep, w_rec, w_head, states, z, y)
        return states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        h0, dt, mask, keep, w_rec, w_head, states, z, y = ctx.saved_tensors
        meta = ctx.meta
        batch, steps, hidden = states.shape
        units = z.shape[2]
        grad_states = grad_states.contiguous()
        da = torch.empty_like(z)
        dy = torch.empty_like(y)
        ddt = torch.empty_like(dt)
        dh0 = torch.empty_like(h0)
        block_h, block_u = tile(hidden), tile(units)
        check_tiles(meta["block_b"], block_h, block_u)
        cfc_backward_kernel[(triton_cdiv(batch, meta["block_b"]),)](
            grad_states, z, y, dt, dt if mask is None else mask, z if keep is None else keep, w_rec, w_head,
            da, dy, ddt, dh0, batch, steps, hidden, units,
            HEAD_SCALE=meta["head_scale"], ACT=meta["act"], NO_GATE=meta["no_gate"], HAS_MASK=mask is not None,
            HAS_DROP=keep is not None, PRECISION=meta["precision"], BLOCK_B=meta["block_b"], BLOCK_H=block_h,
            BLOCK_U=block_u,
        )  # fmt: skip
        # the weight gradients: one matmul each over all B * T rows (no atomics: the same bits on every run)
        h_prev = torch.cat([h0[:, None], states[:, :-1]], dim=1).reshape(-1, hidden)
        z_in = (z if keep is None else z * keep).reshape(-1, units)
        dy2 = dy.reshape(-1, 4 * hidden)
        d_w_rec = da.reshape(-1, units).t() @ h_prev  # float32 under autocast too (the parameters' dtype)
        d_w_head = dy2.t() @ z_in
        d_b_head = dy2.sum(0)
        return None, da, dh0, ddt, None, None, d_w_rec, d_w_head, d_b_head


def run_fused(
    cell: CfCCell,
    x: Tensor,
    h0: Tensor,
    dt: Tensor,
    mask: Tensor | None,
    drop: Tensor | None,
    *,
    block_b: int = BLOCK_B,
    precision: str | None = None,
) -> Tensor:
    """Run ``cell`` over a sequence with the fused kernels (the caller checked ``kernels.fused_reason``).

    Args:
        cell: a CfC cell with one backbone layer, mode default or no_gate, activation tanh, lecun_tanh or relu.
        x: inputs (B, T, F), float32 or float64, on a CUDA device (or CPU tensors under ``TRITON_INTERPRET=1``).
            Under autocast the kernels' matmul operands are in the autocast dtype (bfloat16), with float32 sums,
            state and gradients.
        h0: initial state (B, H).
        dt: elapsed times (B, T, 1).
        mask: real steps (B, T, 1) bool, or None.
        drop: dropout keep masks scaled by 1 / (1 - p), (1, B, T, U), or None.
        block_b: sequences per program (a power of two >= 16).
        precision: float32 dots, ``"tf32"`` or ``"ieee"``; default :data:`PRECISION` (float64 always ``"ieee"``).

    Returns:
        The states (B, T, H).
    """
    device = x.device.type
    dot_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    with torch.autocast(device, enabled=False):  # the state, the pointwise math and every sum in float32
        w, spec = fold_weights(cell)
        batch, steps, _ = x.shape
        # (B, T, U): the hoisted input GEMM, one matmul for all steps
        xproj = torch.nn.functional.linear(x, w["w_x"], w["b_x"]).contiguous()
    if x.dtype == torch.float64:
        precision = "ieee"
    meta = {
        "head_scale": float(spec.head_scale),
        "act": _ACT[cell.activation],
        "no_gate": cell.mode == "no_gate",
        "precision": precision or PRECISION,
        "block_b": block_b,
        "dot_dtype": dot_dtype,
    }
    mask_i8 = None if mask is None else mask.reshape(batch, steps).to(torch.int8).contiguous()
    keep = None if drop is None else drop[0].contiguous()
    return _FusedCfC.apply(
        meta, xproj, h0.contiguous(), dt.reshape(batch, steps).contiguous(), mask_i8, keep,
        w["w_rec"].contiguous(), w["w_head"].contiguous(), w["b_head"].contiguous(),
    )  # fmt: skip
