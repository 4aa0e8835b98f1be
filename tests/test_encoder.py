"""CfCEncoder: every loop implementation against the float64 reference, gradients, padding, chunks, batching."""

from __future__ import annotations

import itertools

import pytest
import torch

from cfc_forecast import CfCEncoder
from tests import reference

F, H = 5, 6
MODES = ["default", "no_gate", "pure"]


def make_encoder(impl, mode="default", layers=1, act="lecun_tanh", head="tanh", **kw) -> CfCEncoder:
    enc = CfCEncoder(F, H, mode=mode, backbone_layers=layers, backbone_units=7, activation=act,
                     head_activation=head, impl=impl, **kw).double()  # fmt: skip
    if mode == "pure":
        with torch.no_grad():
            enc.cell.A.uniform_(0.5, 1.5)
            enc.cell.w_tau.uniform_(-1.0, 1.0)
    return enc


def inputs(batch=4, steps=9, padded=True):
    x = torch.randn(batch, steps, F, dtype=torch.float64)
    dt = torch.rand(batch, steps, dtype=torch.float64) * 2
    mask = torch.rand(batch, steps) > 0.3 if padded else None
    return x, dt, mask


CASES = list(itertools.product(MODES, [0, 1, 2], ["lecun_tanh", "silu", "relu", "gelu"], ["tanh", "lecun_tanh"]))


