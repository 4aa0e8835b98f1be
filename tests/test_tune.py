"""``cfc-forecast tune``: studies on tiny synthetic fits, each trial a real fit process.

A study that completes and whose best config refits to the same score; bad trials (hopeless: pruned; crashing:
failed) that do not stop the study; an interrupted study that a rerun completes; a SIGKILLed worker whose trial is
failed by its heartbeat and run again by the next worker; a misspelled key rejected before any trial; a trial on
2-process DDP; two workers on one study in PostgreSQL.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cfc_forecast.cli import cli
from cfc_forecast.tune import StudySpec, main
from cfc_forecast.tune.cli import build_parser, check_study
from cfc_forecast.tune.runtime import device_groups
from cfc_forecast.tune.space import cli_args, enqueue_params, parse_space
from cfc_forecast.tune.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs" / "tune").glob("*.yaml"))
BASE = {
    "seed_everything": 0,
    "test_after_fit": True,  # the trials never test; the best config keeps the base's choice
    "trainer": {"max_epochs": 2, "limit_train_batches": 3, "limit_val_batches": 2, "accelerator": "cpu",
                "enable_model_summary": False},
    "data": {"class_path": "datamodules.SyntheticDataModule",
             "init_args": {"n_series": 8, "mean_observations": 60, "duration": 40.0, "observe": 4.0, "forecast": 2.0,
                           "every": 1.0, "batch_size": 16}},
    "model": {"hidden_size": 8, "backbone_units": 16, "query_cell_units": 8},
}  # fmt: skip
LR = {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True}


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


def write_study(tmp_path: Path, **fields) -> Path:
    """A study file over a tiny synthetic fit config, in ``tmp_path``; ``fields`` override the defaults."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    study = {"study_name": "tiny", "fit_config": str(tmp_path / "base.yaml"), "study_dir": str(tmp_path / "study"),
             "metric": "val/mse", "n_trials": 3, "pruner": {"name": "none"}, "space": {"model.lr": LR}}  # fmt: skip
    study.update(fields)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def load(tmp_path: Path, name: str = "tiny", url: str | None = None) -> optuna.Study:
    url = url or f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    return optuna.load_study(study_name=name, storage=open_storage(url))


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in sorted(study.get_trials(), key=lambda t: t.number)]


def wait_for(predicate, what: str, limit_s: float = 300) -> None:
    """Poll ``predicate`` (a guard against a hung test, not a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"gave up waiting for {what}")


@contextlib.contextmanager
def tune_process(study: Path, log: Path) -> Iterator[subprocess.Popen]:
    """``cfc-forecast tune --config study`` in a process of its own (killed on the way out if still running)."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cfc_forecast.commands", "tune", "--config", str(study)],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- the search space ------------------------------------------------------------------------------------------------
