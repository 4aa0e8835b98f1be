"""One-shot check on a CUDA machine: the CfC encoder's numbers and speed on the GPU, and the forecaster training there.

1. Correctness on CUDA: our encoder (native loop with the device-generic ATen kernels, and the pure-PyTorch loop)
   against ncps 1.0.1 with the same weights, and against our float64 CPU loop; outputs and parameter gradients.
2. Speed on CUDA, the protocol of benchmarks/speed.py (batch 64 x 96 steps and 256 x 1,024; 7 features, 64 units,
   backbone 1 x 128): training step and forward, median over interleaved blocks, synchronised; ncps and cuDNN's
   LSTM beside ours.
3. ``cfc-forecast fit`` of configs/quickstart.yaml on one GPU, then the same under ``--trainer.strategy=ddp`` on
   one GPU (NCCL), with their test metrics.

    python benchmarks/gpu_check.py --out DIR    # writes gpu_check.json and the fits' logs to DIR

Nothing in the test suite depends on this; it is run by hand when a GPU machine is at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.speed import CONFIGS, UNITS, F, H  # noqa: E402
from cfc_forecast import CfCEncoder  # noqa: E402
from cfc_forecast.native import native_available, native_status  # noqa: E402


def cuda_medians(fns: dict, reps: int, warmup: int = 3, block: int = 5) -> dict[str, float]:
    """Median ms per call, the functions taking turns in blocks, each call timed with a device synchronisation."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(-(-reps // block)):
        for name, fn in fns.items():
            for _ in range(block):
                torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] * 1e3 for name, t in times.items()}


def correctness(dev: torch.device) -> dict:
    from ncps.torch import CfC

    out = {}
    for mode in ("default", "no_gate", "pure"):
        for mixed in (False, True):
            torch.manual_seed(0)
            ref = CfC(F, H, mode=mode, backbone_units=UNITS, backbone_layers=1, mixed_memory=mixed).to(dev)
            x = torch.randn(16, 50, F, device=dev)
            dt = torch.rand(16, 50, device=dev) + 0.5
            ref_states, _ = ref(x, timespans=dt[..., None].expand(-1, -1, H))
            row = {}
            for impl in ("native", "python"):
                enc = CfCEncoder(F, H, mode=mode, backbone_units=UNITS, mixed_memory=mixed, impl=impl).to(dev)
                enc.load_ncps_state_dict(ref.state_dict())
                states, _ = enc(x, dt)
                row[f"{impl}_vs_ncps_max_abs"] = float((states - ref_states).abs().max())
                # gradients against our float64 loop on the CPU
                cpu64 = CfCEncoder(F, H, mode=mode, backbone_units=UNITS, mixed_memory=mixed, impl="python").double()
                cpu64.load_state_dict({k: v.double().cpu() for k, v in enc.state_dict().items()})
                states.square().mean().backward()
                s64, _ = cpu64(x.double().cpu(), dt.double().cpu())
                s64.square().mean().backward()
                row[f"{impl}_vs_float64_states_max_abs"] = float((states.double().cpu() - s64).abs().max())
                row[f"{impl}_vs_float64_grad_max_rel"] = max(
                    float((p.grad.double().cpu() - q.grad).abs().max() / q.grad.abs().max().clamp(min=1e-12))
                    for p, q in zip(enc.parameters(), cpu64.parameters(), strict=True)
                )
            out[f"{mode}{'+mixed' if mixed else ''}"] = row
            print(f"  {mode:8s} mixed={mixed!s:5s} {row}", flush=True)
    return out


