"""MLflow with a real local tracking store (SQLite): a fit tracked from the CLI, a checkpoint exported as a pyfunc
model, registered, loaded and served (``mlflow models serve --env-manager local``); its forecasts are predict's."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import polars as pl
import pytest

from cfc_forecast.commands import main
from tests.deploy_support import assert_same_forecasts, deadline, fit_tiny, need  # noqa: F401

pytestmark = pytest.mark.usefixtures("deadline")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    need("mlflow")  # before the fit: a skip costs nothing
    return fit_tiny(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    need("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr("sys.argv", ["cfc-forecast"])
    monkeypatch.chdir(tmp_path)  # the SQLite store keeps artefacts in ./mlruns
    return uri


def test_a_fit_tracked_by_mlflow_from_the_cli_keeps_its_csv_log(trained, tracking, tmp_path):
    from mlflow.tracking import MlflowClient

    data = ["--data=SeriesDataModule", f"--data.path={trained['data']}", "--data.id_column=series",
            "--data.time_unit=s", "--data.observe=4", "--data.forecast=2", "--data.every=1",
            "--data.batch_size=16"]  # fmt: skip
    model = ["--model.hidden_size=8", "--model.backbone_units=16", "--model.query_cell_units=8"]
    logger = ["--trainer.logger=MLFlowLogger", f"--trainer.logger.init_args.tracking_uri={tracking}",
              "--trainer.logger.init_args.experiment_name=cfc-test"]  # fmt: skip
    run = tmp_path / "run"
    args = ["fit", *data, *model, *logger, "--trainer.max_epochs=2", "--test_after_fit=true", f"--run_dir={run}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]  # fmt: skip
    assert main(args) == 0
    client = MlflowClient(tracking)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("cfc-test").experiment_id])
    assert mlrun.data.params["hidden_size"] == "8"
    assert len(client.get_metric_history(mlrun.info.run_id, "val/loss")) == 2  # one at each epoch's end
    assert "test/mse" in mlrun.data.metrics
    logged = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"config.yaml", "run.json", "test_metrics.json", "test_forecasts.png"} <= logged
    csv = pl.read_csv(run / "metrics.csv")  # the CSV log stays
    assert csv["val/loss"].drop_nulls().len() == 2


def test_the_exported_model_registered_and_loaded_forecasts_as_predict_does(trained, tracking, capsys):
    import mlflow

    assert main(["export", f"--ckpt_path={trained['ckpt']}", "--format=mlflow", "--register=cfc-tiny"]) == 0
    assert "registered cfc-tiny version 1" in capsys.readouterr().out
    model = mlflow.pyfunc.load_model("models:/cfc-tiny/1")
    rows = pl.read_parquet(trained["data"])
    assert_same_forecasts(pl.from_pandas(model.predict(rows.to_pandas())), trained["predict"])
    # a polars frame goes to the model itself (pyfunc's schema check takes pandas)
    assert_same_forecasts(pl.from_pandas(model.unwrap_python_model().predict(None, rows)), trained["predict"])
    later = model.predict(rows.to_pandas(), params={"origins": ["20"], "query_times": ["1", "2"]})
    assert set(later["time"] - later["origin_time"]) == {1.0, 2.0}
    with pytest.raises(Exception, match="columns the model was trained on") as err:
        model.predict(rows.drop("x2").to_pandas())
    assert "Traceback" not in str(err.value)


def test_a_model_folder_has_no_pickled_model_and_pins_its_requirements(trained, tracking, tmp_path):
    import yaml

    assert main(["export", f"--ckpt_path={trained['ckpt']}", f"--output={tmp_path / 'model'}"]) == 0
    files = {p.relative_to(tmp_path / "model").as_posix() for p in (tmp_path / "model").rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    assert "code/cfc_forecast/forecast/rows.py" in files and "code/datamodules/io.py" in files
    spec = yaml.safe_load((tmp_path / "model" / "MLmodel").read_text())
    assert spec["flavors"]["python_function"]["model_code_path"].endswith("pyfunc_model.py")
    requirements = (tmp_path / "model" / "requirements.txt").read_text().split()
    assert any(r.startswith("torch==") for r in requirements) and any(r.startswith("polars==") for r in requirements)
    assert main(["export", f"--ckpt_path={trained['ckpt']}", f"--output={tmp_path / 'model'}"]) == 2  # exists


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def split(frame: pl.DataFrame) -> dict:
    """The ``dataframe_split`` body of a frame (missing values as JSON null)."""
    return {"columns": frame.columns, "data": [list(r) for r in frame.iter_rows()]}


@pytest.mark.slow
def test_mlflow_models_serve_answers_predicts_forecasts_over_http(trained, tracking, tmp_path):
    folder = tmp_path / "model"
    assert main(["export", f"--ckpt_path={trained['ckpt']}", f"--output={folder}"]) == 0
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            str(folder),
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],  # fmt: skip
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(180):
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                time.sleep(0.5)
        rows = pl.read_parquet(trained["data"])
        status, body = post(f"{url}/invocations", {"dataframe_split": split(rows)})
        assert status == 200, body
        served = pl.DataFrame(body["predictions"]).with_columns(pl.col("series").cast(pl.Int64))
        assert_same_forecasts(served.select(trained["predict"].columns), trained["predict"])
        status, body = post(f"{url}/invocations", {"dataframe_split": split(rows.drop("x2"))})
        assert status == 400
        assert "columns the model was trained on" in body["message"] and "'x2'" in body["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_export_errors_are_one_line_each(trained, tracking, tmp_path, capsys):
    assert main(["export", f"--ckpt_path={trained['ckpt']}"]) == 2
    assert main(["export", f"--ckpt_path={tmp_path / 'missing.ckpt'}", f"--output={tmp_path / 'm'}"]) == 2
    assert main(["export", f"--ckpt_path={trained['ckpt']}", "--format=onnx", f"--output={tmp_path / 'm'}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("cfc-forecast export: error: ") for line in lines), lines
    assert "--output DIR" in lines[0] and "missing.ckpt" in lines[1] and "--format" in lines[2]
    assert not (tmp_path / "m").exists()
