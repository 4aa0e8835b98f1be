"""Batch forecasting job: end-to-end series/s against the bare model forward, and peak memory as the input grows.

    nice -n 10 python benchmarks/forecast_job.py            # 10,000 and 100,000 series (about 8 min on 2 cores)
    python benchmarks/forecast_job.py --sizes 2000 --repeats 1   # a quick look
    python benchmarks/forecast_job.py --engine ray --sizes 100000 --repeats 1   # Ray Data against the local job

A model with the quickstart's architecture (CfC 64 units, backbone 128, continuous head, RevIN) is fitted for an
epoch on synthetic series (speed does not depend on how well it is trained); then synthetic irregular series
(files of 10,000 series, ~40 time stamps over 30 time units, 3 variables, 25 % missing) are forecast by
``cfc-forecast forecast`` in a fresh process (its peak RSS is that process's ``ru_maxrss``). The bare forward is
``model(batch)`` on the very batches the job builds (same chunks, same windows, same batch size), prepared
beforehand and timed alone, in another fresh process. Job and forward take turns ``--repeats`` times and the best
of each counts, in wall time and in CPU time (this machine is shared: other jobs only ever add time, and CPU time
is what they disturb least). Results are appended to ``benchmarks/results/forecast_job.json``; a table is printed.

``--engine ray``: the same job with ``--engine ray`` (a local Ray cluster started by the job on this machine's
CPUs, the default pool of CPUs - 1 one-CPU actors) against the single-machine job, taking turns; results go to
``benchmarks/results/forecast_job_ray.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "forecast_job.json"
FILE_SERIES = 10_000
MODEL = ["--model.hidden_size=64", "--model.backbone_units=128", "--model.append_delta=true", "--model.revin=true",
         "--model.head=continuous", "--model.head_hidden_sizes=[128]", "--model.query_cell_units=64"]  # fmt: skip


def make_input(folder: Path, n_series: int) -> Path:
    """``n_series`` synthetic series in Parquet files of 10,000 series each (ids unique across files)."""
    from datamodules.synthetic import synthetic_frame

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(-(-n_series // FILE_SERIES)):
        path = folder / f"part-{i:03d}.parquet"
        if not path.exists():
            n = min(FILE_SERIES, n_series - i * FILE_SERIES)
            frame = synthetic_frame(n, mean_observations=40, duration=30.0, seed=100 + i)
            frame.with_columns(pl.col("series") + i * FILE_SERIES).write_parquet(path)
    return folder


def fit_model(work: Path, epochs: int, threads: int) -> Path:
    """A checkpoint of the quickstart architecture, fitted for ``epochs`` on 512 longer synthetic series."""
    ckpt = work / "run" / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        return ckpt
    work.mkdir(parents=True, exist_ok=True)
    train = work / "train.parquet"
    from datamodules.synthetic import synthetic_frame

    synthetic_frame(512, mean_observations=130, duration=100.0, seed=0).write_parquet(train)  # the same spacing
    args = ["fit", "--data=SeriesDataModule", f"--data.path={train}", "--data.id_column=series",
            "--data.time_unit=s", "--data.observe=20", "--data.forecast=5", "--data.every=5", *MODEL,
            f"--trainer.max_epochs={epochs}", "--trainer.enable_progress_bar=false",
            f"--run_dir={work / 'run'}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "cfc_forecast.commands", *args]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return ckpt


def child_job(ckpt: str, data: str, out: str, chunk_size: int, batch_size: int, engine: str = "local") -> dict:
    """Run the job in this (fresh) process; its wall time and this process's peak RSS."""
    from cfc_forecast.forecast import main

    start, cpu = time.perf_counter(), time.process_time()
    status = main(["--ckpt_path", ckpt, "--input", data, "--output", out, f"--chunk_size={chunk_size}",
                   f"--batch_size={batch_size}", "--accelerator=cpu", "--progress=false",
                   f"--engine={engine}"])  # fmt: skip
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    manifest = json.loads((Path(out) / "manifest.json").read_text())["summary"]
    shutil.rmtree(out)
    return {"status": status, "seconds": seconds, "cpu_seconds": cpu, "series_forecast": manifest["series_forecast"],
            "rows_written": manifest["rows_written"], "peak_rss_mb": _peak_rss_mb()}  # fmt: skip


