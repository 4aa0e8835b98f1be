"""The README's categorical-covariates example: does a model learn a categorical covariate known ahead, and what does
``cfc-forecast predict`` report for a category unseen in training?

Data: ``datamodules.synthetic.stores_frame`` (8 stores x 300 hours; the target's level is set by that hour's
``weather``, plus a numeric ``promo``; ``store_type`` and ``size`` static). For each of 3 seeds, the quickstart-sized
CfC (count windows, lookback 24, horizon 6) is fitted for 10 epochs with ``weather`` as a categorical known-future
covariate and without it (``promo`` and the static covariates in both), and scored on the test split (scaled MSE,
the last epoch's model). Then one fitted model forecasts new rows whose future hours say "Snow" (unseen) through
``cfc-forecast predict``; its summary is printed.

    OMP_NUM_THREADS=1 python benchmarks/categorical.py    # 35 s on 2 loaded CPU cores; the same numbers each run
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import lightning.pytorch as L
import polars as pl

from cfc_forecast.commands import main
from datamodules import SeriesDataModule
from datamodules.synthetic import stores_frame

COMMON = dict(id_column="store", time_unit="h", targets=["y"], inputs=["y"], static=["store_type", "size"],
              lookback=24, horizon=6, batch_size=64)  # fmt: skip
WITH = dict(known_future=["weather", "promo"], categorical=["weather", "store_type"])
WITHOUT = dict(known_future=["promo"], categorical=["store_type"])


def score(frame: pl.DataFrame, roles: dict, seed: int) -> float:
    from cfc_forecast.forecaster.module import ForecastModule

    L.seed_everything(seed, verbose=False)
    dm = SeriesDataModule.from_frame(frame, **COMMON, **roles)
    dm.setup()
    model = ForecastModule(dm.n_inputs, dm.n_targets, dm.horizon, dm.n_static, dm.n_future, dm.time_unit,
                           target_inputs=dm.target_input_index, lookback=dm.lookback,
                           categorical_sizes=dm.categorical_sizes, hidden_size=32, backbone_units=64)  # fmt: skip
    trainer = L.Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(model, dm)
    return trainer.test(model, dm, verbose=False)[0]["test/mse"]


def predict_example(frame: pl.DataFrame, root: Path) -> None:
    data = root / "stores.csv"
    frame.write_csv(data)
    args = [f"--data.path={data}", "--data.id_column=store", "--data.time_unit=h", "--data.targets=[y]",
            "--data.inputs=[y]", "--data.static=[store_type, size]", "--data.known_future=[weather, promo]",
            "--data.categorical=[weather, store_type]", "--data.lookback=24", "--data.horizon=6"]  # fmt: skip
    sys.argv = ["cfc-forecast"]
    main(["fit", *args, "--model.hidden_size=32", "--model.backbone_units=64", "--trainer.max_epochs=3",
          "--seed_everything=0", f"--run_dir={root / 'run'}", "--trainer.enable_progress_bar=false"])  # fmt: skip
    end = 290  # history up to hour 289, then 6 future hours with empty targets; hours 292-293 say "Snow"
    future = frame.filter(pl.col("time").is_between(end, end + 5)).with_columns(
        pl.lit(None, pl.Float64).alias("y"),
        pl.when(pl.col("time").is_between(end + 2, end + 3)).then(pl.lit("Snow")).otherwise("weather").alias("weather"),
    )
    new = root / "new.csv"
    pl.concat([frame.filter(pl.col("time") < end), future]).write_csv(new)
    print("\n$ cfc-forecast predict --ckpt_path run/checkpoints/last.ckpt --data.path new.csv")
    main(["predict", f"--ckpt_path={root / 'run' / 'checkpoints' / 'last.ckpt'}", f"--data.path={new}",
          f"--run_dir={root / 'predict'}"])  # fmt: skip


def run() -> None:
    frame = stores_frame(8, 300, seed=0)
    rows = []
    for seed in (0, 1, 2):
        rows.append((seed, score(frame, WITH, seed), score(frame, WITHOUT, seed)))
    print("| seed | test MSE with weather (categorical, known ahead) | without it |\n|---|---|---|")
    for seed, a, b in rows:
        print(f"| {seed} | {a:.4f} | {b:.4f} |")
    with tempfile.TemporaryDirectory() as tmp:
        predict_example(frame, Path(tmp))


if __name__ == "__main__":
    run()
