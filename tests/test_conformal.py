"""Split-conformal intervals: the conformal quantile and intervals by hand, the checkpoint round trip with
``weights_only``, every prediction path of a calibrated checkpoint, and the test-split coverage of the quickstart
and PhysioNet.

Coverage is a property of the calibration, not of how well a model learned: split conformal covers at least the
nominal level for any model when calibration and test values are exchangeable (Lei et al. 2018, Romano et al.
2019), so the assertions hold for the briefly trained models here. Tolerances: +-3 points pooled, +-5 per variable
and per horizon bucket (each with n >= 1000 test values: a binomial standard error of at most 1.3 points at 0.8,
plus the calibration's own sampling error of the same size). A (variable, bucket) cell is calibrated on its own
scores: +-5 is asserted on cells with >= 3000 test and calibration values each, +-7 on cells with >= 1000 (the
quickstart's cells hold ~1400: a standard error of ~1.5 points from the two samples, 24 cells and levels, and its
time split puts the test range after the validation range of drifting series; one cell in two fits was 5.5 points
off). Smaller cells are reported (``*.calibration.csv``), not asserted.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from cfc_forecast.calibrate import calibrate, fit_calibration
from cfc_forecast.checkpoints import load_checkpoint
from cfc_forecast.cli import cli
from cfc_forecast.commands import main
from cfc_forecast.errors import UserError
from cfc_forecast.forecast import forecast_rows
from cfc_forecast.forecast.trained import model_from, read_checkpoint
from cfc_forecast.forecaster import conformal
from cfc_forecast.forecaster.conformal import Calibration, conformal_quantile, needed
from cfc_forecast.scores import interval_scores
from tests.conftest import model_for

ROOT = Path(__file__).resolve().parents[1]
LEVELS = [0.8, 0.9]


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


# -- the conformal quantile and intervals, by hand ------------------------------------------------------------------
def test_the_conformal_quantile_is_the_ceil_n_plus_1_level_th_smallest_score():
    scores = torch.tensor([0.5, 0.1, 0.3, 0.9, 0.7, 0.2, 0.4, 0.8, 0.6])  # n = 9
    assert conformal_quantile(scores, 0.8) == pytest.approx(0.8)  # ceil(10 x 0.8) = 8th smallest (not 8.000...2)
    assert conformal_quantile(scores, 0.9) == pytest.approx(0.9)  # ceil(9) = 9th
    assert conformal_quantile(scores, 0.5) == pytest.approx(0.5)  # ceil(5) = 5th
    assert needed(0.8) == 4 and needed(0.9) == 9 and needed(0.95) == 19
    with pytest.raises(UserError, match="too few for a 0.95 interval"):
        conformal_quantile(scores, 0.95)  # ceil(9.5) = 10 > 9: unbounded


def hand_calibration(method: str, quantiles=None) -> Calibration:
    # one bucket, two targets: target 0 has 9 scores, target 1 only 4 (fewer than min_scores=5: pooled with all)
    s0 = torch.tensor([0.5, 0.1, 0.3, 0.9, 0.7, 0.2, 0.4, 0.8, 0.6])
    s1 = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    scores = torch.cat([s0, s1])
    variable = torch.tensor([0] * 9 + [1] * 4)
    qhat, counts, pooled = conformal.fit(scores, torch.zeros(13, dtype=torch.long), variable, 1, ["a", "b"], [0.8],
                                         min_scores=5)  # fmt: skip
    # target 0: 8th of its own 9; target 1: pooled over all 13: ceil(14 x 0.8) = 12th smallest of the 13 = 0.8
    assert qhat == [[[pytest.approx(0.8), pytest.approx(0.8)]]] and counts == [[9, 4]] and pooled == [[0, 2]]
    return Calibration([0.8], method, quantiles, "step", [], qhat, counts, pooled, min_scores=5)


def test_a_point_model_interval_is_its_forecast_plus_minus_the_conformal_quantile():
    cal = hand_calibration("residual")
    assert cal.output_levels == [0.1, 0.5, 0.9]
    pred = torch.tensor([2.0, -1.0]).reshape(1, 1, 2, 1)  # (B, K, C, Q)
    out = cal.apply(pred, torch.zeros(1, 1))
    assert out[0, 0].tolist() == [[pytest.approx(1.2), 2.0, pytest.approx(2.8)],
                                  [pytest.approx(-1.8), -1.0, pytest.approx(-0.2)]]  # fmt: skip


def test_cqr_corrects_the_outer_quantiles_and_a_negative_correction_shrinks_them():
    # scores max(lo - y, y - hi) of a model with lo = 1, hi = 3 at 9 actuals
    y = torch.tensor([0.0, 0.5, 1.5, 2.0, 2.5, 3.2, 3.5, 4.0, 2.2])
    pred = torch.tensor([1.0, 2.0, 3.0]).expand(9, 1, 3)
    scores = conformal.scores_of(pred, y[:, None], "cqr")[:, 0]
    assert scores.tolist() == pytest.approx([1.0, 0.5, -0.5, -1.0, -0.5, 0.2, 0.5, 1.0, -0.8])
    q = conformal_quantile(scores, 0.8)  # the 8th smallest of the 9
    assert q == pytest.approx(1.0)
    assert conformal_quantile(scores, 0.5) == pytest.approx(0.2)  # the 5th smallest
    # a 0.5 level with a negative correction (an over-wide pair): it shrinks the pair
    cal = Calibration([0.5, 0.8], "cqr", [0.25, 0.5, 0.75], "step", [], [[[-0.5]], [[q]]], [[9]], [[0]])
    out = cal.apply(torch.tensor([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3), torch.zeros(1, 1))[0, 0, 0]
    # levels 0.1 0.25 0.5 0.75 0.9: the 0.8 interval [1 - 1, 3 + 1]; the 0.5 one [1 - (-0.5), 3 + (-0.5)], which
    # replaces the model's own 0.25 / 0.75
    assert cal.output_levels == [0.1, 0.25, 0.5, 0.75, 0.9]
    assert out.tolist() == pytest.approx([0.0, 1.5, 2.0, 2.5, 4.0])


def test_a_shrinking_correction_is_rearranged_and_the_point_forecast_is_kept_apart():
    # the trial's case: quantiles 0.1 / 0.3 / 0.5 / 0.9 and levels 0.5 / 0.8 / 0.9, with CQR corrections that shrink
    # the outer pair [0, 10] far past the median (5) and the model's q0.3 (4): the columns are the sorted values
    # (monotone rearrangement); the model's own point forecast is carried apart by predict_step (tested end to end
    # in test_quickstart_conformal_coverage_on_the_test_split: `prediction` equals the uncalibrated model's)
    cal = Calibration([0.5, 0.8, 0.9], "cqr", [0.1, 0.3, 0.5, 0.9], "step", [], [[[-4.8]], [[-4.5]], [[-3.0]]],
                      [[99]], [[0]])  # fmt: skip
    out = cal.apply(torch.tensor([0.0, 4.0, 5.0, 10.0]).reshape(1, 1, 1, 4), torch.zeros(1, 1))[0, 0, 0]
    assert cal.output_levels == [0.05, 0.1, 0.25, 0.3, 0.5, 0.75, 0.9, 0.95]
    # 0.05: 0 + 3 = 3, 0.1: 4.5, 0.25: 4.8, 0.3: 4, 0.5: 5, 0.75: 10 - 4.8 = 5.2, 0.9: 5.5, 0.95: 7, sorted
    assert out.tolist() == pytest.approx([3.0, 4.0, 4.5, 4.8, 5.0, 5.2, 5.5, 7.0])


def test_offset_buckets_have_equal_counts_and_the_last_is_open():
    offsets = torch.arange(1.0, 101.0)
    edges = conformal.offset_edges(offsets, 4)
    assert edges == pytest.approx([25.75, 50.5, 75.25])
    cal = Calibration([0.8], "residual", None, "offset", edges, [[[0.0]] * 4], [[1]] * 4, [[0]] * 4)
    assert cal.bucket_of(torch.tensor([[0.5, 25.75, 60.0, 1e6]])).tolist() == [[0, 1, 2, 3]]


def test_interval_scores_by_hand():
    # two values of target "a" in bucket 0, one of "b" in bucket 1; levels 0.1 / 0.5 / 0.9
    values = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [10.0, 11.0, 14.0]])
    y = np.array([1.5, 3.0, 12.0])
    frame = interval_scores(values, y, [0.1, 0.5, 0.9], [0.8, 0.5], np.array([0, 0, 1]), np.array([0, 0, 1]),
                            ["a", "b"])  # fmt: skip
    pooled = frame.filter(pl.col("scope") == "pooled", pl.col("level") == 0.8).row(0, named=True)
    assert pooled["coverage"] == pytest.approx(2 / 3) and pooled["width"] == pytest.approx((2 + 2 + 4) / 3)
    # 2 x mean pinball per value: y=1.5 -> 2/3 (0.1x1.5 + 0.5x0.5 + 0.1x0.5) = 0.3; y=3 -> 2/3 (0.3 + 1 + 0.9) = 22/15;
    # y=12 -> 2/3 (0.2 + 0.5 + 0.2) = 0.6
    assert pooled["crps"] == pytest.approx((0.3 + 22 / 15 + 0.6) / 3)
    assert pooled["wql"] == pytest.approx((0.3 + 22 / 15 + 0.6) / 16.5)
    assert frame.filter(pl.col("level") == 0.5).height == 0  # no q0.25 / q0.75: the 0.5 interval is not scored
    b = frame.filter(pl.col("scope") == "variable", pl.col("variable") == "b").row(0, named=True)
    assert (b["n"], b["coverage"], b["width"]) == (1, 1.0, 4.0)


# -- a model calibrated in Python, its checkpoint and every prediction path ----------------------------------------
@pytest.mark.parametrize("quantiles", [None, [0.1, 0.5, 0.9]], ids=["point", "quantile"])
def test_a_calibrated_checkpoint_round_trips_with_weights_only_and_every_path_writes_its_intervals(
    tiny_synthetic, tmp_path, quantiles
):
    import lightning.pytorch as L

    dm = tiny_synthetic
    kwargs = {"loss": "pinball", "quantiles": quantiles} if quantiles else {}
    model = model_for(dm, hidden_size=8, backbone_units=8, head="continuous", **kwargs)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    cal = fit_calibration(model, dm, [0.9, 0.8], n_buckets=2, min_scores=5)
    assert cal.levels == [0.8, 0.9] and cal.method == ("cqr" if quantiles else "residual")
    path = tmp_path / "calibrated.ckpt"
    trainer.save_checkpoint(path)
    raw = torch.load(path, weights_only=True)
    assert raw["conformal"] == cal.to_dict()
    reloaded = model_from(load_checkpoint(path))
    assert reloaded.conformal == cal and reloaded.output_levels == [0.05, 0.1, 0.5, 0.9, 0.95]
    rows = dm._read()
    from_file = forecast_rows(path, rows, min_rows=1)
    from_model = forecast_rows(model, rows, datamodule=dm, min_rows=1)
    assert [c for c in from_file.columns if c.startswith("q")] == ["q0.05", "q0.1", "q0.5", "q0.9", "q0.95"]
    assert from_file.equals(from_model)
    from cfc_forecast.forecast.scorer import Scorer  # the Ray / Dask / MLflow scoring function

    assert Scorer(path).report(rows, min_rows=1).frame.equals(from_file)
    q = from_file.select(pl.col("^q.*$")).to_numpy()
    assert (np.diff(q, axis=1) >= 0).all()  # nested intervals, median inside
    point = from_file["prediction"].to_numpy()
    assert np.allclose(point, from_file["q0.5"].to_numpy())
    if not quantiles:  # symmetric about the point forecast
        assert np.allclose(from_file["q0.9"] - point, point - from_file["q0.1"])
    assert read_checkpoint(path)[1].intervals == [0.8, 0.9]


# -- the CLI on the quickstart --------------------------------------------------------------------------------------
def quick_fit(run_dir: Path, *extra: str, config: str = "quickstart.yaml", batches: int = 20) -> Path:
    cli(["fit", f"--config={ROOT / 'configs' / config}", "--test_after_fit=false", f"--run_dir={run_dir}",
         "--trainer.max_epochs=1", f"--trainer.limit_train_batches={batches}", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false", *extra])  # fmt: skip
    return run_dir / "checkpoints" / "best.ckpt"


def assert_coverage(report: pl.DataFrame, levels: list[float], cells_with: dict | None = None) -> None:
    after = report.filter(pl.col("when") == "after")
    for level in levels:
        at = after.filter(pl.col("level") == level)
        pooled = at.filter(pl.col("scope") == "pooled")["coverage"].item()
        assert abs(pooled - level) <= 0.03, (level, pooled)
        for scope in ("variable", "bucket"):
            big = at.filter(pl.col("scope") == scope, pl.col("n") >= 1000)
            assert big.height, scope
            worst = (big["coverage"] - level).abs().max()
            assert worst <= 0.05, (level, scope, big.select("variable", "bucket", "n", "coverage"))
        cells = at.filter(pl.col("scope") == "variable_bucket")
        if cells_with is not None:  # the calibration count of each cell
            cal = [cells_with.get((v, b), 0) for v, b in cells.select("variable", "bucket").rows()]
            cells = cells.with_columns(pl.Series("n_cal", cal))
        for n, tol in ((1000, 0.07), (3000, 0.05)):
            big = cells.filter(pl.col("n") >= n, pl.col("n_cal") >= n) if "n_cal" in cells.columns else cells.head(0)
            if big.height:
                shown = big.select("variable", "bucket", "n", "coverage")
                assert (big["coverage"] - level).abs().max() <= tol, (n, shown)


def calibration_counts(ckpt: Path, names: list[str]) -> dict:
    cal = Calibration.from_dict(torch.load(ckpt, weights_only=True)["conformal"])
    return {(names[c], j): cal.counts[j][c] for j in range(cal.n_buckets) for c in range(len(names))}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("extra", [[], ["--model.loss=pinball", "--model.quantiles=[0.1,0.5,0.9]"]],
                         ids=["point", "quantile"])  # fmt: skip
def test_quickstart_conformal_coverage_on_the_test_split(tmp_path, capsys, extra, seed):
    ckpt = quick_fit(tmp_path / "run", f"--seed_everything={seed}", *extra)
    assert main(["calibrate", f"--ckpt_path={ckpt}", "--levels=[0.8,0.9]"]) == 0
    out = ckpt.with_name("best.calibrated.ckpt")
    assert "calibrated checkpoint:" in capsys.readouterr().out
    report = pl.read_csv(out.with_name(out.name + ".calibration.csv"), infer_schema_length=None)
    assert_coverage(report, LEVELS, calibration_counts(out, ["x1", "x2", "v1"]))
    before = report.filter(pl.col("when") == "before", pl.col("scope") == "pooled")
    if not extra:  # a point model has no interval before calibration
        assert before["level"].is_null().all()
    # the input checkpoint is never touched; predict from the new one writes the intervals
    assert "conformal" not in load_checkpoint(ckpt)
    if seed:  # the coverage above is the claim of the second seed; the paths below are the same
        return
    rows = tmp_path / "rows.parquet"
    from datamodules import SyntheticDataModule

    SyntheticDataModule(n_series=4)._read().write_parquet(rows)
    assert main(["predict", f"--ckpt_path={out}", f"--data.path={rows}", f"--run_dir={tmp_path / 'p'}"]) == 0
    got = pl.read_parquet(tmp_path / "p" / "predictions.parquet")
    assert {"q0.05", "q0.1", "q0.9", "q0.95"} <= set(got.columns)
    # `prediction` is the model's own point forecast, calibrated or not (the trial found it moved by the rearrangement)
    assert main(["predict", f"--ckpt_path={ckpt}", f"--data.path={rows}", f"--run_dir={tmp_path / 'p0'}"]) == 0
    plain = pl.read_parquet(tmp_path / "p0" / "predictions.parquet")
    keys = ["series", "time", "variable"]
    assert got.sort(keys)["prediction"].equals(plain.sort(keys)["prediction"])
    # the test windows of the training data (the LightningCLI's predict and its Parquet writer)
    config = ckpt.parent.parent / "config.yaml"
    assert main(["predict", f"--config={config}", f"--ckpt_path={out}", "--predict_windows=test",
                 f"--run_dir={tmp_path / 'w'}"]) == 0  # fmt: skip
    windows = pl.read_parquet(tmp_path / "w" / "predictions.parquet")
    assert [c for c in windows.columns if c.startswith("q")] == ["q0.05", "q0.1", "q0.5", "q0.9", "q0.95"]
    # the batch job writes the same rows, intervals included
    assert main(["forecast", f"--ckpt_path={out}", f"--input={rows}", f"--output={tmp_path / 'job'}",
                 "--progress=false"]) == 0  # fmt: skip
    job = pl.read_parquet(sorted((tmp_path / "job").glob("part-*.parquet")))
    assert job.select(got.columns).sort("series", "time", "variable").equals(got.sort("series", "time", "variable"))
    # recalibrating writes over its own earlier output; the input is refused as the output
    assert main(["calibrate", f"--ckpt_path={ckpt}", "--levels=[0.8]", "--n_buckets=2"]) == 0
    assert torch.load(out, weights_only=True)["conformal"]["levels"] == [0.8]
    assert main(["calibrate", f"--ckpt_path={ckpt}", f"--output={ckpt}"]) == 2
    assert "is the checkpoint being calibrated" in capsys.readouterr().err
    # a config of other data (its scaler is not the checkpoint's) is refused
    import yaml

    other = yaml.safe_load(config.read_text())
    other["data"]["init_args"]["n_series"] = 64
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    assert main(["calibrate", f"--ckpt_path={ckpt}", f"--config={tmp_path / 'other.yaml'}"]) == 2
    assert "their scaler differs from the checkpoint's" in capsys.readouterr().err


def test_calibrate_refusals_are_one_line(tmp_path, capsys):
    assert main(["calibrate", f"--ckpt_path={tmp_path / 'none.ckpt'}"]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    ckpt = tmp_path / "run" / "checkpoints" / "x.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}}, ckpt)
    assert main(["calibrate", f"--ckpt_path={ckpt}", "--levels=[1.5]"]) == 2  # levels checked before anything else
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--levels must be interval levels in (0, 1)" in err
    assert main(["calibrate", f"--ckpt_path={ckpt}", "--levels=[0.8]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.yaml: no such file" in err


# -- PhysioNet ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_physionet_conformal_coverage_on_the_test_split(tmp_path):
    from datamodules.physionet import CHANNELS
    from tests.datamodules.conftest import real_data

    real_data("physionet2012", "set-a.tar.gz")
    ckpt = quick_fit(tmp_path / "run", config="physionet.yaml", batches=40)
    result = calibrate(str(ckpt), LEVELS)
    assert_coverage(result.report, LEVELS, calibration_counts(result.path, list(CHANNELS)))
    assert math.isfinite(result.report["wql"].max())
