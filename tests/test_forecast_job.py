"""``cfc-forecast forecast``: equal to ``predict``, chunk-size independent, resumable, and honest about bad input.

Forecasts are compared within ``TOL`` (absolute and relative): the job and ``predict`` batch the windows
differently, so float32 sums may differ in their last bits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cfc_forecast.cli import cli
from cfc_forecast.forecast import main
from cfc_forecast.forecast.prepare import Options, prepare
from cfc_forecast.forecast.trained import read_checkpoint
from datamodules.synthetic import synthetic_frame
from tests.deploy_support import fit_tiny

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
KEYS = ["series", "origin_time", "time", "variable"]
N_SERIES = 12


@pytest.fixture(autouse=True)
def _bare_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny quantile model fitted for one epoch on 12 synthetic series, and predict's forecasts for them."""
    return fit_tiny(tmp_path_factory.mktemp("forecast-job"), N_SERIES)


def run_job(trained, out: Path, *extra: str, data: Path | None = None) -> int:
    args = ["--ckpt_path", str(trained["ckpt"]), "--input", str(data or trained["data"]), "--output", str(out)]
    return main([*args, "--progress=false", *extra])


def read_output(out: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted(out.glob("part-*.parquet")))


def assert_same_forecasts(a: pl.DataFrame, b: pl.DataFrame) -> None:
    assert a.columns == b.columns and a.schema == b.schema
    assert a.select(KEYS).equals(b.select(KEYS))
    assert a.select(KEYS).is_duplicated().sum() == 0
    for c in a.columns[len(KEYS) :]:
        np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=TOL, atol=TOL)


def test_the_job_equals_predict_on_the_same_data(trained, tmp_path, capsys):
    assert run_job(trained, tmp_path / "out", "--chunk_size=5") == 0
    out = read_output(tmp_path / "out")
    assert out.columns == ["series", "origin_time", "time", "variable", "prediction", "q0.1", "q0.5", "q0.9"]
    assert_same_forecasts(out, trained["predict"])
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 3  # 12 series in chunks of 5
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["finished"] and manifest["summary"]["series_forecast"] == N_SERIES
    assert manifest["summary"]["rows_written"] == trained["predict"].height
    assert not (tmp_path / "out" / ".work").exists()
    assert f"series forecast: {N_SERIES} of {N_SERIES}" in capsys.readouterr().out


def test_chunk_size_1_and_1000_give_the_same_forecasts(trained, tmp_path):
    assert run_job(trained, tmp_path / "one", "--chunk_size=1", "--batch_size=3") == 0
    assert run_job(trained, tmp_path / "all", "--chunk_size=1000") == 0
    assert len(list((tmp_path / "one").glob("part-*.parquet"))) == N_SERIES
    assert len(list((tmp_path / "all").glob("part-*.parquet"))) == 1
    assert_same_forecasts(read_output(tmp_path / "one"), read_output(tmp_path / "all"))


def test_a_job_killed_midway_resumes_without_duplicates_or_gaps(trained, tmp_path, monkeypatch, capsys):
    from cfc_forecast.forecast import job as job_module
    from cfc_forecast.forecast.store import OutputFolder

    write = OutputFolder.write_chunk

    def crash_after_part_2(self, k, frame, record):  # dies between chunk 2's part and its record
        if k == 2:
            frame.write_parquet(self.path / self.part_name(k))
            raise KeyboardInterrupt("killed")
        write(self, k, frame, record)

    monkeypatch.setattr(OutputFolder, "write_chunk", crash_after_part_2)
    with pytest.raises(KeyboardInterrupt):
        run_job(trained, tmp_path / "out", "--chunk_size=2")
    monkeypatch.setattr(OutputFolder, "write_chunk", write)
    assert sorted(p.name for p in (tmp_path / "out" / ".work" / "chunks").iterdir()) == ["000000.json", "000001.json"]

    calls = []
    monkeypatch.setattr(job_module, "prepare", lambda *a, **k: calls.append(1) or prepare(*a, **k))
    assert run_job(trained, tmp_path / "out", "--chunk_size=2") == 0
    assert len(calls) == N_SERIES // 2 - 2  # only the chunks not done: 2 (redone, its part overwritten) to 5
    assert_same_forecasts(read_output(tmp_path / "out"), trained["predict"])

    def outputs():  # the lock file records who last worked in the folder; the outputs stay untouched
        return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir() if p.name != ".lock"}

    before = outputs()
    capsys.readouterr()
    assert run_job(trained, tmp_path / "out", "--chunk_size=2") == 0  # finished: a no-op that says so
    assert "already finished" in capsys.readouterr().out
    assert outputs() == before


