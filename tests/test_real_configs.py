"""Every shipped real-data config learns: a brief fit on a subset of its training windows beats the naive forecast.

The configs run as shipped (the model, the data protocol, the optimizer), with only the training shortened: a few
dozen batches. The fitted model is then validated on the whole validation split and compared with the naive
last-value forecast on the same windows and masks (``datamodules.naive_metrics``), in the metric the config's
benchmark reports (the PhysioNet protocol averages per variable first). The test split is never read.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import pytest

from cfc_forecast.cli import cli
from datamodules import naive_metrics
from tests.datamodules.conftest import real_data

ROOT = Path(__file__).resolve().parents[1]

# config -> (the data file it needs, training batches, epochs, the validation metric to compare)
CASES = {
    "etth1": (("ETT", "ETTh1.csv"), 40, 1, "mse"),
    "ettm1": (("ETT", "ETTm1.csv"), 40, 1, "mse"),
    "physionet": (("physionet2012", "set-a.tar.gz"), 40, 1, "mse_per_var"),
    "walker2d": (("walker2d", "walker.tar.gz"), 30, 2, "mse"),
}
MARGIN = 0.9  # the model's metric must be below MARGIN x the naive forecast's


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


SEEDS = (0, 1)  # benchmarks/seeds.py runs ten per config


def brief_fit(name: str, seed: int, run_dir: Path) -> tuple[float, float]:
    """Fit the shipped config ``name`` briefly with ``seed``; (the model's, the naive forecast's) validation metric."""
    data_file, batches, epochs, metric = CASES[name]
    real_data(*data_file)
    run = cli(
        [
            "fit",
            f"--config={ROOT / 'configs' / f'{name}.yaml'}",
            f"--seed_everything={seed}",
            "--test_after_fit=false",
            f"--run_dir={run_dir}",
            f"--trainer.max_epochs={epochs}",
            f"--trainer.limit_train_batches={batches}",
            "--trainer.limit_val_batches=0",  # validated once below, on every window
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    validator = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    model_metrics = validator.validate(run.model, datamodule=run.datamodule, verbose=False)[0]
    return model_metrics[f"val/{metric}"], naive_metrics(run.datamodule, "val")[metric]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_brief_fit_of_the_shipped_config_beats_the_naive_forecast_on_validation(name, seed, tmp_path):
    ours, naive = brief_fit(name, seed, tmp_path / "run")
    print(f"{name}, seed {seed}: val {CASES[name][3]} {ours:.4f}, naive {naive:.4f}")
    assert ours < MARGIN * naive
