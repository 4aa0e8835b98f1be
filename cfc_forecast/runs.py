"""Run directories and what a run records in them: versions and seed, history, test metrics beside the baselines.

A run folder keeps its history: ``run.json`` lists every command run in it (``history``: argv, start time, the
checkpoint a fit resumed from and the values it changed), ``metrics.csv`` is appended to (:class:`AppendingCSVLogger`),
and ``config.yaml`` stays the config of its latest fit (:class:`ConfigRecord`: other commands' configs and earlier ones
are ``config.<n>.yaml``, ``n`` their entry in the history; a failed command puts both files back). One process at a
time works in a folder: :class:`FolderLock` holds ``flock`` on ``<dir>/.lock`` (the kernel releases it when the
process dies, even by SIGKILL).
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

import cfc_forecast
from cfc_forecast.checkpoints import atomic_write
from cfc_forecast.errors import UserError

RUN_DIR_ENV = "CFC_FORECAST_RUN_DIR"  # rank 0 passes its run directory to the processes DDP re-executes


def is_global_zero() -> bool:
    """Whether this process is rank 0 of every process on every node, read from the launcher's environment (the CLI
    asks before the process group exists): ``RANK`` where the launcher sets it (torchrun), else the node's rank
    (``NODE_RANK``, or torchrun's ``GROUP_RANK``) and ``LOCAL_RANK`` (Lightning's launcher, one per node). Keying on
    ``LOCAL_RANK`` alone made the first process of every node a writer: two nodes, two run folders."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    node = os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0"))
    return int(node) == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


