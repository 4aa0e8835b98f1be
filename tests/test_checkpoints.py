"""Checkpoints: atomic saves in their own folder, loads with ``weights_only=True`` on every path, one-line errors."""

from __future__ import annotations

import errno
import os
import pathlib
import tempfile
from pathlib import Path

import pytest
import torch

from cfc_forecast import checkpoints
from cfc_forecast.checkpoints import AtomicCheckpointIO, CheckpointError, load_checkpoint
from cfc_forecast.cli import cli
from cfc_forecast.commands import main
from cfc_forecast.errors import StorageError
from cfc_forecast.forecast import main as forecast_main
from cfc_forecast.forecaster.module import ForecastModule
from tests.test_cli import TINY_DATA, TINY_MODEL

FIT = [*TINY_DATA, *TINY_MODEL, "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One epoch of the tiny synthetic fit: its run folder."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    cli(["fit", *FIT, f"--run_dir={run}", "--trainer.max_epochs=1", "--seed_everything=0"])
    return run


class Crafted:
    """Unpickling it creates a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _bad_files(tmp_path: Path, fitted: Path) -> dict[str, Path]:
    good = (fitted / "checkpoints" / "last.ckpt").read_bytes()
    files = {"empty": tmp_path / "empty.ckpt", "truncated": tmp_path / "truncated.ckpt"}
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(good[: len(good) // 2])
    files["foreign"] = tmp_path / "foreign.ckpt"
    files["foreign"].write_text("epoch,loss\n1,0.5\n")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "no_state.ckpt")
    files["no_state"] = tmp_path / "no_state.ckpt"
    return files


def test_a_save_writes_in_the_checkpoint_folder_and_nothing_in_tmpdir(tmp_path, monkeypatch):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)
    path = tmp_path / "ck" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 1}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert not list(tmpdir.iterdir())


def test_a_failing_write_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path, monkeypatch):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", None)
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 1}, path)

    def disk_full(obj, f, *args, **kwargs):  # half a file, then the disk is full
        Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", disk_full)
    with pytest.raises(StorageError, match="No space left on device.*previous file is kept") as err:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "epoch": 2}, path)
    assert err.value.status == 3
    monkeypatch.undo()
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "tmpdir"]
    assert not list(tmpdir.iterdir())


def test_a_fit_whose_checkpoint_cannot_be_written_exits_3_in_one_line(tmp_path, monkeypatch, capsys):
    def disk_full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", disk_full)
    run = tmp_path / "run"
    assert main(["fit", *FIT, f"--run_dir={run}", "--trainer.max_epochs=1"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("cfc-forecast fit: error: ") and "No space left on device" in err
    assert len(err.splitlines()) == 1
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def test_empty_truncated_and_foreign_files_are_one_line_errors_naming_the_file(tmp_path, fitted, capsys):
    for kind, path in _bad_files(tmp_path, fitted).items():
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(path)
        with pytest.raises(CheckpointError, match=str(path)):
            ForecastModule.load_from_checkpoint(path)
        for command in (
            ["fit", *FIT, f"--run_dir={tmp_path / kind}", f"--ckpt_path={path}", "--trainer.max_epochs=2"],
            ["test", *FIT, f"--run_dir={tmp_path / kind}", f"--ckpt_path={path}"],
            ["predict", f"--ckpt_path={path}", f"--data.path={tmp_path / 'x.csv'}", f"--run_dir={tmp_path / kind}"],
        ):
            assert main(command) == 2, (kind, command[0])
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and str(path) in err, (kind, command[0], err)
        assert forecast_main(["--ckpt_path", str(path), "--input", str(path), "--output", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err
        assert not (tmp_path / kind).exists() and not (tmp_path / "o").exists()


def test_a_crafted_checkpoint_runs_no_code_on_any_entry_point(tmp_path, fitted, monkeypatch, capsys):
    # torch's pre-2.6 default: every load that does not pass weights_only=True itself unpickles anything
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    ckpt = load_checkpoint(fitted / "checkpoints" / "last.ckpt")
    ckpt["hyper_parameters"]["payload"] = Crafted(marker)
    path = tmp_path / "crafted.ckpt"
    torch.save(ckpt, path)
    config = fitted / "config.yaml"
    commands = [
        ["fit", f"--config={config}", f"--ckpt_path={path}", f"--run_dir={tmp_path / 'f'}", "--trainer.max_epochs=2"],
        ["validate", f"--config={config}", f"--ckpt_path={path}", f"--run_dir={tmp_path / 'v'}"],
        ["test", f"--config={config}", f"--ckpt_path={path}", f"--run_dir={tmp_path / 't'}"],
        ["predict", f"--config={config}", f"--ckpt_path={path}", f"--run_dir={tmp_path / 'p'}"],
        ["predict", f"--config={config}", f"--ckpt_path={path}", "--predict_windows=test", f"--run_dir={tmp_path}/w"],
    ]
    for command in commands:
        assert main(command) == 2, command[0]
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err, err
    assert forecast_main(["--ckpt_path", str(path), "--input", str(path), "--output", str(tmp_path / "o")]) == 2
    with pytest.raises(CheckpointError, match="refused") as refused:
        ForecastModule.load_from_checkpoint(path)
    assert "weights_only" not in str(refused.value)  # torch's text advises weights_only=False: never repeated
    with pytest.raises(CheckpointError, match="refused"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.ckpt"]  # no run folder, no output, no marker
    # the control: the same file does run its code where weights_only is left to the environment
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        torch.load(path)
    assert marker.exists()
    os.remove(marker)


def test_load_from_checkpoint_refuses_weights_only_false(fitted):
    with pytest.raises(CheckpointError, match="weights_only=True"):
        ForecastModule.load_from_checkpoint(fitted / "checkpoints" / "last.ckpt", weights_only=False)
    model = ForecastModule.load_from_checkpoint(fitted / "checkpoints" / "last.ckpt")
    assert model.hparams.hidden_size == 8


def test_a_csv_given_as_the_checkpoint_is_named_as_not_a_checkpoint(tmp_path):
    data = tmp_path / "readings.csv"
    data.write_text("device_id,ts,temp\na,2026-01-01 00:00,1.5\n")
    with pytest.raises(CheckpointError, match=r"not a checkpoint \(it starts with 'device_id,ts,temp'\)"):
        load_checkpoint(data)
