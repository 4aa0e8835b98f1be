"""Seconds per validation epoch of ``model.encoding=per_variable`` on PhysioNet: observed targets only vs every pair.

Validation and test forecast only the observed (query, target) pairs (``ForecastModule.forward(observed_only=True)``),
the only ones their metrics read; before, they pushed every (query, target) pair of a batch through the head. This
times the validation epoch (``on_validation_epoch_start`` to ``_end``, data setup excluded) of an untrained model from
``configs/physionet.yaml`` both ways, through the ``cfc-forecast validate`` command line; "every pair" calls the
module's forward without the restriction (what evaluation did before), with the same weights (seed 0) and batches.

    OMP_NUM_THREADS=1 CFC_FORECAST_DATA=../shared/data python benchmarks/eval_speed_per_variable.py [--batches 20]

Prints one line per run (mode, seconds, the logged val/mse_per_var, which must agree between the modes) and the
median per mode. A speed number: say whether the machine was idle or loaded where it is quoted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(mode: str, batches: int) -> tuple[float, float]:
    """One ``cfc-forecast validate`` of the untrained per-variable model: (seconds of the epoch, val/mse_per_var)."""
    from lightning.pytorch.callbacks import Callback

    from cfc_forecast.cli import ForecastCLI
    from cfc_forecast.forecaster.module import ForecastModule

    clock: dict[str, float] = {}

    class Clock(Callback):
        def on_validation_epoch_start(self, trainer, pl_module) -> None:
            clock["start"] = time.perf_counter()

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            clock["seconds"] = time.perf_counter() - clock["start"]

    class CLI(ForecastCLI):
        def before_instantiate_classes(self) -> None:
            super().before_instantiate_classes()
            self.trainer_defaults["callbacks"].append(Clock())

        def before_validate(self) -> None:
            if mode == "every-pair":  # evaluation as before: every (query, target) pair through the head
                model = self.model
                model.forward = lambda batch, observed_only=False: ForecastModule.forward(model, batch)

    args = ["validate", f"--config={ROOT / 'configs' / 'physionet.yaml'}", "--seed_everything=0",
            "--model.encoding=per_variable", f"--trainer.limit_val_batches={batches}",
            "--trainer.enable_progress_bar=false", "--trainer.logger=false"]  # fmt: skip
    cli = CLI(args=args)
    return clock["seconds"], float(cli.trainer.callback_metrics["val/mse_per_var"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=20, help="validation batches (limit_val_batches; default 20)")
    p.add_argument("--repeats", type=int, default=2, help="runs per mode, alternating (default 2)")
    a = p.parse_args(argv)
    times: dict[str, list[float]] = {"every-pair": [], "observed-only": []}
    for _ in range(a.repeats):
        for mode in times:
            seconds, mse = run(mode, a.batches)
            times[mode].append(seconds)
            print(f"{mode:14s} {seconds:7.2f} s  val/mse_per_var {mse:.9g}", flush=True)
    for mode, values in times.items():
        print(f"{mode:14s} median {statistics.median(values):.2f} s per validation epoch of {a.batches} batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
