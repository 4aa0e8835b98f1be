"""Accuracy on the real benchmarks, one command per row: train, test once, append the result, print the table.

A row is dataset x horizon x forecaster: ``etth1-96-cfc``, ``ettm1-336-gru``, ``physionet-lstm``,
``walker2d-cfcmm``, ``etth1-96-naive``, ... (``--list`` names them all, in the order of value ``--all`` runs them).
Each (row, seed) of a trained forecaster runs

    cfc-forecast fit --config configs/<dataset>.yaml [--config configs/accuracy/<override>.yaml] \\
        --seed_everything <seed> --test_after_fit true [--model.encoder lstm] [--data.init_args.horizon 192]

in its own process: the best checkpoint on validation loss is tested once, and the test metrics, epochs, seconds
per epoch (train + validation), seed and command are appended to ``benchmarks/results/accuracy.json`` as soon as
the run ends (written to a temporary name, then renamed; a lock on the results folder serialises concurrent
harnesses). A rerun skips the (row, seed) pairs already there. The naive last-value rows score
``datamodules.naive_metrics`` on the same test windows (deterministic: one record, no seed).

    python benchmarks/accuracy.py --row etth1-96-cfc --seeds 0 1 2
    python benchmarks/accuracy.py --all --seeds 0 1 2 --stop-at 06:45   # launch nothing after 06:45 UTC
    python benchmarks/accuracy.py --table [--markdown]

Metrics: ETT in the train-fitted standard-scaled units, averaged over every window, step and channel; PhysioNet the
protocol's per-variable MSE / MAE (``mse_per_var``, ``mae_per_var``) on min-max-scaled values; Walker2d MSE in raw
units over every step of the test windows.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "accuracy.json"
HORIZONS = (96, 192, 336, 720)
ENCODERS = ("cfc", "naive", "lstm", "gru")

# published test numbers (../shared/BENCHMARKS.md): name -> (mse, mae); MAE None where not published
ETT_ANCHORS: dict[tuple[str, int], dict[str, tuple[float, float | None]]] = {
    ("etth1", 96): {"DLinear": (0.386, 0.400), "SegRNN": (0.368, 0.395)},
    ("etth1", 192): {"DLinear": (0.437, 0.432), "SegRNN": (0.408, 0.419)},
    ("etth1", 336): {"DLinear": (0.481, 0.459), "SegRNN": (0.444, 0.440)},
    ("etth1", 720): {"DLinear": (0.519, 0.516), "SegRNN": (0.446, 0.457)},
    ("ettm1", 96): {"DLinear": (0.345, 0.372), "SegRNN": (0.330, 0.369)},
    ("ettm1", 192): {"DLinear": (0.380, 0.389), "SegRNN": (0.369, 0.392)},
    ("ettm1", 336): {"DLinear": (0.413, 0.413), "SegRNN": (0.399, 0.412)},
    ("ettm1", 720): {"DLinear": (0.474, 0.453), "SegRNN": (0.454, 0.443)},
}
# VIMTS (ICML 2025): checked in github.com/WHU-HZY/VIMTS at 579e0ce, the 5 seeds' logs
# IMTS/logs/physionet/full/VisionTS-B_*_{1..5}seed_*.log (the paper's table itself was not reachable here):
# test MSE 4.76/4.73/4.90/4.84/4.80e-3, MAE 3.511/3.492/3.563/3.570/3.580e-2, mean 4.81e-3 / 3.54e-2. Same protocol as
# t-PatchGNN: history 24 h, pred_window 24 h, train_test_split 0.8 then 0.75 with random_state 42
# (IMTS/lib/data_process/parse_datasets.py), per-variable mean error (IMTS/lib/evaluation.py compute_error).
PHYSIONET_ANCHORS = {
    "VIMTS": (4.81e-3, 3.54e-2),
    "t-PatchGNN": (4.98e-3, 3.72e-2),
    "GRU-D": (5.59e-3, 4.08e-2),
    "Latent-ODE": (6.05e-3, 4.23e-2),
}
WALKER_ANCHORS = {"CfC": (0.643, None), "CfC-mmRNN": (0.617, None)}


@dataclass(frozen=True)
class Row:
    """One line of the table: which config, which overrides, which metrics are reported, what it is compared with."""

    name: str
    dataset: str  # etth1 | ettm1 | physionet | walker2d
    forecaster: str  # cfc | cfcmm | lstm | gru | naive
    horizon: int | None = None
    configs: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    metrics: tuple[str, str] = ("mse", "mae")  # keys of test_metrics.json reported as MSE, MAE
    anchors: dict[str, tuple[float, float | None]] = field(default_factory=dict, hash=False, compare=False)

    @property
    def naive(self) -> bool:
        return self.forecaster == "naive"

    def fit_args(self, seed: int, run_dir: Path) -> list[str]:
        """The ``cfc-forecast fit`` arguments of this row for one seed."""
        args = ["fit"] + [f"--config={c}" for c in self.configs]
        args += [f"--seed_everything={seed}", "--test_after_fit=true", *self.overrides]
        return [*args, f"--run_dir={run_dir}", "--trainer.enable_progress_bar=false"]


def _extra_config(dataset: str, forecaster: str, horizon: int | None) -> tuple[str, ...]:
    """Committed per-row overrides under configs/accuracy/, when present: <dataset>-<forecaster>.yaml, then
    <dataset>-<horizon>.yaml, then <dataset>-<horizon>-<forecaster>.yaml (later ones win)."""
    names = [f"{dataset}-{forecaster}"]
    if horizon is not None:
        names += [f"{dataset}-{horizon}", f"{dataset}-{horizon}-{forecaster}"]
    return tuple(f"configs/accuracy/{n}.yaml" for n in names if (ROOT / "configs" / "accuracy" / f"{n}.yaml").is_file())


def _row(dataset: str, forecaster: str, horizon: int | None = None) -> Row:
    name = "-".join([dataset, *([str(horizon)] if horizon is not None else []), forecaster])
    configs = (f"configs/{dataset}.yaml", *_extra_config(dataset, forecaster, horizon))
    overrides: list[str] = []
    if forecaster in ("lstm", "gru"):
        overrides.append(f"--model.encoder={forecaster}")
    if horizon is not None and horizon != 96:
        overrides.append(f"--data.init_args.horizon={horizon}")
    if dataset in ("etth1", "ettm1"):
        anchors, metrics = ETT_ANCHORS[(dataset, horizon)], ("mse", "mae")
    elif dataset == "physionet":
        anchors, metrics = PHYSIONET_ANCHORS, ("mse_per_var", "mae_per_var")
    else:
        anchors, metrics = WALKER_ANCHORS, ("mse", "mae")
    return Row(name, dataset, forecaster, horizon, configs, tuple(overrides), metrics, anchors)


def all_rows() -> list[Row]:
    """Every row, in the order of value: horizon 96 of both ETT sets, PhysioNet, Walker2d, then longer horizons."""
    rows = [_row(ds, enc, 96) for ds in ("etth1", "ettm1") for enc in ENCODERS]
    rows += [_row("physionet", enc) for enc in ENCODERS]
    rows += [_row("walker2d", enc) for enc in ("cfc", "cfcmm", "naive", "lstm", "gru")]
    rows += [_row(ds, enc, h) for h in HORIZONS[1:] for ds in ("etth1", "ettm1") for enc in ENCODERS]
    return rows


ROWS = {r.name: r for r in all_rows()}


# ---------------------------------------------------------------------------------------------- results file


@contextlib.contextmanager
def _locked(path: Path):
    # the lock is taken on the results folder itself, so no lock file is left beside the results
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def load_results(path: Path = RESULTS) -> list[dict[str, Any]]:
    """The records in ``path`` ([] when it does not exist); a file that is not a JSON list is a clear error."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path} is not valid JSON ({err}); fix or move it, the harness only appends to it") from err
    if not isinstance(data, list):
        raise SystemExit(f"{path} should hold a JSON list of result records, found {type(data).__name__}")
    return data


