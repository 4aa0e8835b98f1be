"""ForecastModule: over-fitting a tiny irregular series, checkpoint round trip, predict in original units."""

from __future__ import annotations

import dataclasses

import lightning.pytorch as L
import numpy as np
import polars as pl
import pytest
import torch

from cfc_forecast.forecast import predict_frame
from cfc_forecast.forecaster.losses import masked_loss
from cfc_forecast.forecaster.module import ForecastModule
from cfc_forecast.writer import forecast_frame
from datamodules import SeriesDataModule
from tests.conftest import model_for


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**defaults, **kwargs})


def _first_batch(dm, split="val"):
    ds = dm.dataset(split)
    return ds.collate(list(range(min(len(ds), 8))))


def irregular_sines() -> pl.DataFrame:
    """One series, two variables, 240 irregular time stamps over 60 s, a fifth of the values missing."""
    rng = np.random.default_rng(3)
    t = np.sort(rng.choice(np.arange(0, 60, 0.05), 240, replace=False))
    a, b = np.sin(0.8 * t), np.cos(0.5 * t) * 0.5
    a[rng.random(240) < 0.2] = np.nan
    return pl.DataFrame({"time": t, "a": a, "b": b}).fill_nan(None)


OVERFIT_BELOW = 0.02  # stated before the first run, in scaled units (the targets' variance is about 1)
OVERFIT_SEEDS = (0, 1)  # benchmarks/seeds.py runs ten: the largest final loss of the ten is printed there


def overfit_loss(encoder: str, seed: int) -> float:
    """Full-batch Adam on every training window of one tiny irregular series: the final training loss (scaled)."""
    dm = SeriesDataModule.from_frame(
        irregular_sines(), time_unit="s", observe=8.0, forecast=3.0, every=2.0, batch_size=64
    )
    dm.setup("fit")
    batch = dm.dataset("train").collate(list(range(len(dm.dataset("train")))))
    torch.manual_seed(seed)
    model = model_for(dm, encoder=encoder, hidden_size=32, backbone_units=64, head_hidden_sizes=[64])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # the learning rate decays linearly to zero: the last steps settle instead of catching one of Adam's spikes
    # (at a constant 1e-2, two of twenty runs ended on a spike at 0.018)
    decay = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=300)
    for _ in range(300):
        opt.zero_grad()
        loss = masked_loss(model(batch), batch.y, batch.y_mask, "mse")
        loss.backward()
        opt.step()
        decay.step()
    return loss.item()


@pytest.mark.parametrize("seed", OVERFIT_SEEDS)
@pytest.mark.parametrize("encoder", ["cfc", "gru"])
def test_overfits_a_tiny_irregular_series(encoder, seed):
    loss = overfit_loss(encoder, seed)
    assert loss < OVERFIT_BELOW, loss


def test_every_encoder_and_head_trains_a_step(tiny_synthetic, tmp_path):
    for kwargs in (
        dict(encoder="cfc", head="continuous", append_delta=True, revin=True),
        dict(encoder="cfc", mixed_memory=True, head="continuous", loss="pinball", quantiles=[0.1, 0.5, 0.9]),
        dict(encoder="lstm", head="continuous", loss="huber", fill="zeros", learn_time_scale=True),
    ):
        model = model_for(tiny_synthetic, **kwargs)
        trainer = _trainer(tmp_path, fast_dev_run=True)
        trainer.fit(model, tiny_synthetic)
        trainer.test(model, tiny_synthetic, verbose=False)
        assert {"test/mse", "test/mae", "test/mse_per_var", "test/mae_per_var"} <= set(trainer.callback_metrics)
        if kwargs.get("loss") == "pinball":
            assert {"test/wql", "test/coverage"} <= set(trainer.callback_metrics)


