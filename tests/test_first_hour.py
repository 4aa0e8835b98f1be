"""The first hour: ``cfc-forecast --help``, the launcher's threads, the defaults for one's own CSV, the README
recipe."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from cfc_forecast import defaults
from cfc_forecast.argv import COMMANDS, take_option
from cfc_forecast.cli import cli
from cfc_forecast.commands import main
from cfc_forecast.launch import thread_env

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
TINY = ["--data=datamodules.SyntheticDataModule", "--data.n_series=8", "--data.mean_observations=60",
        "--data.duration=40", "--data.observe=4", "--data.forecast=2", "--model.hidden_size=8",
        "--model.backbone_units=16", "--model.query_cell_units=8", "--trainer.enable_progress_bar=false"]  # fmt: skip


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


def readings_csv(path: Path, devices: int = 4, days: int = 16, seed: int = 0) -> Path:
    """Irregular readings of a few devices: ISO time stamps, empty cells, a daily cycle."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(devices):
        minutes = np.cumsum(rng.integers(10, 90, size=days * 24 * 60 // 50))
        minutes = minutes[minutes < days * 24 * 60]
        for m in minutes:
            hour = m / 60
            temp = 20 + 5 * np.sin(2 * np.pi * hour / 24) + d + rng.normal(0, 0.3)
            pressure = 1000 + 3 * np.cos(2 * np.pi * hour / 24) + rng.normal(0, 1)
            stamp = (dt.datetime(2026, 3, 1) + dt.timedelta(minutes=int(m))).isoformat()
            rows.append((f"dev{d}", stamp, None if rng.random() < 0.1 else round(temp, 3),
                         None if rng.random() < 0.3 else round(pressure, 2)))  # fmt: skip
    pl.DataFrame(rows, schema=["device_id", "ts", "temp", "pressure"], orient="row").write_csv(path)
    return path


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "forecast", "backtest", "export", "tune", "native"):
        assert re.search(rf"^  {command} +\S", out, re.M), command
    named = {"fit", "validate", "test", "predict", "forecast", "backtest", "calibrate", "export", "tune", "native"}
    assert set(COMMANDS) == named
    assert "--threads" in out and "--debug" in out


def test_thread_settings_explicit_wins_then_environment_then_default():
    env: dict[str, str] = {}
    thread_env(env, None)
    assert env == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"}
    env = {"OMP_NUM_THREADS": "4", "OMP_WAIT_POLICY": "active"}
    thread_env(env, None)
    assert env == {"OMP_NUM_THREADS": "4", "OMP_WAIT_POLICY": "active"}
    thread_env(env, 2)
    assert env["OMP_NUM_THREADS"] == "2"
    assert take_option(["fit", "--threads=3", "--x", "1"], "--threads", True) == ("3", ["fit", "--x", "1"])
    assert take_option(["fit", "--debug"], "--debug", False) == (True, ["fit"])


def _run(code_or_args: list[str], env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    proc = subprocess.run([sys.executable, *code_or_args], env={**clean, **env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)  # fmt: skip
    return proc.stdout


def test_launcher_sets_threads_before_torch_and_import_sets_nothing():
    code = "import os, sys, cfc_forecast; print('torch' in sys.modules, os.environ.get('OMP_NUM_THREADS'))"
    assert _run(["-c", code], {}).split() == ["False", "None"]
    assert "1 intra-op threads" in _run(["-m", "cfc_forecast", "--version"], {})
    # torch caps the count at the machine's cores: 2 is the most every machine here has
    assert "2 intra-op threads" in _run(["-m", "cfc_forecast", "--version"], {"OMP_NUM_THREADS": "2"})
    assert "1 intra-op threads" in _run(["-m", "cfc_forecast", "--threads", "1", "--version"], {"OMP_NUM_THREADS": "2"})


def test_defaults_only_fill_what_is_unset():
    assert defaults.times_four("6h") == "24h" and defaults.times_four(1.5) == 6.0
    assert defaults.window_defaults({"forecast": "6h"}) == {"observe": "24h", "every": "6h"}
    assert defaults.window_defaults({"forecast": "6h", "observe": "2d"}) == {}
    assert defaults.window_defaults({"forecast": "6h", "every": "1d"}) == {"observe": "24h"}  # was refused
    assert defaults.window_defaults({"lookback": 96, "horizon": 24}) == {}
    assert defaults.epoch_defaults({"max_epochs": None, "max_steps": -1}) == {"max_epochs": 100}
    assert defaults.epoch_defaults({"max_epochs": 3, "max_steps": -1}) == {}
    assert defaults.epoch_defaults({"max_epochs": None, "max_steps": 500}) == {}


@pytest.mark.parametrize(("days", "step_min", "expected"), [
    (1, 30, None), (3, 30, ["hour_of_day"]), (20, 30, ["hour_of_day", "day_of_week"]),
    (60, 60 * 24 * 2, ["day_of_week"]),
])  # fmt: skip
def test_calendar_defaults_follow_span_and_spacing(tmp_path, days, step_min, expected):
    stamps = pl.datetime_range(dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 1) + dt.timedelta(days=days),
                               f"{step_min}m", eager=True)  # fmt: skip
    pl.DataFrame({"ts": stamps, "x": np.arange(len(stamps), dtype=float)}).write_csv(tmp_path / "a.csv")
    found = defaults.calendar_defaults({"path": str(tmp_path / "a.csv"), "time_column": "ts"})
    assert found.get("calendar") == expected
    pl.DataFrame({"ts": np.arange(500.0), "x": np.arange(500.0)}).write_csv(tmp_path / "n.csv")  # numbers: none
    assert defaults.calendar_defaults({"path": str(tmp_path / "n.csv"), "time_column": "ts"}) == {}


def test_calendar_defaults_read_only_the_id_and_time_columns(tmp_path):
    # a column that turns to text after polars' 10,000 inferred rows fails a whole-file read: the defaults step
    # does not parse it (it used to read the whole file a second time, and chose nothing here)
    n = 12_000
    stamps = pl.datetime_range(dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 10), "1m", eager=True)[:n]
    note = pl.Series("note", [str(i) for i in range(n - 1)] + ["sensor reset"])
    frame = pl.DataFrame({"site": ["a", "b"] * (n // 2), "ts": stamps, "x": np.arange(n, dtype=float), "note": note})
    frame.write_csv(tmp_path / "a.csv")
    with pytest.raises(pl.exceptions.ComputeError):
        pl.read_csv(tmp_path / "a.csv", infer_schema_length=10_000)
    data = {"path": str(tmp_path / "a.csv"), "time_column": "ts", "id_column": "site"}
    assert defaults.calendar_defaults(data) == {"calendar": ["hour_of_day"]}  # spacing 2 min within a site
    frame.write_parquet(tmp_path / "a.parquet")
    from datamodules.io import read_files

    assert read_files(tmp_path / "a.parquet", "ts", columns=["site", "ts", "nope"]).columns == ["site", "ts"]
    assert read_files(tmp_path / "a.csv", "ts", columns=["ts"]).columns == ["ts"]
    (tmp_path / "semi.csv").write_text("ts;x\n2026-01-01;1\n")
    with pytest.raises(ValueError, match="separated by ';'"):
        read_files(tmp_path / "semi.csv", "ts", columns=["ts"])


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_shipped_configs_get_no_defaults(config, monkeypatch, capsys):
    """What a shipped config parses to equals its ``--print_config`` (which prints before any default is applied)."""
    with pytest.raises(SystemExit):
        cli(["fit", f"--config={config}", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    seen = {}

    def stop(self):
        seen.update(self.config.fit.as_dict())
        raise _Parsed

    monkeypatch.setattr("cfc_forecast.cli.ForecastCLI.before_instantiate_classes", stop)
    with pytest.raises(_Parsed):
        cli(["fit", f"--config={config}"])
    seen.pop("config", None)
    assert yaml.safe_load(yaml.safe_dump(seen)) == printed


def test_default_root_dir_is_the_runs_root(tmp_path, capsys):
    run = cli(["fit", *TINY, "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path / 'mine'}"])
    assert Path(run.trainer.default_root_dir).parent == tmp_path / "mine" and run.config.fit.runs_root == str(
        tmp_path / "mine"
    )
    args = ["fit", *TINY, "--trainer.default_root_dir", str(tmp_path / "a"), "--runs_root", str(tmp_path / "b")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfc-forecast fit: error: --trainer.default_root_dir") and "--runs_root" in err


def recipe_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- recipe:", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line.replace("\\\n", " ")) for line in block.replace("\\\n", " ").splitlines() if line]


def test_readme_recipe_runs_on_a_generated_csv(tmp_path, monkeypatch, capsys):
    commands = recipe_commands()
    assert [c[:2] for c in commands] == [["cfc-forecast", "fit"], ["cfc-forecast", "predict"]]
    monkeypatch.chdir(tmp_path)
    readings_csv(tmp_path / "readings.csv")
    fit = [*commands[0][1:], "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false"]
    assert main(fit) == 0
    out = capsys.readouterr().out
    assert "--data.observe 24h --data.every 6h" in out and "hour_of_day" in out and "day_of_week" in out
    (run,) = (tmp_path / "runs").iterdir()
    scores = json.loads((run / "test_metrics.json").read_text())
    assert set(scores) == {"model", "naive", "linear"}
    assert (run / "test_forecasts.png").is_file()
    predict = [a.replace("runs/<run>", str(run)) for a in commands[1][1:]]
    assert main([*predict, f"--run_dir={tmp_path / 'pred'}"]) == 0
    frame = pl.read_parquet(tmp_path / "pred" / "predictions.parquet")
    assert set(frame["series"]) == {f"dev{d}" for d in range(4)} and set(frame["variable"]) == {"temp"}


def python_example() -> str:
    """The README's Python example (the block that builds a ``ForecastModule`` from a DataModule)."""
    blocks = (ROOT / "README.md").read_text().split("```python\n")[1:]
    (block,) = [b.split("```", 1)[0] for b in blocks if "ForecastModule(dm.n_inputs" in b]
    return block


@pytest.mark.parametrize("categorical", [False, True])
def test_readme_python_example_runs_with_and_without_a_categorical_column(tmp_path, monkeypatch, categorical):
    # the example passed no categorical_sizes: on a DataModule with a categorical column the model refused it
    monkeypatch.chdir(tmp_path)
    frame = pl.read_csv(readings_csv(tmp_path / "readings.csv", days=6))
    code = python_example().replace("max_epochs=20", "max_epochs=1, enable_progress_bar=False, logger=False, "
                                    "enable_checkpointing=False")  # fmt: skip
    code = "\n".join(line for line in code.splitlines() if "runs/<run>" not in line)
    if categorical:  # a past categorical input: the state of each reading
        frame = frame.with_columns(state=pl.when(pl.col("temp") > 22).then(pl.lit("warm")).otherwise(pl.lit("cold")))
        code = code.replace("predict_queries=[0.5, 3.25])", 'predict_queries=[0.5, 3.25], categorical=["state"])')
        assert 'categorical=["state"]' in code
    scope = {"frame": frame, "new_frame": frame}
    exec(compile(code, "README.md", "exec"), scope)
    assert (scope["dm"].categorical_sizes is not None) == categorical
    forecasts = scope["forecasts"]
    assert set(forecasts["series"]) == {f"dev{d}" for d in range(4)} and forecasts["prediction"].is_finite().all()


def test_every_top_level_name_the_readme_uses_exists():
    # the README named cfc_forecast.Batch, which was not exported
    import cfc_forecast
    from cfc_forecast.batch import Batch

    names = set(re.findall(r"\bcfc_forecast\.([A-Z]\w*)", (ROOT / "README.md").read_text()))
    assert "Batch" in names and cfc_forecast.Batch is Batch and "Batch" in cfc_forecast.__all__
    assert [n for n in sorted(names) if not hasattr(cfc_forecast, n)] == []
