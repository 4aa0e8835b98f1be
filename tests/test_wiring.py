"""Wired CfCs (Neural Circuit Policies) against ncps 1.0.1: the same synapses, outputs and gradients; the forecaster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cfc_forecast.core.wired import WiredCfCEncoder, build_wired_encoder
from cfc_forecast.core.wiring import Wiring, auto_ncp, from_ncps, fully_connected, make_wiring, ncp
from cfc_forecast.errors import UserError

ncps_torch = pytest.importorskip("ncps.torch", reason="ncps (the [dev] extra) is the test oracle")
wirings = pytest.importorskip("ncps.wirings")

B, T, F = 5, 7, 3
NCP_SIZES = dict(inter_neurons=5, command_neurons=4, motor_neurons=3, sensory_fanout=2, inter_fanout=2,
                 recurrent_command_synapses=3, motor_fanin=2)  # fmt: skip


def hand_built():
    """A plain ncps Wiring built by hand: 6 neurons, 2 outputs, some sensory synapses (one inhibitory)."""
    w = wirings.Wiring(6)
    w.set_output_dim(2)
    w.build(F)
    for src, dest, polarity in ((0, 0, 1), (0, 3, -1), (1, 1, 1), (2, 5, 1), (2, 2, 1)):
        w.add_sensory_synapse(src, dest, polarity)
    w.add_synapse(0, 1, 1)  # within the one layer: ncps reads every neuron of the layer anyway
    return w


KINDS = {
    "fully_connected": lambda: wirings.FullyConnected(6, 2),
    "ncp": lambda: wirings.NCP(**NCP_SIZES, seed=9),
    "auto_ncp": lambda: wirings.AutoNCP(12, 3, seed=5),
    "hand_built": hand_built,
}


def pair(kind, mode, mixed, impl="auto"):
    ref = ncps_torch.CfC(F, KINDS[kind](), mode=mode, mixed_memory=mixed)
    ours = WiredCfCEncoder(F, KINDS[kind](), mode=mode, mixed_memory=mixed, impl=impl)
    ours.load_ncps_state_dict(ref.state_dict())
    return ref, ours


def run_ncps(ref, x, dt, mixed):
    """ncps's own modules, stepped as ncps.torch.CfC.forward steps them, but with (B, 1) elapsed times: its forward
    slices them to (B,), which is wrong for per-sample times (CFC.md)."""
    h = x.new_zeros(x.shape[0], ref.state_size)
    c, outputs = torch.zeros_like(h), []
    for t in range(x.shape[1]):
        if mixed:
            h, c = ref.lstm(x[:, t], (h, c))
        out, h = ref.rnn_cell(x[:, t], h, dt[:, t, None])
        outputs.append(out)
    return torch.stack(outputs, dim=1), h


@pytest.mark.parametrize("seed", [0, 7, 22222])
@pytest.mark.parametrize(("units", "outputs", "sparsity"), [(8, 2, 0.5), (19, 1, 0.1), (32, 6, 0.9), (64, 16, 0.5)])
@pytest.mark.parametrize("inputs", [1, 4, 20])
def test_auto_ncp_draws_the_synapses_of_ncps(seed, units, outputs, sparsity, inputs):
    ours = auto_ncp(inputs, units, outputs, sparsity, seed)
    ref = from_ncps(wirings.AutoNCP(units, outputs, sparsity, seed), inputs)
    assert ours.layer_sizes == ref.layer_sizes and ours.output_size == outputs and ours.units == units
    for a, b in zip(ours.masks, ref.masks, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ncp_and_fully_connected_are_ncps_wirings():
    for a, b in zip(ncp(6, **NCP_SIZES, seed=9).masks, from_ncps(wirings.NCP(**NCP_SIZES, seed=9), 6).masks,
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    dense = from_ncps(wirings.FullyConnected(6, 2), F)
    assert dense.layer_sizes == (6,) and bool((dense.masks[0] == 1).all())
    assert torch.equal(fully_connected(F, 6).masks[0], dense.masks[0])


def test_masks_are_the_absolute_adjacency_between_consecutive_layers():
    w = wirings.NCP(**NCP_SIZES, seed=9)
    w.build(F)
    ours = from_ncps(w, F)
    inter, command, motor = (w.get_neurons_of_layer(i) for i in range(3))
    expected = [w.sensory_adjacency_matrix[:, inter], w.adjacency_matrix[np.ix_(inter, command)],
                w.adjacency_matrix[np.ix_(command, motor)]]  # fmt: skip
    for mask, adj in zip(ours.masks, expected, strict=True):
        assert (adj < 0).any() or (adj > 0).all()  # some inhibitory synapses: polarity is dropped, not kept
        np.testing.assert_array_equal(mask.numpy(), np.abs(adj.T))
    assert ours.synapses == sum(int(np.abs(a).sum()) for a in expected)
    # a hand-built one-layer wiring: the sensory synapses only
    np.testing.assert_array_equal(
        from_ncps(hand_built()).masks[0].numpy(), np.abs(hand_built().sensory_adjacency_matrix.T)
    )


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
@pytest.mark.parametrize("mixed", [False, True])
def test_outputs_equal_ncps_and_gradients_too(kind, mode, mixed):
    check_against_ncps(kind, mode, mixed, "python")


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("mode", ["default", "no_gate", "pure"])
def test_the_native_loop_layer_after_layer_equals_ncps_too(kind, mode, impl):
    # without mixed memory the layers form a stacked RNN: the native loop runs them one after the other
    check_against_ncps(kind, mode, False, impl)


def check_against_ncps(kind, mode, mixed, impl):
    ref, ours = pair(kind, mode, mixed, impl)
    assert ours.uses_native() == (impl == "native")
    x, dt = torch.randn(B, T, F), torch.rand(B, T) * 2 + 0.1
    y_ref, h_ref = run_ncps(ref, x, dt, mixed)
    y, last = ours(x, dt)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)  # the motor neurons (last layer), every step
    torch.testing.assert_close(last[0] if mixed else last, h_ref, rtol=0, atol=1e-5)
    # gradients in float64, where the two sums' rounding cannot tell them apart
    ref, ours = ref.double(), ours.double()
    x, dt = x.double(), dt.double()
    w = torch.randn(B, T, ours.output_size, dtype=torch.float64)
    (run_ncps(ref, x, dt, mixed)[0] * w).sum().backward()
    (ours(x, dt)[0] * w).sum().backward()
    got = dict(ref.named_parameters())
    heads = ["ff1"] if mode == "pure" else ["ff1", "ff2", "time_a", "time_b"]
    for j, cell in enumerate(ours.layers):
        for suffix in ("weight", "bias"):
            expected = torch.cat([got[f"rnn_cell.layer_{j}.{n}.{suffix}"].grad for n in heads])
            torch.testing.assert_close(getattr(cell.heads, suffix).grad, expected, rtol=1e-9, atol=1e-12)
        cut = cell.mask.shape[0] * (1 if mode == "pure" else 2)  # the ff1 (and ff2) rows' masked input weights
        masked = cell.heads.weight.grad[:cut, : cell.input_size][cell.mask.repeat(cut // cell.mask.shape[0], 1) == 0]
        assert masked.numel() == 0 or masked.abs().max().item() == 0.0  # masked weights learn nothing
        if mode == "pure":
            torch.testing.assert_close(cell.A.grad, got[f"rnn_cell.layer_{j}.A"].grad, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(cell.w_tau.grad, got[f"rnn_cell.layer_{j}.w_tau"].grad, rtol=1e-9, atol=1e-12)
    if mixed:
        for name in ("input_map.weight", "recurrent_map.weight"):
            torch.testing.assert_close(ours.memory.get_parameter(name).grad, got[f"lstm.{name}"].grad,
                                       rtol=1e-9, atol=1e-12)  # fmt: skip


def test_ncps_forward_itself_agrees_where_its_time_slicing_is_right():
    # ncps.torch.CfC.forward with elapsed times of one sample (B = 1: its (B,) slice is then a scalar) and without
    ref, ours = pair("auto_ncp", "default", True)
    x, dt = torch.randn(1, T, F), torch.rand(1, T) + 0.5
    torch.testing.assert_close(ours(x, dt)[0], ref(x, timespans=dt)[0], rtol=0, atol=1e-5)
    x = torch.randn(B, T, F)
    y_ref, (h_ref, c_ref) = ref(x)
    y, (h, c) = ours(x)
    for a, b in ((y, y_ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mixed", [True, False], ids=["mixed-python-loop", "auto-native-loop"])
def test_batch_equals_one_by_one_chunked_equals_whole_and_padding_keeps_the_state(mixed):
    enc = WiredCfCEncoder(F, auto_ncp(F, 12, 3, seed=1), mixed_memory=mixed).double()
    h_of = (lambda s: s[0]) if mixed else (lambda s: s)  # noqa: E731
    n = enc.hidden_size  # B == N with per-sample dt: ncps's broadcasting trap (CFC.md)
    x, dt = torch.randn(n, T, F, dtype=torch.float64), torch.rand(n, T, dtype=torch.float64) * 3
    y, s = enc(x, dt)
    for i in (0, 5, n - 1):
        yi, si = enc(x[i : i + 1], dt[i : i + 1])
        torch.testing.assert_close(yi[0], y[i], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(h_of(si)[0], h_of(s)[i], rtol=1e-10, atol=1e-12)
    y1, s1 = enc(x[:, :3], dt[:, :3])
    y2, s2 = enc(x[:, 3:], dt[:, 3:], state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_of(s2), h_of(s), rtol=1e-10, atol=1e-12)
    mask = torch.ones(n, T, dtype=torch.bool)
    mask[: n // 2, -2:] = False  # half the rows padded at the end
    yp, sp = enc(x, dt, mask)
    h_short = h_of(enc(x[: n // 2, :-2], dt[: n // 2, :-2])[1])
    torch.testing.assert_close(h_of(sp)[: n // 2], h_short, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_of(sp)[n // 2 :], h_of(s)[n // 2 :], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(yp[:, -1], enc.readout(h_of(sp)), rtol=0, atol=0)


def test_the_state_dict_carries_the_wiring():
    a = WiredCfCEncoder(F, auto_ncp(F, 12, 3, seed=1))
    b = WiredCfCEncoder(F, auto_ncp(F, 12, 3, seed=2))  # same layer sizes, other synapses
    assert any(not torch.equal(m, n) for m, n in zip(a.wiring.masks, b.wiring.masks, strict=True))
    b.load_state_dict(a.state_dict())
    x = torch.randn(B, T, F)
    torch.testing.assert_close(b(x)[0], a(x)[0], rtol=0, atol=0)
    assert all(torch.equal(m, n) for m, n in zip(a.wiring.masks, b.wiring.masks, strict=True))


@pytest.mark.parametrize(
    ("ref_kw", "ours_kw", "match"),
    [
        ({"units": "ncp"}, {}, r"layers have \[5, 4, 3\] neurons, this encoder's \[6, 3, 3\]"),
        ({"mode": "pure"}, {}, "ncps model is pure, this encoder 'default'"),
        ({"mixed_memory": True}, {}, "mixed memory: ncps model True, this encoder False"),
        ({"proj_size": 2}, {}, "projected ncps models"),
        ({"unwired": True}, {}, "not a wired ncps CfC"),
    ],
)
def test_mismatched_ncps_weights_are_a_clear_error(ref_kw, ours_kw, match):
    if ref_kw.pop("unwired", False):
        ref = ncps_torch.CfC(F, 12)
    else:
        kind = ref_kw.pop("units", "auto_ncp")
        ref = ncps_torch.CfC(F, KINDS[kind](), **ref_kw)
    ours = WiredCfCEncoder(F, KINDS["auto_ncp"](), **ours_kw)
    with pytest.raises(ValueError, match=match):
        ours.load_ncps_state_dict(ref.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"wiring": "auto_ncp", "units": 6, "outputs": 4}, "outputs < units - 2"),
        ({"wiring": "ncp", "units": 12}, "needs wiring_ncp with exactly the keys"),
        ({"wiring": "spiral", "units": 12}, "unknown wiring 'spiral'"),
        (
            {"wiring": "auto_ncp", "units": 12, "impl": "native", "mixed_memory": True},
            "runs the pure-PyTorch loop only",
        ),
        ({"wiring": "auto_ncp", "units": 12, "mixed_memory": True, "memory_wiring": "paper"}, "memory_wiring='ncps'"),
    ],
)
def test_bad_wiring_options_are_one_line_user_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        build_wired_encoder(F, kwargs.pop("wiring"), kwargs.pop("units"), **kwargs)


def test_a_wiring_checks_its_masks():
    with pytest.raises(ValueError, match=r"wiring mask 1 must have shape \(n_1, 4\)"):
        Wiring(F, (torch.ones(4, F), torch.ones(2, 5)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        Wiring(F, (torch.full((4, F), 0.5),))
    assert make_wiring("auto_ncp", F, 20).output_size == 6  # 30% of the neurons by default


def test_the_forecaster_head_reads_the_motor_neurons(tiny_synthetic):
    from tests.conftest import model_for

    model = model_for(tiny_synthetic, wiring="auto_ncp", hidden_size=16, wiring_outputs=4, mixed_memory=True)
    enc = model.net.encoder
    assert isinstance(enc, WiredCfCEncoder) and enc.hidden_size == 16 and enc.output_size == 4
    seen = {}
    model.net.head.register_forward_pre_hook(lambda _, args: seen.update(states=args[0], last=args[1]))
    batch = next(iter(tiny_synthetic.train_dataloader()))
    model(batch)
    assert seen["states"].shape[-1] == 4 and seen["last"].shape == (batch.batch_size, 4)
    torch.testing.assert_close(seen["last"], seen["states"][:, -1], rtol=0, atol=0)  # the motor neurons' last state
    with pytest.raises(UserError, match="needs encoder='cfc'"):
        model_for(tiny_synthetic, wiring="auto_ncp", encoder="lstm")
    model = model_for(tiny_synthetic, wiring="ncp", wiring_ncp=NCP_SIZES, head="step")
    assert model.net.encoder.layer_sizes == [5, 4, 3] and model(batch).shape[:2] == batch.x.shape[:2]


def test_a_wired_model_trains_from_its_config_and_its_checkpoint_forecasts_alone(tmp_path, monkeypatch):
    from pathlib import Path

    from cfc_forecast.cli import cli
    from cfc_forecast.forecaster.module import ForecastModule
    from tests.test_cli import TINY_DATA

    monkeypatch.setattr("sys.argv", ["cfc-forecast"])  # the CLI runs on its args, not pytest's

    config = Path(__file__).resolve().parents[1] / "configs" / "wired.yaml"
    sizes = ["--model.wiring_units=12", "--model.wiring_outputs=3", "--model.mixed_memory=true",
             "--model.head_hidden_sizes=[8]", "--model.query_cell_units=8"]  # fmt: skip
    fit = cli(["fit", f"--config={config}", *TINY_DATA, *sizes, f"--run_dir={tmp_path / 'run'}",
               "--trainer.max_epochs=1", "--test_after_fit=false", "--trainer.enable_progress_bar=false"])  # fmt: skip
    assert fit.trainer.state.finished and fit.trainer.current_epoch == 1
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert {"net.encoder.layers.0.mask", "net.encoder.layers.2.mask"} <= set(state)  # the wiring travels with it
    reloaded = ForecastModule.load_from_checkpoint(ckpt).eval()  # no config: the hyperparameters and masks
    live = fit.model.eval()
    assert reloaded.net.encoder.layer_sizes == live.net.encoder.layer_sizes == [6, 3, 3]
    batch = next(iter(fit.datamodule.val_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch), live(batch), rtol=0, atol=0)


def test_an_impossible_wiring_from_the_command_line_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from cfc_forecast.commands import main
    from tests.test_cli import TINY_DATA

    monkeypatch.setattr("sys.argv", ["cfc-forecast"])
    config = Path(__file__).resolve().parents[1] / "configs" / "wired.yaml"
    args = ["fit", f"--config={config}", *TINY_DATA, "--model.wiring_outputs=70", f"--runs_root={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cfc-forecast fit: error: auto_ncp needs outputs < units - 2, got units=64, outputs=70"]
