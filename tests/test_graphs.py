"""CUDA graphs of the CfC loop (cfc_forecast/core/graphs.py).

What runs here: the option's behaviour without a GPU (the loop runs eagerly and gives exactly what it gives without
the option; the graphs are held outside the state dict; unsupported encoders are refused). The graphed numbers
themselves need a CUDA device: the ``gpu`` tests below run there and skip elsewhere; ``benchmarks/gpu_check.py``
checks and times them on a device run.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from cfc_forecast import CfCEncoder
from cfc_forecast.core.graphs import graph_reason
from cfc_forecast.errors import UserError
from tests.conftest import model_for

CUDA = torch.cuda.is_available()


def batch(device: str = "cpu", b: int = 5, t: int = 9, f: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, f, generator=g).to(device).requires_grad_(True)
    dt = (torch.rand(b, t, generator=g) + 0.1).to(device)
    mask = (torch.rand(b, t, generator=g) > 0.25).to(device)
    return x, dt, mask


def run(enc: CfCEncoder, x, dt, mask) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    enc.zero_grad(set_to_none=True)
    states, last = enc(x, dt, mask)
    last = last[0] if isinstance(last, tuple) else last
    (states.square().mean() + last.sum()).backward()
    return states.detach(), last.detach(), [p.grad.clone() for p in enc.parameters()]


@pytest.mark.parametrize("impl", ["native", "python"])
@pytest.mark.parametrize("mixed_memory", [False, True])
def test_without_a_gpu_the_option_changes_nothing(impl, mixed_memory):
    torch.manual_seed(0)
    plain = CfCEncoder(3, 12, backbone_units=16, impl=impl, mixed_memory=mixed_memory)
    graphed = CfCEncoder(3, 12, backbone_units=16, impl=impl, mixed_memory=mixed_memory, cuda_graphs=True)
    graphed.load_state_dict(plain.state_dict())
    a, b = run(plain, *batch()), run(graphed, *batch())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert all(torch.equal(p, q) for p, q in zip(a[2], b[2], strict=True))
    assert len(graphed.graphs) == 0


def test_the_reasons_a_step_runs_eagerly():
    x = torch.zeros(2, 3, 4)
    assert "CUDA graphs need a CUDA device" in graph_reason(x)


def test_graphs_stay_out_of_the_state_dict_and_of_copies():
    enc = CfCEncoder(3, 12, backbone_units=16, cuda_graphs=True)
    assert not any("graph" in k for k in enc.state_dict())
    assert len(copy.deepcopy(enc).graphs) == 0 and copy.deepcopy(enc).graphs is not enc.graphs
    assert pickle.loads(pickle.dumps(enc)).cuda_graphs


@pytest.mark.parametrize("options", [{"encoder": "gru"}, {"wiring": "ncp"}])
def test_the_forecaster_refuses_graphs_it_cannot_take(tiny_synthetic, options):
    with pytest.raises(UserError, match="cuda_graphs=true graphs the plain CfC encoder only"):
        model_for(tiny_synthetic, cuda_graphs=True, **options)


def test_the_forecaster_hands_the_option_to_its_encoder(tiny_synthetic):
    model = model_for(tiny_synthetic, cuda_graphs=True)
    enc = model.net.encoder
    assert enc.cuda_graphs and not enc.check_values
    assert not model_for(tiny_synthetic).hparams.cuda_graphs


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("impl", ["native", "python"])
def test_on_cuda_a_replayed_graph_equals_the_eager_loop(impl):
    torch.manual_seed(0)
    eager = CfCEncoder(3, 20, backbone_units=32, impl=impl, check_values=False).cuda()
    graphed = CfCEncoder(3, 20, backbone_units=32, impl=impl, check_values=False, cuda_graphs=True).cuda()
    graphed.load_state_dict(eager.state_dict())
    for seed, shape in enumerate([(7, 11), (7, 11), (7, 11), (4, 6)]):  # three replays of one graph, then another
        args = batch("cuda", *shape, seed=seed)
        a, b = run(eager, *args), run(graphed, *args)
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
        for p, q in zip(a[2], b[2], strict=True):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert len(graphed.graphs) == 2
