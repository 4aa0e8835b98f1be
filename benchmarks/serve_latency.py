"""Latency of an exported model under ``mlflow models serve``: cold (a fresh server's first request) and warm.

    python benchmarks/serve_latency.py                      # 1 and 100 series, 20 warm requests each

The model is the one ``benchmarks/forecast_job.py`` fits (the quickstart's architecture, shared work folder),
exported with ``cfc-forecast export --format mlflow``; the rows are its synthetic series (about 40 time stamps
each). For each size a fresh ``mlflow models serve --env-manager local`` (one worker) is started; ``cold`` is its
first request once ``/ping`` answers (``load_context`` has then loaded the model and forecast the input example),
``warm`` the median of the next ``--requests``. Wall time per request over HTTP on localhost, JSON both ways.
Results are appended to ``benchmarks/results/serve_latency.json``; a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from forecast_job import fit_model, make_input  # noqa: E402

RESULTS = HERE / "results" / "serve_latency.json"


def post(url: str, body: bytes) -> float:
    start = time.perf_counter()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
        assert response.status == 200
    return time.perf_counter() - start


def serve(model: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model), "--env-manager", "local",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return server, url
        except OSError:
            if server.poll() is not None:
                raise RuntimeError("mlflow models serve exited") from None
            time.sleep(0.2)
    raise RuntimeError("mlflow models serve did not answer /ping")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "cfc-forecast-job-bench")
    args = parser.parse_args()
    from cfc_forecast.export import export

    ckpt = fit_model(args.work, 1, 1)
    rows = pl.read_parquet(make_input(args.work / "input-10000", 10_000) / "part-000.parquet")
    model = args.work / "serve-model"
    shutil.rmtree(model, ignore_errors=True)
    example = args.work / "example.parquet"
    rows.filter(pl.col("series") < 2).write_parquet(example)
    assert export(str(ckpt), output=str(model), input_example=str(example)) == 0
    table = []
    for n in args.sizes:
        frame = rows.filter(pl.col("series") < n)
        body = json.dumps({"dataframe_split": {"columns": frame.columns, "data": [list(r) for r in frame.iter_rows()]}})
        server, url = serve(model)
        try:
            cold = post(f"{url}/invocations", body.encode())
            warm = [post(f"{url}/invocations", body.encode()) for _ in range(args.requests)]
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        table.append({"series": n, "rows": frame.height, "cold_ms": round(cold * 1000, 1),
                      "warm_median_ms": round(statistics.median(warm) * 1000, 1),
                      "warm_max_ms": round(max(warm) * 1000, 1)})  # fmt: skip
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "requests": args.requests,
              "load_average_1min": round(os.getloadavg()[0], 2), "sizes": table}  # fmt: skip
    runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps([*runs, result], indent=2) + "\n")
    print("\n| series | rows | cold (ms) | warm, median (ms) | warm, max (ms) |\n|---|---|---|---|---|")
    for r in table:
        print(f"| {r['series']} | {r['rows']} | {r['cold_ms']} | {r['warm_median_ms']} | {r['warm_max_ms']} |")
    print(f"load average (1 min) at the end: {result['load_average_1min']}")


if __name__ == "__main__":
    main()
