"""Training that survives a kill: last.ckpt every epoch, exact resume, run folders that keep their history and are
used by one process at a time; explicit values win over the checkpoint's; every used split checked first."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from lightning.pytorch import Callback

from cfc_forecast.checkpoints import load_checkpoint
from cfc_forecast.cli import cli
from cfc_forecast.commands import main
from cfc_forecast.runs import FolderLock
from tests.test_cli import TINY_DATA, TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
KILL_ENV = "CFC_FORECAST_TEST_KILL_IN_EPOCH"
FIT = [*TINY_DATA, *TINY_MODEL, "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
       "--seed_everything=0", "--model.head_dropout=0.2"]  # fmt: skip


class KillInEpoch(Callback):
    """SIGKILLs its own process at the second batch of the epoch ``$CFC_FORECAST_TEST_KILL_IN_EPOCH`` (0-based;
    ``epoch:batch`` names another batch)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        epoch, _, at = os.environ.get(KILL_ENV, "").partition(":")
        if epoch == str(trainer.current_epoch) and batch_idx == int(at or 1):
            os.kill(os.getpid(), signal.SIGKILL)


class KillAfterValidation(Callback):
    """SIGKILLs its own process once the validation of epoch ``$CFC_FORECAST_TEST_KILL_IN_EPOCH`` is logged, before
    that epoch's last.ckpt is written (ModelCheckpoint saves at the epoch's end, after the other callbacks)."""

    def on_validation_end(self, trainer, pl_module) -> None:
        if os.environ.get(KILL_ENV) == str(trainer.current_epoch) and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGKILL)


KILLER = json.dumps({"class_path": "tests.test_resume.KillInEpoch"})


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


def _val_mse(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv") as f:
        return {int(r["epoch"]): float(r["val/mse"]) for r in csv.DictReader(f) if r.get("val/mse")}


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """The same 4-epoch fit uninterrupted, and SIGKILLed in epoch 3 (index 2) then resumed with --resume."""
    root = tmp_path_factory.mktemp("resume")
    old = sys.argv
    sys.argv = ["cfc-forecast"]
    try:
        cli(["fit", *FIT, f"--run_dir={root / 'whole'}", "--trainer.max_epochs=4"])
        cmd = [sys.executable, "-m", "cfc_forecast.commands", "fit", *FIT, f"--run_dir={root / 'killed'}",
               "--trainer.max_epochs=4", f"--trainer.callbacks+={KILLER}"]  # fmt: skip
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, KILL_ENV: "2", "PYTHONPATH": path}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        last = load_checkpoint(root / "killed" / "checkpoints" / "last.ckpt")
        metrics_at_kill = _val_mse(root / "killed")
        resumed = cli(["fit", "--resume", str(root / "killed")])
    finally:
        sys.argv = old
    return {"root": root, "returncode": proc.returncode, "last": last, "at_kill": metrics_at_kill, "cli": resumed}


def test_a_fit_killed_in_epoch_3_leaves_last_ckpt_of_epoch_2(killed_and_resumed):
    assert killed_and_resumed["returncode"] == -signal.SIGKILL
    last = killed_and_resumed["last"]
    assert last["epoch"] == 1  # two epochs done (0 and 1), the third killed
    assert sorted(killed_and_resumed["at_kill"]) == [0, 1]
    assert {"torch", "numpy", "python"} <= set(last["callbacks"]["RngState"])


def test_kill_and_resume_equals_the_uninterrupted_fit(killed_and_resumed):
    root = killed_and_resumed["root"]
    whole, resumed = _val_mse(root / "whole"), _val_mse(root / "killed")
    assert sorted(whole) == sorted(resumed) == [0, 1, 2, 3]  # the epochs before the kill are kept
    for epoch in (2, 3):
        np.testing.assert_allclose(resumed[epoch], whole[epoch], rtol=1e-6)
    assert killed_and_resumed["cli"].trainer.current_epoch == 4


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if v} for r in csv.DictReader(f)]


