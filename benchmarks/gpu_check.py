"""One-shot check on a CUDA machine: the CfC encoder's numbers and speed on the GPU, and the forecaster training there.

1. Correctness on CUDA: our encoder (native loop with the device-generic ATen kernels, and the pure-PyTorch loop)
   against ncps 1.0.1 with the same weights, and against our float64 CPU loop; outputs and parameter gradients.
2. Speed on CUDA, the protocol of benchmarks/speed.py (batch 64 x 96 steps and 256 x 1,024; 7 features, 64 units,
   backbone 1 x 128): training step and forward, median over interleaved blocks, synchronised; ncps and cuDNN's
   LSTM beside ours.
3. ``cfc-forecast fit`` of configs/quickstart.yaml on one GPU, then the same under ``--trainer.strategy=ddp`` on
   one GPU (NCCL), with their test metrics.
4. The fused Triton kernel (cfc_forecast/core/kernels, issue 19): its numbers against our float64 CPU loop in float32
   with IEEE and with TF32 dots and in bfloat16 autocast, per mode and activation, with padding, H = 20 and B = 37;
   bit-equal reruns; its speed beside the rows of 2. with an estimate of the fraction of the chip's copy bandwidth
   it reaches; then 1 epoch of ETTh1 (50 training batches) and 2 tuning trials with ``CFC_FORECAST_FUSED=1``.
5. CUDA graphs of the loop (``cuda_graphs=True``, cfc_forecast/core/graphs.py): states and gradients against the
   eager loop (native and pure-PyTorch, padding, mixed memory, two batch shapes), a row in the speed table of 2.,
   and 1 epoch of ETTh1 (50 training batches) with ``--model.cuda_graphs=true``.

    python benchmarks/gpu_check.py --out DIR    # writes gpu_check.json and the fits' logs to DIR
    # the fused kernel's device check (under 8 minutes on an H200; the fused rows need `pip install .[kernels]`):
    python benchmarks/gpu_check.py --out DIR --skip correctness fit ddp --reps 15 --data DIR_WITH_ETT

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

import cfc_forecast.core.kernels as kernels  # noqa: E402
from benchmarks.speed import CONFIGS, UNITS, F, H  # noqa: E402
from cfc_forecast import CfCEncoder  # noqa: E402
from cfc_forecast.core.kernels import fused_status  # noqa: E402
from cfc_forecast.core.native import native_available, native_status  # noqa: E402

FUSED = "cfc-forecast CfCEncoder (fused Triton kernel, TF32)"
FUSED_BF16 = "cfc-forecast CfCEncoder (fused Triton kernel, bfloat16 autocast)"
GRAPHED = "cfc-forecast CfCEncoder (native loop, CUDA graphs)"


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
    table = {}
    if fused_ready():
        fused = CfCEncoder(F, H, backbone_units=UNITS, impl="fused", check_values=False).to(dev)
        fused.load_ncps_state_dict(ref.state_dict())
        table[FUSED] = (fused, lambda: fused(x, dt)[1])

        def bf16():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return fused(x, dt)[1]

        table[FUSED_BF16] = (fused, bf16)
    graphed = CfCEncoder(F, H, backbone_units=UNITS, impl="native", check_values=False, cuda_graphs=True).to(dev)
    graphed.load_ncps_state_dict(ref.state_dict())
    table[GRAPHED] = (graphed, lambda: graphed(x, dt)[1])  # training steps replay a graph; the forward runs eagerly
    table |= {
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
    copy_gbs = copy_bandwidth()
    print(f"  device-to-device copy: {copy_gbs:.0f} GB/s", flush=True)
    for name_cfg, (batch, steps) in CONFIGS.items():
        for name, (train_ms, forward_ms) in speed_at(dev, batch, steps, reps).items():
            row = {"config": name_cfg, "batch": batch, "steps": steps, "implementation": name,
                   "train_ms": train_ms, "forward_ms": forward_ms}  # fmt: skip
            if name == FUSED:  # what the two kernels and the weight-gradient matmuls read and write, float32
                row["fused_train_bytes"] = fused_train_bytes(batch, steps)
                row["copy_bandwidth_gbs"] = copy_gbs
                row["bandwidth_fraction"] = row["fused_train_bytes"] / (train_ms * 1e-3) / (copy_gbs * 1e9)
            rows.append(row)
            print(f"  {batch} x {steps} {name}: train {train_ms:.2f} ms, forward {forward_ms:.2f} ms", flush=True)
    return rows


def fused_ready() -> bool:
    """Whether triton is installed (the fused rows need it)."""
    from cfc_forecast.core.kernels import triton_installed

    return triton_installed()


def copy_bandwidth() -> float:
    """GB/s of a device-to-device copy of 1 GiB (read + write counted), median of 10: the chip's usable bandwidth."""
    src = torch.empty(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / sorted(times[2:])[5] / 1e9


def fused_train_bytes(batch: int, steps: int) -> int:
    """Bytes a fused training step moves at least, float32: forward (reads xproj; writes states, z, y), backward
    kernel (reads grad, z, y, dt; writes da, dy, ddt), weight gradients (read da, h, dy, z). Weights are on chip."""
    rows, u, h = batch * steps, UNITS, H
    forward = u + h + u + 4 * h
    backward = h + u + 4 * h + 1 + u + 4 * h + 1
    weights = u + h + 4 * h + u
    return 4 * rows * (forward + backward + weights)


def fused_correctness(dev: torch.device) -> dict:
    """The fused kernel against our float64 CPU loop (pure PyTorch): float32 IEEE, float32 TF32, bfloat16 autocast."""
    from cfc_forecast.core.kernels import fused as fused_mod

    out = {}
    torch.manual_seed(0)
    batch, steps, hidden = 37, 50, 20  # B not a multiple of the tile, H not a power of two
    x = torch.randn(batch, steps, F, device=dev)
    dt = torch.rand(batch, steps, device=dev) + 0.2
    mask = torch.rand(batch, steps, device=dev) > 0.2
    h0 = 0.5 * torch.randn(batch, hidden, device=dev)
    weights = torch.randn(batch, steps, hidden, device=dev)
    for mode in ("default", "no_gate"):
        for act in ("lecun_tanh", "tanh", "relu"):
            ref = CfCEncoder(F, hidden, mode=mode, activation=act, backbone_units=UNITS, impl="python").double()
            enc = CfCEncoder(F, hidden, mode=mode, activation=act, backbone_units=UNITS, impl="fused").to(dev)
            enc.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
            s64, _ = ref(x.double().cpu(), dt.double().cpu(), mask.cpu(), h0.double().cpu())
            (s64 * weights.double().cpu()).sum().backward()
            row = {}
            for label in ("ieee", "tf32", "bf16"):
                fused_mod.PRECISION = "ieee" if label == "ieee" else "tf32"
                enc.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=label == "bf16"):
                    states, _ = enc(x, dt, mask, h0)
                    (states * weights).sum().backward()
                row[f"{label}_states_max_abs"] = float((states.detach().double().cpu() - s64).abs().max())
                row[f"{label}_grad_max_rel"] = max(
                    float((p.grad.double().cpu() - q.grad).abs().max() / q.grad.abs().max().clamp(min=1e-12))
                    for p, q in zip(enc.parameters(), ref.parameters(), strict=True)
                )
                if label == "tf32":  # a second run: the same bits
                    first = (states.detach().clone(), [p.grad.clone() for p in enc.parameters()])
                    enc.zero_grad(set_to_none=True)
                    again, _ = enc(x, dt, mask, h0)
                    (again * weights).sum().backward()
                    row["tf32_rerun_bit_equal"] = bool(
                        torch.equal(again, first[0])
                        and all(torch.equal(p.grad, g) for p, g in zip(enc.parameters(), first[1], strict=True))
                    )
            fused_mod.PRECISION = "tf32"
            out[f"{mode}/{act}"] = row
            print(f"  fused {mode:8s} {act:10s} {row}", flush=True)
    return out


