"""The fused Triton CfC kernel, checked in Triton's CPU interpreter (``TRITON_INTERPRET=1``) against the PyTorch loop.

What the interpreter cannot check (cfc_forecast/core/kernels/__init__.py, README): bfloat16 (its ``tl.dot`` on bf16 is
wrong), TF32 (its float32 dots are exact), programs running in parallel, registers and shared memory. Those are
for ``benchmarks/gpu_check.py`` on a device; here float32 and float64 numbers, gradients, padding and determinism.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cfc_forecast import CfCEncoder
from cfc_forecast.core.kernels import fused_reason, fused_status, triton_installed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fused():
    """The kernels' wrapper module, with Triton's interpreter on (tests/conftest.py sets it before triton loads)."""
    if not triton_installed():
        if os.environ.get("CI"):
            pytest.fail("triton is not installed in CI (.ci/run installs the [kernels] extra)")
        pytest.skip("triton is not installed (pip install 'cfc-forecast[kernels]')")
    if os.environ.get("TRITON_INTERPRET") != "1":  # tests/conftest.py sets it before triton loads
        pytest.skip("TRITON_INTERPRET is not 1 in this process: the kernels would need a GPU")
    from cfc_forecast.core.kernels import fused as module

    return module


def pair(dtype=torch.float64, **options):
    """The same encoder twice: the pure-PyTorch loop (the oracle) and the fused kernel."""
    options.setdefault("backbone_units", 24)
    ref = CfCEncoder(3, 20, impl="python", **options).to(dtype)
    fz = CfCEncoder(3, 20, impl="fused", **options).to(dtype)
    fz.load_state_dict(ref.state_dict())
    return ref, fz


def inputs(dtype=torch.float64, batch=19, steps=6):
    """x, dt, mask, h0 with B = 19 (not a multiple of the 16-row tile) and padding in the middle and at the ends."""
    x = torch.randn(batch, steps, 3, dtype=dtype)
    dt = (torch.rand(batch, steps, dtype=dtype) + 0.2).requires_grad_()
    mask = torch.rand(batch, steps) > 0.3
    mask[0] = False  # a sequence that is all padding
    h0 = (0.5 * torch.randn(batch, 20, dtype=dtype)).requires_grad_()
    return x, dt, mask, h0


def loss_weights(states):
    """A fixed random projection of the states, the same numbers in float32 and float64."""
    gen = torch.Generator().manual_seed(7)
    return torch.randn(states.shape, generator=gen, dtype=torch.float64).to(states.dtype)


def run(enc, x, dt, mask, h0, seed=1):
    """States, last state and the gradients of a fixed random projection of the states (dt, h0, parameters)."""
    torch.manual_seed(seed)  # the same dropout masks on both sides
    states, last = enc(x, dt, mask, h0)
    weights = loss_weights(states)
    loss = (states * weights).sum() + last.square().sum()
    grads = torch.autograd.grad(loss, [dt, h0, *enc.parameters()])
    return states.detach(), grads


@pytest.mark.parametrize("mode", ["default", "no_gate"])
@pytest.mark.parametrize("activation", ["tanh", "lecun_tanh", "relu"])
@pytest.mark.parametrize("head_activation", ["tanh", "lecun_tanh"])
def test_fused_float64_equals_the_pytorch_loop(fused, mode, activation, head_activation):
    ref, fz = pair(mode=mode, activation=activation, head_activation=head_activation)
    args = inputs()
    s_ref, g_ref = run(ref, *args)
    s_fz, g_fz = run(fz, *args)
    torch.testing.assert_close(s_fz, s_ref, rtol=0, atol=1e-12)
    for a, b in zip(g_fz, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_fused_float64_with_dropout_in_training(fused):
    ref, fz = pair(backbone_dropout=0.3)
    ref.train(), fz.train()
    args = inputs()
    s_ref, g_ref = run(ref, *args)
    s_fz, g_fz = run(fz, *args)
    torch.testing.assert_close(s_fz, s_ref, rtol=0, atol=1e-12)
    for a, b in zip(g_fz, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("activation", ["lecun_tanh", "relu"])
def test_fused_float32_against_float64(fused, activation):
    """float32 on the kernel against the float64 PyTorch loop: float32 rounding, nothing more."""
    ref, _ = pair(activation=activation)
    fz = CfCEncoder(3, 20, backbone_units=24, activation=activation, impl="fused")
    fz.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x, dt, mask, h0 = inputs()
    s_ref, g_ref = run(ref, x, dt, mask, h0)
    dt32, h032 = dt.detach().float().requires_grad_(), h0.detach().float().requires_grad_()
    s_fz, g_fz = run(fz, x.float(), dt32, mask, h032)
    torch.testing.assert_close(s_fz.double(), s_ref, rtol=0, atol=2e-5)
    for a, b in zip(g_fz, g_ref, strict=True):
        scale = b.abs().max().clamp(min=1e-6)
        assert float((a.double() - b).abs().max() / scale) < 1e-4


def test_padded_steps_repeat_the_state(fused):
    _, fz = pair()
    x, dt, mask, h0 = inputs()
    with torch.no_grad():
        states, _ = fz(x, dt, mask, h0)
    prev = torch.cat([h0.detach()[:, None], states[:, :-1]], dim=1)
    assert torch.equal(states[~mask], prev[~mask])
    assert torch.equal(states[0], h0.detach()[0].expand(6, -1))  # all padding: the initial state throughout


def test_chunked_equals_whole(fused):
    """A sequence fed in two chunks, the state carried, gives the same states and gradients as fed whole."""
    _, fz = pair()
    x, dt, mask, h0 = inputs(steps=8)
    whole, g_whole = run(fz, x, dt, mask, h0)

    torch.manual_seed(1)
    first, last1 = fz(x[:, :3], dt[:, :3], mask[:, :3], h0)
    second, last2 = fz(x[:, 3:], dt[:, 3:], mask[:, 3:], last1)
    states = torch.cat([first, second], dim=1)
    weights = loss_weights(states)
    grads = torch.autograd.grad((states * weights).sum() + last2.square().sum(), [dt, h0, *fz.parameters()])
    torch.testing.assert_close(states.detach(), whole, rtol=0, atol=1e-14)
    for a, b in zip(grads, g_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_two_runs_are_bit_equal(fused):
    _, fz = pair(dtype=torch.float32)
    x, dt, mask, h0 = inputs(dtype=torch.float32)
    s1, g1 = run(fz, x, dt, mask, h0)
    s2, g2 = run(fz, x, dt, mask, h0)
    assert torch.equal(s1, s2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def test_batch_tiles_agree(fused):
    """One program of 32 rows and two of 16 compute the same rows."""
    enc = CfCEncoder(3, 20, backbone_units=24)
    x, dt, mask, h0 = inputs(dtype=torch.float32)
    args = (enc.cell, x, h0.detach(), dt.detach()[..., None], mask[..., None], None)
    with torch.no_grad():
        a = fused.run_fused(*args, block_b=16)
        b = fused.run_fused(*args, block_b=32)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_the_wrapper_asserts_gpu_tiles(fused):
    assert [fused.tile(n) for n in (1, 16, 20, 64, 100)] == [16, 16, 32, 64, 128]
    fused.check_tiles(16, 32, 128)
    for bad in ((8, 32, 32), (16, 24, 32), (16, 32, 12)):
        with pytest.raises(AssertionError, match="power of two >= 16"):
            fused.check_tiles(*bad)
    enc = CfCEncoder(3, 20, backbone_units=24)
    x, dt, mask, h0 = inputs(dtype=torch.float32)
    with pytest.raises(AssertionError, match="BLOCK_B = 8"):
        fused.run_fused(enc.cell, x, h0.detach(), dt.detach()[..., None], None, None, block_b=8)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"mixed_memory": True}, "mixed memory"),
        ({"backbone_layers": 2}, "backbone_layers=2"),
        ({"backbone_layers": 0}, "backbone_layers=0"),
        ({"mode": "pure"}, "mode 'pure'"),
        ({"activation": "silu"}, "activation 'silu'"),
    ],
)
def test_impl_fused_says_why_it_cannot_run(options, words):
    enc = CfCEncoder(3, 20, backbone_units=24, impl="fused", **options)
    with pytest.raises(ValueError, match=f"impl='fused' cannot run here: {words}"):
        enc(torch.randn(2, 4, 3))


def test_fused_reasons_for_device_dtype_and_autocast(monkeypatch):
    enc = CfCEncoder(3, 20, backbone_units=24)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "not CUDA" in fused_reason(enc, torch.randn(2, 4, 3))
    assert "dtype torch.float16" in fused_reason(enc, torch.randn(2, 4, 3).half())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "autocast" in fused_reason(enc, torch.randn(2, 4, 3))
    huge = torch.empty(2**16, 2**11, 3, device="meta")  # 2**27 rows x 4H = 80: past 2**31 elements, no memory
    assert "2**31" in fused_reason(enc, huge)


def test_auto_keeps_todays_path_and_the_cli_says_so(monkeypatch):
    """impl='auto' never runs the fused kernel on the CPU, and off by default on CUDA; `native` prints both lines."""
    monkeypatch.delenv("CFC_FORECAST_FUSED", raising=False)
    assert "off by default" in fused_status()
    monkeypatch.setenv("CFC_FORECAST_FUSED", "1")
    assert "CFC_FORECAST_FUSED=1" in fused_status()
    env = {k: v for k, v in os.environ.items() if k != "CFC_FORECAST_FUSED"}
    env["CFC_FORECAST_NATIVE"] = "0"  # the line on the native loop without building it
    out = subprocess.run(
        [sys.executable, "-m", "cfc_forecast.commands", "native"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert "fused CUDA kernel (Triton)" in out.stdout and "off by default" in out.stdout, out.stdout + out.stderr


def test_importing_the_package_does_not_import_triton():
    # (torch._dynamo, which lightning loads, imports triton itself where it is installed: not in this list)
    code = (
        "import sys, cfc_forecast, cfc_forecast.core.encoder, cfc_forecast.core.kernels, cfc_forecast.core.native\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_autocast_plumbing_in_float16(fused, monkeypatch):
    """The autocast path (16-bit matmul operands, float32 state, sums and gradients), with float16 standing in for
    bfloat16, whose dots the interpreter gets wrong. Off by default until a device run has checked bfloat16."""
    import cfc_forecast.core.kernels as kernels

    monkeypatch.setattr(kernels, "ALLOW_AUTOCAST", True)
    ref, fz = pair(dtype=torch.float32)
    x, dt, mask, h0 = inputs(dtype=torch.float32)
    s_ref, g_ref = run(ref, x, dt, mask, h0)
    with torch.autocast("cpu", dtype=torch.float16):
        s_fz, g_fz = run(fz, x, dt, mask, h0)
    assert s_fz.dtype == torch.float32 and all(g.dtype == torch.float32 for g in g_fz)
    torch.testing.assert_close(s_fz, s_ref, rtol=0, atol=5e-3)
    for a, b in zip(g_fz, g_ref, strict=True):
        assert float((a - b).abs().max() / b.abs().max().clamp(min=1e-6)) < 5e-3