def append_result(record: dict[str, Any], path: Path = RESULTS) -> None:
    """Append one record: read, add, write to a temporary name in the same folder, rename (under a lock)."""
    with _locked(path):
        records = load_results(path) + [record]
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(records, f, indent=1)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def done(records: list[dict[str, Any]], row: str, seed: int | None) -> bool:
    """Whether (row, seed) already has a record (a naive row: any record, it has no seed)."""
    return any(r.get("row") == row and (seed is None or r.get("seed") == seed) for r in records)


# ---------------------------------------------------------------------------------------------- running


def _timed_fit(args: list[str], out: Path) -> None:
    """In the child process: the ``cfc-forecast fit`` CLI plus a clock per epoch; writes ``out`` (JSON)."""
    from lightning.pytorch.callbacks import Callback

    from cfc_forecast.cli import ForecastCLI

    class EpochClock(Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:  # after the epoch's validation in Lightning 2
            self.seconds.append(time.perf_counter() - self._start)

    clock = EpochClock()

    class TimedCLI(ForecastCLI):
        def before_instantiate_classes(self) -> None:
            super().before_instantiate_classes()
            self.trainer_defaults["callbacks"].append(clock)

    run = TimedCLI(args=args)
    ckpt = run.trainer.checkpoint_callback
    info = {
        "epochs": len(clock.seconds),
        "epoch_seconds": clock.seconds,
        "best_epoch": _best_epoch(Path(ckpt.best_model_path)) if ckpt and ckpt.best_model_path else None,
        "best_val_loss": float(ckpt.best_model_score) if ckpt and ckpt.best_model_score is not None else None,
        "machine": _machine(),
    }
    out.write_text(json.dumps(info) + "\n")


def _machine() -> str:
    """Where a run ran: the CPU count, torch's threads and version (seconds per epoch only compare on one machine)."""
    import platform

    import torch

    threads = torch.get_num_threads()
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {threads} torch threads, torch {torch.__version__}"


def _best_epoch(path: Path) -> int | None:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True).get("epoch", -1)) if path.is_file() else None