def test_checkpoint_round_trip_predicts_exactly_what_the_live_model_did(tiny_synthetic, tmp_path):
    model = model_for(tiny_synthetic, loss="pinball", quantiles=[0.1, 0.5, 0.9], append_delta=True)
    trainer = _trainer(tmp_path, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(model, tiny_synthetic)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = ForecastModule.load_from_checkpoint(path, weights_only=True)
    live = trainer.predict(model, tiny_synthetic)
    again = _trainer(tmp_path).predict(loaded, tiny_synthetic)
    assert len(live) == len(again) > 0
    for a, b in zip(live, again, strict=True):
        assert torch.equal(a["prediction"], b["prediction"])
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["target_names"] == ["x1", "x2", "v1"]


def test_predict_output_is_the_hand_inverted_scaled_forecast(tiny_synthetic):
    model = model_for(tiny_synthetic).eval()
    batch = _first_batch(tiny_synthetic, "test")
    with torch.no_grad():
        scaled = model(batch)[..., 0]  # (B, K, C)
        out = model.predict_step(batch, 0)
    by_hand = scaled.double() * batch.target_scale[:, None, :].double() + batch.target_loc[:, None, :].double()
    torch.testing.assert_close(out["prediction"][..., 0], by_hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(batch.unscale(scaled), by_hand.float())
    frame = forecast_frame([out], tiny_synthetic, None)
    assert frame.columns == ["series", "origin_time", "time", "variable", "prediction"]
    assert frame.height == int(batch.query_mask.sum()) * 3
    b, k = map(int, torch.nonzero(batch.query_mask)[5])
    row = frame.filter(
        (pl.col("series") == tiny_synthetic.series_ids[int(batch.series[b])])
        & (pl.col("origin_time") == float(batch.origin[b]))
        & (pl.col("time") == float(batch.query_t_abs[b, k]))  # the target row's own time, in float64
        & (pl.col("variable") == "x2")
    )
    assert row.height == 1
    assert row["prediction"][0] == pytest.approx(float(by_hand[b, k, 1]), rel=1e-12)


def test_quantile_forecasts_never_cross_outside_training(tiny_synthetic, monkeypatch):
    model = model_for(tiny_synthetic, loss="pinball", quantiles=[0.1, 0.5, 0.9])
    batch = _first_batch(tiny_synthetic, "test")
    raw = model.net(batch).detach()
    crossing = raw.clone()
    crossing[..., 0], crossing[..., 2] = raw[..., 2] + 1.0, raw[..., 0] - 1.0  # q0.1 above q0.9 everywhere
    monkeypatch.setattr(model.net, "forward", lambda b: crossing)
    assert torch.equal(model.train()(batch), crossing)  # the loss sees the raw outputs
    with torch.no_grad():
        ordered = model.eval()(batch)
        out = model.predict_step(batch, 0)["prediction"]
    assert torch.equal(ordered, crossing.sort(dim=-1).values)
    assert (out.diff(dim=-1) >= 0).all()


def test_predict_times_are_the_float64_stamps_unless_query_t_was_replaced(tiny_synthetic):
    model = model_for(tiny_synthetic).eval()
    batch = _first_batch(tiny_synthetic, "test")
    with torch.no_grad():
        exact = model.predict_step(batch, 0)["time"]
        moved = dataclasses.replace(batch, query_t=batch.query_t + 0.5)  # by hand: query_t_abs is now stale
        by_hand = model.predict_step(moved, 0)["time"]
    mask = batch.query_mask
    torch.testing.assert_close(exact[mask], batch.query_t_abs[mask], rtol=0, atol=0)
    expected = batch.origin[:, None] + moved.query_t.double()
    torch.testing.assert_close(by_hand[mask], expected[mask], rtol=0, atol=0)


def test_a_checkpoint_of_other_variables_is_refused(tiny_synthetic, tmp_path):
    model = model_for(tiny_synthetic)
    trainer = _trainer(tmp_path, fast_dev_run=True)
    trainer.fit(model, tiny_synthetic)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    other = model_for(tiny_synthetic, target_names=["x1", "x2", "pressure"])
    with pytest.raises(ValueError, match="trained with targets"):
        _trainer(tmp_path).predict(other, tiny_synthetic, ckpt_path=tmp_path / "m.ckpt")


def test_covariates_are_never_silently_dropped(tiny_synthetic):
    batch = _first_batch(tiny_synthetic)
    with pytest.raises(ValueError, match="built for 2 static covariates, the batch has 0"):
        model_for(tiny_synthetic, n_static=2)(batch)
    batch.static = torch.zeros(batch.batch_size, 1)
    with pytest.raises(ValueError, match="built for 0 static covariates, the batch has 1"):
        model_for(tiny_synthetic)(batch)


def test_bad_choices_are_clear_errors(tiny_synthetic):
    with pytest.raises(ValueError, match="needs --model.quantiles: sorted levels"):
        model_for(tiny_synthetic, loss="pinball", quantiles=[0.9, 0.1])
    with pytest.raises(ValueError, match="need --model.loss pinball"):
        model_for(tiny_synthetic, quantiles=[0.5])
    with pytest.raises(ValueError, match="regular horizon"):
        model_for(tiny_synthetic, head="direct")
    with pytest.raises(ValueError, match="choose one of"):
        model_for(tiny_synthetic, encoder="transformer")


def test_quantile_forecasts_get_one_column_per_level_and_the_median_as_prediction(tiny_synthetic):
    model = model_for(tiny_synthetic, loss="pinball", quantiles=[0.1, 0.5, 0.9]).eval()
    batch = tiny_synthetic.dataset("predict").collate([0, 1])
    with torch.no_grad():
        out = model.predict_step(batch, 0)
    frame = forecast_frame([out], tiny_synthetic, [0.1, 0.5, 0.9])
    assert frame.columns == ["series", "origin_time", "time", "variable", "prediction", "q0.1", "q0.5", "q0.9"]
    assert (frame["prediction"] == frame["q0.5"]).all()
    assert frame.height == int(batch.query_mask.sum()) * 3


@pytest.mark.parametrize("static_into", ["state", "head", "both"])
def test_static_covariates_reach_the_forecast(tmp_path, static_into):
    rng = np.random.default_rng(0)
    rows = []
    for s, level in enumerate([-1.0, 0.0, 2.0, 3.0]):
        t = np.sort(rng.uniform(0, 40, 80))
        rows.append(pl.DataFrame({"id": [f"s{s}"] * 80, "time": t, "a": np.sin(t) + level, "level": [level] * 80}))
    dm = SeriesDataModule.from_frame(
        pl.concat(rows), id_column="id", static=["level"], time_unit="s", observe=5.0, forecast=2.0, every=1.0
    )
    dm.setup("fit")
    model = model_for(dm, static_into=static_into)
    assert model.hparams.n_static == 1
    assert (model.net.static_map is not None) == (static_into != "head")
    assert model.net.static_to_head == (static_into != "state")
    batch = dm.dataset("train").collate([0, 1])
    moved = model(batch)
    batch.static = batch.static + 1.0  # another static value, same history: another forecast
    assert not torch.allclose(moved, model(batch))
    _trainer(tmp_path, fast_dev_run=True).fit(model, dm)


def test_python_api_predicts_a_frame_at_given_query_times(tmp_path):
    frame = irregular_sines()
    dm = SeriesDataModule.from_frame(frame, time_unit="s", observe=8.0, forecast=3.0, predict_queries=[0.5, 2.0])
    model = model_for(dm)
    _trainer(tmp_path, fast_dev_run=True).fit(model, dm)
    out = predict_frame(model, frame)  # the DataModule of its fit says how the rows are prepared
    last = frame["time"].max()
    assert out["time"].to_list() == pytest.approx([last + 0.5] * 2 + [last + 2.0] * 2)
    assert out["variable"].to_list() == ["a", "b", "a", "b"]


@pytest.mark.parametrize("per_step", [False, True])
def test_test_draws_a_png_of_forecasts_for_window_and_per_step_heads(tmp_path, per_step):
    from matplotlib.image import imread

    from cfc_forecast.plot import ForecastPlot

    if per_step:  # sequence to sequence, as Walker2d: a forecast at every input step
        dm = SeriesDataModule.from_frame(
            irregular_sines(), time_unit="s", lookback=12, horizon=0, step_targets=True, batch_size=16
        )
    else:
        dm = SeriesDataModule.from_frame(irregular_sines(), time_unit="s", observe=8.0, forecast=3.0, every=2.0)
    dm.setup("fit")
    model = model_for(dm)
    assert model.head_name == ("step" if per_step else "continuous")
    plot = ForecastPlot()  # the windows at the 25th, 50th and 75th percentile of error
    _trainer(tmp_path, callbacks=[plot]).test(model, dm)
    image = imread(plot.path)
    assert plot.path == tmp_path / "test_forecasts.png"
    assert image.shape[:2] == (round(2.6 * 3 * 110), round(4.0 * dm.n_targets * 110))  # 3 rows x C columns
    assert image[..., :3].std() > 0.05  # something was drawn