@pytest.mark.parametrize(("mode", "layers", "act", "head"), CASES)
def test_encoder_matches_float64_reference(impl, mode, layers, act, head):
    enc = make_encoder(impl, mode, layers, act, head)
    x, dt, mask = inputs()
    h0 = torch.randn(4, H, dtype=torch.float64)
    states, last = enc(x, dt, mask, h0)
    expected, h_ref, _ = reference.sequence(enc, x, dt, mask, h0)
    torch.testing.assert_close(states, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, h_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("wiring", ["ncps", "paper"])
def test_mixed_memory_matches_float64_reference(impl, wiring):
    enc = make_encoder(impl, mixed_memory=True, memory_wiring=wiring, forget_bias=2.1)
    x, dt, mask = inputs()
    h0, c0 = torch.randn(4, H, dtype=torch.float64), torch.randn(4, H, dtype=torch.float64)
    states, (h, c) = enc(x, dt, mask, (h0, c0))
    expected, h_ref, c_ref = reference.sequence(enc, x, dt, mask, h0, c0)
    torch.testing.assert_close(states, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close((h, c), (h_ref, c_ref), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("mode", "layers", "act"), [("default", 1, "lecun_tanh"), ("no_gate", 2, "silu"),
                                                     ("pure", 1, "gelu"), ("default", 0, "relu")])  # fmt: skip
def test_gradcheck_in_x_dt_and_state(impl, mode, layers, act):
    enc = make_encoder(impl, mode, layers, act)
    x, dt, mask = inputs(batch=3, steps=5)
    x.requires_grad_()
    dt = (dt + 0.1).requires_grad_()
    h0 = torch.randn(3, H, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: enc(a, b, mask, c)[0], (x, dt, h0))


MEMORY = [{}, {"mixed_memory": True, "memory_wiring": "ncps"}, {"mixed_memory": True, "memory_wiring": "paper"}]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("memory", MEMORY, ids=["plain", "ncps-memory", "paper-memory"])
def test_parameter_gradients_equal_the_reference(impl, mode, memory):
    enc = make_encoder(impl, mode, layers=2, act="silu", **memory)
    x, dt, mask = inputs()
    weights = torch.randn(4, 9, H, dtype=torch.float64)
    (enc(x, dt, mask)[0] * weights).sum().backward()
    ours = [p.grad.clone() for p in enc.parameters()]
    ref = make_encoder("python", mode, layers=2, act="silu", **memory)
    ref.load_state_dict(enc.state_dict())
    (reference.sequence(ref, x, dt, mask)[0] * weights).sum().backward()  # autograd through the reference
    for (name, _), a, b in zip(enc.named_parameters(), ours, [p.grad for p in ref.parameters()], strict=False):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("wiring", ["ncps", "paper"])
def test_mixed_memory_gradcheck_in_x_dt_and_both_states(impl, wiring):
    enc = make_encoder(impl, layers=1, mixed_memory=True, memory_wiring=wiring, forget_bias=0.5)
    x, dt, mask = inputs(batch=3, steps=5)
    x.requires_grad_()
    dt = (dt + 0.1).requires_grad_()
    h0 = torch.randn(3, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(3, H, dtype=torch.float64, requires_grad=True)

    def run(a, b, h, c):
        states, (_, c_last) = enc(a, b, mask, (h, c))
        return states, c_last  # the final cell state carries gradients too (chunked training)

    assert torch.autograd.gradcheck(run, (x, dt, h0, c0))


@pytest.mark.parametrize("batch", [1, 3, H])  # B == H: the shape at which ncps's (B,) time bug was silent
def test_batch_with_per_sample_dt_equals_one_at_a_time(impl, batch):
    enc = make_encoder(impl).float()
    x = torch.randn(batch, 7, F)
    dt = torch.rand(batch, 7) * 3  # every sample its own elapsed times
    states, _ = enc(x, dt)
    for i in range(batch):
        single, _ = enc(x[i : i + 1], dt[i : i + 1])
        torch.testing.assert_close(states[i : i + 1], single, rtol=1e-5, atol=1e-6)


def test_padding_carries_the_state_and_states_repeat_it(impl):
    enc = make_encoder(impl)
    x, dt, _ = inputs(batch=2, steps=6, padded=False)
    mask = torch.tensor([[True, True, False, False, True, False], [True] * 6])
    states, last = enc(x, dt, mask)
    assert torch.equal(states[0, 2], states[0, 1]) and torch.equal(states[0, 3], states[0, 1])
    assert torch.equal(states[0, 5], states[0, 4]) and torch.equal(last[0], states[0, 4])
    # the padded steps' inputs do not matter
    x2 = x.clone()
    x2[0, [2, 3, 5]] = 100.0
    torch.testing.assert_close(enc(x2, dt, mask)[0], states, rtol=0, atol=0)
    # and a sequence with its padding removed gives the same states at its real steps
    real = mask[0]
    alone, _ = enc(x[:1, real], dt[:1, real])
    torch.testing.assert_close(alone[0], states[0, real], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mixed", [False, True])
def test_chunked_equals_whole(impl, mixed):
    enc = make_encoder(impl, mixed_memory=mixed)
    x, dt, mask = inputs(steps=12)
    whole, last = enc(x, dt, mask)
    state, parts = None, []
    for lo, hi in [(0, 5), (5, 6), (6, 12)]:
        part, state = enc(x[:, lo:hi], dt[:, lo:hi], mask[:, lo:hi], state)
        parts.append(part)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, last, rtol=1e-12, atol=1e-12)


def test_default_dt_is_one_and_dt_may_be_3d(impl):
    enc = make_encoder(impl)
    x, _, _ = inputs()
    ones = torch.ones(4, 9, dtype=torch.float64)
    torch.testing.assert_close(enc(x)[0], enc(x, ones)[0], rtol=0, atol=0)
    torch.testing.assert_close(enc(x, ones[..., None])[0], enc(x, ones)[0], rtol=0, atol=0)


def test_dropout_is_active_in_training_and_off_in_eval(impl):
    enc = make_encoder(impl, backbone_dropout=0.3).train()
    x, dt, mask = inputs()
    assert not torch.allclose(enc(x, dt, mask)[0], enc(x, dt, mask)[0])
    torch.manual_seed(1)
    masks = enc._dropout_masks(x)
    torch.manual_seed(1)
    expected, _, _ = reference.sequence(enc, x, dt, mask, drop=masks)
    torch.testing.assert_close(enc(x, dt, mask)[0], expected, rtol=1e-10, atol=1e-10)
    enc.eval()
    plain = make_encoder(impl)
    plain.load_state_dict(enc.state_dict())
    torch.testing.assert_close(enc(x, dt, mask)[0], plain(x, dt, mask)[0], rtol=0, atol=0)


def test_float32_native_paths_agree_with_the_python_loop(impl, two_threads):
    torch.manual_seed(3)
    enc = CfCEncoder(7, 64, impl=impl)  # the benchmark's configuration
    ref = CfCEncoder(7, 64, impl="python")
    ref.load_state_dict(enc.state_dict())
    x, dt = torch.randn(16, 40, 7), torch.rand(16, 40) * 2
    mask = torch.rand(16, 40) > 0.2
    s1, _ = enc(x, dt, mask)
    s2, _ = ref(x, dt, mask)
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=2e-6)
    s1.square().mean().backward()
    s2.square().mean().backward()
    for (name, a), b in zip(enc.named_parameters(), ref.parameters(), strict=False):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_the_raw_loop_runs_where_torch_ships_its_blas():
    # torch's Linux x86 wheels carry MKL with exported sgemm_/dgemm_: there the fast forward must not silently
    # fall back to the ATen loop (the tests above would still pass, only slower)
    import platform

    from cfc_forecast.core.native import native_available

    if not native_available():
        pytest.skip("the native CfC loop is not available here (no compiler)")
    if platform.system() != "Linux" or platform.machine() != "x86_64" or not torch.backends.mkl.is_available():
        pytest.skip("the raw loop's BLAS lookup is checked on Linux x86 builds with MKL")
    assert torch.ops.cfc_forecast.raw_loop_available()


def test_the_native_loop_restores_the_floating_point_mode(impl, two_threads):
    # the CPU loop flushes denormals on the intra-op threads while it runs (speed), and must restore the mode
    enc = make_encoder(impl).float()
    x, dt, _ = inputs()
    states, _ = enc(x.float(), dt.float())
    states.sum().backward()
    # denormal float32 results, flushed to 0 if the mode leaked; 2**20 elements so the worker threads compute too
    assert (torch.full((1 << 20,), 1e-38) / 10 > 0).all()
    small = torch.full((256, 256), 1e-20)
    assert (small @ small > 0).all()  # MKL's threads: 256 products of 1e-40 each


def test_results_survive_later_calls_that_reuse_buffers(impl):
    # the native loop recycles its large buffers once their tensors die; live results must stay untouched
    enc = CfCEncoder(7, 64, impl=impl)
    x1, x2 = torch.randn(32, 96, 7), torch.randn(32, 96, 7)
    with torch.no_grad():
        first, _ = enc(x1)
        kept = first.clone()
        for _ in range(3):
            enc(x2)
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    states, _ = enc(x1)  # with autograd: the saved buffers live until backward frees the graph
    again, _ = enc(x2)
    states.sum().backward()
    torch.testing.assert_close(states.detach(), kept, rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("memory", MEMORY, ids=["plain", "ncps-memory", "paper-memory"])
def test_a_larger_odd_batch_with_everything_on_matches_the_reference(impl, two_threads, mode, memory):
    # B = 37: several vector widths plus a partial one in the fused kernels; dropout, padding, 2 backbone layers
    enc = make_encoder(impl, mode, layers=2, act="gelu", backbone_dropout=0.2, **memory).train()
    x = torch.randn(37, 6, F, dtype=torch.float64)
    dt = torch.rand(37, 6, dtype=torch.float64) * 2
    mask = torch.rand(37, 6) > 0.2
    torch.manual_seed(5)
    drop = enc._dropout_masks(x)
    torch.manual_seed(5)
    states, _ = enc(x, dt, mask)  # draws the same masks
    weights = torch.randn(37, 6, H, dtype=torch.float64)
    (states * weights).sum().backward()
    ours = [p.grad.clone() for p in enc.parameters()]
    ref = make_encoder("python", mode, layers=2, act="gelu", **memory)
    ref.load_state_dict(enc.state_dict())
    expected, _, _ = reference.sequence(ref, x, dt, mask, drop=drop)
    torch.testing.assert_close(states, expected, rtol=1e-10, atol=1e-10)
    (expected * weights).sum().backward()
    for (name, _), a, b in zip(enc.named_parameters(), ours, [p.grad for p in ref.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")
