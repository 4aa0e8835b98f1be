"""The ``cfc-forecast`` command: LightningCLI ``fit | validate | test | predict`` plus ``native`` and ``--version``.

The DataModule is chosen by ``class_path`` (any ``SeriesDataModule`` subclass, e.g. ``SyntheticDataModule``); the
sizes the model needs are linked from it once it is built. Every run gets its own directory
``<runs_root>/<YYYYmmdd-HHMMSS>-<subcommand>`` (or ``--run_dir``) with ``config.yaml`` (the resolved config),
``run.json`` (seed and versions) and ``metrics.csv``; fit adds ``checkpoints/best.ckpt`` and ``last.ckpt``, and
with ``--test_after_fit`` ``test_metrics.json`` (beside the baselines); test adds ``test_forecasts.png``.

``predict`` forecasts from a checkpoint alone (``cfc_forecast.forecast.predict``: no split, nothing fitted on the
data being forecast); only ``predict --predict_windows=test`` runs here: it forecasts the test windows of the
training data, so it builds the split from the config, and refuses data whose scaler differs from the checkpoint's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info

from cfc_forecast import __version__
from cfc_forecast.errors import UserError, report
from cfc_forecast.forecast.predict import main as predict_main
from cfc_forecast.forecast.predict import wants_test_windows
from cfc_forecast.module import ForecastModule
from cfc_forecast.native import native_available, native_status
from cfc_forecast.plot import ForecastPlot
from cfc_forecast.runs import RUN_DIR_ENV, compare_with_baselines, new_run_dir, record_run
from cfc_forecast.writer import ParquetForecastWriter
from datamodules import SeriesDataModule

# DataModule property -> ForecastModule argument, linked when the DataModule is instantiated
LINKS = {
    "n_inputs": "n_inputs",
    "n_targets": "n_targets",
    "horizon": "horizon",
    "lookback": "lookback",
    "n_static": "n_static",
    "n_future": "n_future",
    "time_unit": "time_unit",
    "target_input_index": "target_inputs",
    "input_names": "input_names",
    "target_names": "target_names",
}


class RunRecord(SaveConfigCallback):
    """Saves the resolved config to the run directory, and ``run.json`` with the seed and versions."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        # rank 0 only: trainer.log_dir would broadcast and hang the other ranks; the CLI set default_root_dir
        record_run(Path(trainer.default_root_dir), self.config.get("seed_everything"), stage)


