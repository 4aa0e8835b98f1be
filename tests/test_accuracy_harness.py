"""The accuracy harness's bookkeeping (benchmarks/accuracy.py): rows, resume, atomic appends, the table.

No training here: a fake runner stands in for ``cfc-forecast fit``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def acc():
    spec = importlib.util.spec_from_file_location("accuracy_harness", ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def fake_runner(calls: list, mse: dict | None = None):
    def run(row, seed, runs_root):
        calls.append((row.name, seed))
        value = (mse or {}).get((row.name, seed), 0.5 + (seed or 0) / 10)
        return {
            "row": row.name,
            "seed": seed,
            "mse": value,
            "mae": value / 2,
            "epochs": 0 if seed is None else 3,
            "seconds_per_epoch": None if seed is None else 2.0,
            "wall_seconds": 1.0,
        }

    return run


def test_rows_in_order_of_value_with_their_overrides(acc):
    names = [r.name for r in acc.all_rows()]
    assert names[:4] == ["etth1-96-cfc", "etth1-96-naive", "etth1-96-lstm", "etth1-96-gru"]
    assert names.index("ettm1-96-cfc") < names.index("physionet-cfc") < names.index("walker2d-cfc")
    assert names.index("walker2d-gru") < names.index("etth1-192-cfc") < names.index("etth1-720-cfc")
    assert len(names) == len(set(names)) == 2 * 4 * 4 + 4 + 5
    gru = acc.ROWS["ettm1-336-gru"].fit_args(2, Path("r"))
    assert gru[:2] == ["fit", "--config=configs/ettm1.yaml"]
    assert {"--seed_everything=2", "--model.encoder=gru", "--data.init_args.horizon=336", "--run_dir=r"} <= set(gru)
    assert "--data.init_args.horizon=96" not in acc.ROWS["etth1-96-cfc"].fit_args(0, Path("r"))
    assert "--config=configs/accuracy/walker2d-cfcmm.yaml" in acc.ROWS["walker2d-cfcmm"].fit_args(0, Path("r"))
    assert acc.ROWS["physionet-cfc"].metrics == ("mse_per_var", "mae_per_var")
    for row in acc.all_rows():  # every config a row names is committed
        assert all((ROOT / c).is_file() for c in row.configs), row.name


def test_results_are_appended_and_a_rerun_skips_what_is_done(acc, tmp_path):
    path = tmp_path / "results" / "acc.json"
    rows = [acc.ROWS["etth1-96-cfc"], acc.ROWS["etth1-96-naive"]]
    calls: list = []
    counts = acc.run_rows(rows, [0, 1], path, tmp_path, runner=fake_runner(calls))
    assert counts == {"ran": 3, "skipped": 0, "failed": 0, "not_started": 0}
    assert calls == [("etth1-96-cfc", 0), ("etth1-96-cfc", 1), ("etth1-96-naive", None)]
    assert [(r["row"], r["seed"]) for r in json.loads(path.read_text())] == calls
    # a rerun with one more seed runs only that seed; the naive row (no seed) is not repeated
    calls.clear()
    counts = acc.run_rows(rows, [0, 1, 2], path, tmp_path, runner=fake_runner(calls))
    assert calls == [("etth1-96-cfc", 2)]
    assert counts == {"ran": 1, "skipped": 3, "failed": 0, "not_started": 0}
    assert len(acc.load_results(path)) == 4
    assert not list(path.parent.glob("*.tmp"))  # no temporary file left behind


def test_a_failed_run_is_counted_and_the_others_still_recorded(acc, tmp_path):
    path = tmp_path / "acc.json"

    def flaky(row, seed, runs_root):
        if seed == 1:
            raise RuntimeError("etth1-96-cfc seed 1 failed (exit 1)")
        return fake_runner([])(row, seed, runs_root)

    counts = acc.run_rows([acc.ROWS["etth1-96-cfc"]], [0, 1, 2], path, tmp_path, runner=flaky)
    assert counts == {"ran": 2, "skipped": 0, "failed": 1, "not_started": 0}
    assert [r["seed"] for r in acc.load_results(path)] == [0, 2]


def test_nothing_starts_after_stop_at(acc, tmp_path):
    calls: list = []
    counts = acc.run_rows(
        [acc.ROWS["etth1-96-cfc"]], [0, 1], tmp_path / "a.json", tmp_path, stop_at="00:00", runner=fake_runner(calls)
    )
    assert calls == [] and counts["not_started"] == 2


def test_a_crash_while_writing_keeps_the_previous_file(acc, tmp_path, monkeypatch):
    path = tmp_path / "acc.json"
    acc.append_result({"row": "etth1-96-cfc", "seed": 0, "mse": 0.4}, path)
    monkeypatch.setattr(acc.json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        acc.append_result({"row": "etth1-96-cfc", "seed": 1, "mse": 0.5}, path)
    monkeypatch.undo()
    assert acc.load_results(path) == [{"row": "etth1-96-cfc", "seed": 0, "mse": 0.4}]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_results_file_that_is_not_a_list_is_a_clear_error(acc, tmp_path):
    bad = tmp_path / "acc.json"
    bad.write_text('{"row": 1}')
    with pytest.raises(SystemExit, match="JSON list"):
        acc.load_results(bad)
    bad.write_text("[{")
    with pytest.raises(SystemExit, match="not valid JSON"):
        acc.load_results(bad)


def test_table_shows_mean_and_std_beside_the_anchors(acc):
    records = [
        {"row": "etth1-96-cfc", "seed": 0, "mse": 0.40, "mae": 0.41, "epochs": 6, "seconds_per_epoch": 4.0},
        {"row": "etth1-96-cfc", "seed": 1, "mse": 0.42, "mae": 0.43, "epochs": 6, "seconds_per_epoch": 6.0},
        {"row": "physionet-cfc", "seed": 0, "mse": 5.5e-3, "mae": 4.0e-2, "epochs": 8, "seconds_per_epoch": 60.0},
        {
            "row": "physionet-cfc",
            "seed": 1,
            "mse": 6.5e-3,
            "mae": 5.0e-2,
            "epochs": 8,
            "seconds_per_epoch": 6.0,
            "ran_on": "a 16-core machine",
        },
    ]
    rows = [acc.ROWS[n] for n in ("etth1-96-cfc", "etth1-96-lstm", "physionet-cfc")]
    lines = acc.table(records, rows, markdown=True).splitlines()
    assert lines[2] == (
        "| etth1-96-cfc | 0,1 | 0.410 ± 0.014 | 0.420 ± 0.014 | 6 | here 5.0 | "
        "DLinear 0.386 / 0.400, SegRNN 0.368 / 0.395 |"
    )
    assert lines[3].startswith("| etth1-96-lstm | - | not run | not run | - | - |")
    assert lines[4].startswith(
        "| physionet-cfc | 0,1 | 6.00 ± 0.71 | 4.50 ± 0.71 | 8 | here 60.0; device 6.0 | "
        "VIMTS 4.81 / 3.54, t-PatchGNN 4.98"
    )
    plain = acc.table(records, rows)
    assert plain.splitlines()[0].split()[:4] == ["row", "seeds", "MSE", "MAE"]


def test_command_line_errors_name_the_argument(acc, capsys):
    with pytest.raises(SystemExit):
        acc.parse(["--row", "etth1-97-cfc"])
    assert "unknown row(s) ['etth1-97-cfc']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        acc.parse(["--all", "--stop-at", "25:00"])
    assert "--stop-at wants HH:MM" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        acc.parse([])
    assert "nothing to do" in capsys.readouterr().err
