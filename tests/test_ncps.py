"""Weights carried over from ncps (the reference implementation): same outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from cfc_forecast import CfCEncoder

ncps_torch = pytest.importorskip("ncps.torch", reason="ncps (the [dev] extra) is the test oracle")

B, T, F, H = 5, 11, 4, 8


def pair(impl, mode="default", layers=1, mixed=False, dropout=0.0, act="lecun_tanh"):
    ref = ncps_torch.CfC(F, H, mode=mode, mixed_memory=mixed, backbone_layers=layers, backbone_units=16,
                         backbone_dropout=dropout, activation=act)  # fmt: skip
    ours = CfCEncoder(F, H, mode=mode, mixed_memory=mixed, backbone_layers=layers, backbone_units=16,
                      activation=act, impl=impl)  # fmt: skip
    ours.load_ncps_state_dict(ref.state_dict())
    return ref.eval(), ours.eval()


def run_ncps(ref, x, dt):
    # ncps 1.0.1 slices timespans to (B,) per step, which breaks for B != H: expand them to (B, T, H)
    return ref(x, timespans=dt[..., None].expand(-1, -1, H))


@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("mixed", [False, True])
def test_outputs_and_gradients_equal_ncps(impl, mode, layers, mixed):
    # layers=3 with dropout > 0 shifts ncps's module indices (Dropout modules between the Linears)
    ref, ours = pair(impl, mode, layers, mixed, dropout=0.2 if layers == 3 else 0.0, act="silu")
    x, dt = torch.randn(B, T, F), torch.rand(B, T) * 2 + 0.1
    y_ref, h_ref = run_ncps(ref, x, dt)
    y, h = ours(x, dt)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-5)
    w = torch.randn_like(y)
    (y_ref * w).sum().backward()
    (y * w).sum().backward()
    g_ref = dict(ref.named_parameters())
    heads = ["ff1"] if mode == "pure" else ["ff1", "ff2", "time_a", "time_b"]
    for suffix in ("weight", "bias"):
        fused = torch.cat([g_ref[f"rnn_cell.{n}.{suffix}"].grad for n in heads])
        torch.testing.assert_close(getattr(ours.cell.heads, suffix).grad, fused, rtol=1e-4, atol=1e-5)
    ncps_layers = sorted(k for k in g_ref if k.startswith("rnn_cell.backbone") and k.endswith("weight"))
    for ours_layer, key in zip(ours.cell.backbone, ncps_layers, strict=False):
        torch.testing.assert_close(ours_layer.weight.grad, g_ref[key].grad, rtol=1e-4, atol=1e-5)
    if mixed:
        torch.testing.assert_close(ours.memory.recurrent_map.weight.grad,
                                   g_ref["lstm.recurrent_map.weight"].grad, rtol=1e-4, atol=1e-5)  # fmt: skip
    if mode == "pure":
        torch.testing.assert_close(ours.cell.A.grad, g_ref["rnn_cell.A"].grad, rtol=1e-4, atol=1e-5)


def test_no_backbone_equals_ncps(impl):
    ref, ours = pair(impl, layers=0)
    x, dt = torch.randn(B, T, F), torch.rand(B, T)
    torch.testing.assert_close(ours(x, dt)[0], run_ncps(ref, x, dt)[0], rtol=0, atol=1e-5)


def test_ncps_silently_wrong_when_batch_equals_hidden_but_we_are_not():
    # the pitfall of CFC.md: ncps slices per-step times to (B,), which broadcasts along H when B == H
    ref, ours = pair("auto")
    x, dt = torch.randn(H, T, F), torch.rand(H, T) * 3
    ours_out, _ = ours(x, dt)
    buggy, _ = ref(x, timespans=dt)  # no error, wrong numbers
    correct, _ = run_ncps(ref, x, dt)
    torch.testing.assert_close(ours_out, correct, rtol=0, atol=1e-5)
    assert (buggy - correct).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("ncps_kw", "ours_kw", "match"),
    [
        ({"backbone_layers": 2}, {"backbone_layers": 1}, "ncps model has 2 backbone layers, this encoder 1"),
        ({"mode": "pure"}, {}, "ncps model is pure, this encoder 'default'"),
        ({"mixed_memory": True}, {}, "mixed memory: ncps model True, this encoder False"),
        ({}, {"hidden_size": 9}, r"cell.backbone.0.weight has shape \(16, 12\), this encoder expects \(16, 13\)"),
        ({"mixed_memory": True}, {"mixed_memory": True, "memory_wiring": "paper"}, "memory_wiring='ncps'"),
        ({"proj_size": 3}, {}, "projected ncps models are not supported"),
    ],
)
def test_mismatched_ncps_weights_are_a_clear_error(ncps_kw, ours_kw, match):
    ref = ncps_torch.CfC(F, H, backbone_units=16, **ncps_kw)
    kw = {"hidden_size": H, "backbone_units": 16, **ours_kw}
    ours = CfCEncoder(F, kw.pop("hidden_size"), **kw)
    with pytest.raises(ValueError, match=match):
        ours.load_ncps_state_dict(ref.state_dict())