@pytest.mark.slow
def test_a_process_killed_with_sigkill_resumes(trained, tmp_path):
    data = tmp_path / "many.parquet"
    synthetic_frame(120, 60, 40.0, seed=2).write_parquet(data)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cfc_forecast.commands", "forecast", "--ckpt_path", str(trained["ckpt"]),
           "--input", str(data), "--output", str(out), "--chunk_size=1", "--progress=false"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = out / ".work" / "chunks"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if records.is_dir() and len(list(records.iterdir())) >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(records.iterdir()))
    assert 5 <= done < 120, "the job must be killed midway"
    assert run_job(trained, out, "--chunk_size=1", data=data) == 0
    assert run_job(trained, tmp_path / "whole", "--chunk_size=1", data=data) == 0
    assert_same_forecasts(read_output(out), read_output(tmp_path / "whole"))


def test_another_job_into_the_same_folder_is_refused(trained, tmp_path, capsys):
    assert run_job(trained, tmp_path / "out", "--chunk_size=4") == 0
    assert run_job(trained, tmp_path / "out", "--chunk_size=6") == 2
    assert "holds another job's forecasts" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert run_job(trained, tmp_path / "other") == 2
    assert "is not empty and holds no manifest.json" in capsys.readouterr().err


def bad_series_frame() -> pl.DataFrame:
    good = synthetic_frame(3, 60, 40.0, seed=1).filter(pl.col("series") < 2)  # series 0 and 1 are fine
    rows = [  # series, time, x1, x2, v1 (as text: CSV cells)
        ("dup", 1.0, "1", "2", "3"), ("dup", 1.0, "1", "2", "3"), ("dup", 2.0, "1", "2", "3"),
        ("back", 2.0, "1", "2", "3"), ("back", 1.0, "1", "2", "3"), ("back", 3.0, "1", "2", "3"),
        ("empty", 1.0, "", "", ""), ("empty", 2.0, "", "", ""),
        ("nox2", 1.0, "1", "", "3"), ("nox2", 2.0, "1", "", "3"),
        ("short", 1.0, "1", "2", "3"),
        ("text", 1.0, "1", "n/a", "3"), ("text", 2.0, "1", "2", "3"),
        ("", 1.0, "1", "2", "3"),
    ]  # fmt: skip
    bad = pl.DataFrame(rows, schema=["series", "time", "x1", "x2", "v1"], orient="row")
    good = good.with_columns(pl.col("series").cast(pl.String), *[pl.col(c).cast(pl.String) for c in ("x1", "x2", "v1")])
    return pl.concat([good, bad.with_columns(pl.col("series").replace("", None))])


def test_bad_series_are_skipped_with_reasons_and_the_rest_forecast(trained, tmp_path, capsys):
    bad_series_frame().write_csv(tmp_path / "bad.csv")
    assert run_job(trained, tmp_path / "out", "--chunk_size=3", data=tmp_path / "bad.csv") == 0
    out = read_output(tmp_path / "out")
    # x2 never observed: a missing value, as in training; rows out of time order: sorted, as in training
    assert sorted(out["series"].unique()) == ["0", "1", "back", "nox2"]
    report = dict(pl.read_csv(tmp_path / "out" / "skipped_series.csv").iter_rows())
    assert report == {
        "dup": "duplicate time stamps",
        "empty": "nothing observed",
        "short": "one row only: the query times follow each series' median spacing, which needs 2 (or give "
        "--query_times)",
        "text": "non-numeric values",
        None: "1 rows with an empty series id",
    }
    summary = json.loads((tmp_path / "out" / "manifest.json").read_text())["summary"]
    assert summary["series_in_input"] == 8 and summary["series_forecast"] == 4 and summary["series_skipped"] == 4
    assert summary["rows_skipped"] == {}  # every row of a forecast series was used
    printed = capsys.readouterr().out
    assert "series skipped: 4" in printed and "duplicate time stamps" in printed


