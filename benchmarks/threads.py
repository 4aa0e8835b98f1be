"""Time quickstart fits with each thread setting, on an idle machine and beside copies of themselves.

    python benchmarks/threads.py                      # ~10 min on 2 cores; run it on an otherwise idle machine
    python benchmarks/threads.py --epochs 1 --series 64 --out /tmp/threads.json   # a quick check of the harness

Each measurement is the wall time of ``cfc-forecast fit --config configs/quickstart.yaml --trainer.max_epochs E``
(start-up, data, E epochs with validation): what a person waits for. A condition runs ``copies`` such fits at once
(1: idle; 2: beside one copy; 4: beside three copies), all with the same setting, and records each one's time.
Settings: ``default`` (the ``cfc-forecast`` launcher's choice: no variable set), ``threads=N`` (``--threads N``:
the launcher's passive OpenMP waits) and ``torch-default`` (no launcher: ``python -m cfc_forecast.commands``, torch's
own threads and OpenMP's spinning waits, what the command did before). Results go to ``--out`` after each condition;
a rerun skips the conditions already there (delete the file to measure again). The summary prints, per condition,
the median time of each setting and the default's ratio to the best fixed thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "threads.json"


def settings(cores: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Setting name -> (command, environment changes); threads 1, 2 and every core count up to the machine's."""
    launcher = [sys.executable, "-m", "cfc_forecast"]
    out: dict[str, tuple[list[str], dict[str, str]]] = {"default": (launcher, {})}
    for n in sorted({1, 2, cores}):
        out[f"threads={n}"] = ([*launcher, f"--threads={n}"], {})
    out["torch-default"] = ([sys.executable, "-m", "cfc_forecast.commands"], {})
    return out


def fit_args(epochs: int, series: int | None, root: str) -> list[str]:
    args = ["fit", f"--config={ROOT / 'configs' / 'quickstart.yaml'}", f"--trainer.max_epochs={epochs}",
            "--test_after_fit=false", "--trainer.enable_progress_bar=false", f"--runs_root={root}"]  # fmt: skip
    return args + ([f"--data.init_args.n_series={series}"] if series else [])


def run_condition(command: list[str], env_changes: dict[str, str], copies: int, args: list[str]) -> list[float]:
    """Start ``copies`` fits at once; return each one's wall time in seconds."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(env_changes, PYTHONPATH=str(ROOT))
    procs, starts = [], []
    for _ in range(copies):
        starts.append(time.perf_counter())
        procs.append(subprocess.Popen([*command, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
    times = [0.0] * copies
    for i, proc in enumerate(procs):
        _, err = proc.communicate()
        times[i] = time.perf_counter() - starts[i]
        if proc.returncode:
            raise RuntimeError(f"{' '.join(command + args)} failed:\n{err[-2000:]}")
    return times


def summary(results: dict) -> str:
    lines = ["| condition | " + " | ".join(results["settings"]) + " | default / best fixed |",
             "|---" * (len(results["settings"]) + 2) + "|"]  # fmt: skip
    for condition, by_setting in results["conditions"].items():
        med = {s: statistics.median(r["wall_s"]) for s, r in by_setting.items()}
        fixed = [v for s, v in med.items() if s.startswith("threads=")]
        ratio = f"{med['default'] / min(fixed):.2f}" if "default" in med and fixed else "-"
        cells = [f"{med[s]:.1f} s" if s in med else "-" for s in results["settings"]]
        lines.append(f"| {condition} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--series", type=int, default=None, help="n_series (default: the quickstart's 512)")
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    plan = settings(cores)
    results = json.loads(opts.out.read_text()) if opts.out.exists() else {}
    results.update(machine=f"{platform.processor() or platform.machine()}, {cores} cores", epochs=opts.epochs,
                   series=opts.series, settings=list(plan), command=" ".join(["python", *sys.argv]))  # fmt: skip
    results.setdefault("conditions", {})
    with tempfile.TemporaryDirectory() as root:
        for copies in opts.copies:
            condition = "idle" if copies == 1 else f"beside {copies - 1} {'copy' if copies == 2 else 'copies'}"
            done = results["conditions"].setdefault(condition, {})
            for name, (command, env) in plan.items():
                if name in done:
                    continue
                load = os.getloadavg()[0]
                wall = run_condition(command, env, copies, fit_args(opts.epochs, opts.series, root))
                done[name] = {"wall_s": wall, "load_before": load}
                print(f"{condition:>16}  {name:<14} {statistics.median(wall):7.1f} s  (load before {load:.2f})")
                opts.out.parent.mkdir(parents=True, exist_ok=True)
                opts.out.write_text(json.dumps(results, indent=2) + "\n")
    print(summary(results))


if __name__ == "__main__":
    main()