class ForecastCLI(LightningCLI):
    """LightningCLI over :class:`ForecastModule` and any ``SeriesDataModule``; see the module docstring."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        self.run_dir: Path | None = None
        super().__init__(
            ForecastModule,
            SeriesDataModule,
            subclass_mode_data=True,
            save_config_callback=RunRecord,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in LINKS.items():
            parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="instantiate")
        parser.add_argument("--runs_root", type=str, default="runs", help="Folder of the run directories.")
        parser.add_argument("--run_dir", type=str | None, default=None, help="This run's directory (default: new).")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="fit: test the best checkpoint and print the baselines beside it.",
        )
        parser.add_argument("--monitor", type=str, default="val/loss", help="fit: the metric that picks best.ckpt.")
        parser.add_argument(
            "--monitor_mode",
            type=Literal["min", "max"],
            default="min",
            help="fit: whether best.ckpt holds the lowest ('min') or the highest ('max') value of --monitor.",
        )
        parser.add_argument(
            "--predict_windows",
            type=Literal["last", "test"],
            default="last",
            help="predict: 'test' forecasts every test window of the training data here; 'last' (the end of every "
            "series) runs from the checkpoint alone (cfc_forecast.forecast.predict).",
        )

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the model's hyperparameters back from --ckpt_path; the data-derived ones are links, set
        # from the data at instantiation (and checked against the checkpoint in ForecastModule.on_load_checkpoint)
        path = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
        if not path or not Path(path).is_file():
            return
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
        hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if k not in LINKS.values()}
        hparams.pop("_instantiator", None)
        hparams.pop("_class_path", None)
        if hparams:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else new_run_dir(cfg.runs_root, self.subcommand)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.environ[RUN_DIR_ENV] = str(self.run_dir)
        callbacks = []
        if self.subcommand == "fit":
            callbacks.append(
                ModelCheckpoint(
                    dirpath=self.run_dir / "checkpoints",
                    filename="best",
                    monitor=cfg.monitor,
                    mode=cfg.monitor_mode,
                    save_last=True,
                    auto_insert_metric_name=False,
                )
            )
        if self.subcommand == "test" or (self.subcommand == "fit" and cfg.test_after_fit):
            callbacks.append(ForecastPlot())
        if self.subcommand == "predict":
            callbacks.append(ParquetForecastWriter(str(self.run_dir)))
        self.trainer_defaults["callbacks"] = callbacks

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # the run directory and its CSV log are set here, not in the config, so a saved config.yaml reused for
        # another run (predict --config runs/<run>/config.yaml) writes into that run's own directory
        kwargs.setdefault("default_root_dir", str(self.run_dir))
        if self._get(self.config_init, "trainer", default={}).get("logger") in (None, True):
            kwargs.setdefault("logger", CSVLogger(save_dir=str(self.run_dir), name="", version=""))
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        # a window spec the data cannot fill (a horizon longer than the series, a split too short) leaves a split
        # without windows: say so before any training instead of fitting on nothing
        dm = self.datamodule
        if hasattr(dm, "dataset"):
            for split in ("train", "val"):
                if len(dm.dataset(split)) == 0:
                    raise ValueError(
                        f"the {split} split has no windows: the window lengths (lookback + horizon, or observe + "
                        f"forecast) do not fit the data's {split} part; skipped: {getattr(dm, 'counts', {})}"
                    )

    def after_fit(self) -> None:
        if not self.config.fit.test_after_fit:
            return
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        # a fast_dev_run tests one batch: no table of numbers that would look like a result
        if self.trainer.is_global_zero and not self.trainer.fast_dev_run:
            metrics = {k.removeprefix("test/"): float(v) for k, v in results[0].items()}
            table = compare_with_baselines(self.datamodule, metrics, self.run_dir)
            print(f"\n{table}\nrun directory: {self.run_dir}", flush=True)

    def before_predict(self) -> None:
        # the split is rebuilt from the config: its scaler must be the one the checkpoint was trained with
        if self.config.predict.predict_windows != "test":  # main() and cli() send these to the checkpoint path
            raise ValueError("predict from the end of the series runs from the checkpoint alone: use main() or cli()")
        path = self.config.predict.get("ckpt_path")
        if not path:
            raise ValueError("predict --predict_windows=test needs --ckpt_path (the trained model)")
        saved = _saved_scaler(torch.load(path, weights_only=True, map_location="cpu"))
        built = self.datamodule._ensure_built().scaler
        same = saved is not None and np.shape(saved["loc"]) == built.loc.shape
        if not same or not (np.allclose(saved["loc"], built.loc) and np.allclose(saved["scale"], built.scale)):
            raise ValueError(
                f"{path}: the data of this config are not the ones the model was trained on (their scaler differs "
                "from the checkpoint's); --predict_windows=test forecasts the test windows of the training data: "
                "to forecast other data, run predict without --predict_windows"
            )

    def after_predict(self) -> None:
        rank_zero_info(f"forecasts written to {self.run_dir / 'predictions.parquet'}")


def _saved_scaler(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    for value in ckpt.values():
        if isinstance(value, dict) and "preprocessing" in value and "target_loc" in value:
            return value["preprocessing"]["scaler"]
    return None


def cli(args: list[str] | None = None, run: bool = True) -> ForecastCLI | None:
    """Run the LightningCLI on ``args`` (default ``sys.argv[1:]``) and return it (for tests and the tuner).

    ``predict`` from the end of the series is not a LightningCLI subcommand: ``main`` runs it (see the module
    docstring); here it raises ``SystemExit`` with its status unless that is 0."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["predict"] and not wants_test_windows(argv):
        status = predict_main(argv[1:])
        if status:
            raise SystemExit(status)
        return None
    try:
        return ForecastCLI(args=args, run=run)
    finally:
        if os.environ.get("LOCAL_RANK", "0") == "0":
            os.environ.pop(RUN_DIR_ENV, None)


def main(args: list[str] | None = None) -> int:
    """The console script: ``native``, ``--version``, ``tune``, ``forecast``, ``predict``, or a LightningCLI
    subcommand; returns the exit status."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["--version"]:
        print(f"cfc-forecast {__version__} (torch {torch.__version__})")
        return 0
    if argv[:1] == ["native"]:
        ok = native_available()
        print(native_status())
        return 0 if ok else 1
    if argv[:1] == ["tune"]:  # Optuna studies over fit configs (cfc_forecast/tune)
        from cfc_forecast.tune import main as tune_main

        return tune_main(argv[1:])
    if argv[:1] == ["forecast"]:  # batch forecasting jobs over large inputs (cfc_forecast/forecast)
        from cfc_forecast.forecast import main as forecast_main

        return forecast_main(argv[1:])
    if argv[:1] == ["predict"] and not wants_test_windows(argv):  # from a checkpoint alone
        return predict_main(argv[1:])
    try:
        cli(args)  # None: LightningCLI reads sys.argv itself
    except UserError as err:  # one line, no traceback (cfc_forecast.errors)
        return report(argv[0] if argv and not argv[0].startswith("-") else None, err)
    return 0


if __name__ == "__main__":  # python -m cfc_forecast.cli (what the DDP launcher re-executes for the test)
    sys.exit(main())