def test_nothing_to_forecast_exits_1_and_a_wrong_schema_exits_2(trained, tmp_path, capsys):
    frame = bad_series_frame().filter(pl.col("series").is_in(["dup", "empty"]))
    frame.write_csv(tmp_path / "bad.csv")
    assert run_job(trained, tmp_path / "out", data=tmp_path / "bad.csv") == 1
    assert pl.read_csv(tmp_path / "out" / "skipped_series.csv").height == 2
    assert "nothing could be forecast" in capsys.readouterr().out

    frame.drop("x2").write_csv(tmp_path / "nox2.csv")
    assert run_job(trained, tmp_path / "o2", data=tmp_path / "nox2.csv") == 2
    assert "['x2'] not found" in capsys.readouterr().err
    frame.with_columns(time=pl.lit("2026-11-28 00:00")).write_csv(tmp_path / "dates.csv")
    assert run_job(trained, tmp_path / "o3", data=tmp_path / "dates.csv") == 2
    assert "the model was trained on numbers in 's'" in capsys.readouterr().err
    assert run_job(trained, tmp_path / "o4", "--query_times=[0]") == 2
    assert "--query_times must be > 0" in capsys.readouterr().err


def test_origins_and_query_times(trained, tmp_path):
    assert run_job(trained, tmp_path / "out", "--origins=[30, 35.5]", "--query_times=[500ms, 1.25]") == 0
    out = read_output(tmp_path / "out")
    assert sorted(out["origin_time"].unique()) == [30.0, 35.5]
    assert sorted((out["time"] - out["origin_time"]).round(9).unique()) == [0.5, 1.25]
    assert out.height == N_SERIES * 2 * 2 * 3  # series x origins x queries x variables
    # forecasting from origin 30 sees only the rows before it: the same as forecasting the data cut there at 30
    cut = pl.read_parquet(trained["data"]).filter(pl.col("time") < 30)
    cut.write_parquet(tmp_path / "cut.parquet")
    assert run_job(trained, tmp_path / "cut", "--origins=[30]", "--query_times=[0.5, 1.25]",
                   data=tmp_path / "cut.parquet") == 0  # fmt: skip
    assert_same_forecasts(read_output(tmp_path / "cut"), out.filter(pl.col("origin_time") == 30.0))


def test_long_layout_gives_the_wide_windows_and_leaves_out_unknown_variables(trained):
    _, wide = read_checkpoint(trained["ckpt"])
    long = dataclasses.replace(wide, layout="long")
    frame = synthetic_frame(3, 40, 40.0, seed=3).with_row_index("__row")
    melted = frame.unpivot(["x1", "x2", "v1"], index=["__row", "series", "time"]).drop_nulls("value").sort("__row")
    extra = melted.filter(pl.col("series") == 2).tail(1).with_columns(variable=pl.lit("humidity"))
    a = prepare(frame, wide, Options())
    b = prepare(pl.concat([melted, extra]).sort("__row", maintain_order=True), long, Options())
    # a variable the model does not read is left out and counted (as an ignored column, and as in training)
    assert b.skipped.height == 0 and b.row_counts == {"rows of variables not used": 1}
    assert b.n_forecast == a.n_forecast == 3
    batch_a = a.dataset.collate(list(range(3)))
    batch_b = b.dataset.collate(list(range(3)))
    for name in ("x", "x_mask", "t", "dt", "query_t", "origin"):
        assert getattr(batch_a, name).equal(getattr(batch_b, name)), name
    # a variable no series of the chunk observed is missing throughout, not an error (the other targets are seen)
    c = prepare(melted.filter(pl.col("variable") != "x2"), long, Options())
    assert c.n_forecast == 3 and not c.dataset.collate([0]).x_mask[..., 1].any()


