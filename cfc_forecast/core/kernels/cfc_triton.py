"""The fused CfC sequence kernels in Triton: a persistent forward and a reverse-time persistent backward.

Imports triton: load it only through :mod:`cfc_forecast.core.kernels.fused`, never from ``import cfc_forecast``.

The cell (Hasani et al. 2022, ../../shared/CFC.md; one backbone layer, weights folded by
:func:`cfc_forecast.core.native.fold_weights`), per step t with the hoisted input projection ``xp_t`` (B, U)::

    a_t = xp_t + h_{t-1} W_rec^T                 (B, U)   backbone pre-activation
    z_t = act(a_t) * keep_t                      (B, U)   act: tanh (lecun_tanh folded) or relu; keep: dropout
    y_t = z_t W_head^T + b_head = [ff1, ff2, t_a, t_b]    (B, 4H)
    g   = sigmoid(t_a * dt + t_b)
    h'  = s tanh(ff1) (1 - g) + g s tanh(ff2)    default mode  (s: 1, or 1.7159 for a lecun_tanh head)
    h'  = s tanh(ff1) + g s tanh(ff2)            no_gate mode
    h_t = h' where mask_t else h_{t-1}

Layout of the work (the ideas of FlashRNN, HASTE and cuDNN's persistent RNNs, written anew here):

- one program per tile of ``BLOCK_B`` sequences runs the whole time loop; the recurrent and the four head weight
  tiles are loaded once, before the loop, and stay on chip; per step the program does the recurrent matmul, the
  activation, the four head matmuls and the gated update without leaving the kernel;
- the input half of the backbone (``x W_x^T + b``) is one batched matmul outside, before the kernel (HASTE);
- the forward stores ``z`` (before dropout) and ``y`` for the backward; the backward walks time in reverse,
  recomputes nothing but the pointwise terms, and writes the per-step gradients of the pre-activations
  (``da``: (B, T, U), ``dy``: (B, T, 4H)); the weight gradients are then each ONE matmul over all steps and
  sequences, in torch (cuDNN's and HASTE's backward): no atomics, no grid-wide synchronisation, and the same bits
  on every run.

tanh is written as 2 sigmoid(2x) - 1 (finite for every input). The interpreter (``TRITON_INTERPRET=1``) must be on
before triton is first imported (triton.language's own jit functions, tl.sigmoid and tl.sum, are made then); the
test suite sets it in tests/conftest.py, since torch._dynamo (loaded by lightning) imports triton early.

Every tile dimension is a power of two >= 16 (what ``tl.dot`` needs on a GPU); sizes that are not (H = 20, a
batch of 37) are padded in registers: loads outside the real sizes read 0 and stores are masked. A zero-padded
hidden unit stays exactly 0 (its heads are 0, so tanh(0) = 0 on both branches), so it never leaks into real ones.
"""

