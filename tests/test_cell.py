"""CfCCell: the equations of CFC.md against an independent float64 implementation, gradients, bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

from cfc_forecast import CfCCell
from tests import reference

MODES = ["default", "no_gate", "pure"]
ACTIVATIONS = ["lecun_tanh", "silu", "relu", "tanh", "gelu"]
CASES = list(itertools.product(MODES, [0, 1, 2], ACTIVATIONS, ["tanh", "lecun_tanh"]))


def make_cell(mode="default", layers=1, act="lecun_tanh", head="tanh", f=5, h=6, **kw) -> CfCCell:
    cell = CfCCell(f, h, mode=mode, backbone_layers=layers, backbone_units=7, activation=act,
                   head_activation=head, **kw).double()  # fmt: skip
    if mode == "pure":  # move A and w_tau off their initial values so that every term is exercised
        with torch.no_grad():
            cell.A.uniform_(0.5, 1.5)
            cell.w_tau.uniform_(-1.0, 1.0)
    return cell


@pytest.mark.parametrize(("mode", "layers", "act", "head"), CASES)
def test_cell_matches_float64_reference(mode, layers, act, head):
    cell = make_cell(mode, layers, act, head)
    x, h = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    dt = torch.rand(4, 1, dtype=torch.float64) * 3
    expected = reference.step(reference.cell_params(cell), x, h, dt)
    torch.testing.assert_close(cell(x, h, dt), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_cell_gradcheck_in_x_state_and_dt(mode, layers):
    cell = make_cell(mode, layers, "silu")
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    dt = (torch.rand(3, 1, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: cell(a, b, c), (x, h, dt))


def test_float_dt_is_broadcast_like_a_tensor():
    cell = make_cell()
    x, h = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    torch.testing.assert_close(cell(x, h, 0.5), cell(x, h, torch.full((2, 1), 0.5, dtype=torch.float64)))


def test_pure_mode_starts_from_the_papers_values():
    cell = CfCCell(3, 4, mode="pure")
    assert torch.equal(cell.A, torch.ones(1, 4))
    assert torch.equal(cell.w_tau, torch.zeros(1, 4))


def test_heads_are_initialised_per_head_like_separate_layers():
    # Xavier bound for one (H, U) head is sqrt(6 / (U + H)); the fused (4H, U) matrix must not use 4H.
    cell = CfCCell(8, 64, backbone_units=128)
    bound = (6 / (128 + 64)) ** 0.5
    w = cell.heads.weight
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.9 * bound  # not the narrower fused-matrix bound sqrt(6 / (128 + 256))


def test_dropout_acts_after_the_first_backbone_layer():
    # ncps only inserts dropout after the 2nd and later layers, so one layer means no dropout there
    cell = make_cell(layers=1, backbone_dropout=0.5).train()
    x, h = torch.randn(64, 5, dtype=torch.float64), torch.randn(64, 6, dtype=torch.float64)
    assert not torch.allclose(cell(x, h), cell(x, h))
    cell.eval()
    no_dropout = make_cell(layers=1)
    no_dropout.load_state_dict(cell.state_dict())
    torch.testing.assert_close(cell(x, h), no_dropout(x, h), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.randn(4, 5, 1), torch.randn(4, 6), 1.0), r"x must have shape \(B, 5\), got \(4, 5, 1\)"),
        ((torch.randn(4, 3), torch.randn(4, 6), 1.0), r"x must have shape \(B, 5\), got \(4, 3\)"),
        ((torch.randn(4, 5), torch.randn(3, 6), 1.0), r"h must have shape \(4, 6\), got \(3, 6\)"),
        ((torch.randn(4, 5), torch.randn(4, 6), torch.ones(4)), r"dt must have shape \(4, 1\), got \(4\)"),
        ((torch.randn(4, 5), torch.randn(4, 6), -1.0), r"dt must be >= 0"),
        ((torch.randn(4, 5), torch.randn(4, 6), float("inf")), r"dt must be finite"),
        ((torch.full((4, 5), float("nan")), torch.randn(4, 6), 1.0), r"x contains NaN"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(args, match):
    cell = CfCCell(5, 6)
    with pytest.raises(ValueError, match=match):
        cell(*args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "gated"}, r"unknown mode 'gated'; choose one of \['default', 'no_gate', 'pure'\]"),
        ({"activation": "swish"}, r"unknown activation 'swish'"),
        ({"head_activation": "relu"}, r"unknown head_activation 'relu'"),
        ({"backbone_layers": -1}, r"backbone_layers must be >= 0"),
        ({"backbone_dropout": 1.0}, r"backbone_dropout must lie in \[0, 1\)"),
    ],
)
def test_bad_options_raise_value_error_listing_the_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CfCCell(5, 6, **kwargs)
