"""What the per-step matmuls of the native CPU loop cost on this machine, and which code path the BLAS takes.

The raw CPU loop (cfc_forecast/core/csrc/raw_loop.h) calls torch's BLAS (MKL's ``sgemm_`` in torch's CPU build)
six times per step for the benchmark model (7 features, 64 units, backbone 1 x 128, lecun_tanh, batch 64 or 256):
two in the forward, four in the backward. This script times each of those shapes as T = 96 matmuls in one batched call
(``torch.bmm`` into a preallocated output: MKL's batched GEMM, no Python per matmul), so its time per matmul is close
to what the loop pays per step; it sums them into the GEMM time of one training step and sets that beside the native
loop's measured training step (median of ``--reps``). It also records the code path MKL picks on this CPU
(``MKL_VERBOSE=1``: the ISA it names), torch's BLAS and version, the CPU model and the threads.

    python benchmarks/gemm_cost.py              # 2 threads: a table; appends to benchmarks/results/gemm_cost.json
    python benchmarks/gemm_cost.py --threads 1

On a loaded machine the numbers are indicative only; say so beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.speed import UNITS, F, H, interleaved_medians, machine  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "gemm_cost.json"


def step_gemms(batch: int) -> dict[str, tuple[int, int, int]]:
    """The raw loop's per-step matmuls (M, K, N) at this batch (feature-major: C (M, N) = A (M, K) X (K, N))."""
    u, h, nh = UNITS, H, 4 * H
    return {
        "forward: backbone  w_rec (U x H) @ h (H x B)": (u, h, batch),
        "forward: heads     w_head (4H x U) @ z (U x B)": (nh, u, batch),
        "backward: d w_head += d_heads (4H x B) @ z^T (B x U)": (nh, batch, u),
        "backward: d z = w_head^T (U x 4H) @ d_heads (4H x B)": (u, nh, batch),
        "backward: d w_rec += d_pre (U x B) @ h^T (B x H)": (u, batch, h),
        "backward: carry += w_rec^T (H x U) @ d_pre (U x B)": (h, u, batch),
    }


def time_batched(m: int, k: int, n: int, steps: int, reps: int) -> float:
    """Median seconds per matmul of ``steps`` (M, K) @ (K, N) float32 matmuls in one torch.bmm call."""
    a, x = torch.randn(steps, m, k), torch.randn(steps, k, n)
    out = torch.empty(steps, m, n)
    for _ in range(3):
        torch.bmm(a, x, out=out)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.bmm(a, x, out=out)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / steps


def mkl_code_path() -> str:
    """The first line MKL_VERBOSE prints for one sgemm in a fresh process: it names the ISA path MKL dispatched."""
    code = "import torch; torch.mm(torch.randn(64, 64), torch.randn(64, 64))"
    env = {**os.environ, "MKL_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.startswith("MKL_VERBOSE")]
    return lines[0] if lines else "(MKL_VERBOSE printed nothing: not MKL, or a build without verbose mode)"


def native_train_ms(batch: int, steps: int, reps: int) -> float:
    """The native loop's training step (ms, median), the protocol of benchmarks/speed.py."""
    from cfc_forecast import CfCEncoder

    torch.manual_seed(0)
    enc = CfCEncoder(F, H, backbone_units=UNITS, impl="native", check_values=False)
    x, dt, target = torch.randn(batch, steps, F), torch.rand(batch, steps) + 0.5, torch.randn(batch, H)

    def step():
        enc.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(enc(x, dt)[1], target).backward()

    return interleaved_medians({"native": step}, reps, warmup=3)["native"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=96)
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--loaded", action="store_true", help="record that the machine was busy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak_note = "GFLOP/s per matmul shape; the step's GEMM ms = the six shapes' time x steps"
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": args.threads,
        "machine_loaded": args.loaded,
        **machine(),
        "mkl_code_path": mkl_code_path(),
        "note": peak_note,
        "configs": [],
    }
    print({k: v for k, v in report.items() if k != "configs"}, flush=True)
    for batch in args.batch:
        rows, total = [], 0.0
        for name, (m, k, n) in step_gemms(batch).items():
            seconds = time_batched(m, k, n, args.steps, args.reps)
            total += seconds
            rows.append({"gemm": name, "m": m, "k": k, "n": n, "us": seconds * 1e6,
                         "gflops": 2 * m * k * n / seconds / 1e9})  # fmt: skip
        train_ms = native_train_ms(batch, args.steps, args.reps)
        gemm_ms = total * args.steps * 1e3
        cfg = {"batch": batch, "steps": args.steps, "gemms": rows, "gemm_ms_per_train_step": gemm_ms,
               "native_train_ms": train_ms, "gemm_share": gemm_ms / train_ms}  # fmt: skip
        report["configs"].append(cfg)
        print(f"\nbatch {batch} x {args.steps} steps, {args.threads} threads:")
        print("| per-step matmul | M x K x N | us | GFLOP/s |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['gemm']} | {r['m']} x {r['k']} x {r['n']} | {r['us']:.1f} | {r['gflops']:.0f} |")
        print(f"GEMMs per training step: {gemm_ms:.1f} ms of the native loop's {train_ms:.1f} ms "
              f"({100 * gemm_ms / train_ms:.0f}%)", flush=True)  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    history = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    history.append(report)
    RESULTS.write_text(json.dumps(history, indent=1))


if __name__ == "__main__":
    main()