# constexpr branches as statements: each picks code at compile time, a ternary would read as a run-time select
# ruff: noqa: SIM108

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def cfc_forward_kernel(
    xp_ptr,  # (B, T, U) input projections, bias included
    h0_ptr,  # (B, H) initial state
    dt_ptr,  # (B, T) elapsed times
    mask_ptr,  # (B, T) int8, 1 at real steps (read only with HAS_MASK)
    keep_ptr,  # (B, T, U) dropout keep masks scaled by 1 / (1 - p) (read only with HAS_DROP)
    wrec_ptr,  # (U, H) recurrent half of the backbone layer
    whead_ptr,  # (4H, U) fused heads ff1, ff2, t_a, t_b
    bhead_ptr,  # (4H,)
    states_ptr,  # out (B, T, H)
    z_ptr,  # out (B, T, U): act(a) before dropout (written only with SAVE)
    y_ptr,  # out (B, T, 4H): head pre-activations (written only with SAVE)
    B,
    T,
    H,
    U,
    HEAD_SCALE: tl.constexpr,
    ACT: tl.constexpr,  # 1 tanh, 2 relu
    NO_GATE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_DROP: tl.constexpr,
    SAVE: tl.constexpr,
    PRECISION: tl.constexpr,  # "ieee" or "tf32" (float32 dots); ignored by the interpreter
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_U: tl.constexpr,
):
    pid = tl.program_id(0)
    rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rh = tl.arange(0, BLOCK_H)
    ru = tl.arange(0, BLOCK_U)
    mb, mh, mu = rb < B, rh < H, ru < U
    m_bh = mb[:, None] & mh[None, :]
    m_bu = mb[:, None] & mu[None, :]
    m_hu = mh[:, None] & mu[None, :]
    m_uh = mu[:, None] & mh[None, :]

    # the weights, once for the whole sequence: W_rec^T (H, U) and each head's W^T (U, H)
    wrec_t = tl.load(wrec_ptr + ru[None, :] * H + rh[:, None], mask=m_hu, other=0.0)
    head_t = whead_ptr + rh[None, :] * U + ru[:, None]
    w1 = tl.load(head_t, mask=m_uh, other=0.0)
    w2 = tl.load(head_t + H * U, mask=m_uh, other=0.0)
    wa = tl.load(head_t + 2 * H * U, mask=m_uh, other=0.0)
    wb = tl.load(head_t + 3 * H * U, mask=m_uh, other=0.0)
    b1 = tl.load(bhead_ptr + rh, mask=mh, other=0.0)[None, :]
    b2 = tl.load(bhead_ptr + H + rh, mask=mh, other=0.0)[None, :]
    ba = tl.load(bhead_ptr + 2 * H + rh, mask=mh, other=0.0)[None, :]
    bb = tl.load(bhead_ptr + 3 * H + rh, mask=mh, other=0.0)[None, :]

    h = tl.load(h0_ptr + rb[:, None] * H + rh[None, :], mask=m_bh, other=0.0)
    row_u = rb[:, None] * T * U + ru[None, :]
    row_h = rb[:, None] * T * H + rh[None, :]
    row_y = rb[:, None] * T * 4 * H + rh[None, :]
    for t in range(T):
        xp = tl.load(xp_ptr + row_u + t * U, mask=m_bu, other=0.0)
        a = xp + tl.dot(h.to(wrec_t.dtype), wrec_t, input_precision=PRECISION)
        if ACT == 1:
            z = 2.0 * tl.sigmoid(2.0 * a) - 1.0
        else:
            z = tl.maximum(a, 0.0)
        if SAVE:
            tl.store(z_ptr + row_u + t * U, z, mask=m_bu)
        if HAS_DROP:
            z = z * tl.load(keep_ptr + row_u + t * U, mask=m_bu, other=0.0)
        zc = z.to(w1.dtype)
        ff1 = tl.dot(zc, w1, input_precision=PRECISION) + b1
        ff2 = tl.dot(zc, w2, input_precision=PRECISION) + b2
        ta = tl.dot(zc, wa, input_precision=PRECISION) + ba
        tb = tl.dot(zc, wb, input_precision=PRECISION) + bb
        if SAVE:
            y_t = y_ptr + row_y + t * 4 * H
            tl.store(y_t, ff1, mask=m_bh)
            tl.store(y_t + H, ff2, mask=m_bh)
            tl.store(y_t + 2 * H, ta, mask=m_bh)
            tl.store(y_t + 3 * H, tb, mask=m_bh)
        d = tl.load(dt_ptr + rb * T + t, mask=mb, other=0.0)[:, None]
        f1 = HEAD_SCALE * (2.0 * tl.sigmoid(2.0 * ff1) - 1.0)
        f2 = HEAD_SCALE * (2.0 * tl.sigmoid(2.0 * ff2) - 1.0)
        g = tl.sigmoid(ta * d + tb)
        if NO_GATE:
            h_new = f1 + g * f2
        else:
            h_new = f1 * (1.0 - g) + g * f2
        if HAS_MASK:
            real = tl.load(mask_ptr + rb * T + t, mask=mb, other=0)[:, None]
            h_new = tl.where(real != 0, h_new, h)
        h = h_new.to(h.dtype)
        tl.store(states_ptr + row_h + t * H, h, mask=m_bh)