def child_forward(ckpt: str, data: str, chunk_size: int, batch_size: int) -> dict:
    """The same batches as the job's, built beforehand; time ``model(batch)`` alone over all of them."""
    from torch.utils.data import DataLoader

    from cfc_forecast.forecast.prepare import Options, prepare
    from cfc_forecast.forecast.source import ChunkReader, input_files, plan, scan
    from cfc_forecast.forecast.trained import read_checkpoint
    from cfc_forecast.forecaster.module import ForecastModule

    _, trained = read_checkpoint(ckpt)
    lf, _, sliceable = scan(input_files(data), trained)
    the_plan = plan(lf, trained, chunk_size)
    reader = ChunkReader(lf, sliceable, trained, the_plan, Path(data).parent / f"spill-{Path(data).name}-{chunk_size}")
    reader.prepare()
    model = ForecastModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    seconds, cpu, windows = 0.0, 0.0, 0
    for k in range(the_plan.n_chunks):
        ds = prepare(reader.read(k), trained, Options()).dataset
        batches = list(DataLoader(ds, batch_size=batch_size, collate_fn=ds.collate))
        windows += len(ds)
        with torch.inference_mode():
            model(batches[0])  # warm-up (the native loop's buffers)
            start, cpu_start = time.perf_counter(), time.process_time()
            for batch in batches:
                model(batch)
            seconds, cpu = seconds + time.perf_counter() - start, cpu + time.process_time() - cpu_start
    return {"seconds": seconds, "cpu_seconds": cpu, "windows": windows}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _in_child(kind: str, threads: int, **kwargs) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--child_args", json.dumps(kwargs), "--threads", str(threads)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def append(result: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    runs.append(result)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(runs, indent=2) + "\n")
    os.replace(tmp, RESULTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--chunk_size", type=int, default=10_000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--fit_epochs", type=int, default=1)
    # one intra-op thread by default: on this shared 2-core machine, often loaded by other jobs, OpenMP's
    # two-thread kernels wait on each other and a forward pass becomes up to 40x slower (measured)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="job and forward take turns this many times")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "cfc-forecast-job-bench")
    parser.add_argument("--engine", choices=["local", "ray"], default="local", help="ray: Ray job against local job")
    parser.add_argument("--child", choices=["job", "forward"])
    parser.add_argument("--child_args", default="{}")
    args = parser.parse_args()
    if args.child:
        torch.set_num_threads(args.threads)
        fn = child_job if args.child == "job" else child_forward
        print(json.dumps(fn(**json.loads(args.child_args))))
        return
    ckpt = str(fit_model(args.work, args.fit_epochs, args.threads))
    if args.engine == "ray":
        ray_rows = [measure_ray(n, ckpt, args) for n in args.sizes]
        print("\n| series | local job (s) | series/s, local | Ray job (s) | series/s, Ray | Ray / local |")
        print("|---|---|---|---|---|---|")
        for r in ray_rows:
            print(f"| {r['series']:,} | {r['local_seconds']:.1f} | {r['series_per_s_local']:,.0f} | "
                  f"{r['ray_seconds']:.1f} | {r['series_per_s_ray']:,.0f} | {r['ray_over_local']:.2f}x |")  # fmt: skip
        return
    rows = [measure(n, ckpt, args) for n in args.sizes]
    print(
        "\n| series | job (s) | job CPU (s) | series/s, job | bare forward (s) | forward CPU (s) | series/s, forward "
        "| job / forward (wall, CPU) | peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['series']:,} | {r['job_seconds']:.1f} | {r['job_cpu_seconds']:.1f} | {r['series_per_s_job']:,.0f} "
            f"| {r['forward_seconds']:.1f} | {r['forward_cpu_seconds']:.1f} | {r['series_per_s_forward']:,.0f} "
            f"| {r['job_over_forward']:.2f}x, {r['job_over_forward_cpu']:.2f}x | {r['peak_rss_mb']:.0f} |"
        )
    if len(rows) > 1:
        ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
        print(f"peak RSS {rows[-1]['series']:,} / {rows[0]['series']:,} series: {ratio:.2f}x")