def new_run_dir(root: str | os.PathLike, subcommand: str) -> Path:
    """Create and return ``<root>/<YYYYmmdd-HHMMSS>-<subcommand>[-n]``, a folder no other run uses.

    A process that Lightning's DDP launcher started takes its rank 0's folder instead (``CFC_FORECAST_RUN_DIR``).

    Raises:
        UserError: processes started by an outside launcher (torchrun, several nodes: ``WORLD_SIZE`` > 1 and no
            folder from a parent) cannot agree on a new folder's name: each must be given ``--run_dir``.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and not is_global_zero():
        return Path(inherited)
    if not inherited and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            f"{os.environ['WORLD_SIZE']} processes started by a launcher (torchrun, several nodes) share one run "
            "folder: give every process the same --run_dir, on a file system every node sees"
        )
    return unique_dir(Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{subcommand}")


def unique_dir(stem: Path) -> Path:
    """Create and return ``stem``, or ``stem-2``, ``stem-3``, ... where it exists: never a folder in use."""
    path, n = stem, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            n += 1
            path = stem.with_name(f"{stem.name}-{n}")


class FolderLock:
    """``flock`` on ``<folder>/.lock`` for as long as this process works in ``folder`` (run or job folder).

    Args:
        folder: the folder (created if missing). what: "run" or "job", for the message.

    Raises:
        UserError: another process holds the folder (its pid and start time are in the message).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "run") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 4096, 0).decode(errors="replace")
            self.release()
            try:
                info = json.loads(holder)
            except ValueError:
                info = {}
            raise UserError(
                f"another {what} (pid {info.get('pid', '?')}, started {info.get('started', '?')}) holds "
                f"{self.folder}; wait for it to end, or give another folder"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps({"pid": os.getpid(), "started": _now()}).encode(), 0)

    def release(self) -> None:
        """Release the lock (closing the file releases it; so does the process's end)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def record_run(
    run_dir: Path,
    seed: Any,
    subcommand: str,
    event: dict[str, Any] | None = None,
    config: ConfigRecord | None = None,
) -> None:
    """Add this command to ``run.json``: seed, versions of Python, torch, lightning and cfc-forecast, the command
    line; ``event`` (what a fit resumed from, the values it changed) goes into its ``history`` entry, with the file
    its config went to (``config``, a :class:`ConfigRecord`). The entries of earlier commands in the folder are kept
    (the one whose ``config.yaml`` this command kept as ``config.<n>.yaml`` names that file)."""
    path = run_dir / "run.json"
    entry = {"subcommand": subcommand, "started": _now(), "argv": sys.argv, **(event or {})}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        info = {}
    history = info.get("history", [])
    if config is not None:
        history = config.history_entries(list(history))
        entry["config"] = config.name
    info = {
        "subcommand": info.get("subcommand", subcommand),
        "seed": info.get("seed", seed),
        "versions": {
            "cfc_forecast": cfc_forecast.__version__,
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "python": sys.version.split()[0],
        },
        "argv": info.get("argv", sys.argv),
        "history": [*history, {**entry, "seed": seed}],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(info, indent=2, default=str) + "\n"))


def _history(run_dir: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((run_dir / "run.json").read_text()).get("history", []))
    except (OSError, ValueError, AttributeError):
        return []


class ConfigRecord:
    """Where a command's resolved config goes in a run folder, and how a failed command puts the folder back.

    ``config.yaml`` is the config of the folder's latest *fit* (or of its first command): the one ``fit --resume``
    and ``backtest --config`` read. A fit in a folder that holds one keeps the earlier file as ``config.<n>.yaml``
    (``n``: the ``run.json`` history entry that wrote it); any other command (validate, test, predict) there writes
    its own config as ``config.<n>.yaml`` (``n``: its own entry) and leaves ``config.yaml`` alone. Every history entry
    names its file (``"config"``).

    :meth:`undo` (a command that failed, by a user error or a crash) puts ``config.yaml`` and ``run.json`` back as
    they were, by renames (``os.replace``, atomic), unless the command already wrote a checkpoint: those weights were
    trained with the new config, which then stays with them.

    Args:
        run_dir: the run folder. subcommand: fit, validate, test or predict.
    """

    def __init__(self, run_dir: Path, subcommand: str) -> None:
        self.run_dir = run_dir
        self.history = _history(run_dir)
        self.run_json = (run_dir / "run.json").read_bytes() if (run_dir / "run.json").is_file() else None
        self.checkpoints = self._checkpoints()
        self.kept: Path | None = None
        current = run_dir / "config.yaml"
        if subcommand != "fit" and current.is_file():
            self.name = self._free(len(self.history) + 1)
        else:
            self.name = "config.yaml"
            if current.is_file():
                # the entry that wrote config.yaml: the last one that names it (entries before this field: the last)
                n = max((i for i, h in enumerate(self.history, 1) if h.get("config", "config.yaml") == "config.yaml"),
                        default=len(self.history))  # fmt: skip
                self.kept = run_dir / self._free(max(n, 1))
                os.replace(current, self.kept)

    def _free(self, n: int) -> str:
        while (self.run_dir / f"config.{n}.yaml").exists():
            n += 1
        return f"config.{n}.yaml"

    def _checkpoints(self) -> dict[str, int]:
        folder = self.run_dir / "checkpoints"
        return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.ckpt")} if folder.is_dir() else {}

    def history_entries(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``entries`` (run.json's history) with the entry whose ``config.yaml`` this command kept renamed to it."""
        if self.kept is None:
            return entries
        named = [i for i, h in enumerate(entries) if h.get("config", "config.yaml") == "config.yaml"]
        if named:
            entries[named[-1]] = {**entries[named[-1]], "config": self.kept.name}
        return entries

    def undo(self) -> None:
        """Put ``config.yaml`` and ``run.json`` back as they were before this command (see the class docstring)."""
        if self._checkpoints() != self.checkpoints:
            return
        written = self.run_dir / self.name
        if self.kept is not None:
            os.replace(self.kept, written)  # atomic: the earlier config.yaml over the failed command's
        elif written.is_file():
            written.unlink()
        if self.run_json is None:
            (self.run_dir / "run.json").unlink(missing_ok=True)
        else:
            atomic_write(self.run_dir / "run.json", lambda tmp: tmp.write_bytes(self.run_json))


def has_results(run_dir: Path) -> bool:
    """Whether a run folder holds anything beyond what every command writes first (lock, config, run.json)."""
    bookkeeping = {".lock", "config.yaml", "run.json", "hparams.yaml", "checkpoints"}
    if any(p.name not in bookkeeping for p in run_dir.iterdir()):
        return True
    checkpoints = run_dir / "checkpoints"
    return checkpoints.is_dir() and any(checkpoints.iterdir())