@triton.jit
def cfc_backward_kernel(
    gs_ptr,  # (B, T, H) gradient of the states
    z_ptr,  # (B, T, U) saved act(a), before dropout
    y_ptr,  # (B, T, 4H) saved head pre-activations
    dt_ptr,  # (B, T)
    mask_ptr,  # (B, T) int8 (HAS_MASK)
    keep_ptr,  # (B, T, U) (HAS_DROP)
    wrec_ptr,  # (U, H)
    whead_ptr,  # (4H, U)
    da_ptr,  # out (B, T, U): gradient of the backbone pre-activation = of the input projection
    dy_ptr,  # out (B, T, 4H): gradient of the head pre-activations
    ddt_ptr,  # out (B, T): gradient of dt
    dh0_ptr,  # out (B, H): gradient of the initial state
    B,
    T,
    H,
    U,
    HEAD_SCALE: tl.constexpr,
    ACT: tl.constexpr,
    NO_GATE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_DROP: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_U: tl.constexpr,
):
    pid = tl.program_id(0)
    rb = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    rh = tl.arange(0, BLOCK_H)
    ru = tl.arange(0, BLOCK_U)
    mb, mh, mu = rb < B, rh < H, ru < U
    m_bh = mb[:, None] & mh[None, :]
    m_bu = mb[:, None] & mu[None, :]
    m_hu = mh[:, None] & mu[None, :]
    m_uh = mu[:, None] & mh[None, :]

    # the weights as stored, once: W_rec (U, H) and each head's W (H, U)
    wrec = tl.load(wrec_ptr + ru[:, None] * H + rh[None, :], mask=m_uh, other=0.0)
    head = whead_ptr + rh[:, None] * U + ru[None, :]
    w1 = tl.load(head, mask=m_hu, other=0.0)
    w2 = tl.load(head + H * U, mask=m_hu, other=0.0)
    wa = tl.load(head + 2 * H * U, mask=m_hu, other=0.0)
    wb = tl.load(head + 3 * H * U, mask=m_hu, other=0.0)

    row_u = rb[:, None] * T * U + ru[None, :]
    row_h = rb[:, None] * T * H + rh[None, :]
    row_y = rb[:, None] * T * 4 * H + rh[None, :]
    dh = tl.zeros((BLOCK_B, BLOCK_H), dtype=gs_ptr.dtype.element_ty)
    for i in range(T):
        t = T - 1 - i
        dh += tl.load(gs_ptr + row_h + t * H, mask=m_bh, other=0.0)
        if HAS_MASK:
            real = tl.load(mask_ptr + rb * T + t, mask=mb, other=0)[:, None] != 0
            d_new = tl.where(real, dh, 0.0)
            d_skip = tl.where(real, 0.0, dh)  # a padded step passes its gradient straight to h_{t-1}
        else:
            d_new = dh
        y_t = y_ptr + row_y + t * 4 * H
        ff1 = tl.load(y_t, mask=m_bh, other=0.0)
        ff2 = tl.load(y_t + H, mask=m_bh, other=0.0)
        ta = tl.load(y_t + 2 * H, mask=m_bh, other=0.0)
        tb = tl.load(y_t + 3 * H, mask=m_bh, other=0.0)
        d = tl.load(dt_ptr + rb * T + t, mask=mb, other=0.0)[:, None]
        th1 = 2.0 * tl.sigmoid(2.0 * ff1) - 1.0
        th2 = 2.0 * tl.sigmoid(2.0 * ff2) - 1.0
        g = tl.sigmoid(ta * d + tb)
        if NO_GATE:
            d_f1 = d_new
            d_g = d_new * (HEAD_SCALE * th2)
        else:
            d_f1 = d_new * (1.0 - g)
            d_g = d_new * (HEAD_SCALE * (th2 - th1))
        d_ff1 = d_f1 * (HEAD_SCALE * (1.0 - th1 * th1))
        d_ff2 = d_new * g * (HEAD_SCALE * (1.0 - th2 * th2))
        d_tb = d_g * g * (1.0 - g)
        d_ta = d_tb * d
        tl.store(ddt_ptr + rb * T + t, tl.sum(d_tb * ta, axis=1), mask=mb)
        dy_t = dy_ptr + row_y + t * 4 * H
        tl.store(dy_t, d_ff1, mask=m_bh)
        tl.store(dy_t + H, d_ff2, mask=m_bh)
        tl.store(dy_t + 2 * H, d_ta, mask=m_bh)
        tl.store(dy_t + 3 * H, d_tb, mask=m_bh)
        dz = tl.dot(d_ff1.to(w1.dtype), w1, input_precision=PRECISION)
        dz += tl.dot(d_ff2.to(w1.dtype), w2, input_precision=PRECISION)
        dz += tl.dot(d_ta.to(w1.dtype), wa, input_precision=PRECISION)
        dz += tl.dot(d_tb.to(w1.dtype), wb, input_precision=PRECISION)
        if HAS_DROP:
            dz = dz * tl.load(keep_ptr + row_u + t * U, mask=m_bu, other=0.0)
        z = tl.load(z_ptr + row_u + t * U, mask=m_bu, other=0.0)
        if ACT == 1:
            da = dz * (1.0 - z * z)
        else:
            da = tl.where(z > 0.0, dz, 0.0)
        da = da.to(dh.dtype)
        tl.store(da_ptr + row_u + t * U, da, mask=m_bu)
        dh_prev = tl.dot(da.to(wrec.dtype), wrec, input_precision=PRECISION).to(dh.dtype)
        if HAS_MASK:
            dh_prev += d_skip
        dh = dh_prev
    tl.store(dh0_ptr + rb[:, None] * H + rh[None, :], dh, mask=m_bh)
