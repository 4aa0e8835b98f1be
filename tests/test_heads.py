"""Heads, input encoding, RevIN, losses and metrics against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from cfc_forecast.forecaster.heads import ContinuousHead, DirectHead, StepHead, build_head
from cfc_forecast.forecaster.inputs import ElapsedTime, InputEncoding, carry_forward, time_since_observed
from cfc_forecast.forecaster.losses import masked_loss
from cfc_forecast.forecaster.metrics import ForecastMetrics
from cfc_forecast.forecaster.revin import RevIN
from cfc_forecast.forecaster.rnn import RNNEncoder


def test_continuous_head_is_one_cfc_step_to_each_query_time():
    head = ContinuousHead(hidden_size=4, n_targets=2, n_outputs=1, hidden_sizes=[8])
    last = torch.randn(3, 4)
    query_dt = torch.tensor([[0.5, 2.0], [1.0, 0.0], [3.0, 7.5]])
    out = head(None, last, query_dt, None)  # (B, K, C, Q)
    assert out.shape == (3, 2, 2, 1)
    # by hand: the learned input, one closed-form step of dt = query time - last observation, then the MLP
    x_proj = head.cell.input_projection(head.query_input.view(1, 1)).expand(3, -1)
    for k in range(2):
        h_q = head.cell.step(x_proj, last, query_dt[:, k : k + 1])
        readout = torch.cat([h_q, query_dt[:, k : k + 1]], dim=1)  # the evolved state and the elapsed time
        torch.testing.assert_close(out[:, k, :, 0], head.net(readout), rtol=1e-6, atol=1e-6)
    # queries are independent: asking for one time alone gives what it gives among others
    torch.testing.assert_close(head(None, last, query_dt[:, 1:], None), out[:, 1:], rtol=1e-6, atol=1e-6)
    # and the forecast moves with the query time
    assert not torch.allclose(out[:, 0], head(None, last, query_dt[:, :1] + 1.0, None)[:, 0])


def test_continuous_head_reads_known_future_covariates():
    head = ContinuousHead(hidden_size=4, n_targets=1, n_outputs=3, n_future=2)
    future = torch.randn(2, 5, 2)
    out = head(None, torch.randn(2, 4), torch.rand(2, 5), future)
    assert out.shape == (2, 5, 1, 3)
    assert head.query_input is None and head.cell.input_size == 2


def test_direct_head_shapes_and_horizon_check():
    head = DirectHead(hidden_size=4, n_targets=2, n_outputs=1, horizon=3, n_future=1)
    out = head(None, torch.randn(5, 4), torch.zeros(5, 3), torch.randn(5, 3, 1))
    assert out.shape == (5, 3, 2, 1)
    with pytest.raises(ValueError, match="forecasts 3 steps, the batch asks for 2"):
        head(None, torch.randn(5, 4), torch.zeros(5, 2), torch.randn(5, 2, 1))


def test_step_head_reads_every_state():
    head = StepHead(hidden_size=4, n_targets=3, n_outputs=1)
    states = torch.randn(2, 6, 4)
    out = head(states, states[:, -1], torch.zeros(2, 0), None)
    assert out.shape == (2, 6, 3, 1)
    torch.testing.assert_close(out[:, 2, :, 0], head.net(states[:, 2]))


def test_heads_read_the_context_beside_the_state_by_hand():
    # static covariates routed into the head: the readout MLP sees [state, context] at every forecast step
    b, h, s = 3, 4, 2
    last, context = torch.randn(b, h), torch.randn(b, s)
    direct = build_head("direct", h, 2, 1, 5, 0, [8], n_context=s)
    torch.testing.assert_close(
        direct(None, last, torch.zeros(b, 5), None, context), direct.net(torch.cat([last, context], 1)).view(b, 5, 2, 1)
    )
    cont = build_head("continuous", h, 2, 1, None, 0, [8], n_context=s)
    query_dt = torch.rand(b, 3)
    out = cont(None, last, query_dt, None, context)
    x_proj = cont.cell.input_projection(cont.query_input.view(1, 1)).expand(b, -1)
    h_q = cont.cell.step(x_proj, last, query_dt[:, 1:2])
    readout = torch.cat([h_q, query_dt[:, 1:2], context], 1)
    torch.testing.assert_close(out[:, 1, :, 0], cont.net(readout), rtol=1e-6, atol=1e-6)
    step = build_head("step", h, 2, 1, 0, 0, [], n_context=s)
    states = torch.randn(b, 6, h)
    torch.testing.assert_close(
        step(states, last, torch.zeros(b, 0), None, context)[:, 4, :, 0],
        step.net(torch.cat([states[:, 4], context], 1)),
    )


def test_build_head_refuses_what_it_cannot_serve():
    with pytest.raises(ValueError, match="regular horizon"):
        build_head("direct", 4, 1, 1, None, 0, [])
    with pytest.raises(ValueError, match="known-future"):
        build_head("step", 4, 1, 1, 0, 2, [])
    with pytest.raises(ValueError, match="choose one of"):
        build_head("diagonal", 4, 1, 1, 3, 0, [])


def test_carry_forward_and_time_since_observed_by_hand():
    x = torch.tensor([[[1.0], [0.0], [3.0], [0.0]]])  # (1, 4, 1)
    mask = torch.tensor([[[True], [False], [True], [False]]])
    assert carry_forward(x, mask).flatten().tolist() == [1.0, 1.0, 3.0, 3.0]
    never = torch.zeros_like(mask)
    assert carry_forward(x, never).flatten().tolist() == [0.0, 0.0, 0.0, 0.0]
    t = torch.tensor([[-6.0, -4.0, -1.5, 0.0]])
    dt = torch.tensor([[2.0, 2.0, 2.5, 1.5]])  # the first reaches 2.0 before the window
    assert time_since_observed(t, dt, mask).flatten().tolist() == [0.0, 2.0, 0.0, 1.5]
    assert time_since_observed(t, dt, never).flatten().tolist() == [2.0, 4.0, 6.5, 8.0]


def test_input_encoding_concatenates_the_chosen_parts_with_scaled_times():
    x = torch.tensor([[[1.0], [0.0]]])
    mask = torch.tensor([[[True], [False]]])
    t, dt = torch.tensor([[-3.0, 0.0]]), torch.tensor([[1.0, 3.0]])
    enc = InputEncoding(1, fill="locf", append_mask=True, append_delta=True)
    assert enc.size == 3
    out = enc(x, mask, t, dt, ElapsedTime(scale=0.5))
    assert out.tolist() == [[[1.0, 1.0, 0.0], [1.0, 0.0, 1.5]]]
    zeros = InputEncoding(1, fill="zeros", append_mask=False)
    assert zeros(x, mask, t, dt, ElapsedTime()).tolist() == [[[1.0], [0.0]]]


def test_learned_time_scale_starts_at_its_value_and_trains():
    clock = ElapsedTime(scale=1 / 60, learn=True)
    torch.testing.assert_close(clock(torch.tensor([120.0])), torch.tensor([2.0]))
    clock(torch.tensor([1.0])).sum().backward()
    assert clock.log_scale.grad is not None
    with pytest.raises(ValueError, match="time_scale"):
        ElapsedTime(scale=0.0)


def test_revin_normalises_observed_values_and_maps_forecasts_back():
    x = torch.tensor([[[1.0, 5.0], [3.0, 0.0], [5.0, 7.0]]])  # (1, 3, 2); x[1, 1] missing
    mask = torch.tensor([[[True, True], [True, False], [True, True]]])
    revin = RevIN(2, target_inputs=[1, -1], eps=0.0, affine=False)
    z, (mean, std) = revin.normalise(x, mask)
    torch.testing.assert_close(mean, torch.tensor([[3.0, 6.0]]))
    torch.testing.assert_close(std, torch.tensor([[math.sqrt(8 / 3), 1.0]]))
    assert z[0, 1, 1] == 0.0
    y = torch.tensor([[[[1.0], [2.0]]]])  # (B, K, C, Q) = (1, 1, 2, 1)
    out = revin.denormalise(y, (mean, std))
    assert out.flatten().tolist() == [1.0 * 1.0 + 6.0, 2.0]  # target 0 from input 1; target 1 has no input


def test_masked_losses_by_hand():
    pred = torch.tensor([[[1.0], [2.0]], [[0.0], [9.0]]])  # (2, C=2, Q=1)
    y = torch.tensor([[0.0, 4.0], [1.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    assert masked_loss(pred, y, mask, "mse").item() == pytest.approx((1 + 4 + 1) / 3)
    assert masked_loss(pred, y, mask, "mae").item() == pytest.approx((1 + 2 + 1) / 3)
    assert masked_loss(pred, y, mask, "huber", huber_delta=1.0).item() == pytest.approx((0.5 + 1.5 + 0.5) / 3)
    q = [0.1, 0.9]
    pq = torch.tensor([[0.0, 2.0]])  # one value, two quantiles; y = 1: 0.1 * 1 and 0.1 * 1
    loss = masked_loss(pq[:, None, :], torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool), "pinball", q)
    assert loss.item() == pytest.approx((0.1 + 0.1) / 2)
    with pytest.raises(ValueError, match="point forecast"):
        masked_loss(pq[:, None, :], torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool), "mse")


def test_the_per_variable_loss_by_hand():
    # (B=3, C=3, Q=1): variable 0 observed twice (errors 1 and 3), variable 1 once (error 2), variable 2 never
    pred = torch.tensor([[[1.0], [2.0], [5.0]], [[3.0], [0.0], [5.0]], [[0.0], [7.0], [5.0]]])
    y = torch.zeros(3, 3)
    mask = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    assert masked_loss(pred, y, mask, "mse").item() == pytest.approx((1 + 4 + 9) / 3)
    assert masked_loss(pred, y, mask, "mse", reduction="variables").item() == pytest.approx(((1 + 9) / 2 + 4) / 2)
    assert masked_loss(pred, y, mask, "mae", reduction="variables").item() == pytest.approx(((1 + 3) / 2 + 2) / 2)
    q = masked_loss(pred.expand(-1, -1, 2), y, mask, "pinball", [0.25, 0.75], reduction="variables")
    # pinball of an over-forecast e is (1 - q) e: 0.75 e and 0.25 e, mean 0.5 e per value
    assert q.item() == pytest.approx(((0.5 + 1.5) / 2 + 1.0) / 2)
    nothing = masked_loss(pred.requires_grad_(), y, torch.zeros(3, 3, dtype=torch.bool), "mse", reduction="variables")
    assert nothing.item() == 0.0 and nothing.requires_grad
    with pytest.raises(ValueError, match="unknown loss reduction"):
        masked_loss(pred, y, mask, "mse", reduction="channels")


def test_metrics_overall_and_per_variable_first():
    metric = ForecastMetrics(n_targets=2)
    pred = torch.tensor([[[1.0], [2.0]], [[0.0], [9.0]], [[3.0], [0.0]]])  # (3, 2, 1)
    y = torch.tensor([[0.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[True, True], [True, False], [True, False]])
    metric.update(pred, y, mask)
    out = metric.compute()
    assert out["mse"].item() == pytest.approx((1 + 4 + 1 + 9) / 4)
    assert out["mse_per_var"].item() == pytest.approx(((1 + 1 + 9) / 3 + 4 / 1) / 2)
    assert out["mae_per_var"].item() == pytest.approx(((1 + 1 + 3) / 3 + 2 / 1) / 2)


def test_quantile_metrics_coverage_and_wql():
    metric = ForecastMetrics(n_targets=1, quantiles=[0.1, 0.5, 0.9])
    pred = torch.tensor([[[0.0, 1.0, 2.0]], [[0.0, 1.0, 2.0]]])  # (2, C=1, Q=3)
    y = torch.tensor([[1.5], [3.0]])
    metric.update(pred, y, torch.ones(2, 1, dtype=torch.bool))
    out = metric.compute()
    assert out["coverage"].item() == pytest.approx(0.5)
    assert out["mae"].item() == pytest.approx((0.5 + 2.0) / 2)  # the median is the point forecast
    ql = (0.1 * 1.5 + 0.5 * 0.5 + 0.1 * 0.5) + (0.1 * 3 + 0.5 * 2 + 0.9 * 1)
    assert out["wql"].item() == pytest.approx(2 * ql / 3 / 4.5, rel=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_encoder_holds_the_last_real_state_over_padding(kind):
    enc = RNNEncoder(kind, input_size=3, hidden_size=5)
    x, dt = torch.randn(2, 6, 3), torch.rand(2, 6)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    states, last = enc(x, dt, mask)
    alone, last_alone = enc(x[1:, :4], dt[1:, :4])
    torch.testing.assert_close(last[1], last_alone[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(states[1, 4:], last[1].expand(2, -1))
