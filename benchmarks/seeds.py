"""Every claim the tests make about a training outcome, run for ten seeds: does it hold for each?

A test that trains a model and asserts how well it did passes or fails with its seed and with the floating-point
rounding of the machine (the BLAS, the vector width, the loop that runs). Each such test in ``tests/`` runs two
seeds with a margin; this script runs the same code (imported from the tests, or the notebook itself) for ten,
prints every result beside the test's threshold, and appends the records to ``benchmarks/results/seeds.json``. A
(claim, case, seed, variant) already recorded is skipped, so a killed run continues where it stopped.

    python benchmarks/seeds.py                        # every claim, seeds 0-9
    python benchmarks/seeds.py --claim memory overfit --seeds 0 1 2
    CFC_FORECAST_NATIVE=0 python benchmarks/seeds.py  # the pure-PyTorch loop
    CFC_FORECAST_AVX512=0 python benchmarks/seeds.py  # the native loop built for AVX2

Run it from the repository root (it imports ``tests``). One thread, as the tests use for these small models.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "seeds.json"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from cfc_forecast.core import native  # noqa: E402

# a claim runs the seeds given, skipping the (case, seed) pairs already done; it yields (case, seed, values, holds)
Claim = Callable[[list[int], set[tuple[str, int]]], Iterator[tuple[str, int, dict[str, float], bool]]]


def memory(seeds: list[int], done: set[tuple[str, int]]):
    """Notebook 01's memory task, run by the notebook itself with the seeds given (tests/test_notebooks.py)."""
    from tests.test_notebooks import run_notebook

    seeds = [s for s in seeds if not all((mode, s) in done for mode in ("pure", "no_gate", "default"))]
    if not seeds:
        return
    os.environ.update(CFC_FORECAST_FAST="1", CFC_FORECAST_SEEDS=",".join(map(str, seeds)))
    out = run_notebook("01_cfc_from_scratch.ipynb")
    for seed, mode, mse in re.findall(r"seed (\d+), +(\w+): validation MSE after \d+ updates (\S+)", out):
        holds = float(mse) > 0.8 if mode == "pure" else float(mse) < 0.1
        yield mode, int(seed), {"val_mse": float(mse)}, holds


def overfit(seeds: list[int], done: set[tuple[str, int]]):
    """tests/test_module.py: full-batch training on one tiny irregular series ends below OVERFIT_BELOW."""
    from tests.test_module import OVERFIT_BELOW, overfit_loss

    for encoder in ("cfc", "gru"):
        for seed in (s for s in seeds if (encoder, s) not in done):
            loss = overfit_loss(encoder, seed)
            yield encoder, seed, {"train_mse": loss}, loss < OVERFIT_BELOW


def irregular(seeds: list[int], done: set[tuple[str, int]]):
    """tests/test_irregular_queries.py: the continuous-time head beats the interpolated grid forecast."""
    from tests.test_irregular_queries import MARGIN, compare_heads

    for seed in (s for s in seeds if ("heads", s) not in done):
        mse = compare_heads(seed)
        yield "heads", seed, mse, mse["grid"] < 0.25 and mse["continuous"] < MARGIN * mse["interpolated"]


def real_configs(seeds: list[int], done: set[tuple[str, int]]):
    """tests/test_real_configs.py: a brief fit of each shipped real-data config beats the naive forecast."""
    from tests.datamodules.conftest import data_dir
    from tests.test_real_configs import CASES, MARGIN, brief_fit

    for name, (data_file, *_rest) in sorted(CASES.items()):
        if not data_dir().joinpath(*data_file).exists():
            print(f"real-configs {name}: no data file {data_file}, skipped", flush=True)
            continue
        for seed in (s for s in seeds if (name, s) not in done):
            with tempfile.TemporaryDirectory() as tmp:
                ours, naive = brief_fit(name, seed, Path(tmp) / "run")
            yield name, seed, {"model": ours, "naive": naive, "ratio": ours / naive}, ours < MARGIN * naive


def coupling(seeds: list[int], done: set[tuple[str, int]]):
    """tests/test_channels.py: in a joint (not channel-independent) untrained model, b's history moves a and c."""
    from tests.test_channels import COUPLING_ABOVE
    from tests.test_channels import coupling as change

    for linear_path in (False, True):
        case = "linear" if linear_path else "plain"
        for seed in (s for s in seeds if (case, s) not in done):
            b_changed, others = change(linear_path, independent=False, seed=seed)
            yield case, seed, {"b_changed": b_changed, "others_changed": others}, others > COUPLING_ABOVE