def speed_at(dev: torch.device, batch: int, steps: int, reps: int) -> dict[str, tuple[float, float]]:
    """implementation -> (training step ms, forward ms) at one size."""
    from ncps.torch import CfC

    torch.manual_seed(0)
    ref = CfC(F, H, backbone_units=UNITS, backbone_layers=1).to(dev)
    native = CfCEncoder(F, H, backbone_units=UNITS, impl="native", check_values=False).to(dev)
    python = CfCEncoder(F, H, backbone_units=UNITS, impl="python", check_values=False).to(dev)
    for enc in (native, python):
        enc.load_ncps_state_dict(ref.state_dict())
    lstm = nn.LSTM(F, H, batch_first=True).to(dev)
    x = torch.randn(batch, steps, F, device=dev)
    dt = torch.rand(batch, steps, device=dev) + 0.5
    span = dt[..., None].expand(-1, -1, H)
    target = torch.randn(batch, H, device=dev)
    table = {
        "cfc-forecast CfCEncoder (native loop, ATen kernels)": (native, lambda: native(x, dt)[1]),
        "cfc-forecast CfCEncoder (pure-PyTorch loop)": (python, lambda: python(x, dt)[1]),
        "ncps 1.0.1 CfC": (ref, lambda: ref(x, timespans=span)[1]),
        "torch.nn.LSTM (cuDNN)": (lstm, lambda: lstm(x)[0][:, -1]),
    }
    train, fwd = {}, {}
    for name, (module, forward) in table.items():

        def step(module=module, forward=forward):
            module.zero_grad(set_to_none=True)
            nn.functional.mse_loss(forward(), target).backward()

        def infer(forward=forward):
            with torch.no_grad():
                forward()

        train[name], fwd[name] = step, infer
    t_ms, f_ms = cuda_medians(train, reps), cuda_medians(fwd, reps)
    return {name: (t_ms[name], f_ms[name]) for name in table}


def speed(dev: torch.device, reps: int) -> list[dict]:
    rows = []
    for name_cfg, (batch, steps) in CONFIGS.items():
        for name, (train_ms, forward_ms) in speed_at(dev, batch, steps, reps).items():
            rows.append({"config": name_cfg, "batch": batch, "steps": steps, "implementation": name,
                         "train_ms": train_ms, "forward_ms": forward_ms})  # fmt: skip
            print(f"  {batch} x {steps} {name}: train {train_ms:.2f} ms, forward {forward_ms:.2f} ms", flush=True)
    return rows


def fit(out: Path, runs: Path, extra: list[str], tag: str) -> dict:
    cmd = [sys.executable, "-m", "cfc_forecast.cli", "fit", "--config", "configs/quickstart.yaml",
           "--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
           f"--run_dir={runs / tag}", *extra]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    seconds = time.perf_counter() - start
    tail = (proc.stdout + proc.stderr)[-2500:]
    (out / f"{tag}.log").write_text(proc.stdout + proc.stderr)
    print(f"--- {tag}: exit {proc.returncode}, {seconds:.1f} s\n{tail}", flush=True)
    metrics_file = runs / tag / "test_metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
    return {"command": " ".join(cmd), "returncode": proc.returncode, "seconds": seconds, "test_metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", type=Path, default=Path("/tmp/gpu_check_runs"), help="the fits' run directories")
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--skip", nargs="*", default=[], choices=["correctness", "speed", "fit", "ddp"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: this check needs a GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    report: dict = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
        "native": native_status(),
        "native_available": native_available(),
    }
    print(report, flush=True)
    path = args.out / "gpu_check.json"

    def save() -> None:
        path.write_text(json.dumps(report, indent=1))

    if "correctness" not in args.skip:
        report["correctness"] = correctness(dev)
        save()
    if "speed" not in args.skip:
        report["speed"] = speed(dev, args.reps)
        save()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if "fit" not in args.skip:
        report["fit_one_gpu"] = fit(args.out, args.runs, [], "fit_gpu")
        save()
    if "ddp" not in args.skip:
        report["fit_ddp_one_gpu"] = fit(
            args.out, args.runs, ["--trainer.strategy=ddp", "--trainer.max_epochs=10"], "fit_ddp"
        )
        save()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