HARNESS_ONLY = ("--run_dir", "--trainer.enable_progress_bar")  # left out of the recorded command


def run_fit(row: Row, seed: int, runs_root: Path) -> dict[str, Any]:
    """Train and test one (row, seed) in a child process; return its record."""
    run_dir = runs_root / f"{row.name}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    run_dir.mkdir(parents=True, exist_ok=True)
    args = row.fit_args(seed, run_dir)
    clock_file = run_dir / "epoch_clock.json"
    start = time.perf_counter()
    child = [sys.executable, str(Path(__file__).resolve()), "--_fit", str(clock_file), "--", *args]
    with open(run_dir / "log.txt", "w") as log:
        status = subprocess.run(child, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if status != 0 or not (run_dir / "test_metrics.json").is_file():
        tail = (run_dir / "log.txt").read_text().splitlines()[-15:]
        where = run_dir / "log.txt"
        raise RuntimeError(f"{row.name} seed {seed} failed (exit {status}); log {where}:\n" + "\n".join(tail))
    tested = json.loads((run_dir / "test_metrics.json").read_text())
    clock = json.loads(clock_file.read_text())
    model = tested["model"]
    secs = clock["epoch_seconds"]
    return {
        "row": row.name,
        "dataset": row.dataset,
        "forecaster": row.forecaster,
        "horizon": row.horizon,
        "seed": seed,
        "mse": model[row.metrics[0]],
        "mae": model[row.metrics[1]],
        "test": model,
        "naive_same_windows": tested.get("naive"),
        "linear_same_windows": tested.get("linear"),
        "epochs": clock["epochs"],
        "best_epoch": clock["best_epoch"],
        "best_val_loss": clock["best_val_loss"],
        "seconds_per_epoch": statistics.median(secs) if secs else None,
        "wall_seconds": round(wall, 1),
        "machine": clock.get("machine"),
        "command": "cfc-forecast " + shlex.join([a for a in args if not a.startswith(HARNESS_ONLY)]),
        "run_dir": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def naive_datamodule(row: Row):
    """The DataModule of a row's config (the same windows the models are tested on)."""
    import yaml

    from datamodules import ETTDataModule, PhysioNetDataModule, Walker2dDataModule

    classes = {
        "ETTDataModule": ETTDataModule,
        "PhysioNetDataModule": PhysioNetDataModule,
        "Walker2dDataModule": Walker2dDataModule,
    }
    spec = yaml.safe_load((ROOT / row.configs[0]).read_text())["data"]
    kwargs = dict(spec.get("init_args", {}))
    if row.horizon is not None:
        kwargs["horizon"] = row.horizon
    return classes[spec["class_path"].rsplit(".", 1)[-1]](**kwargs)


def run_naive(row: Row) -> dict[str, Any]:
    """Score the naive last-value forecast on the row's test windows; return its record."""
    from datamodules import naive_metrics

    start = time.perf_counter()
    dm = naive_datamodule(row)
    dm.setup("test")
    scores = naive_metrics(dm, "test")
    return {
        "row": row.name,
        "dataset": row.dataset,
        "forecaster": "naive",
        "horizon": row.horizon,
        "seed": None,
        "mse": scores[row.metrics[0]],
        "mae": scores[row.metrics[1]],
        "test": scores,
        "epochs": 0,
        "seconds_per_epoch": None,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "command": f"python benchmarks/accuracy.py --row {row.name}",
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _past(stop_at: str | None) -> bool:
    if not stop_at:
        return False
    hh, mm = (int(v) for v in stop_at.split(":"))
    now = dt.datetime.now(dt.timezone.utc)
    return (now.hour, now.minute) >= (hh, mm)


def run_rows(
    rows: list[Row], seeds: list[int], path: Path, runs_root: Path, stop_at: str | None = None, runner=None
) -> dict[str, int]:
    """Run every (row, seed) not yet in ``path``, appending each result as it finishes.

    Returns:
        Counts: ``ran``, ``skipped`` (already done), ``failed``, ``not_started`` (after ``stop_at``).
    """
    counts = {"ran": 0, "skipped": 0, "failed": 0, "not_started": 0}
    for row in rows:
        for seed in [None] if row.naive else seeds:
            if done(load_results(path), row.name, seed):
                counts["skipped"] += 1
                continue
            if _past(stop_at):
                counts["not_started"] += 1
                continue
            label = row.name if seed is None else f"{row.name} seed {seed}"
            print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] running {label}", flush=True)
            try:
                record = (runner or _default_runner)(row, seed, runs_root)
            except RuntimeError as err:
                print(err, file=sys.stderr, flush=True)
                counts["failed"] += 1
                continue
            append_result(record, path)
            counts["ran"] += 1
            stamp = time.strftime("%H:%M:%S", time.gmtime())
            print(
                f"[{stamp}] {label}: MSE {record['mse']:.4f} MAE {record['mae']:.4f} "
                f"({record['epochs']} epochs, {record['wall_seconds']} s)",
                flush=True,
            )
    return counts


def _default_runner(row: Row, seed: int | None, runs_root: Path) -> dict[str, Any]:
    return run_naive(row) if seed is None else run_fit(row, seed, runs_root)


# ---------------------------------------------------------------------------------------------- table


def _fmt(values: list[float], scale: float, digits: int) -> str:
    if not values:
        return "not run"
    mean = statistics.fmean(values) / scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) / scale:.{digits}f}"


