"""A tuning trial's value is the score of the checkpoint it keeps, and it reports one step per validation.

Two cases that went wrong: several validations per epoch (a step per epoch kept only the first report of each
epoch, and the trial's value was picked from those), and a maximised metric (best.ckpt was chosen by the lowest
value). Each trial is a real fit process; best.ckpt is validated again and must score the trial's value.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cfc_forecast.cli import cli
from cfc_forecast.tune import main
from tests.test_tune import BASE, load, write_study


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


@pytest.mark.parametrize(
    ("direction", "fit_args", "per_epoch"),
    [("minimize", {"trainer.val_check_interval": 0.5}, 3), ("maximize", {}, 1)],
    ids=["two-validations-per-epoch", "maximize"],
)
def test_a_trial_records_the_score_its_best_checkpoint_holds(tmp_path, direction, fit_args, per_epoch):
    # BASE limits an epoch to 3 batches: val_check_interval 0.5 validates after each one (int(3 * 0.5) = 1)
    assert main(["--config", str(write_study(tmp_path, n_trials=1, direction=direction, fit_args=fit_args))]) == 0
    (trial,) = load(tmp_path).get_trials()
    steps = sorted(trial.intermediate_values)
    assert steps == list(range(BASE["trainer"]["max_epochs"] * per_epoch))  # the step is the validation's index
    reported = trial.intermediate_values.values()
    assert trial.value == (max(reported) if direction == "maximize" else min(reported))

    run = Path(trial.user_attrs["run_dir"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["monitor"] == "val/mse" and config["monitor_mode"] == ("max" if direction == "maximize" else "min")
    again = cli(["validate", f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
                 f"--run_dir={tmp_path / 'validate'}"])  # fmt: skip
    assert again.trainer.callback_metrics["val/mse"].item() == pytest.approx(trial.value, rel=1e-6)
