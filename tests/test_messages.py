"""Every user error of every command: one line ``cfc-forecast <command>: error: ...`` naming the option or file and
the fix, exit status 2, no traceback (``--debug`` raises it); and the lines a fit does not print."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cfc_forecast.commands import main
from cfc_forecast.errors import UserError
from tests.test_first_hour import readings_csv

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


@pytest.fixture(scope="module")
def csv(tmp_path_factory) -> Path:
    return readings_csv(tmp_path_factory.mktemp("data") / "readings.csv", devices=3, days=4)


def one_line(capsys, args: list[str], command: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    ours = [ln for ln in lines if ln.startswith("cfc-forecast")]
    assert len(ours) == 1 and ours[0].startswith(f"cfc-forecast {command}: error: ") and "Traceback" not in err
    assert len(lines) <= 3 and lines[0] == ours[0], err  # the error comes first
    return ours[0]


def own(csv: Path, *extra: str) -> list[str]:
    return ["fit", f"--data.path={csv}", "--data.id_column=device_id", "--data.time_column=ts", *extra]


@pytest.mark.parametrize(("args", "command", "says"), [
    (["fit", "--trainer.max_epochz=3"], "fit", "--trainer.max_epochz; did you mean --trainer.max_epochs?"),
    (["fit", "--data.time_colum=ts"], "fit", "unknown option --data.time_colum; did you mean --data.time_column?"),
    (["fit", "--data=SeriesDataModule", "--data.batch_size=abc"], "fit", "--data.batch_size: expected int"),
    (["fti"], None, "unknown command 'fti'; did you mean fit?"),
    (["fit"], "fit", "missing --data (--data.path FILE with its columns, or --config FILE)"),
    (["test", "--config=nope.yaml"], "test", "--config: File does not exist"),
    (["tune", "--workrs=2"], "tune", "unknown option --workrs; did you mean --workers?"),
    (["forecast", "--ckpt_pth=x"], "forecast", "unknown option --ckpt_pth; did you mean --ckpt_path?"),
    (["predict", "--ckpt_pth=x"], "predict", "unknown option --ckpt_pth; did you mean --ckpt_path?"),
    (["native", "--now"], "native", "native takes no arguments"),
    (["fit", "--threads=0"], "fit", "--threads takes a whole number >= 1"),
])  # fmt: skip
def test_option_errors(capsys, args, command, says):
    line = one_line(capsys, args, command) if command else None
    if command is None:
        assert main(args) == 2
        line = capsys.readouterr().err.strip()
        assert line.startswith("cfc-forecast fti: error:")
    assert says in line


def test_forgetting_the_id_column_names_it(capsys, csv):
    args = ["fit", f"--data.path={csv}", "--data.time_column=ts", "--data.targets=[temp]", "--data.forecast=6h"]
    line = one_line(capsys, args, "fit")
    assert "column 'device_id'" in line and "give --data.id_column device_id" in line


def test_a_wrong_time_column_suggests_the_one_holding_date_times(capsys, csv):
    args = ["fit", f"--data.path={csv}", "--data.id_column=device_id", "--data.time_column=timestamp",
            "--data.forecast=6h"]  # fmt: skip
    line = one_line(capsys, args, "fit")
    assert "'timestamp' (--data.time_column) is not a column; did you mean --data.time_column ts?" in line


def test_a_missing_target_names_the_option_and_the_close_name(capsys, csv):
    line = one_line(capsys, own(csv, "--data.targets=[tmep]", "--data.forecast=6h"), "fit")
    assert "targets (--data.targets) ['tmep'] not found" in line and "did you mean ['temp']" in line


def test_no_windowing_says_to_give_the_forecast_length(capsys, csv):
    line = one_line(capsys, own(csv, "--data.targets=[temp]"), "fit")
    assert "--data.forecast 6h" in line


def test_an_empty_csv_names_the_file(capsys, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    line = one_line(capsys, ["fit", f"--data.path={tmp_path / 'empty.csv'}", "--data.forecast=6h"], "fit")
    assert "empty.csv: the file is empty" in line


def test_another_separator_is_named(capsys, csv, tmp_path):
    (tmp_path / "semi.csv").write_text(csv.read_text().replace(",", ";"))
    line = one_line(capsys, ["fit", f"--data.path={tmp_path / 'semi.csv'}", "--data.forecast=6h"], "fit")
    assert "semi.csv" in line and "separated by ';', not by commas" in line


def test_debug_shows_the_traceback(csv):
    with pytest.raises(UserError, match="--data.forecast"):
        main([*own(csv, "--data.targets=[temp]"), "--debug"])


def _command(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cfc_forecast", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)  # fmt: skip


def test_the_command_itself_prints_one_line(csv, tmp_path):
    proc = _command([*own(csv, "--data.targets=[tmep]", "--data.forecast=6h"), f"--runs_root={tmp_path}"])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) <= 3 and lines[-1].startswith("cfc-forecast fit: error: "), proc.stderr


def test_a_fit_prints_no_noise(csv, tmp_path):
    args = [*own(csv, "--data.targets=[temp]", "--data.forecast=6h"), "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false", f"--runs_root={tmp_path}"]  # fmt: skip
    proc = _command(args)
    assert proc.returncode == 0, proc.stderr
    for noise in ("Tip: For seamless cloud", "LeafSpec", "No seed found", "smaller than the logging interval"):
        assert noise not in proc.stderr
    assert "defaults for unset options: --data.observe 24h --data.every 6h" in proc.stdout


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_device_banner_is_printed_once_per_command(tmp_path):
    # every Trainer printed "GPU available: False, used: False" and "TPU available: ...": a backtest builds one per
    # origin, and its output began with a page of them. A handler on Lightning's logger sees what the console would.
    from cfc_forecast.cli import cli
    from tests.test_backtest import config, hourly

    hourly(tmp_path / "rows.parquet")
    cfg = config(tmp_path, split_times=["2026-03-26 00:00", "2026-03-28 00:00"])
    cli(["fit", f"--config={cfg}", f"--run_dir={tmp_path / 'run'}"])
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    log, lines = logging.getLogger("lightning.pytorch.utilities.rank_zero"), _Lines()
    log.addHandler(lines)
    try:
        for out in ("bt", "bt2"):  # two commands: each says it once
            args = ["backtest", f"--config={cfg}", "--n_windows=3", "--step=1d", f"--output={tmp_path / out}"]
            assert main([*args, f"--ckpt_path={ckpt}"]) == 0
    finally:
        log.removeHandler(lines)
    for banner in ("GPU available: ", "TPU available: "):
        assert sum(line.startswith(banner) for line in lines.lines) == 2, lines.lines


def test_a_repeated_banner_line_is_dropped_and_a_different_one_kept():
    # the CUDA accelerator's line (no GPU here to print it): the same filter, keyed on the exact line
    from cfc_forecast import noise

    noise.quiet()
    log, lines = logging.getLogger("lightning.pytorch.accelerators.cuda"), _Lines()
    log.addHandler(lines)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        for line in ["LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]"] * 3 + ["LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [1]"]:
            log.info(line)
        log.info("something else")
        log.info("something else")
        noise.quiet()  # the next command says it again
        log.info("LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]")
    finally:
        log.removeHandler(lines)
        log.setLevel(level)
    assert lines.lines == ["LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]", "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [1]",
                           "something else", "something else", "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]"]  # fmt: skip


def test_paths_the_file_system_refuses_are_one_line(capsys, csv, tmp_path):
    # an output folder that cannot be made (its parent is a file), a runs root under /proc: exit 2 naming the path
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    line = one_line(
        capsys, [*own(csv, "--data.forecast=6h", "--data.targets=[temp]"), f"--runs_root={blocker / 'runs'}"], "fit"
    )
    assert str(blocker) in line and "check the path" in line


def test_split_times_with_one_cut_off_names_the_option(capsys, csv):
    line = one_line(
        capsys, [*own(csv, "--data.forecast=6h", "--data.targets=[temp]"), "--data.split_times=[2026-01-02]"], "fit"
    )
    assert "--data.split_times needs 2 or 3 cut-offs" in line


@pytest.fixture(scope="module")
def readings_model(csv, tmp_path_factory) -> Path:
    """One epoch on the readings: a checkpoint for the prediction paths."""
    run = tmp_path_factory.mktemp("model") / "run"
    args = own(csv, "--data.forecast=6h", "--data.targets=[temp]", "--trainer.max_epochs=1", f"--run_dir={run}")
    args += ["--model.hidden_size=8", "--trainer.enable_progress_bar=false"]
    old = sys.argv
    sys.argv = ["cfc-forecast"]
    try:
        assert main(args) == 0
    finally:
        sys.argv = old
    return run / "checkpoints" / "best.ckpt"


def test_predict_and_the_job_name_an_empty_csv_and_another_separator_as_fit_does(capsys, csv, readings_model, tmp_path):
    (tmp_path / "semi.csv").write_text(csv.read_text().replace(",", ";"))
    (tmp_path / "empty.csv").write_text("")
    for name, says in (("semi.csv", "separated by ';', not by commas"), ("empty.csv", "the file is empty")):
        data = tmp_path / name
        line = one_line(capsys, ["predict", f"--ckpt_path={readings_model}", f"--data.path={data}"], "predict")
        assert f"{data}: " in line and says in line
        args = ["forecast", f"--ckpt_path={readings_model}", f"--input={data}", f"--output={tmp_path / 'out'}"]
        line = one_line(capsys, args, "forecast")
        assert f"{data}: " in line and says in line


def test_a_duration_with_an_unknown_unit_shows_the_whole_value_and_the_units():
    from datamodules.timing import parse_duration

    # it once said "--horizon='x' is not a time unit"
    with pytest.raises(UserError) as err:
        parse_duration("2x", "h", "--horizon")
    assert str(err.value) == (
        "--horizon='2x': 'x' is not a time unit; write a number and one of ms, s, min, h, d, w, step (or m, sec, hr, "
        "hour, hours, day, days), e.g. '6h'"
    )


def test_a_missing_data_file_is_named_by_the_commands_own_option(capsys, readings_model, tmp_path):
    # predict once said "--input: path ..." (the batch job's option) for its --data.path
    missing = tmp_path / "nowhere.csv"
    line = one_line(capsys, ["predict", f"--ckpt_path={readings_model}", f"--data.path={missing}"], "predict")
    assert f"error: --data.path: path '{missing}' matches no CSV or Parquet file" in line and "--input" not in line
    args = ["forecast", f"--ckpt_path={readings_model}", f"--input={missing}", f"--output={tmp_path / 'out'}"]
    assert f"error: --input: path '{missing}' matches no CSV" in one_line(capsys, args, "forecast")


def test_quoted_empty_cells_are_empty_cells(csv, readings_model, tmp_path):
    # some exports write an empty cell as "": it is missing, as an unquoted empty cell is (it once asked to "leave
    # missing values empty")
    text = csv.read_text().splitlines()
    quoted = [text[0]] + [",".join('""' if cell == "" else cell for cell in row.split(",")) for row in text[1:]]
    assert any('""' in row for row in quoted)
    (tmp_path / "quoted.csv").write_text("\n".join(quoted) + "\n")
    from cfc_forecast.forecast import forecast_rows

    plain, quoted_rows = forecast_rows(readings_model, csv), forecast_rows(readings_model, tmp_path / "quoted.csv")
    assert plain.equals(quoted_rows)
    from datamodules import SeriesDataModule

    built = [
        SeriesDataModule(path=str(path), id_column="device_id", time_column="ts", targets=["temp"], forecast="6h",
                         observe="24h")._ensure_built()
        for path in (csv, tmp_path / "quoted.csv")
    ]  # fmt: skip
    assert np.array_equal(built[0].scaler.loc, built[1].scaler.loc)


def test_a_list_option_given_without_brackets_says_how_to_write_it(capsys, csv):
    line = one_line(capsys, own(csv, "--data.forecast=6h", "--data.targets=temp"), "fit")
    assert "--data.targets: expected list, got 'temp'; write a list in brackets, e.g. '[temp]'" in line


def test_model_options_that_do_not_fit_together_are_one_line(capsys, csv):
    args = own(csv, "--data.forecast=6h", "--data.targets=[temp]", "--model.quantiles=[0.1,0.5,0.9]")
    line = one_line(capsys, args, "fit")
    assert "--model.quantiles [0.1, 0.5, 0.9] need --model.loss pinball" in line
    line = one_line(capsys, own(csv, "--data.forecast=6h", "--data.targets=[temp]", "--model.head=direct"), "fit")
    assert "head='direct' needs a regular horizon (count windows); use head='continuous'" in line