def graphs_correctness(dev: torch.device) -> dict:
    """CUDA graphs of the loop (cfc_forecast/core/graphs.py) against the same encoder run eagerly: states, the last
    state and every parameter gradient over three training steps (one graph, replayed), for the native and the
    pure-PyTorch loop, with padding, mixed memory, H = 20, and a second batch shape (a second graph)."""
    rows = {}
    for impl in ("native", "python"):
        for label, kwargs in (("plain", {}), ("mixed_memory", {"mixed_memory": True}), ("H=20", {})):
            hidden = 20 if label == "H=20" else H
            torch.manual_seed(0)
            eager = CfCEncoder(F, hidden, backbone_units=UNITS, impl=impl, check_values=False, **kwargs).to(dev)
            graphed = CfCEncoder(F, hidden, backbone_units=UNITS, impl=impl, check_values=False, cuda_graphs=True,
                                 **kwargs).to(dev)  # fmt: skip
            graphed.load_state_dict(eager.state_dict())
            worst = {"states": 0.0, "grads": 0.0}
            for batch, steps in ((37, 50), (37, 50), (37, 50), (16, 30)):
                x = torch.randn(batch, steps, F, device=dev, requires_grad=True)
                dt = torch.rand(batch, steps, device=dev) + 0.1
                mask = torch.rand(batch, steps, device=dev) > 0.2
                outs = []
                for enc in (eager, graphed):
                    enc.zero_grad(set_to_none=True)
                    states, last = enc(x, dt, mask)
                    last = last[0] if isinstance(last, tuple) else last
                    (states.square().mean() + last.sum()).backward()
                    outs.append((states.detach(), [p.grad.clone() for p in enc.parameters()]))
                worst["states"] = max(worst["states"], (outs[0][0] - outs[1][0]).abs().max().item())
                grads = max((a - b).abs().max().item() for a, b in zip(outs[0][1], outs[1][1], strict=True))
                worst["grads"] = max(worst["grads"], grads)
            worst["graphs"] = len(graphed.graphs)
            rows[f"{impl} {label}"] = worst
            print(f"  graphs {impl:6s} {label:12s} {worst}", flush=True)
    return rows


