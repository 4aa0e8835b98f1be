"""The ``cfc-forecast`` command: LightningCLI ``fit | validate | test | predict`` plus ``native`` and ``--version``.

The DataModule is chosen by ``class_path`` (any ``SeriesDataModule`` subclass, e.g. ``SyntheticDataModule``); the
sizes the model needs are linked from it once it is built. Every run gets its own directory
``<runs_root>/<YYYYmmdd-HHMMSS>-<subcommand>`` (or ``--run_dir``) with ``config.yaml`` (the resolved config),
``run.json`` (seed, versions, the history of the commands run in it) and ``metrics.csv`` (appended to); fit adds
``checkpoints/best.ckpt`` and ``last.ckpt`` (every epoch's end), and with ``--test_after_fit`` ``test_metrics.json``
(beside the baselines); test adds ``test_forecasts.png``. One process at a time works in a run folder (``.lock``).
``fit --resume RUN`` continues a run (``cfc_forecast.resume``); checkpoints are written and read through
``cfc_forecast.checkpoints`` (atomic saves, ``weights_only=True`` loads, RNG state).

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
import shutil
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

import datamodules
from cfc_forecast import defaults
from cfc_forecast.argv import take_option
from cfc_forecast.checkpoints import AtomicCheckpointIO, RngState, load_checkpoint
from cfc_forecast.errors import UserError, parse_error
from cfc_forecast.forecast.predict import main as predict_main
from cfc_forecast.forecast.predict import wants_test_windows
from cfc_forecast.forecaster.module import ForecastModule
from cfc_forecast.plot import ForecastPlot
from cfc_forecast.preflight import check_splits
from cfc_forecast.resume import ApplyChanges, config_files, resolve_last, resume_argv, resume_target, review_changes
from cfc_forecast.runs import (
    RUN_DIR_ENV,
    AppendingCSVLogger,
    ConfigRecord,
    FolderLock,
    ForgetUnsavedRows,
    compare_with_baselines,
    has_results,
    is_global_zero,
    new_run_dir,
    record_run,
)
from cfc_forecast.tracking import log_run_files
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
    "categorical_sizes": "categorical_sizes",
}


class RunRecord(SaveConfigCallback):
    """Saves the resolved config to the run directory (``config.yaml`` for a fit, where an earlier one is kept as
    ``config.<n>.yaml``; ``config.<n>.yaml`` for another command in a folder that holds one: ``ConfigRecord``), and
    adds this command to ``run.json`` (seed, versions, its config file, what a fit resumed from and the values it
    changed). ``record`` puts both back when the command fails (``ForecastCLI``)."""

    def __init__(self, *args: Any, event: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.event = event or {}
        self.record: ConfigRecord | None = None

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if not self.already_saved and trainer.is_global_zero:
            self.record = ConfigRecord(Path(trainer.default_root_dir), stage)
            self.config_filename = self.record.name
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        # rank 0 only: trainer.log_dir would broadcast and hang the other ranks; the CLI set default_root_dir
        seed = self.config.get("seed_everything")
        record_run(Path(trainer.default_root_dir), seed, stage, self.event, self.record)


class ForecastCLI(LightningCLI):
    """LightningCLI over :class:`ForecastModule` and any ``SeriesDataModule``; see the module docstring."""

    def __init__(self, args: list[str] | None = None, run: bool = True, resumed: str | None = None) -> None:
        self.resumed = resumed  # the folder of a --resume on the command line (messages name it as given)
        self.run_dir: Path | None = None
        self.args = sys.argv[1:] if args is None else list(args)
        self.lock: FolderLock | None = None
        self.created_run_dir = False
        self.event: dict[str, Any] = {}
        self.early_stopping = False
        # a parse error raises (parse_arguments makes it one line with a suggestion) instead of printing the usage
        raising = {"exit_on_error": False}
        try:
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
        except BaseException:
            # a failed command leaves no run folder of its own that holds nothing (a fit's checkpoints stay), and
            # in a folder that was there, config.yaml and run.json as they were (ConfigRecord.undo)
            made = self.created_run_dir and self.run_dir is not None and self.run_dir.is_dir()
            if made and not has_results(self.run_dir):
                shutil.rmtree(self.run_dir, ignore_errors=True)
            elif not self.created_run_dir and self.run_dir is not None and self.run_dir.is_dir():
                self._undo_config()
            raise
        finally:
            if self.lock is not None:
                self.lock.release()

    def _undo_config(self) -> None:
        for callback in getattr(getattr(self, "trainer", None), "callbacks", []):
            if isinstance(callback, RunRecord) and callback.record is not None:
                callback.record.undo()

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            argv = sys.argv[1:] if args is None else list(args)
            raise parse_error(str(err), self._option_names(argv)) from err
        if self.config.get("subcommand"):
            argv = sys.argv[1:] if args is None else list(args)
            _command_line_ckpt_path_wins(self.config[self.config.subcommand], argv)
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
        if is_global_zero():  # each DDP process parses again: one line, from the first
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
        parser.add_argument(
            "--resume",
            type=str | None,
            default=None,
            help="fit: continue the run in this folder from its last.ckpt, with its config.yaml (values given here "
            "win; architecture values may not change). Same as --ckpt_path last --run_dir RUN.",
        )
        parser.add_argument(
            "--save_every_n_steps",
            type=int,
            default=0,
            help="fit: also write last.ckpt every N training steps (0: only at each epoch's end, where a resume is "
            "exact; a resume from within an epoch protects the work but does not replay it exactly).",
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
        # The model's values come from, lowest first: the signature's defaults, the checkpoint (--ckpt_path), the
        # config files, the command line. Lightning's own parse puts the checkpoint over everything; here it fills
        # only the values neither a config file nor the command line gives. The data-derived values are links, set
        # from the data at instantiation (and checked against the checkpoint in ForecastModule.on_load_checkpoint).
        sub = self.config.get("subcommand")
        if sub and self.config[sub].get("resume"):  # cli() turns a --resume on the command line into its values
            raise UserError(f"resume: {self.config[sub].resume} in a config file; give --resume on the command line")
        if not sub or not self.config[sub].get("ckpt_path"):
            return
        cfg = self.config[sub]
        if cfg.ckpt_path == "last":
            cfg.ckpt_path, run_dir = resolve_last(cfg, sub)
            if sub == "fit":
                cfg.run_dir = str(run_dir)
        ckpt = load_checkpoint(cfg.ckpt_path)
        hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if k not in LINKS.values()}
        hparams = {k: v for k, v in hparams.items() if not k.startswith("_")}
        given = self.parser.parse_args(self.args, defaults=False)[sub].get("model") or {}
        fill = {k: v for k, v in hparams.items() if k not in given}
        if fill:
            self.config = self.parser.parse_object({sub: {"model": fill}}, self.config)
        given = f"--resume {self.resumed}" if self.resumed is not None else None
        self.event = review_changes(ckpt, hparams, self.config[sub], sub, given)

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        rank0 = is_global_zero()  # of every node: one run folder, one writer
        if cfg.run_dir:
            self.run_dir = Path(cfg.run_dir)
            self.created_run_dir = rank0 and not self.run_dir.exists()
        else:
            self.run_dir = new_run_dir(cfg.runs_root, self.subcommand)
            self.created_run_dir = rank0
        if rank0:  # the processes DDP re-executes work in rank 0's folder, under its lock
            self.lock = FolderLock(self.run_dir, "run")
            kept = sorted(p.name for p in (self.run_dir / "checkpoints").glob("*.ckpt"))
            if self.subcommand == "fit" and not cfg.ckpt_path and kept:
                raise UserError(
                    f"--run_dir {str(self.run_dir)!r} holds the checkpoints of another fit ({', '.join(kept)}); "
                    f"continue it with --resume {self.run_dir}, or give another --run_dir"
                )
        os.environ[RUN_DIR_ENV] = str(self.run_dir)
        self.save_config_kwargs["event"] = {"config_files": config_files(cfg), **self.event}
        callbacks: list[Any] = [RngState()]
        if self.subcommand == "fit":
            checkpoints = self.run_dir / "checkpoints"
            callbacks += [
                ModelCheckpoint(  # the first ModelCheckpoint: trainer.checkpoint_callback, what after_fit tests
                    dirpath=checkpoints,
                    filename="best",
                    monitor=cfg.monitor,
                    mode=cfg.monitor_mode,
                    auto_insert_metric_name=False,
                    enable_version_counter=False,
                ),
                # last.ckpt at every epoch's end (Lightning's save_last rewrites it only when best.ckpt changes)
                ModelCheckpoint(dirpath=checkpoints, filename="last", monitor=None, enable_version_counter=False),
            ]
            if cfg.save_every_n_steps:  # protects work within long epochs; a resume from one is not exact
                callbacks.append(
                    ModelCheckpoint(
                        dirpath=checkpoints,
                        filename="last",
                        monitor=None,
                        enable_version_counter=False,
                        every_n_train_steps=cfg.save_every_n_steps,
                    )
                )
            if self.event.get("changed"):
                callbacks.append(ApplyChanges(self.event["changed"]))
            if self.event.get("resumed_from"):
                callbacks.append(ForgetUnsavedRows())
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
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        given = trainer_cfg.get("logger")
        if given is not False:
            # appends to an existing metrics.csv: a resumed fit keeps the epochs before the kill; a logger given with
            # --trainer.logger (MLFlowLogger, ...) logs beside it (cfc_forecast.tracking)
            csv = AppendingCSVLogger(save_dir=str(self.run_dir), name="", version="")
            extra = [] if given in (None, True) else list(given) if isinstance(given, (list, tuple)) else [given]
            kwargs.setdefault("logger", [csv, *extra] if extra else csv)
        if not trainer_cfg.get("plugins"):
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        # every split the command will use is checked before any training (a window spec the data cannot fill
        # leaves a split without windows): which split, how many rows it holds, what to change
        check_splits(self.datamodule, ("train", "val", "test") if self.config.fit.test_after_fit else ("train", "val"))
        if self.event.get("resumed_from"):
            r = self.event["resumed_from"]
            changed = "".join(f"; {k}: {a!r} -> {b!r}" for k, (a, b) in self.event.get("changed", {}).items())
            rank_zero_info(f"resuming {self.run_dir} from {r['path']} (epoch {r['epoch']}, step {r['step']}){changed}")

    def before_validate(self) -> None:
        check_splits(self.datamodule, ("val",))

    def before_test(self) -> None:
        check_splits(self.datamodule, ("test",))

    def after_fit(self) -> None:
        if self.config.fit.test_after_fit:
            best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
            self._baselines()
        log_run_files(self.trainer, self.run_dir)

    def after_test(self) -> None:
        self._baselines()
        log_run_files(self.trainer, self.run_dir)

    def _baselines(self) -> None:
        """After a test (``test``, ``fit --test_after_fit``): the naive and linear baselines beside the model, printed
        and saved in ``test_metrics.json`` (the model holds the tested checkpoint's weights: trainer.test restored
        them into it)."""
        # a fast_dev_run tests one batch: no table of numbers that would look like a result
        if self.trainer.is_global_zero and not self.trainer.fast_dev_run:
            metrics = {
                k.removeprefix("test/"): float(v)
                for k, v in self.trainer.callback_metrics.items()
                if k.startswith("test/")
            }
            table = compare_with_baselines(self.datamodule, metrics, self.run_dir, self.model)
            print(f"\n{table}\nrun directory: {self.run_dir}", flush=True)

    def before_predict(self) -> None:
        # the split is rebuilt from the config: its scaler must be the one the checkpoint was trained with
        if self.config.predict.predict_windows != "test":  # main() and cli() send these to the checkpoint path
            raise ValueError("predict from the end of the series runs from the checkpoint alone: use main() or cli()")
        path = self.config.predict.get("ckpt_path")
        if not path:
            raise ValueError("predict --predict_windows=test needs --ckpt_path (the trained model)")
        check_splits(self.datamodule, ("test",))  # the windows it forecasts
        saved = _saved_scaler(load_checkpoint(path))
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


def _command_line_ckpt_path_wins(cfg: Any, argv: list[str]) -> None:
    """``--ckpt_path`` given on the command line is the checkpoint, wherever it stands: jsonargparse lets a later
    ``--config`` override it, and every saved ``config.yaml`` holds ``ckpt_path: null`` (``test --ckpt_path C
    --config runs/<run>/config.yaml`` scored an untrained model)."""
    given, _ = take_option(argv, "--ckpt_path", with_value=True)
    if isinstance(given, str) and given and cfg.get("ckpt_path") != given:
        cfg.ckpt_path = given


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
    rewritten = resume_argv(argv)
    if rewritten != argv and args is None:  # the console script: the DDP launcher re-executes sys.argv
        sys.argv[1:] = rewritten
    try:
        return ForecastCLI(args=None if args is None else rewritten, run=run, resumed=resume_target(argv))
    finally:
        # per node on purpose: each node's first process set the variable in its own environment for the processes
        # it starts (is_global_zero would leave it set on every node but the first)
        if os.environ.get("LOCAL_RANK", "0") == "0":
            os.environ.pop(RUN_DIR_ENV, None)