class _AppendingWriter(ExperimentWriter):
    # Lightning's writer deletes an existing metrics.csv; this one appends to it (the header grows if needed)
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r") as f:
                header = f.readline().strip()
            self.metrics_keys = [k for k in header.split(",") if k]

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # Lightning rewrites the file in place when a new column appears: a kill in between lost every row
        self.rewrite(fieldnames, lambda row: True)

    def rewrite(self, fieldnames: list[str], keep: Any) -> int:
        """Rewrite ``metrics.csv`` with ``fieldnames`` and the rows ``keep(row)`` accepts, through a temporary file
        in the same folder and a rename (a kill leaves the old file whole); returns the number of rows dropped."""
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [row for row in rows if keep(row)]

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(kept)

        atomic_write(self.metrics_file_path, write)
        return len(rows) - len(kept)


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` that appends to an existing ``metrics.csv``: a resumed fit keeps the epochs before the kill."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def forget_after(self, epoch: int, step: int) -> int:
        """Drop the rows of ``metrics.csv`` logged at or after (``epoch``, ``step``) in both: what a killed fit
        logged after the checkpoint a fit resumes from, which the resumed fit logs again (or, past where it stops,
        never reaches). Returns the number of rows dropped."""
        writer = self.experiment
        if not os.path.isfile(writer.metrics_file_path):
            return 0

        def before(row: dict[str, str]) -> bool:
            try:
                return int(row.get("epoch") or -1) < epoch or int(row["step"]) < step
            except (KeyError, ValueError):
                return True  # a row we cannot place is kept, never lost

        return writer.rewrite(writer.metrics_keys, before)


class ForgetUnsavedRows(Callback):
    """On a resumed fit, once Lightning restored the checkpoint's loops, drop the rows ``metrics.csv`` holds from
    after that checkpoint (:meth:`AppendingCSVLogger.forget_after`): each (epoch, step) row is then logged once, the
    resumed fit's values winning.

    The rule, from Lightning 2.x's loops: rows logged before the checkpoint was written have ``step`` < its
    ``global_step``; the only rows logged after it that the resumed fit does not log again belong to an epoch it
    already finished (the ``*_epoch`` means logged after an end-of-epoch checkpoint: ``epoch`` < the restored
    ``current_epoch``) or to the checkpoint's own batch (``step`` = ``global_step`` - 1)."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, AppendingCSVLogger):
                logger.forget_after(trainer.current_epoch, trainer.global_step)


METRIC_NAMES = ("mse", "mae", "mse_per_var", "mae_per_var")


def comparison_table(rows: dict[str, dict[str, float]]) -> str:
    """A fixed-width table of ``METRIC_NAMES`` for each named forecaster."""
    width = max(len(name) for name in rows) + 2
    lines = [" " * width + "".join(f"{m:>13}" for m in METRIC_NAMES)]
    for name, values in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{values.get(m, float('nan')):>13.4f}" for m in METRIC_NAMES))
    return "\n".join(lines)


def compare_with_baselines(
    dm: Any, model_metrics: dict[str, float], run_dir: Path | None, model: torch.nn.Module | None = None
) -> str:
    """Score the naive and linear baselines on the test windows; return (and save) the tables beside the model's.

    The first table is in the data's scaled units, on the same targets and masks as the model's ``test/*`` metrics;
    with ``model`` (a ``ForecastModule``), the second gives each target's scores in the data's own units for the
    three forecasters (``cfc_forecast.scores``), saved under ``"units"`` in ``test_metrics.json``.
    """
    from cfc_forecast.scores import scores_in_units, units_table
    from datamodules import linear_metrics, naive_metrics
    from datamodules.baselines import linear_forecaster, naive_forecast

    rows = {"model": model_metrics, "naive": naive_metrics(dm, "test"), "linear": linear_metrics(dm, "test")}
    text = "test metrics (scaled units, same windows and masks)\n" + comparison_table(rows)
    if model is not None:
        source, linear = dm.target_input_index, linear_forecaster(dm)
        was_training, device = model.training, next(model.parameters()).device
        model.eval()
        with torch.no_grad():
            units = {
                "model": scores_in_units(dm, "test", lambda b: model(b.to(device)), model.quantile_levels),
                "naive": scores_in_units(dm, "test", lambda b: naive_forecast(b, source), None),
                "linear": scores_in_units(dm, "test", linear, None),
            }
        model.train(was_training)
        for name, per_target in units.items():
            rows[name] = {**rows[name], "units": per_target}
        text += '\n\ntest scores per target, in the data\'s units (README: "Test scores")\n' + units_table(units)
    if run_dir is not None:
        (run_dir / "test_metrics.json").write_text(json.dumps(rows, indent=2) + "\n")
    return text