def table(records: list[dict[str, Any]], rows: list[Row] | None = None, markdown: bool = False) -> str:
    """Mean ± std (sample std over seeds) per row beside the published anchors; rows without records say 'not run'.

    PhysioNet MSE is shown x 1e-3 and MAE x 1e-2, as the published table does. Seconds per epoch (training plus
    validation, the median epoch of each run, averaged over its runs) are shown per machine: "here" for runs on the
    harness's own machine, "device" for records marked ``ran_on`` (runs made elsewhere and merged in).
    """
    header = ["row", "seeds", "MSE", "MAE", "epochs", "s/epoch", "published (MSE / MAE)"]
    lines = []
    for row in rows or all_rows():
        mine = [r for r in records if r.get("row") == row.name]
        scale_mse, scale_mae, digits = (1e-3, 1e-2, 2) if row.dataset == "physionet" else (1.0, 1.0, 3)
        anchors = ", ".join(
            f"{k} {v[0] / scale_mse:.{digits}f}" + (f" / {v[1] / scale_mae:.{digits}f}" if v[1] is not None else "")
            for k, v in row.anchors.items()
        )
        seeds = "-" if row.naive and mine else ",".join(str(seed) for seed in sorted(r["seed"] for r in mine)) or "-"
        epochs = sorted({r["epochs"] for r in mine if not row.naive})
        secs: dict[str, list[float]] = {}  # seconds per epoch compare only on one machine: kept apart
        for r in mine:
            if r.get("seconds_per_epoch"):
                secs.setdefault("device" if r.get("ran_on") else "here", []).append(r["seconds_per_epoch"])
        lines.append(
            [
                row.name,
                seeds,
                _fmt([r["mse"] for r in mine], scale_mse, digits),
                _fmt([r["mae"] for r in mine], scale_mae, digits),
                ",".join(map(str, epochs)) or "-",
                "; ".join(f"{k} {statistics.fmean(v):.1f}" for k, v in sorted(secs.items(), reverse=True)) or "-",
                anchors,
            ]
        )
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(x) for x in col) for col in zip(header, *lines, strict=True)]
    padded = ["  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in [header, *lines]]
    return "\n".join(padded)


# ---------------------------------------------------------------------------------------------- command line


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--row", nargs="+", default=[], help="row names to run (see --list)")
    p.add_argument("--all", action="store_true", help="run every row, in the order of value")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    p.add_argument("--table", action="store_true", help="print the table of the results file")
    p.add_argument("--markdown", action="store_true", help="with --table: a Markdown table")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of each trained row (default 0 1 2)")
    p.add_argument("--results", type=Path, default=RESULTS, help=f"results file (default {RESULTS.relative_to(ROOT)})")
    p.add_argument("--runs-root", type=Path, default=ROOT / "runs" / "accuracy", help="run directories")
    p.add_argument("--stop-at", default=None, metavar="HH:MM", help="start no run at or after this UTC time")
    args = p.parse_args(argv)
    unknown = [r for r in args.row if r not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {unknown}; --list shows the {len(ROWS)} rows")
    if args.stop_at:
        try:
            hh, mm = (int(v) for v in args.stop_at.split(":"))
            assert 0 <= hh < 24 and 0 <= mm < 60
        except (ValueError, AssertionError):
            p.error(f"--stop-at wants HH:MM (UTC), got {args.stop_at!r}")
    if not (args.row or args.all or args.list or args.table):
        p.error("nothing to do: give --row NAME..., --all, --list or --table")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_fit"]:  # the child process of run_fit
        _timed_fit(argv[3:], Path(argv[1]))
        return 0
    args = parse(argv)
    if args.list:
        print(
            "\n".join(
                f"{r.name:<20} {shlex.join(r.fit_args(0, Path('<run_dir>'))[:-2]) if not r.naive else 'naive'}"
                for r in all_rows()
            )
        )
        return 0
    status = 0
    if args.row or args.all:
        rows = all_rows() if args.all else [ROWS[n] for n in args.row]
        counts = run_rows(rows, args.seeds, args.results, args.runs_root, args.stop_at)
        print(
            f"ran {counts['ran']}, skipped {counts['skipped']} already done, failed {counts['failed']}, "
            f"not started {counts['not_started']} (past --stop-at)",
            flush=True,
        )
        status = 1 if counts["failed"] else 0
    if args.table or args.row or args.all:
        print(table(load_results(args.results), markdown=args.markdown))
    return status


if __name__ == "__main__":
    sys.exit(main())
