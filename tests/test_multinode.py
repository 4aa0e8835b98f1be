"""Multi-node training from the CLI: ``torchrun`` on each node, ``--trainer.num_nodes``; one run folder, one writer.

The run folder, its lock and its records key on the global rank (``cfc_forecast.runs.is_global_zero``): with
``LOCAL_RANK`` alone the first process of every node was a rank 0 (two nodes: two run folders, or two writers
fighting over one). Two "nodes" here are two torchrun processes on this machine (gloo, 127.0.0.1).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from cfc_forecast.errors import UserError
from cfc_forecast.runs import RUN_DIR_ENV, is_global_zero, new_run_dir
from datamodules.synthetic import synthetic_frame
from tests.deploy_support import ROOT

LAUNCH_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", RUN_DIR_ENV)


@pytest.fixture
def launcher_env(monkeypatch):
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "zero"),
    [
        ({}, True),
        ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, True),
        ({"RANK": "1", "LOCAL_RANK": "0", "GROUP_RANK": "1"}, False),  # torchrun, the second node's first process
        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False),  # Lightning's launcher on the second node
        ({"NODE_RANK": "0", "LOCAL_RANK": "1"}, False),
        ({"GROUP_RANK": "1", "LOCAL_RANK": "0"}, False),
    ],
)
def test_rank_zero_is_the_global_one(launcher_env, env, zero):
    for name, value in env.items():
        launcher_env.setenv(name, value)
    assert is_global_zero() is zero


def test_processes_of_an_outside_launcher_must_share_a_run_dir(launcher_env, tmp_path):
    launcher_env.setenv("WORLD_SIZE", "2")
    launcher_env.setenv("RANK", "1")
    with pytest.raises(UserError, match="same --run_dir"):
        new_run_dir(tmp_path, "fit")
    launcher_env.setenv(RUN_DIR_ENV, str(tmp_path / "from-rank-0"))  # Lightning's own children inherit it
    assert new_run_dir(tmp_path, "fit") == tmp_path / "from-rank-0"
    assert list(tmp_path.iterdir()) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_write_one_run_folder(tmp_path):
    data = tmp_path / "series.parquet"
    synthetic_frame(16, 60, 40.0, seed=1).write_parquet(data)
    run = tmp_path / "run"
    fit = ["-m", "cfc_forecast.commands", "fit", "--data=SeriesDataModule", f"--data.path={data}",
           "--data.id_column=series", "--data.time_unit=s", "--data.observe=4", "--data.forecast=2",
           "--data.every=2", "--data.batch_size=64", "--model.hidden_size=8", "--model.backbone_units=16",
           "--model.query_cell_units=8", "--model.impl=python", "--trainer.max_epochs=1",
           "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=2", "--trainer.strategy=ddp",
           "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
           f"--runs_root={tmp_path / 'runs'}", f"--run_dir={run}"]  # fmt: skip
    port = str(free_port())
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    for name in LAUNCH_ENV:
        env.pop(name, None)
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node_rank={r}",
                "--nproc_per_node=1",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                *fit,
            ],  # fmt: skip
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in nodes]
    finally:
        for p in nodes:
            p.kill()
    assert [p.returncode for p in nodes] == [0, 0], outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "series.parquet"]  # no second folder, no runs/
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    history = json.loads((run / "run.json").read_text())["history"]
    assert len(history) == 1  # one writer recorded the command
    assert not list(run.glob("config.*.yaml"))  # no second process saved a config over the first one's
    assert (run / "metrics.csv").is_file()
