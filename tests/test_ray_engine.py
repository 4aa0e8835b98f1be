"""``cfc-forecast forecast --engine ray`` on a real local Ray cluster (2 CPUs): the single-machine job's forecasts,
part for part; no series lost or duplicated; an actor killed on its first chunk retried by the engine; resumable.

The pool is one 1-CPU actor beside a free CPU: two 1-CPU actors on 2 CPUs starve the read tasks (the job waits
forever without an error), so every test here also has a 120 s deadline. The cluster's tests are slow (CI runs them).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import polars as pl
import pytest

from cfc_forecast.forecast import main
from cfc_forecast.forecast.engine import ChunkWorker
from tests.deploy_support import ROOT, assert_same_forecasts, deadline, fit_tiny, need  # noqa: F401

pytestmark = pytest.mark.usefixtures("deadline")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    need("ray.data")  # before the fit: a skip costs nothing
    return fit_tiny(tmp_path_factory.mktemp("ray-job"))


@pytest.fixture(scope="module")
def ray_cluster():
    ray = need("ray")
    need("ray.data")
    # the workers import the test's actor class (tests.test_ray_engine) and this tree's cfc_forecast
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def job(trained, out: Path, *extra: str, data: Path | None = None) -> int:
    args = ["--ckpt_path", str(trained["ckpt"]), "--input", str(data or trained["data"]), "--output", str(out)]
    return main([*args, "--progress=false", "--chunk_size=5", *extra])


def parts(out: Path) -> dict[str, pl.DataFrame]:
    return {p.name: pl.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))}


@pytest.mark.slow  # a Ray cluster: about 40 s each on 2 cores; CI runs them
def test_the_ray_job_equals_the_single_machine_job_part_for_part(trained, ray_cluster, tmp_path):
    # rows of the series interleaved: the engine must group them itself
    shuffled = pl.read_parquet(trained["data"]).sample(fraction=1.0, shuffle=True, seed=0)
    shuffled.write_parquet(tmp_path / "shuffled.parquet")
    assert job(trained, tmp_path / "local", data=tmp_path / "shuffled.parquet") == 0
    ray_args = ["--engine=ray", "--workers=1", "--cpus_per_worker=1"]
    assert job(trained, tmp_path / "ray", *ray_args, data=tmp_path / "shuffled.parquet") == 0
    local, distributed = parts(tmp_path / "local"), parts(tmp_path / "ray")
    assert list(distributed) == list(local) == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    for name in local:
        assert_same_forecasts(distributed[name], local[name])
    every = pl.concat(distributed.values())
    assert_same_forecasts(every, trained["predict"])  # every series once: none lost, none twice
    assert every["series"].n_unique() == 12
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["finished"] and manifest["summary"]["series_forecast"] == 12
    assert not (tmp_path / "ray" / ".work").exists()


class DiesOnce(ChunkWorker):
    """Kills its own process (SIGKILL) on its first chunk, once per job (a flag file beside the output)."""

    def __call__(self, table):
        flag = self.out.path.with_name(self.out.path.name + ".killed")
        if not flag.exists():
            flag.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(table)


@pytest.mark.slow  # a Ray cluster: about 40 s each on 2 cores; CI runs them
def test_an_actor_killed_on_its_first_chunk_is_retried_and_nothing_is_duplicated(trained, ray_cluster, tmp_path):
    from cfc_forecast.forecast.engine import RayForecastJob
    from cfc_forecast.forecast.prepare import Options

    out = tmp_path / "out"
    ray_job = RayForecastJob(str(trained["ckpt"]), str(trained["data"]), str(out), Options(), 5, 256, {}, False,
                             workers=1, worker=DiesOnce)  # fmt: skip
    assert ray_job.run().status == 0
    assert (tmp_path / "out.killed").is_file()  # the actor did die
    every = pl.concat(parts(tmp_path / "out").values())
    assert_same_forecasts(every, trained["predict"])


@pytest.mark.slow  # a Ray cluster: about 40 s each on 2 cores; CI runs them
def test_a_job_stopped_midway_is_finished_by_the_ray_engine(trained, ray_cluster, tmp_path, monkeypatch):
    from cfc_forecast.forecast.store import OutputFolder

    write = OutputFolder.write_chunk

    def stop_at_chunk_1(self, k, frame, record):
        if k == 1:
            raise KeyboardInterrupt("stopped")
        write(self, k, frame, record)

    monkeypatch.setattr(OutputFolder, "write_chunk", stop_at_chunk_1)
    with pytest.raises(KeyboardInterrupt):
        job(trained, tmp_path / "out")  # the single-machine job wrote chunk 0
    monkeypatch.setattr(OutputFolder, "write_chunk", write)
    chunk_0 = (tmp_path / "out" / "part-000000.parquet").stat().st_mtime_ns
    assert job(trained, tmp_path / "out", "--engine=ray", "--workers=1") == 0
    assert (tmp_path / "out" / "part-000000.parquet").stat().st_mtime_ns == chunk_0  # done: not redone
    assert_same_forecasts(pl.concat(parts(tmp_path / "out").values()), trained["predict"])


def test_csv_input_is_refused_in_one_line(trained, tmp_path, capsys):
    need("ray")
    pl.read_parquet(trained["data"]).write_csv(tmp_path / "series.csv")
    assert job(trained, tmp_path / "out", "--engine=ray", data=tmp_path / "series.csv") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--engine ray reads Parquet" in err
    assert not (tmp_path / "out").exists()
