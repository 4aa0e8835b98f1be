"""Short-budget validation ablation of ``model.encoding``: shared vs per-variable clocks, mixing, CfC vs GRU / LSTM.

Every variant trains on PhysioNet 2012 (configs/physionet.yaml) with the SAME short budget (``BUDGET``: a few
epochs over a limited number of training batches, seed 0, one torch thread), is scored on the VALIDATION split
only (the test split is never read: ``--test_after_fit=false``), and appends one record to
``benchmarks/results/ablation_per_variable.json`` as soon as it ends (through ``accuracy.append_result``: a
temporary file renamed, under a lock). A rerun skips the variants already there, so it can be stopped and resumed.

    OMP_NUM_THREADS=1 python benchmarks/ablation_per_variable.py [--variant NAME ...] [--stop-at HH:MM]
    python benchmarks/ablation_per_variable.py --table

A record: the variant, commit, parameter count, seconds per epoch (median, training + validation), the validation
per-variable MSE / MAE at the epoch with the best validation loss, the per-variable encoding's padded recurrence
steps per observed value, the budget and the command. These are short runs for choosing a design, not the
issue's final 3-seed test rows (``benchmarks/accuracy.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import ROOT, _machine, _past, append_result, load_results  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "ablation_per_variable.json"
BUDGET = ("--trainer.max_epochs=4", "--trainer.limit_train_batches=40")  # the same for every variant
PER_VARIABLE = ("--model.encoding=per_variable",)
NO_MIXING = (*PER_VARIABLE, "--model.variable_mixing=none")
VARIANTS: dict[str, tuple[str, ...]] = {  # in the order they run
    "shared-cfc": (),
    "per_variable-cfc-nomix": NO_MIXING,
    "per_variable-cfc": PER_VARIABLE,
    "per_variable-gru-nomix": (*NO_MIXING, "--model.encoder=gru"),
    "per_variable-lstm-nomix": (*NO_MIXING, "--model.encoder=lstm"),
    "per_variable-gru": (*PER_VARIABLE, "--model.encoder=gru"),
    "per_variable-lstm": (*PER_VARIABLE, "--model.encoder=lstm"),
}
# records of designs since changed, kept in the results file and the table (not rerun)
SUPERSEDED = {"per_variable-cfc-postnorm": "the first mixing: post-norm, the head read the normalised token"}


def fit_args(variant: str, run_dir: Path, seed: int = 0) -> list[str]:
    """The ``cfc-forecast fit`` arguments of one variant (validation only)."""
    return ["fit", "--config=configs/physionet.yaml", f"--seed_everything={seed}", "--test_after_fit=false",
            *BUDGET, *VARIANTS[variant], f"--run_dir={run_dir}", "--trainer.enable_progress_bar=false"]  # fmt: skip


def _child(args: list[str], out: Path) -> None:
    """In the child process: the fit CLI with a callback recording each epoch's clock and validation metrics."""
    from lightning.pytorch.callbacks import Callback

    from cfc_forecast.cli import ForecastCLI

    epochs: list[dict[str, float]] = []

    class Record(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:  # after the epoch's validation in Lightning 2
            m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/padded"))}
            epochs.append({"seconds": time.perf_counter() - self.start, **m})

    class CLI(ForecastCLI):
        def before_instantiate_classes(self) -> None:
            super().before_instantiate_classes()
            self.trainer_defaults["callbacks"].append(Record())

    run = CLI(args=args)
    params = sum(p.numel() for p in run.model.parameters())
    out.write_text(json.dumps({"epochs": epochs, "params": params, "machine": _machine()}) + "\n")


def _commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"]
    dirty = subprocess.run(status, cwd=ROOT, capture_output=True, text=True).stdout.strip()  # results aside
    return head.strip() + ("+changes" if dirty else "")


def run_variant(variant: str, runs_root: Path) -> dict[str, Any]:
    run_dir = runs_root / f"{variant}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    run_dir.mkdir(parents=True, exist_ok=True)
    args, info, commit = fit_args(variant, run_dir), run_dir / "epochs.json", _commit()  # the code it starts with
    start = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        child = [sys.executable, str(Path(__file__).resolve()), "--_fit", str(info), "--", *args]
        status = subprocess.run(child, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0 or not info.is_file():
        tail = "\n".join((run_dir / "log.txt").read_text().splitlines()[-15:])
        raise RuntimeError(f"{variant} failed (exit {status}); log {run_dir / 'log.txt'}:\n{tail}")
    got = json.loads(info.read_text())
    epochs = got["epochs"]
    best = min(epochs, key=lambda e: e["val/loss"])
    padding = [e["train/padded_per_value"] for e in epochs if "train/padded_per_value" in e]
    return {
        "variant": variant,
        "split": "validation",
        "seed": 0,
        "commit": commit,
        "params": got["params"],
        "epochs": len(epochs),
        "best_epoch": epochs.index(best),
        "seconds_per_epoch": round(statistics.median(e["seconds"] for e in epochs), 1),
        "val_mse_per_var": best["val/mse_per_var"],
        "val_mae_per_var": best["val/mae_per_var"],
        "val_mse_per_var_by_epoch": [e["val/mse_per_var"] for e in epochs],
        "padded_per_value": round(statistics.fmean(padding), 3) if padding else None,
        "budget": " ".join(BUDGET),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "machine": got["machine"],
        "command": "cfc-forecast " + shlex.join([a for a in args if not a.startswith(("--run_dir", "--trainer.ena"))]),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: one line per variant with a record, in the order of ``VARIANTS``."""
    lines = ["| variant | params | s/epoch | val MSE x 1e-3 | val MAE x 1e-2 | padded steps / value | commit |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in [*VARIANTS, *SUPERSEDED]:
        for r in (r for r in records if r["variant"] == name):
            pad = "-" if r["padded_per_value"] is None else f"{r['padded_per_value']:.2f}"
            label = f"{name} ({SUPERSEDED[name]}; superseded)" if name in SUPERSEDED else name
            lines.append(f"| {label} | {r['params']:,} | {r['seconds_per_epoch']} | {r['val_mse_per_var'] / 1e-3:.2f} "
                         f"| {r['val_mae_per_var'] / 1e-2:.2f} | {pad} | {r['commit']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_fit"]:
        _child(argv[3:], Path(argv[1]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--runs-root", type=Path, default=ROOT / "runs" / "ablation_per_variable")
    p.add_argument("--stop-at", default=None, metavar="HH:MM", help="start no variant at or after this UTC time")
    p.add_argument("--table", action="store_true", help="print the table of the results file and exit")
    args = p.parse_args(argv)
    if not args.table:
        failed = 0
        for name in args.variant:
            if any(r["variant"] == name for r in load_results(args.results)):
                print(f"{name}: done, skipped", flush=True)
                continue
            if _past(args.stop_at):
                print(f"{name}: not started (past --stop-at)", flush=True)
                continue
            print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] running {name}", flush=True)
            try:
                record = run_variant(name, args.runs_root)
            except RuntimeError as err:
                print(err, file=sys.stderr, flush=True)
                failed += 1
                continue
            append_result(record, args.results)
            print(f"{name}: val MSE {record['val_mse_per_var']:.5f}, {record['params']} parameters, "
                  f"{record['seconds_per_epoch']} s/epoch", flush=True)  # fmt: skip
        if failed:
            return 1
    print(table(load_results(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
