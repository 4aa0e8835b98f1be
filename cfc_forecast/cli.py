"""The ``cfc-forecast`` command: LightningCLI ``fit | validate | test | predict`` plus ``native`` and ``--version``.

The DataModule is chosen by ``class_path`` (any ``SeriesDataModule`` subclass, e.g. ``SyntheticDataModule``); the
sizes the model needs are linked from it once it is built. Every run gets its own directory
``<runs_root>/<YYYYmmdd-HHMMSS>-<subcommand>`` (or ``--run_dir``) with ``config.yaml`` (the resolved config),
``run.json`` (seed and versions) and ``metrics.csv``; fit adds ``checkpoints/best.ckpt`` and ``last.ckpt``, and
with ``--test_after_fit`` ``test_metrics.json`` (beside the baselines); test adds ``test_forecasts.png``.

A plain ``SeriesDataModule`` gets defaults for what is left unset (``cfc_forecast.defaults``: windows from
``--data.forecast``, epochs with early stopping, calendar features), printed at the start;
``--trainer.default_root_dir`` is taken as ``--runs_root``. The console script is ``cfc_forecast.launch`` (thread
settings before torch loads).

``predict`` forecasts from a checkpoint alone (``cfc_forecast.forecast.predict``: no split, nothing fitted on the
data being forecast); only ``predict --predict_windows=test`` runs here: it forecasts the test windows of the
training data, so it builds the split from the config, and refuses data whose scaler differs from the checkpoint's.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info

import datamodules
from cfc_forecast import __version__, defaults, noise
from cfc_forecast.errors import UserError, parse_error, report
from cfc_forecast.forecast.predict import main as predict_main
from cfc_forecast.forecast.predict import wants_test_windows
from cfc_forecast.launch import parse_threads, take_option, usage
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
        self.early_stopping = False
        # a parse error raises (parse_arguments makes it one line with a suggestion) instead of printing the usage
        raising = {"exit_on_error": False}
        super().__init__(
            ForecastModule,
            SeriesDataModule,
            subclass_mode_data=True,
            save_config_callback=RunRecord,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={**raising, **{name: dict(raising) for name in ("fit", "validate", "test", "predict")}},
            args=args,
            run=run,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            argv = sys.argv[1:] if args is None else list(args)
            raise parse_error(str(err), self._option_names(argv)) from err
        if self.config.get("subcommand"):
            _root_dir_as_runs_root(self.config[self.config.subcommand])
            self._plain_data_defaults(self.config.subcommand)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:  # jsonargparse wraps what __init__ raised in a list of union subtypes
            cause: BaseException | None = err
            while cause is not None and not isinstance(cause, UserError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise cause from err

    def _option_names(self, argv: list[str]) -> list[str]:
        """The options of the command in ``argv``, with the init arguments of its DataModule class."""
        command = next((a for a in argv if not a.startswith("-")), None)
        parser = getattr(self, "_subcommand_parsers", {}).get(command, self.parser)
        names = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
        data = take_option(argv, "--data", with_value=True)[0] or "SeriesDataModule"
        cls = getattr(datamodules, str(data).rsplit(".", 1)[-1], SeriesDataModule)
        return names + [f"--data.{p}" for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def _plain_data_defaults(self, subcommand: str) -> None:
        """Fill what a plain ``SeriesDataModule`` left unset (``cfc_forecast.defaults``) and print it."""
        cfg = self.config[subcommand]
        if cfg.get("data") is None or cfg.data.get("class_path") not in defaults.PLAIN_DATA:
            return
        data = cfg.data.init_args.as_dict()
        chosen = {
            f"data.{k}": v for k, v in {**defaults.window_defaults(data), **defaults.calendar_defaults(data)}.items()
        }
        if subcommand == "fit":
            chosen.update({f"trainer.{k}": v for k, v in defaults.epoch_defaults(cfg.trainer.as_dict()).items()})
        if not chosen:
            return
        for key, value in chosen.items():
            group, name = key.split(".")
            (cfg.data.init_args if group == "data" else cfg.trainer)[name] = value
        self.early_stopping = "trainer.max_epochs" in chosen
        if os.environ.get("LOCAL_RANK", "0") == "0":  # each DDP process parses again: one line, from the first
            print(defaults.describe(chosen, cfg.monitor if self.early_stopping else None), flush=True)

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
        if self.early_stopping:  # cfc_forecast.defaults: no epoch limit was set
            cfg = self.config[self.subcommand]
            stop = EarlyStopping(monitor=cfg.monitor, mode=cfg.monitor_mode, patience=defaults.PATIENCE)
            self.trainer_defaults["callbacks"] = [*self.trainer_defaults.get("callbacks", []), stop]
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
            table = compare_with_baselines(self.datamodule, metrics, self.run_dir, self.model)
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


def _root_dir_as_runs_root(cfg: Any) -> None:
    """``trainer.default_root_dir`` (Lightning's name for it; from the command line or a config) becomes
    ``runs_root``: each run gets a folder of its own under it, and the trainer's root directory is that folder."""
    root = cfg.trainer.get("default_root_dir")
    if root is None:
        return
    if cfg.runs_root != "runs" and Path(cfg.runs_root).resolve() != Path(root).resolve():
        raise UserError(
            f"--trainer.default_root_dir {root} and --runs_root {cfg.runs_root} differ: give one of them (each run "
            "gets a folder of its own under --runs_root)"
        )
    cfg.runs_root, cfg.trainer.default_root_dir = str(root), None


def _saved_scaler(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    for value in ckpt.values():
        if isinstance(value, dict) and "preprocessing" in value and "target_loc" in value:
            return value["preprocessing"]["scaler"]
    return None


def cli(args: list[str] | None = None, run: bool = True) -> ForecastCLI | None:
    """Run the LightningCLI on ``args`` (default ``sys.argv[1:]``) and return it (for tests and the tuner).

    ``predict`` from the end of the series is not a LightningCLI subcommand: ``main`` runs it (see the module
    docstring); here it raises ``SystemExit`` with its status unless that is 0.

    Raises:
        UserError: a parse error (one line naming the option, with the closest one), or bad data or options
            found while the DataModule is built."""
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
    """The console script (behind ``cfc_forecast.launch``): ``--help``, ``--version``, ``native``, ``tune``,
    ``forecast``, ``predict``, or a LightningCLI subcommand; returns the exit status.

    Every command takes ``--threads N`` (torch's intra-op threads) and ``--debug``. A user error (``UserError``, a
    parse error) is one line ``cfc-forecast <command>: error: ...`` and exit status 2; ``--debug`` raises it
    instead, with its traceback."""
    argv = sys.argv[1:] if args is None else list(args)
    noise.quiet()
    debug, argv = take_option(argv, "--debug", with_value=False)
    threads, argv = take_option(argv, "--threads", with_value=True)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    try:
        if (n := parse_threads(threads)) is not None:
            torch.set_num_threads(n)
            os.environ["OMP_NUM_THREADS"] = str(n)  # for the processes this command starts
        if args is None:  # LightningCLI, and DDP when it re-executes the command, read sys.argv
            sys.argv[1:] = argv
        return _dispatch(argv, None if args is None else argv)
    except (UserError, ArgumentError) as err:  # one line, no traceback (cfc_forecast.errors)
        if debug:
            raise
        return report(command, err if isinstance(err, UserError) else parse_error(str(err), _options_of(command)))


def _options_of(command: str | None) -> list[str]:
    """The option names of ``tune`` and ``forecast`` (their own parsers), for the suggestion of a parse error."""
    from jsonargparse import ArgumentParser

    if command == "tune":
        from cfc_forecast.tune.cli import build_parser

        parser = build_parser()
    elif command == "forecast":
        from cfc_forecast.forecast import forecast

        parser = ArgumentParser()
        parser.add_function_arguments(forecast, as_positional=False)
    else:
        return []
    return [o for action in parser._actions for o in action.option_strings if o.startswith("--")]


def _dispatch(argv: list[str], args: list[str] | None) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[:1] == ["--version"]:
        print(f"cfc-forecast {__version__} (torch {torch.__version__}, {torch.get_num_threads()} intra-op threads)")
        return 0
    if argv[:1] == ["native"]:
        if argv[1:]:
            raise UserError(f"native takes no arguments, got {' '.join(argv[1:])}")
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
    cli(args)  # None: LightningCLI reads sys.argv itself
    return 0


if __name__ == "__main__":  # python -m cfc_forecast.cli (what the DDP launcher re-executes for the test)
    sys.exit(main())