def tune_fused(out: Path, runs: Path) -> dict:
    """2 trials of the ETTh1 study (each 1 epoch of 50 batches) with the fused kernel on."""
    cmd = [sys.executable, "-m", "cfc_forecast.commands", "tune", "--config", "configs/tune/etth1.yaml", "--n_trials=2",
           f"--study_dir={runs / 'tune_fused'}",
           '--fit_args={"trainer.max_epochs": 1, "trainer.limit_train_batches": 50, "trainer.accelerator": "gpu",'
           ' "trainer.devices": 1, "trainer.enable_progress_bar": false}']  # fmt: skip
    start = time.perf_counter()
    env = {**os.environ, "CFC_FORECAST_FUSED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    seconds = time.perf_counter() - start
    (out / "tune_fused.log").write_text(proc.stdout + proc.stderr)
    print(f"--- tune_fused: exit {proc.returncode}, {seconds:.1f} s\n{(proc.stdout + proc.stderr)[-2000:]}", flush=True)
    return {"command": " ".join(cmd), "returncode": proc.returncode, "seconds": seconds}


def fit(out: Path, runs: Path, extra: list[str], tag: str, config: str = "configs/quickstart.yaml", env=None) -> dict:
    cmd = [sys.executable, "-m", "cfc_forecast.commands", "fit", "--config", config,
           "--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
           f"--run_dir={runs / tag}", *extra]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
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
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["correctness", "speed", "fit", "ddp", "fused", "fit_fused", "tune_fused", "graphs", "fit_graphs"],
    )
    parser.add_argument("--data", type=Path, help="the folder with ETT/ (default $CFC_FORECAST_DATA, ../shared/data)")
    args = parser.parse_args()
    if args.data:
        os.environ["CFC_FORECAST_DATA"] = str(args.data.resolve())
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

    report["fused"] = fused_status()
    # bfloat16 autocast on the fused kernel, for this check only: recording its numbers is what the check is for
    kernels.ALLOW_AUTOCAST = True
    if "fused" not in args.skip and fused_ready():
        report["fused_correctness"] = fused_correctness(dev)
        save()
    if "graphs" not in args.skip:
        report["graphs_correctness"] = graphs_correctness(dev)
        save()
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
    fused_env = {**os.environ, "CFC_FORECAST_FUSED": "1"}
    if "fit_fused" not in args.skip and fused_ready():
        extra = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=50"]
        report["fit_etth1_fused"] = fit(args.out, args.runs, extra, "fit_etth1_fused", "configs/etth1.yaml", fused_env)
        save()
    if "fit_graphs" not in args.skip:
        extra = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=50", "--model.cuda_graphs=true"]
        report["fit_etth1_graphs"] = fit(args.out, args.runs, extra, "fit_etth1_graphs", "configs/etth1.yaml")
        save()
    if "tune_fused" not in args.skip and fused_ready():
        report["tune_fused"] = tune_fused(args.out, args.runs)
        save()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