@pytest.mark.parametrize(("killer", "at", "extra"), [
    # after epoch 3's validation and train steps were logged, before its last.ckpt
    ("KillAfterValidation", "2", []),
    # in epoch 3 after a mid-epoch last.ckpt (step 25): the rows of steps 25-27 are logged again
    ("KillInEpoch", "2:6", ["--save_every_n_steps=5"]),
])  # fmt: skip
def test_a_resumed_fit_logs_each_row_once_with_the_resumed_values(killed_and_resumed, tmp_path, killer, at, extra):
    # the resumed fit logs again what the killed one logged after its checkpoint: metrics.csv holds each row once
    whole, run = killed_and_resumed["root"] / "whole", tmp_path / "killed"
    cmd = [sys.executable, "-m", "cfc_forecast.commands", "fit", *FIT, f"--run_dir={run}", "--trainer.max_epochs=4",
           "--trainer.log_every_n_steps=1", *extra,
           "--trainer.callbacks+=" + json.dumps({"class_path": f"tests.test_resume.{killer}"})]  # fmt: skip
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, KILL_ENV: at, "PYTHONPATH": path}, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    at_kill = _rows(run)
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    assert any(int(r["step"]) >= last for r in at_kill)  # rows from after the checkpoint were on disk
    cli(["fit", "--resume", str(run)])
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows if "val/mse" in r] == [0, 1, 2, 3]
    train = [(int(r["epoch"]), int(r["step"])) for r in rows if "train/loss" in r]
    assert train == [(s // 11, s) for s in range(44)]  # 4 epochs of 11 steps, each once, in order
    if extra:  # a resume from a mid-epoch checkpoint is not exact (--save_every_n_steps says so)
        return
    expected = {int(r["epoch"]): r for r in _rows(whole) if "val/mse" in r}
    for r in rows:
        if "val/mse" in r:
            np.testing.assert_allclose(float(r["val/mse"]), float(expected[int(r["epoch"])]["val/mse"]), rtol=1e-6)
            assert r["step"] == expected[int(r["epoch"])]["step"]


def test_a_resume_is_recorded_and_keeps_the_earlier_config(killed_and_resumed):
    run = killed_and_resumed["root"] / "killed"
    history = json.loads((run / "run.json").read_text())["history"]
    assert [h["subcommand"] for h in history] == ["fit", "fit"]
    assert "resumed_from" not in history[0]
    assert history[1]["resumed_from"]["epoch"] == 1 and history[1]["resumed_from"]["path"].endswith("last.ckpt")
    assert (run / "config.1.yaml").is_file() and (run / "config.yaml").is_file()
    assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()  # the last process that worked in it


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    run = tmp_path_factory.mktemp("e06") / "run"
    old = sys.argv
    sys.argv = ["cfc-forecast"]
    try:
        cli(["fit", *FIT, f"--run_dir={run}", "--trainer.max_epochs=1"])
    finally:
        sys.argv = old
    return run


def test_values_given_on_the_command_line_win_over_the_checkpoints(one_epoch, tmp_path, capsys):
    # e06: Lightning parsed the checkpoint's hyperparameters over the command line (loss mse, dropout 0.2 kept)
    run = tmp_path / "resume_mae"
    resumed = cli(["fit", f"--config={one_epoch / 'config.yaml'}", f"--ckpt_path={one_epoch / 'checkpoints/last.ckpt'}",
                   "--trainer.max_epochs=2", "--model.loss=mae", "--model.head_dropout=0.3", "--model.lr=0.02",
                   f"--run_dir={run}"])  # fmt: skip
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["loss"] == "mae" and config["model"]["head_dropout"] == 0.3
    hp = load_checkpoint(run / "checkpoints" / "last.ckpt")["hyper_parameters"]
    assert (hp["loss"], hp["head_dropout"], hp["lr"]) == ("mae", 0.3, 0.02)
    assert resumed.trainer.optimizers[0].param_groups[0]["lr"] == 0.02  # not the checkpoint's optimizer state's
    changed = json.loads((run / "run.json").read_text())["history"][-1]["changed"]
    assert changed == {"head_dropout": [0.2, 0.3], "loss": ["mse", "mae"], "lr": [0.001, 0.02],
                       "trainer.max_epochs": [1, 2]}  # fmt: skip


def test_a_refused_resume_names_resume(one_epoch, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    # a refusal names the option given (it named the --ckpt_path --resume stands for)
    assert main(["fit", "--resume", str(run), "--model.hidden_size=32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cfc-forecast fit: error: --resume {run}: these values differ from the checkpoint's")
    assert "--ckpt_path" not in err and "hidden_size (checkpoint 8, given 32)" in err


def test_a_resume_records_the_trainer_values_it_changed(one_epoch, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    # run.json's entry holds the values the resume changed ("changed: {}" once, with max_epochs 1 -> 2)
    assert main(["fit", "--resume", str(run), "--trainer.max_epochs=2"]) == 0
    entry = json.loads((run / "run.json").read_text())["history"][-1]
    assert entry["changed"] == {"trainer.max_epochs": [1, 2]} and entry["resumed_from"]["epoch"] == 0


def test_values_in_a_config_file_win_over_the_checkpoints(one_epoch, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  head_dropout: 0.0\n")
    run = tmp_path / "r"
    cli(["fit", *FIT, f"--config={extra}", f"--ckpt_path={one_epoch / 'checkpoints/last.ckpt'}",
         "--trainer.max_epochs=2", f"--run_dir={run}"])  # fmt: skip
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["hyper_parameters"]["head_dropout"] == 0.0


def test_a_different_architecture_value_is_refused_by_name(one_epoch, tmp_path, capsys):
    ckpt = one_epoch / "checkpoints" / "last.ckpt"
    args = ["fit", f"--config={one_epoch / 'config.yaml'}", f"--ckpt_path={ckpt}", "--trainer.max_epochs=2",
            "--model.hidden_size=12", "--model.mode=pure", f"--run_dir={tmp_path / 'r'}"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(ckpt) in err
    assert "hidden_size (checkpoint 8, given 12)" in err and "mode (checkpoint 'default', given 'pure')" in err
    assert not (tmp_path / "r").exists()
    # the checkpoint's values fill what is not given: the same model without repeating its values
    assert main(["test", *TINY_DATA, f"--ckpt_path={ckpt}", f"--run_dir={tmp_path / 't'}"]) == 0


def test_ckpt_path_last_finds_the_newest_run_of_the_config(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "seed_everything: 0\n"
        "trainer: {enable_progress_bar: false, enable_model_summary: false}\n"
        "data:\n  class_path: datamodules.SyntheticDataModule\n  init_args: {n_series: 8, mean_observations: 60, "
        "duration: 40, observe: 4, forecast: 2, every: 1, batch_size: 16}\n"
        "model: {hidden_size: 8, backbone_units: 16, query_cell_units: 8}\n"
    )
    root = tmp_path / "runs"
    first = cli(["fit", f"--config={config}", f"--runs_root={root}", "--trainer.max_epochs=1"])
    again = cli(["fit", f"--config={config}", f"--runs_root={root}", "--trainer.max_epochs=2", "--ckpt_path=last"])
    assert again.run_dir == first.run_dir and again.trainer.current_epoch == 2
    assert [p.name for p in root.iterdir()] == [first.run_dir.name]
    with pytest.raises(ValueError, match="no run under"):
        cli(["fit", f"--config={config}", f"--runs_root={tmp_path / 'none'}", "--ckpt_path=last"])


def test_a_second_process_on_a_run_folder_is_refused_and_a_killed_holder_blocks_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    code = "import sys; from cfc_forecast.runs import FolderLock; FolderLock(sys.argv[1]); print('held', flush=True); "
    holder = subprocess.Popen([sys.executable, "-c", code + "sys.stdin.read()", str(run)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["fit", *FIT, f"--run_dir={run}", "--trainer.fast_dev_run=true"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"another run (pid {holder.pid}, started " in err and str(run) in err and len(err.splitlines()) == 1
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # the refused command wrote nothing
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock
        holder.wait()
    assert main(["fit", *FIT, f"--run_dir={run}", "--trainer.fast_dev_run=true"]) == 0
    FolderLock(run).release()


def _hourly_csv(path: Path, drop_targets_after: float | None = None) -> Path:
    """4 series x 120 hourly rows (the cases' train.csv); targets empty from a fraction of the time range."""
    rng = np.random.default_rng(0)
    frames = []
    for s in range(4):
        t = np.arange(120.0)
        y = 10 * s + np.sin(t / 6) + 0.1 * rng.standard_normal(120)
        if drop_targets_after is not None:
            y = np.where(t >= drop_targets_after * 119, np.nan, y)
        x2 = np.cos(t / 6) + 0.1 * rng.standard_normal(120)
        frames.append(pl.DataFrame({"id": [f"s{s}"] * 120, "t": t, "y": y, "x2": x2}))
    pl.concat(frames).with_columns(pl.col("y").fill_nan(None)).write_csv(path)
    return path


def _csv_args(path: Path) -> list[str]:
    return ["--data=SeriesDataModule", f"--data.path={path}", "--data.id_column=id", "--data.time_column=t",
            "--data.time_unit=h", "--data.targets=[y]", "--data.lookback=16", "--data.horizon=4", "--data.stride=4",
            "--data.batch_size=16", *TINY_MODEL, "--trainer.enable_progress_bar=false"]  # fmt: skip


def test_fit_with_test_after_fit_checks_the_test_split_before_training(tmp_path, capsys):
    # e07: the test split (12 hourly rows per series) is shorter than the 14-step horizon
    data = _hourly_csv(tmp_path / "train.csv")
    args = ["fit", *_csv_args(data), "--data.horizon=14", "--data.split_fractions=[0.7, 0.2, 0.1]",
            "--test_after_fit=true", "--trainer.max_epochs=1", f"--runs_root={tmp_path / 'runs'}"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the test split has no windows" in err
    assert "of 4 series" in err and "--test_after_fit false" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # no empty run folder


def test_test_without_test_windows_fails_instead_of_printing_nothing(tmp_path, capsys):
    # e07: every test-period target missing; `test` exited 0 and printed no metric
    data = _hourly_csv(tmp_path / "train.csv")
    run = tmp_path / "run"
    assert main(["fit", *_csv_args(data), "--trainer.max_epochs=1", f"--run_dir={run}"]) == 0
    empty = _hourly_csv(tmp_path / "no_test_targets.csv", drop_targets_after=0.85)
    args = ["test", f"--config={run / 'config.yaml'}", f"--ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
            f"--data.init_args.path={empty}", f"--run_dir={tmp_path / 't_empty'}"]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the test split has no windows" in err and "0 with a target observed" in err
    assert not (tmp_path / "t_empty").exists()
    args = ["predict", *args[1:4], f"--run_dir={tmp_path / 'p_empty'}", "--predict_windows=test"]
    assert main(args) == 2
    assert "the test split has no windows" in capsys.readouterr().err
    assert not (tmp_path / "p_empty").exists()


def test_step_checkpoints_protect_work_within_an_epoch(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cfc_forecast.commands", "fit", *FIT, f"--run_dir={run}", "--trainer.max_epochs=2",
           "--save_every_n_steps=1", f"--trainer.callbacks+={KILLER}"]  # fmt: skip
    env = {**os.environ, KILL_ENV: "0", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    assert subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=300).returncode == -signal.SIGKILL
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")  # killed at the second batch of the first epoch
    assert (last["epoch"], last["global_step"]) == (0, 1)
    resumed = cli(["fit", "--resume", str(run)])
    assert resumed.trainer.current_epoch == 2


def test_resume_names_what_is_missing(tmp_path, capsys):
    assert main(["fit", "--resume", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere/config.yaml does not exist" in err
    assert main(["test", "--resume", str(tmp_path)]) == 2
    assert "--resume continues a fit" in capsys.readouterr().err


def test_predict_into_a_run_folder_in_use_is_refused(one_epoch, tmp_path, capsys):
    run = tmp_path / "p"
    held = FolderLock(run)  # this process works in it (a lock is per open file: a second open is refused too)
    try:
        ckpt = one_epoch / "checkpoints" / "last.ckpt"
        args = ["predict", f"--config={one_epoch / 'config.yaml'}", f"--ckpt_path={ckpt}", f"--run_dir={run}"]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert f"another run (pid {os.getpid()}, started " in err and len(err.splitlines()) == 1
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        held.release()
    assert main(args) == 0 and (run / "predictions.parquet").is_file()


def test_ckpt_path_on_the_command_line_wins_over_a_later_config(tmp_path):
    # a saved config.yaml holds `ckpt_path: null`; given after --ckpt_path it once made `test` score an untrained model
    run = tmp_path / "run"
    cli(["fit", *FIT, "--trainer.max_epochs=1", f"--run_dir={run}"])
    ckpt = str(run / "checkpoints" / "best.ckpt")
    scores = []
    for i, order in enumerate(([f"--ckpt_path={ckpt}", f"--config={run / 'config.yaml'}"],
                               [f"--config={run / 'config.yaml'}", f"--ckpt_path={ckpt}"])):  # fmt: skip
        done = cli(["test", *order, f"--run_dir={tmp_path / f't{i}'}"])
        assert done.config.test.ckpt_path == ckpt
        scores.append(float(done.trainer.callback_metrics["test/mse"]))
        saved = json.loads((tmp_path / f"t{i}" / "test_metrics.json").read_text())  # `test` scores the baselines too
        assert {"model", "naive", "linear"} <= set(saved) and saved["model"]["mse"] == pytest.approx(scores[-1])
    assert scores[0] == scores[1]