def measure(n: int, ckpt: str, args: argparse.Namespace) -> dict:
    """Job and bare forward on ``n`` series, taking turns ``repeats`` times (the best of each: this machine is
    shared, and other jobs only ever add time); the result is appended to the results file."""
    data = str(make_input(args.work / f"input-{n}", n))
    common = dict(ckpt=ckpt, data=data, chunk_size=args.chunk_size, batch_size=args.batch_size, threads=args.threads)
    jobs, forwards = [], []
    for _ in range(args.repeats):
        jobs.append(_in_child("job", out=str(args.work / f"out-{n}-{time.time_ns()}"), **common))
        forwards.append(_in_child("forward", **common))
    job, forward = min(jobs, key=lambda r: r["seconds"]), min(forwards, key=lambda r: r["seconds"])
    job_cpu, forward_cpu = min(r["cpu_seconds"] for r in jobs), min(r["cpu_seconds"] for r in forwards)
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "series": n, "chunk_size": args.chunk_size,
        "batch_size": args.batch_size, "repeats": args.repeats,
        "job_seconds": round(job["seconds"], 3), "job_cpu_seconds": round(job_cpu, 3),
        "forward_seconds": round(forward["seconds"], 3), "forward_cpu_seconds": round(forward_cpu, 3),
        "series_per_s_job": round(job["series_forecast"] / job["seconds"], 1),
        "series_per_s_forward": round(forward["windows"] / forward["seconds"], 1),
        "job_over_forward": round(job["seconds"] / forward["seconds"], 3),
        "job_over_forward_cpu": round(job_cpu / forward_cpu, 3),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in jobs), 1), "rows_written": job["rows_written"],
        "series_forecast": job["series_forecast"], "torch": torch.__version__, "threads": args.threads,
        "cpu": platform.machine(), "load_average_1min": round(os.getloadavg()[0], 2),
    }  # fmt: skip
    append(result)
    print(json.dumps(result), flush=True)
    return result


def measure_ray(n: int, ckpt: str, args: argparse.Namespace) -> dict:
    """The local job and the Ray job on ``n`` series, taking turns ``repeats`` times (the best of each)."""
    data = str(make_input(args.work / f"input-{n}", n))
    common = dict(ckpt=ckpt, data=data, chunk_size=args.chunk_size, batch_size=args.batch_size, threads=args.threads)
    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    for _ in range(args.repeats):
        for engine in runs:
            out = str(args.work / f"out-{engine}-{n}-{time.time_ns()}")
            runs[engine].append(_in_child("job", out=out, engine=engine, **common))
    local, ray = (min(runs[e], key=lambda r: r["seconds"]) for e in ("local", "ray"))
    assert local["rows_written"] == ray["rows_written"] and ray["series_forecast"] == n
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "series": n, "chunk_size": args.chunk_size,
        "batch_size": args.batch_size, "repeats": args.repeats, "local_seconds": round(local["seconds"], 3),
        "ray_seconds": round(ray["seconds"], 3), "series_per_s_local": round(n / local["seconds"], 1),
        "series_per_s_ray": round(n / ray["seconds"], 1), "ray_over_local": round(ray["seconds"] / local["seconds"], 3),
        "rows_written": ray["rows_written"], "cpus": os.cpu_count(), "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }  # fmt: skip
    path = RESULTS.with_name("forecast_job_ray.json")
    runs_so_far = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*runs_so_far, result], indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