def test_list_keys_are_a_depth_plus_widths_and_values_become_fit_arguments():
    space = parse_space({"model.head_hidden_sizes": {"type": "list", "min_length": 0, "max_length": 3,
                                                     "item": {"type": "int", "low": 8, "high": 64, "log": True}},
                         "model.mode": {"type": "categorical", "choices": ["default", "pure"]}})  # fmt: skip
    heads = space[0]
    assert heads.extremes() == [[], [64, 64, 64]]
    assert enqueue_params(space, {"model.head_hidden_sizes": [32, 16], "model.mode": "pure"}) == {
        "model.head_hidden_sizes.length": 2, "model.head_hidden_sizes[0]": 32, "model.head_hidden_sizes[1]": 16,
        "model.mode": "pure"}  # fmt: skip
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(20):
        trial = study.ask()
        widths = heads.suggest(trial)
        assert len(widths) == trial.params["model.head_hidden_sizes.length"]
        assert widths == [trial.params[f"model.head_hidden_sizes[{i}]"] for i in range(len(widths))]
        assert all(8 <= w <= 64 for w in widths)
        study.tell(trial, 0.0)
    seen = {t.params["model.head_hidden_sizes.length"] for t in study.trials}
    assert seen == {0, 1, 2, 3}
    assert cli_args({"model.head_hidden_sizes": [32, 16], "model.lr": 0.005, "model.mode": "pure",
                     "model.revin": True}) == ["--model.head_hidden_sizes=[32, 16]", "--model.lr=0.005",
                                               "--model.mode=pure", "--model.revin=true"]  # fmt: skip


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "int", "low": 5, "high": 2}, "low <= high"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log scale needs low > 0"),
        ({"type": "categorical", "choices": []}, "non-empty list of choices"),
        ({"type": "int", "low": 1, "high": 3, "choises": [1]}, "unknown field"),
        (
            {"type": "list", "min_length": 2, "max_length": 1, "item": {"type": "int", "low": 1, "high": 2}},
            "min_length",
        ),
        ({"type": "range", "low": 1}, "type one of"),
    ],
)
def test_a_malformed_space_entry_is_a_clear_error(entry, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_space({"model.hidden_size": entry})
    assert "model.hidden_size" in str(err.value)


@pytest.mark.parametrize(
    ("visible", "workers", "expected"),
    [("0,1,2,3", 2, ["0,1", "2,3"]), ("0,1,2,3", 1, ["0,1,2,3"]), ("4,5", 3, ["4", "5", "4"]), ("", 2, [None, None])],
)
def test_workers_get_equal_shares_of_the_visible_gpus(monkeypatch, visible, workers, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert device_groups(workers) == expected


# ---- checks before any trial -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("space", "fit_args", "expected"),
    [
        ({"model.hiden_size": {"type": "int", "low": 4, "high": 8}}, {}, "did you mean model.hidden_size"),
        ({"model.mode": {"type": "categorical", "choices": ["default", "bogus"]}}, {}, "bogus"),
        ({"data.init_args.n_seris": {"type": "int", "low": 4, "high": 8}}, {}, "n_seris"),
        ({"model.lr": LR}, {"trainer.max_epoch": 3}, "trainer.max_epoch"),
        ({"test_after_fit": {"type": "categorical", "choices": [True]}}, {}, "set by the tuner"),
        ({"model.lr": LR}, {"resume": "runs/earlier"}, "'resume' is set by the tuner"),
    ],
    ids=["misspelled", "bad-choice", "data-key", "fit-args", "reserved", "resume-in-fit-args"],
)
def test_a_bad_key_or_value_is_rejected_before_any_trial(tmp_path, capsys, space, fit_args, expected):
    assert main(["--config", str(write_study(tmp_path, space=space, fit_args=fit_args))]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.startswith("cfc-forecast tune: error:")
    assert not (tmp_path / "study").exists()  # no storage, no trial directory


@pytest.mark.parametrize("study_file", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_study_passes_the_checks(study_file, monkeypatch):
    monkeypatch.chdir(ROOT)  # the studies name their fit configs relative to the repository root
    cfg = build_parser().parse_args(["--config", str(study_file)])
    spec = StudySpec(**{k: v for k, v in cfg.as_dict().items() if k not in ("config", "__path__")})
    space, queued, _ = check_study(spec)
    assert spec.metric.startswith("val/") and spec.n_trials > 0 and queued
    assert {"model.backbone_layers", "model.backbone_units", "model.lr", "model.head_hidden_sizes"} <= {
        p.key for p in space}  # fmt: skip


def test_a_rerun_with_another_metric_or_direction_is_refused(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    study = optuna.create_study(study_name="tiny", storage=open_storage(url), direction="minimize")
    study.set_user_attr("metric", "val/mse")
    assert main(["--config", str(write_study(tmp_path, metric="val/mae"))]) == 2
    assert "optimises 'val/mse'; this study file says 'val/mae'" in capsys.readouterr().err
    assert main(["--config", str(write_study(tmp_path, direction="maximize"))]) == 2
    assert "was created to minimize" in capsys.readouterr().err
    assert study.get_trials() == []


@pytest.mark.slow
def test_a_metric_the_fit_does_not_log_stops_the_study_at_its_first_epoch(tmp_path, capsys):
    assert main(["--config", str(write_study(tmp_path, metric="val/msee", n_trials=3))]) == 2
    err = capsys.readouterr().err
    assert "'val/msee' is not logged" in err and "'val/mse'" in err
    (trial,) = load(tmp_path).get_trials()  # one trial, failed and not counted: fix the metric and rerun
    assert trial.state == TrialState.FAIL and "failure" not in trial.user_attrs


# ---- a study end to end ----------------------------------------------------------------------------------------------
def test_a_three_trial_study_completes_and_its_best_config_refits(tmp_path, capsys):
    space = {
        "model.backbone_layers": {"type": "int", "low": 1, "high": 2},
        "model.backbone_units": {"type": "int", "low": 8, "high": 32, "log": True},
        "model.mode": {"type": "categorical", "choices": ["default", "no_gate", "pure"]},
        "model.lr": LR,
        "model.head_hidden_sizes": {"type": "list", "min_length": 0, "max_length": 2,
                                    "item": {"type": "int", "low": 4, "high": 16}},
    }  # fmt: skip
    # two workers on the default SQLite storage: they wait for its lock rather than fail
    assert main(["--config", str(write_study(tmp_path, space=space)), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    study = load(tmp_path)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert states(study) == ["COMPLETE"] * 3
    for t in trials:  # the value is the best epoch of the metric the trial reported every epoch
        assert len(t.intermediate_values) == BASE["trainer"]["max_epochs"]
        assert t.value == min(t.intermediate_values.values())
        metrics = (Path(t.user_attrs["run_dir"]) / "metrics.csv").read_text()
        assert "val/mse" in metrics and "test/" not in metrics  # the test split stays untouched
    assert len({t.user_attrs["run_dir"] for t in trials}) == 3
    progress = [line for line in out.splitlines() if line.startswith("trial ")]
    assert len(progress) == 3 and progress[-1].count("| 0 left") == 1

    directory = tmp_path / "study"
    rows = list(csv.DictReader((directory / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == [0, 1, 2]
    for row, t in zip(rows, trials, strict=True):
        assert float(row["value"]) == pytest.approx(t.value, rel=1e-12)
        assert json.loads(row["model.head_hidden_sizes"]) == t.user_attrs["fit_values"]["model.head_hidden_sizes"]
    for png in ("history.png", "intermediate.png", "importance.png"):
        assert (directory / png).stat().st_size > 1000

    best = min(trials, key=lambda t: t.value)
    config = yaml.safe_load((directory / "best_config.yaml").read_text())
    assert config["trainer"]["callbacks"] is None and config["run_dir"] is None and config["test_after_fit"] is True
    refit = cli(["fit", f"--config={directory / 'best_config.yaml'}", f"--run_dir={tmp_path / 'refit'}"])
    for key, value in best.user_attrs["fit_values"].items():
        assert refit.model.hparams[key.removeprefix("model.")] == value
    # the same seed, data and config: the refit's best epoch scores what the trial did
    assert refit.trainer.checkpoint_callback.best_model_score.item() == pytest.approx(best.value, rel=1e-5)
    assert (tmp_path / "refit" / "test_metrics.json").is_file()


@pytest.mark.slow
def test_a_hopeless_trial_is_pruned_and_a_crashing_trial_fails_without_stopping_the_study(tmp_path, capsys):
    space = {"model.lr": {"type": "float", "low": 1e-3, "high": 20.0, "log": True},
             "model.loss": {"type": "categorical", "choices": ["mse", "pinball"]}}  # fmt: skip
    enqueue = [{"model.lr": 0.01, "model.loss": "mse"}, {"model.lr": 0.02, "model.loss": "mse"},
               {"model.lr": 20.0, "model.loss": "mse"},  # thrown far off in the first epoch
               {"model.lr": 0.01, "model.loss": "pinball"}]  # pinball without quantiles: the fit raises  # fmt: skip
    pruner = {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0}
    fit_args = {"trainer.max_epochs": 3}
    path = write_study(tmp_path, space=space, enqueue=enqueue, pruner=pruner, n_trials=4, fit_args=fit_args)
    assert main(["--config", str(path)]) == 0
    study = load(tmp_path)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert states(study) == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    assert [len(t.intermediate_values) for t in trials[:3]] == [3, 3, 1]  # stopped after its first epoch
    first_epochs = sorted(t.intermediate_values[0] for t in trials[:2])
    assert not trials[2].intermediate_values[0] <= first_epochs[-1]  # worse than both (or NaN)
    assert "quantiles" in trials[3].user_attrs["failure"]
    out = capsys.readouterr().out
    assert "trial    2 PRUNED   pruned after 1 validation(s)" in out
    assert "trial    3 FAIL     failed: the fit exited" in out


@pytest.mark.slow
def test_an_interrupted_study_rerun_with_the_same_command_completes_it(tmp_path, capsys):
    path = write_study(tmp_path, n_trials=2, fit_args={"trainer.max_epochs": 5})
    with tune_process(path, tmp_path / "first.log") as worker:
        second = tmp_path / "study" / "trials" / "0001"
        wait_for(lambda: (second / "config.yaml").is_file(), "trial 1's fit to start")
        worker.send_signal(signal.SIGINT)  # Ctrl-C
        assert worker.wait(120) == 130
    study = load(tmp_path)
    assert states(study) == ["COMPLETE", "FAIL", "WAITING"]  # trial 1 stopped, and queued again with its values
    stopped, queued = study.trials[1], study.trials[2]
    assert "failure" not in stopped.user_attrs and queued.params == stopped.params
    assert "rerun the same command" in (tmp_path / "first.log").read_text()

    assert main(["--config", str(path)]) == 0
    study = load(tmp_path)
    assert states(study) == ["COMPLETE", "FAIL", "COMPLETE"]  # 2 counted: the study's total
    assert study.trials[2].system_attrs["failed_trial"] == 1 and len(study.trials[2].intermediate_values) == 5
    assert "1 finished, 0 running, 2 trials" in capsys.readouterr().out


@pytest.mark.slow
def test_a_sigkilled_worker_leaves_a_consistent_study_that_another_worker_completes(tmp_path):
    path = write_study(tmp_path, n_trials=1, heartbeat_interval=1, grace_period=2, fit_args={"trainer.max_epochs": 5})
    first = (tmp_path / "study" / "trials" / "0000").resolve()
    with tune_process(path, tmp_path / "killed.log") as worker:
        wait_for(lambda: (first / "config.yaml").is_file(), "the first trial's fit to start")
        worker.kill()
        worker.wait(60)
    # the kernel takes the trial's fit process down with its worker (no orphan keeps training)
    wait_for(lambda: not _processes_with(f"--run_dir={first}"), "the orphaned fit to exit", limit_s=30)
    assert states(load(tmp_path)) == ["RUNNING"]  # nothing half-finished: only the heartbeat can tell

    # another worker: it waits out the grace period, fails the abandoned trial and runs it again
    assert main(["--config", str(path)]) == 0
    study = load(tmp_path)
    failed, retry = sorted(study.get_trials(), key=lambda t: t.number)
    assert states(study) == ["FAIL", "COMPLETE"]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == failed.params


def _processes_with(argument: str) -> list[int]:
    """Ids of the processes whose command line has ``argument`` (read from /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and argument.encode() in (proc / "cmdline").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_a_trial_trains_with_two_process_ddp_and_reports_every_epoch(tmp_path):
    fit_args = {"trainer.devices": 2, "trainer.strategy": "ddp"}
    assert main(["--config", str(write_study(tmp_path, n_trials=1, fit_args=fit_args))]) == 0
    (trial,) = load(tmp_path).get_trials()
    assert trial.state == TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [0, 1] and trial.value == min(trial.intermediate_values.values())
    config = yaml.safe_load(trial.user_attrs["fit_config"])
    assert str(config["trainer"]["devices"]) == "2" and config["trainer"]["strategy"] == "ddp"


@pytest.mark.slow
def test_two_workers_share_one_study_in_postgresql(tmp_path):
    url = os.environ.get("CFC_FORECAST_TEST_POSTGRES")
    if not url:
        message = "no PostgreSQL server: set CFC_FORECAST_TEST_POSTGRES (.ci/run starts one)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    name = f"test-{uuid.uuid4().hex[:12]}"
    path = write_study(tmp_path, study_name=name, storage=url, n_trials=2, workers=2)
    try:
        assert main(["--config", str(path)]) == 0
        study = load(tmp_path, name, url)
        trials = study.get_trials()
        assert states(study) == ["COMPLETE"] * 2
        assert {t.user_attrs["worker"].rsplit("/", 1)[1] for t in trials} == {"0", "1"}  # one trial each, at once
        assert all(math.isfinite(t.value) for t in trials)
        assert len({t.user_attrs["run_dir"] for t in trials}) == 2
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(url))
