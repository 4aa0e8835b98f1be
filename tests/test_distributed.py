"""Evaluation on several DDP processes (gloo, CPU) scores exactly what one process scores.

Every window is evaluated on one rank only (no padding by repetition), a rank without windows of its own takes part
with a placeholder that counts nowhere, and ``val/*`` / ``test/*`` are sums reduced across ranks, so the numbers of
fit, validate and test agree with a single process whatever the number of processes and of windows.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import polars as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from cfc_forecast.cli import cli
from datamodules import SeriesDataModule
from datamodules.sharding import EvalShardSampler, placeholder
from tests.conftest import model_for

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-6  # float32 forecasts of the same windows in other batches: rounding apart, not bit for bit


class FixedSplits(SeriesDataModule):
    """One window per series (a fixed origin); the last ``2 * n_eval`` series are validation, then test."""

    n_eval = 3

    def _assign_series(self, ids: pl.Series) -> np.ndarray:
        return np.array([0] * (len(ids) - 2 * self.n_eval) + [1] * self.n_eval + [2] * self.n_eval)


def irregular_frame(n_series: int, rows: int = 30) -> pl.DataFrame:
    """Series with irregular time steps and a second variable missing at random: windows of unequal lengths."""
    rng = np.random.default_rng(0)
    parts = []
    for s in range(n_series):
        t = np.cumsum(rng.uniform(0.3, 1.7, rows))
        b = np.cos(t / 5) + 0.1 * rng.normal(size=rows)
        b[rng.random(rows) < 0.3] = np.nan
        a = np.sin(t / 3 + s) + 0.1 * rng.normal(size=rows)
        parts.append(pl.DataFrame({"id": f"s{s:02d}", "t": t, "a": a, "b": b}))
    return pl.concat(parts).with_columns(pl.col("b").fill_nan(None))


def datamodule(n_eval: int) -> FixedSplits:
    """4 training windows and ``n_eval`` windows in each of validation and test, 2 per batch."""
    dm = FixedSplits.from_frame(irregular_frame(4 + 2 * n_eval), id_column="id", time_column="t", time_unit="s",
                                observe=8.0, forecast=4.0, origin=20.0, split_by="series", batch_size=2)  # fmt: skip
    dm.n_eval = n_eval
    dm.setup()
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [4, n_eval, n_eval]
    return dm


def trainer(devices: int, **kwargs) -> L.Trainer:
    """One process without DDP (devices=0), or ``devices`` DDP processes forked from this one (gloo on the CPU)."""
    ddp = {"devices": devices, "strategy": "ddp_fork"} if devices else {"devices": 1}
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    return L.Trainer(accelerator="cpu", **ddp, **{"enable_checkpointing": False, **quiet, **kwargs})


def evaluated(values: dict, stage: str) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if k.startswith(f"{stage}/")}


def single_process(model, n_eval: int) -> dict[str, float]:
    """val/* and test/* of ``model`` on one process: the reference."""
    (val,) = trainer(0).validate(model, datamodule(n_eval), verbose=False)
    (test,) = trainer(0).test(model, datamodule(n_eval), verbose=False)
    return {**val, **test}


def assert_same(got: dict[str, float], expected: dict[str, float], stage: str) -> None:
    want = evaluated(expected, stage)
    assert set(want) >= {f"{stage}/loss", f"{stage}/mse", f"{stage}/mae", f"{stage}/mse_per_var"}
    assert evaluated(got, stage) == pytest.approx(want, rel=TOLERANCE, abs=TOLERANCE)


@pytest.fixture(autouse=True)
def _quiet_lightning():
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the per-run banners (GPU available, ...) of dozens of short trainers
    yield
    logger.setLevel(level)


def check_fit_validate_test(tmp_path, devices: int, n_eval: int) -> None:
    torch.manual_seed(0)
    small = {"hidden_size": 8, "backbone_units": 16, "head_hidden_sizes": [8], "lr": 0.01, "impl": "python"}
    model = model_for(datamodule(n_eval), **small)
    best = ModelCheckpoint(dirpath=tmp_path / f"ckpt-{devices}-{n_eval}", filename="best", monitor="val/loss")
    fit = trainer(devices, max_epochs=2, enable_checkpointing=True, callbacks=[best])
    fit.fit(model, datamodule(n_eval))
    # the fit's last validation scored the final weights (rank 0's, returned to this process)
    final = single_process(model, n_eval)
    assert_same(fit.callback_metrics, final, "val")
    # and best.ckpt holds the val/loss its weights score
    kept = torch.load(best.best_model_path, weights_only=True)
    score = next(v["best_model_score"] for k, v in kept["callbacks"].items() if k.startswith("ModelCheckpoint"))
    model.load_state_dict(kept["state_dict"])
    assert float(score) == pytest.approx(single_process(model, n_eval)["val/loss"], rel=TOLERANCE, abs=TOLERANCE)

    reference = single_process(model, n_eval)
    (val,) = trainer(devices).validate(model, datamodule(n_eval), verbose=False)
    assert_same(val, reference, "val")
    (test,) = trainer(devices).test(model, datamodule(n_eval), verbose=False)
    assert_same(test, reference, "test")
    (after_fit,) = fit.test(model, datamodule(n_eval), verbose=False)  # the fit's own trainer, as --test_after_fit
    assert_same(after_fit, reference, "test")


# the reported case is 3 windows on 2 ranks (a padded sampler counts one twice); 1 window on 3 ranks leaves two
# ranks without windows. The whole matrix takes seconds: a tiny model on the pure-PyTorch loop, forked processes
@pytest.mark.parametrize("n_eval", [1, 2, 3, 7])
@pytest.mark.parametrize("devices", [1, 2, 3])
def test_any_number_of_processes_and_windows_score_as_one_process_does(tmp_path, devices, n_eval):
    check_fit_validate_test(tmp_path, devices, n_eval)


@pytest.mark.parametrize(("n", "ranks"), [(0, 2), (1, 3), (3, 2), (7, 3), (5, 1)])
def test_the_shards_hold_every_window_once_and_an_empty_shard_a_placeholder(n, ranks):
    shards = [list(EvalShardSampler(range(n), ranks, r)) for r in range(ranks)]
    real = sorted(i for s in shards for i in s if i >= 0)
    assert real == list(range(n))
    assert all(s == [placeholder(0)] for s in shards if not [i for i in s if i >= 0]) or n == 0
    assert all(len(s) == (0 if n == 0 else max(1, len(range(r, n, ranks)))) for r, s in enumerate(shards))


def test_a_placeholder_window_counts_in_no_metric():
    dm = datamodule(2)
    ds = dm.dataset("val")
    real, padded = ds.collate([1]), ds.collate([1, placeholder(0)])
    assert not padded.y_mask[1].any() and padded.y_mask[0].equal(real.y_mask[0])
    first = ds.collate([0]).x[0]  # (T0, F)
    assert padded.x[1, : len(first)].equal(first)  # the window itself is real: the model runs as on any other
    with pytest.raises(ValueError, match="rank"):
        EvalShardSampler(ds, 2, 2)


@pytest.mark.slow
def test_the_test_command_on_two_ddp_processes_scores_as_on_one(tmp_path, monkeypatch):
    # the reported command line: `cfc-forecast test` of one checkpoint on 3 windows, 1 process vs 2 DDP processes
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])
    irregular_frame(4 + 2 * FixedSplits.n_eval).write_csv(tmp_path / "series.csv")
    data = ["--data=tests.test_distributed.FixedSplits", f"--data.path={tmp_path / 'series.csv'}",
            "--data.id_column=id", "--data.time_column=t", "--data.time_unit=s", "--data.observe=8",
            "--data.forecast=4", "--data.origin=20", "--data.split_by=series", "--data.batch_size=2"]  # fmt: skip
    model = ["--model.hidden_size=8", "--model.backbone_units=16", "--model.impl=python"]
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    cli(["fit", *data, *model, *quiet, "--trainer.max_epochs=1", f"--run_dir={tmp_path / 'fit'}"])
    test = ["test", f"--config={tmp_path / 'fit' / 'config.yaml'}", *quiet,
            f"--ckpt_path={tmp_path / 'fit' / 'checkpoints' / 'best.ckpt'}"]  # fmt: skip
    one = cli([*test, f"--run_dir={tmp_path / 'one'}"]).trainer.callback_metrics
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", f"--run_dir={tmp_path}/two"]
    subprocess.run([sys.executable, "-m", "cfc_forecast.commands", *test, *ddp], check=True, cwd=ROOT, timeout=300)
    two = pl.read_csv(tmp_path / "two" / "metrics.csv").select(pl.col("^test/.*$")).drop_nulls().row(0, named=True)
    assert two == pytest.approx(evaluated(one, "test"), rel=TOLERANCE, abs=TOLERANCE)