def test_the_shipped_job_config_runs(trained, tmp_path):
    config = ROOT / "configs" / "forecast" / "quickstart.yaml"
    assert run_job(trained, tmp_path / "out", f"--config={config}", "--ckpt_path", str(trained["ckpt"]),
                   "--input", str(trained["data"]), "--output", str(tmp_path / "out")) == 0  # fmt: skip
    assert_same_forecasts(read_output(tmp_path / "out"), trained["predict"])


@pytest.mark.slow
def test_two_processes_on_cpu_give_the_one_process_forecasts(trained, tmp_path):
    cmd = [sys.executable, "-m", "cfc_forecast.commands", "forecast", "--ckpt_path", str(trained["ckpt"]),
           "--input", str(trained["data"]), "--output", str(tmp_path / "ddp"), "--chunk_size=5",
           "--accelerator=cpu", "--devices=2", "--progress=false"]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=300, capture_output=True)
    assert_same_forecasts(read_output(tmp_path / "ddp"), trained["predict"])


def test_series_spread_over_the_input_are_spilled_into_chunks_and_equal_predict(trained, tmp_path):
    # rows of the series interleaved (each series still in time order): chunks cannot be row ranges of the input
    frame = pl.read_parquet(trained["data"])
    shuffled = frame.with_columns(pl.int_range(pl.len()).shuffle(seed=0).alias("key")).sort("key")
    shuffled = shuffled.sort(pl.col("time").rank("ordinal").over("series"), "series", maintain_order=True)
    shuffled.drop("key").write_parquet(tmp_path / "interleaved.parquet")
    out = tmp_path / "out"
    job = ["--ckpt_path", str(trained["ckpt"]), "--input", str(tmp_path / "interleaved.parquet"), "--output", str(out)]
    assert main([*job, "--chunk_size=5", "--progress=false"]) == 0
    assert_same_forecasts(read_output(out), trained["predict"])


def test_date_time_series_in_a_csv_equal_predict_and_take_origins_as_time_stamps(tmp_path):
    frame = synthetic_frame(6, 60, 40.0, seed=4)
    start = pl.datetime(2026, 11, 28, time_zone="Europe/Paris")
    stamps = start + pl.duration(milliseconds=(pl.col("time") * 1000).cast(pl.Int64))
    frame.with_columns(stamps.alias("time")).write_csv(tmp_path / "readings.csv")
    data = ["--data=SeriesDataModule", f"--data.path={tmp_path / 'readings.csv'}", "--data.id_column=series",
            "--data.time_unit=s", "--data.observe=4s", "--data.forecast=2s", "--data.every=1s"]  # fmt: skip
    model = ["--model.hidden_size=8", "--model.backbone_units=16", "--model.query_cell_units=8"]
    cli(["fit", *data, *model, f"--run_dir={tmp_path / 'run'}", "--trainer.max_epochs=1",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])  # fmt: skip
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cli(["predict", f"--config={tmp_path / 'run' / 'config.yaml'}", f"--ckpt_path={ckpt}",
         f"--run_dir={tmp_path / 'p'}"])  # fmt: skip
    expected = pl.read_parquet(tmp_path / "p" / "predictions.parquet")
    assert expected["time"].dtype == pl.Datetime("us", "UTC")  # the CSV holds offsets: read as UTC
    job = ["--ckpt_path", str(ckpt), "--input", str(tmp_path / "readings.csv"), "--progress=false"]
    assert main([*job, "--output", str(tmp_path / "out"), "--chunk_size=4"]) == 0
    assert_same_forecasts(read_output(tmp_path / "out"), expected)

    assert main([*job, "--output", str(tmp_path / "o2"), "--origins=['2026-11-28 00:00:30+01:00']",
                 "--query_times=[1s, 2500ms]"]) == 0  # fmt: skip
    out = read_output(tmp_path / "o2")
    origin = pl.datetime(2026, 11, 27, 23, 0, 30, time_zone="UTC")
    assert out.select((pl.col("origin_time") == origin).all()).item()
    ahead = (out["time"] - out["origin_time"]).dt.total_milliseconds().unique().sort().to_list()
    assert ahead == [1000, 2500] and out.height == 6 * 2 * 3


