"""Calibrated intervals, measured: fit a shipped config (as shipped), ``cfc-forecast calibrate`` it, print the test
split's coverage, mean width, WQL and CRPS before and after as the README's "Calibrated intervals" table.

    python benchmarks/calibration.py                                  # quickstart and physionet, point and quantile
    python benchmarks/calibration.py --configs quickstart --models point

Each (config, model) fits into ``runs/calibration/<config>-<model>`` (skipped when its best.ckpt is
there), calibrates at 0.8 and 0.9, and appends the pooled rows and the worst per-variable / per-bucket deviation (over
groups with >= 1000 test values) to ``benchmarks/results/calibration.md``. Accuracy only: no timing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import polars as pl  # noqa: E402

from cfc_forecast.calibrate import calibrate  # noqa: E402
from cfc_forecast.cli import cli  # noqa: E402

MODELS = {"point": [], "quantile": ["--model.loss=pinball", "--model.quantiles=[0.1,0.5,0.9]"]}
LEVELS = [0.8, 0.9]


def worst(report: pl.DataFrame, scope: str, level: float) -> str:
    rows = report.filter(pl.col("when") == "after", pl.col("scope") == scope, pl.col("level") == level,
                         pl.col("n") >= 1000)  # fmt: skip
    if not rows.height:
        return "-"
    dev = (rows["coverage"] - level).abs()
    return f"{dev.max() * 100:.1f} ({rows.height})"


def rows_for(config: str, model: str, report: pl.DataFrame) -> list[str]:
    pooled = report.filter(pl.col("scope") == "pooled")
    out = []
    for level in LEVELS:
        after = pooled.filter(pl.col("when") == "after", pl.col("level") == level).row(0, named=True)
        before = pooled.filter(pl.col("when") == "before", pl.col("level") == level)
        b = before.row(0, named=True) if before.height else None
        b_any = pooled.filter(pl.col("when") == "before").row(0, named=True)
        cov = f"{b['coverage']:.3f}" if b else "-"
        wid = f"{b['width']:.3g}" if b else "-"
        out.append(
            f"| {config} | {model} | {level:g} | {after['n']} | {cov} → {after['coverage']:.3f} | {wid} → "
            f"{after['width']:.3g} | {b_any['wql']:.4f} → {after['wql']:.4f} | {b_any['crps']:.4g} → "
            f"{after['crps']:.4g} | {worst(report, 'variable', level)} | {worst(report, 'bucket', level)} | "
            f"{worst(report, 'variable_bucket', level)} |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["quickstart", "physionet"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    lines = []
    for config in args.configs:
        for model in args.models:
            run = ROOT / "runs" / "calibration" / f"{config}-{model}"
            best = run / "checkpoints" / "best.ckpt"
            if not best.exists():
                cli(["fit", f"--config={ROOT / 'configs' / f'{config}.yaml'}", "--test_after_fit=false",
                     f"--run_dir={run}", "--trainer.enable_progress_bar=false", *MODELS[model]])  # fmt: skip
            result = calibrate(str(best), LEVELS)
            lines += rows_for(config, model, result.report)
    header = (
        "| config | model | level | n (test values) | coverage | width | WQL | CRPS | worst variable, points "
        "(groups) | worst bucket | worst variable x bucket |\n" + "|---" * 11 + "|"
    )
    text = "\n".join([header, *lines])
    print(text)
    out = ROOT / "benchmarks" / "results" / "calibration.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(text + "\n\n")


if __name__ == "__main__":
    main()
