"""Speed of the CfC encoder against the reference implementations, measured side by side in one process.

Protocol (../shared/BENCHMARKS.md): batch 64, 96 steps, 7 features, 64 hidden units, backbone 1 x 128,
lecun_tanh, mode default, CPU with 2 threads; at this size also mixed memory (ncps wiring), ncps's LTC, and the wired
CfC (an AutoNCP wiring of 64 neurons, 16 motor neurons, seed 0; no backbone) against ncps's wired CfC, whose speed-up
column compares it with that ncps model. ncps's wired CfC runs without timespans (dt = 1): its forward slices them to
(B,), which does not broadcast against its layers' widths; ours reads the (B, T) elapsed times.
A training step is zero_grad + forward + MSE on the last state + backward; forward-only runs under
``torch.no_grad()``. Median over ``--reps`` (>= 20) after warm-up, the implementations taking turns in blocks; the
whole interleaved measurement runs ``--runs`` times (default 3) and the table shows the median of the runs' medians
(each run's medians are kept in the results). Our encoder runs with the weights of the ncps model. Also run: batch
256 with 1,024 steps. The results record the machine: the CPU model and vendor (lscpu), torch's BLAS and its
version, ``torch.backends.cpu.get_cpu_capability()`` and the threads.

    python benchmarks/speed.py                  # both configurations, prints the README table
    python benchmarks/speed.py --configs small  # only 64 x 96
    python benchmarks/speed.py --configs small --only AutoNCP  # only the wired rows

Results are appended to benchmarks/results/speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import cfc_forecast
from cfc_forecast import CfCEncoder, native_available
from cfc_forecast.core import native
from cfc_forecast.core.wired import WiredCfCEncoder

CONFIGS = {"small": (64, 96), "large": (256, 1024)}
F, H, UNITS = 7, 64, 128
RESULTS = Path(__file__).parent / "results" / "speed.json"
BASELINE = "ncps 1.0.1 CfC"
OWN = "cfc-forecast CfCEncoder (native loop, own small GEMM)"
WIRED = "cfc-forecast WiredCfCEncoder, AutoNCP(64, 16) (native loop, layer after layer)"
WIRED_PYTHON = "cfc-forecast WiredCfCEncoder, AutoNCP(64, 16) (pure-PyTorch loop)"
WIRED_NCPS = "ncps 1.0.1 CfC, AutoNCP(64, 16)"


def interleaved_medians(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int, block: int = 5
) -> dict[str, float]:
    """Median ms per function over ``reps`` timed calls.

    The functions take turns in blocks of ``block`` consecutive calls (each block after one untimed call), so
    a drift in the machine's speed hits all of them alike, while each still runs as in a real loop, back to
    back: turns of a single call would make every implementation pay for waking the thread pool that the
    previous one let fall asleep.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(-(-reps // block)):
        for name, fn in fns.items():
            fn()
            for _ in range(block):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def models(batch: int, steps: int, with_extras: bool) -> dict[str, tuple[nn.Module, Callable]]:
    """name -> (module, forward(x, dt) -> last state (B, H))."""
    from ncps.torch import LTC, CfC
    from ncps.wirings import AutoNCP

    ref = CfC(F, H, backbone_units=UNITS, backbone_layers=1)
    ours = CfCEncoder(F, H, backbone_units=UNITS, backbone_layers=1, impl="native", check_values=False)
    ours.load_ncps_state_dict(ref.state_dict())
    fallback = CfCEncoder(F, H, backbone_units=UNITS, backbone_layers=1, impl="python", check_values=False)
    fallback.load_ncps_state_dict(ref.state_dict())
    own = CfCEncoder(F, H, backbone_units=UNITS, backbone_layers=1, impl="native", check_values=False)
    own.load_ncps_state_dict(ref.state_dict())

    def own_gemm(x, dt):
        """The native loop with our own small GEMM (csrc/small_gemm.h) instead of torch's BLAS."""
        native.OWN_GEMM = True
        try:
            return own(x, dt)[1]
        finally:
            native.OWN_GEMM = False

    lstm = nn.LSTM(F, H, batch_first=True)
    # ncps 1.0.1 slices per-step times to (B,): expand them to (B, T, H) so the numbers are right (CFC.md)
    table = {
        "cfc-forecast CfCEncoder (native loop)": (ours, lambda x, dt: ours(x, dt)[1]),
        OWN: (own, own_gemm),
        "cfc-forecast CfCEncoder (pure-PyTorch fallback)": (fallback, lambda x, dt: fallback(x, dt)[1]),
        "ncps 1.0.1 CfC": (ref, lambda x, dt: ref(x, timespans=dt[..., None].expand(-1, -1, H))[1]),
        "torch.nn.LSTM": (lstm, lambda x, dt: lstm(x)[0][:, -1]),
    }
    if with_extras:  # mixed memory (ncps wiring) on both sides, same weights
        ref_mm = CfC(F, H, backbone_units=UNITS, backbone_layers=1, mixed_memory=True)
        ours_mm = CfCEncoder(F, H, backbone_units=UNITS, mixed_memory=True, impl="native", check_values=False)
        ours_mm.load_ncps_state_dict(ref_mm.state_dict())
        table["cfc-forecast CfCEncoder, mixed memory (native loop)"] = (ours_mm, lambda x, dt: ours_mm(x, dt)[1][0])
        table["ncps 1.0.1 CfC, mixed memory"] = (
            ref_mm,
            lambda x, dt: ref_mm(x, timespans=dt[..., None].expand(-1, -1, H))[1][0],
        )
        ltc = LTC(F, H)
        table["ncps 1.0.1 LTC (ODE solver, 6 unfolds)"] = (ltc, lambda x, dt: ltc(x, timespans=dt)[1])
        # the wired CfC: same wiring (masks) and weights on both sides; the output is the 16 motor neurons
        ref_w = CfC(F, AutoNCP(H, 16, seed=0))
        ours_w = WiredCfCEncoder(F, AutoNCP(H, 16, seed=0), impl="native", check_values=False)
        ours_w.load_ncps_state_dict(ref_w.state_dict())
        table[WIRED] = (ours_w, lambda x, dt: ours_w(x, dt)[0][:, -1])
        py_w = WiredCfCEncoder(F, AutoNCP(H, 16, seed=0), impl="python", check_values=False)
        py_w.load_ncps_state_dict(ref_w.state_dict())
        table[WIRED_PYTHON] = (py_w, lambda x, dt: py_w(x, dt)[0][:, -1])
        table[WIRED_NCPS] = (ref_w, lambda x, dt: ref_w(x)[0][:, -1])
    return table


def measure(batch: int, steps: int, reps: int, with_extras: bool, only: str | None = None) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(batch, steps, F)
    dt = torch.rand(batch, steps) + 0.5
    target = torch.randn(batch, H)
    train_steps, forwards = {}, {}
    for name, (module, forward) in models(batch, steps, with_extras).items():
        if only and only not in name:
            continue

        def train_step(module=module, forward=forward):
            module.zero_grad(set_to_none=True)
            out = forward(x, dt)  # (B, H), or (B, 16) motor neurons of the wired CfC
            nn.functional.mse_loss(out, target[:, : out.shape[1]]).backward()

        def forward_only(forward=forward):
            with torch.no_grad():
                forward(x, dt)

        train_steps[name], forwards[name] = train_step, forward_only
    train = interleaved_medians(train_steps, reps, warmup=3)
    fwd = interleaved_medians(forwards, reps, warmup=3)
    rows = []
    for name in train_steps:
        rows.append({"implementation": name, "batch": batch, "steps": steps, "train_ms": train[name],
                     "forward_ms": fwd[name]})  # fmt: skip
        print(f"  {name}: train {train[name]:.2f} ms, forward {fwd[name]:.2f} ms", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """The README table: speed-ups against ncps's CfC (the wired rows: against ncps's wired CfC) and the LSTM."""
    by = {(r["batch"], r["steps"], r["implementation"]): r for r in rows}

    def ratio(a: dict | None, b: dict | None, key: str) -> str:
        return f"{a[key] / b[key]:.2f}x" if a and b else "–"

    lines = [
        "| batch x steps | implementation | training step (ms) | forward (ms) | train speed-up vs ncps CfC "
        "| forward speed-up vs ncps CfC | train time / LSTM's |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        key = (r["batch"], r["steps"])
        ref = by.get((*key, WIRED_NCPS if "AutoNCP" in r["implementation"] else BASELINE))
        lstm = by.get((*key, "torch.nn.LSTM"))
        lines.append(
            f"| {r['batch']} x {r['steps']} | {r['implementation']} | {r['train_ms']:.1f} | {r['forward_ms']:.1f} "
            f"| {ratio(ref, r, 'train_ms')} | {ratio(ref, r, 'forward_ms')} | {ratio(r, lstm, 'train_ms')} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, str]:
    """The CPU (lscpu's model name and vendor), torch's BLAS and its version, and the ISA path torch dispatches to."""
    info = {"cpu": platform.processor() or platform.machine(), "cpu_vendor": "", "blas": "", "blas_version": ""}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    for key, field in (("Model name", "cpu"), ("Vendor ID", "cpu_vendor")):
        if m := re.search(rf"^{key}:\s*(.+)$", lscpu, re.M):
            info[field] = m.group(1).strip()
    config = torch.__config__.show()
    if m := re.search(r"BLAS_INFO=(\w+)", config):
        info["blas"] = m.group(1)
    if m := re.search(r"^\s*- (.*(?:Math Kernel Library|OpenBLAS|BLIS|Accelerate).*)$", config, re.M):
        info["blas_version"] = m.group(1).strip()
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def median_of_runs(runs: list[list[dict]]) -> list[dict]:
    """Per implementation, the median over runs of each run's median (train and forward separately)."""
    rows = []
    for i, first in enumerate(runs[0]):
        row = dict(first)
        for key in ("train_ms", "forward_ms"):
            row[f"{key}_runs"] = [run[i][key] for run in runs]
            row[key] = statistics.median(row[f"{key}_runs"])
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["small", "large"])
    parser.add_argument("--reps", type=int, default=25, help="timed repetitions per row (>= 20)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="whole interleaved measurements; the table: their median")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip ncps LTC (seconds per step), mixed memory and the wired CfC")  # fmt: skip
    parser.add_argument("--only", help="only the rows whose implementation contains this text, e.g. AutoNCP")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not native_available():
        raise SystemExit("the native CfC loop did not build; see the warning above")
    rows = []
    for cfg in args.configs:
        batch, steps = CONFIGS[cfg]
        print(f"batch {batch}, {steps} steps:", flush=True)
        # LTC at 256 x 1024 needs minutes per step and tens of GB: it, mixed memory and the wired CfC run at the
        # small size only
        extras = not args.no_extras and cfg == "small"
        runs = []
        for run in range(max(1, args.runs)):
            print(f" run {run + 1} of {args.runs}:", flush=True)
            runs.append(measure(batch, steps, max(20, args.reps), extras, args.only))
        rows += median_of_runs(runs)
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cfc_forecast": cfc_forecast.__version__,
        "threads": args.threads,
        "runs": args.runs,
        **machine(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    history = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    history.append({"meta": meta, "rows": rows})
    RESULTS.write_text(json.dumps(history, indent=1))
    print(f"\n{meta}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