def test_a_full_disk_exits_3_in_one_line_and_a_rerun_completes(trained, tmp_path, monkeypatch, capsys):
    import errno

    real = pl.DataFrame.write_parquet
    writes = []

    def disk_full_on_the_third_part(frame, path, *args, **kwargs):
        writes.append(path)
        if len(writes) == 3:
            Path(path).write_bytes(b"PAR1" + b"\0" * 100)  # half a file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(frame, path, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", disk_full_on_the_third_part)
    out = tmp_path / "out"
    assert run_job(trained, out, "--chunk_size=2") == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("cfc-forecast forecast: error: ") and len(err.splitlines()) == 1
    assert "No space left on device" in err and "rerun the same command" in err
    assert not list(out.glob(".*.tmp")) and len(list(out.glob("part-*.parquet"))) == 2
    monkeypatch.undo()
    assert run_job(trained, out, "--chunk_size=2") == 0
    assert_same_forecasts(read_output(out), trained["predict"])
    assert not (out / ".work").exists()


def test_a_job_killed_before_its_manifest_reruns(trained, tmp_path):
    out = tmp_path / "out"
    (out / ".work" / "spill").mkdir(parents=True)  # what a job killed while starting leaves
    (out / ".work" / "spill" / "x.parquet").write_bytes(b"partial")
    (out / ".manifest.json.tmp").write_text("{")
    assert run_job(trained, out, "--chunk_size=5") == 0
    assert_same_forecasts(read_output(out), trained["predict"])
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".lock"]


def test_a_second_job_on_a_folder_in_use_is_refused_and_writes_nothing(trained, tmp_path, capsys):
    out = tmp_path / "out"
    code = "import sys; from cfc_forecast.runs import FolderLock as L; L(sys.argv[1], 'job'); print('held', flush=1); "
    holder = subprocess.Popen([sys.executable, "-c", code + "sys.stdin.read()", str(out)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert run_job(trained, out) == 2
        err = capsys.readouterr().err.strip()
        assert f"another job (pid {holder.pid}, started " in err and len(err.splitlines()) == 1
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock, the next run goes ahead
        holder.wait()
    assert run_job(trained, out) == 0
    # a refused job (another job's folder) creates nothing, not even a lock file
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert run_job(trained, other) == 2
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_a_work_folder_that_cannot_be_removed_is_noted_and_removed_by_a_rerun(trained, tmp_path, monkeypatch, capsys):
    import shutil

    real = shutil.rmtree

    def busy(path, *args, **kwargs):
        if Path(path).name == ".work" and not kwargs.get("ignore_errors"):
            raise OSError(16, "Device or resource busy")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", busy)
    out = tmp_path / "out"
    assert run_job(trained, out) == 0
    assert "could not be removed (Device or resource busy); rerun to remove it" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["summary"]["notes"][-1].endswith("rerun to remove it")
    monkeypatch.undo()
    assert (out / ".work").exists() and run_job(trained, out) == 0
    assert not (out / ".work").exists()


def test_skip_reasons_are_tallied_without_their_origin_numbers_or_date_times():
    from cfc_forecast.forecast.store import reason_kind

    kinds = {
        reason_kind("origin 2026-03-01T12:00:00+01:00: no rows before the origin"),
        reason_kind("origin 2026-03-02T12:00:00+01:00: no rows before the origin"),
        reason_kind("origin 18.999: no rows before the origin"),
    }
    assert kinds == {"no rows before the origin"}