def categorical(seeds: list[int], done: set[tuple[str, int]]):
    """tests/test_categorical.py: with a categorical covariate known ahead, validation MSE < 0.1 x without it."""
    from tests.test_categorical import MARGIN_WITHOUT, weather_loss

    for seed in (s for s in seeds if ("weather", s) not in done):
        with_w, without = weather_loss(True, seed), weather_loss(False, seed)
        values = {"with": with_w, "without": without, "ratio": with_w / without}
        yield "weather", seed, values, with_w < MARGIN_WITHOUT * without


def conformal(seeds: list[int], done: set[tuple[str, int]]):
    """tests/test_conformal.py: after ``calibrate``, test coverage within 3 points of each level pooled and 5 per
    variable and per horizon bucket (n >= 1000), for a point and a quantile quickstart model and PhysioNet."""
    import polars as pl

    from cfc_forecast.calibrate import calibrate
    from datamodules.physionet import CHANNELS
    from tests.datamodules.conftest import data_dir
    from tests.test_conformal import LEVELS, assert_coverage, calibration_counts, quick_fit

    cases = {
        "quickstart-point": ([], "quickstart.yaml", 20, ["x1", "x2", "v1"]),
        "quickstart-quantile": (["--model.loss=pinball", "--model.quantiles=[0.1,0.5,0.9]"], "quickstart.yaml", 20,
                                ["x1", "x2", "v1"]),
        "physionet-point": ([], "physionet.yaml", 40, list(CHANNELS)),
    }  # fmt: skip
    for case, (extra, config, batches, names) in cases.items():
        if config == "physionet.yaml" and not data_dir().joinpath("physionet2012", "set-a.tar.gz").exists():
            print("conformal physionet: no data, skipped", flush=True)
            continue
        for seed in (s for s in seeds if (case, s) not in done):
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = quick_fit(Path(tmp) / "run", f"--seed_everything={seed}", *extra, config=config,
                                 batches=batches)  # fmt: skip
                result = calibrate(str(ckpt), LEVELS)
                report = result.report
                counts = calibration_counts(result.path, names)
            after = report.filter(pl.col("when") == "after")
            values = {}
            for level in LEVELS:
                at = after.filter(pl.col("level") == level)
                values[f"pooled_{level}"] = at.filter(pl.col("scope") == "pooled")["coverage"].item()
                for scope in ("variable", "bucket"):
                    big = at.filter(pl.col("scope") == scope, pl.col("n") >= 1000)
                    values[f"worst_{scope}_{level}"] = float((big["coverage"] - level).abs().max() or 0.0)
            try:
                assert_coverage(report, LEVELS, counts)
                holds = True
            except AssertionError:
                holds = False
            yield case, seed, values, holds


CLAIMS: dict[str, Claim] = {
    "memory": memory,
    "overfit": overfit,
    "irregular": irregular,
    "real-configs": real_configs,
    "coupling": coupling,
    "categorical": categorical,
    "conformal": conformal,
}


def variant() -> str:
    """Which encoder loop runs: ``python``, or ``native-<cpu capability of the build>``."""
    if not native.native_available():
        return "python"
    return "native-" + str(native._status["name"]).split("_")[3]  # cfc_forecast_loop_<capability>_<hash>


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claim", nargs="+", choices=sorted(CLAIMS), default=list(CLAIMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    records = json.loads(args.results.read_text()) if args.results.exists() else []
    run_variant = variant()
    cpu = platform.processor() or platform.machine()
    failures = 0
    for claim in args.claim:
        done = {(r["case"], r["seed"]) for r in records if r["claim"] == claim and r["variant"] == run_variant}
        start = time.perf_counter()
        for case, seed, values, holds in CLAIMS[claim](args.seeds, done):
            record = dict(claim=claim, case=case, seed=seed, variant=run_variant, holds=holds, values=values)
            record.update(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), cpu=cpu)
            records.append(record)
            args.results.write_text(json.dumps(records, indent=1) + "\n")  # after every result: resumable
            shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            print(f"{claim:>12} {case:>10} seed {seed}: {shown}  {'holds' if holds else 'FAILS'}", flush=True)
        print(f"{claim}: {time.perf_counter() - start:.0f} s ({run_variant})", flush=True)
    for claim in args.claim:
        mine = [r for r in records if r["claim"] == claim and r["variant"] == run_variant and r["seed"] in args.seeds]
        bad = [(r["case"], r["seed"]) for r in mine if not r["holds"]]
        failures += len(bad)
        print(f"{claim}: {len(mine) - len(bad)} of {len(mine)} hold" + (f"; fails: {bad}" if bad else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
