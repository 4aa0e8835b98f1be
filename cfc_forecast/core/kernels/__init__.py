"""Fused GPU kernels for the CfC sequence loop (Triton), and the rules for when they run.

Nothing here imports triton at import time: :func:`run_fused` loads :mod:`cfc_forecast.core.kernels.fused` (which does)
on its first call. Install triton with ``pip install 'cfc-forecast[kernels]'``.

What the fused kernel covers: a :class:`~cfc_forecast.core.encoder.CfCEncoder` without mixed memory, with one backbone
layer, mode ``default`` or ``no_gate``, backbone activation ``tanh``, ``lecun_tanh`` or ``relu``, either head
activation, backbone dropout, padding masks and state in/out; float32 (TF32 dots) or float64 tensors on a CUDA
device. Everything else runs today's path (the native loop, or the pure-PyTorch loop).

It is off by default: ``impl="auto"`` keeps today's path on CUDA until a device run has recorded the kernel's
correctness and speed (``benchmarks/gpu_check.py``). ``impl="fused"`` asks for it (an error says why it cannot run),
and ``CFC_FORECAST_FUSED=1`` lets ``impl="auto"`` pick it on CUDA wherever it applies. ``TRITON_INTERPRET=1`` runs
it on CPU tensors in Triton's interpreter (the tests; slow, float32/float64 only).
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor

# the largest hidden and backbone widths the kernel takes: its five weight tiles (H x U each) stay in registers up to
# about 64 x 128 in float32 on an H100-class chip; larger ones spill to local memory (slower, still right)
MAX_WIDTH = 256
ACTIVATIONS = ("tanh", "lecun_tanh", "relu")
MODES = ("default", "no_gate")
# autocast (bfloat16 matmul operands): the interpreter cannot check it (its bf16 dots are wrong), so it stays off until
# a device run has recorded its numbers (benchmarks/gpu_check.py switches it on for that run)
ALLOW_AUTOCAST = False


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, read when triton loads)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def fused_by_default() -> bool:
    """Whether ``impl="auto"`` picks the fused kernel on CUDA: only with ``CFC_FORECAST_FUSED=1`` until measured."""
    return os.environ.get("CFC_FORECAST_FUSED", "0") == "1"


def fused_reason(encoder, x: Tensor) -> str | None:
    """Why the fused kernel cannot run ``encoder`` on ``x`` (one clause), or None when it can.

    Args:
        encoder: a :class:`~cfc_forecast.core.encoder.CfCEncoder`.
        x: its input (B, T, F).
    """
    cell = encoder.cell
    if encoder.memory is not None:
        return "mixed memory is not fused (the native loop runs it)"
    if cell.backbone_layers != 1:
        return f"backbone_layers={cell.backbone_layers}: the fused kernel has exactly one backbone layer"
    if cell.mode not in MODES:
        return f"mode {cell.mode!r} is not fused (only {', '.join(MODES)})"
    if cell.activation not in ACTIVATIONS:
        return f"activation {cell.activation!r} is not fused (only {', '.join(ACTIVATIONS)})"
    if max(cell.hidden_size, cell.backbone_units) > MAX_WIDTH:
        return f"hidden_size and backbone_units must be <= {MAX_WIDTH} (the weights stay on chip)"
    batch, steps = x.shape[:2]
    if batch * steps * max(4 * cell.hidden_size, cell.backbone_units) >= 2**31:
        return "the saved activations would pass 2**31 elements (32-bit offsets): split the batch or the sequence"
    if x.dtype not in (torch.float32, torch.float64):
        return f"dtype {x.dtype} is not fused (float32 or float64)"
    if torch.is_autocast_enabled(x.device.type) and not ALLOW_AUTOCAST:
        return "autocast (bfloat16) is not fused yet: it has not been verified on a GPU"
    if x.device.type != "cuda" and not interpreting():
        return f"the input is on {x.device.type}, not CUDA (TRITON_INTERPRET=1 runs the kernel on CPU, for tests)"
    if not triton_installed():
        return "triton is not installed (pip install 'cfc-forecast[kernels]')"
    return None


def run_fused(cell, x, h0, dt, mask, drop) -> Tensor:
    """The states (B, T, H) from the fused kernels; see :func:`cfc_forecast.core.kernels.fused.run_fused`."""
    from cfc_forecast.core.kernels.fused import run_fused as run

    return run(cell, x, h0, dt, mask, drop)


def fused_status() -> str:
    """One line on the fused CUDA kernel: which path ``impl="auto"`` runs on CUDA, and why."""
    have = "installed" if triton_installed() else "not installed (pip install 'cfc-forecast[kernels]')"
    cuda = torch.cuda.is_available()
    if fused_by_default():
        choice = "impl='auto' runs it on CUDA where it applies (CFC_FORECAST_FUSED=1)"
    else:
        choice = (
            "off by default until a device run has recorded its correctness and speed: impl='auto' runs the "
            "native loop on CUDA (CFC_FORECAST_FUSED=1 or impl='fused' to use it)"
        )
    where = "a CUDA device is present" if cuda else "no CUDA device here (the CPU runs the native loop)"
    return (
        f"fused CUDA kernel (Triton): triton {have}; {where}; {choice}; covers one backbone layer, no mixed memory, "
        f"modes {'/'.join(MODES)}, activations {'/'.join(ACTIVATIONS)}, float32 (TF32) and float64"
    )
