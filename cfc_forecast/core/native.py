"""The native CfC sequence loop: build once at first use (cached), then one call per sequence.

``csrc/cfc_loop.cpp`` runs the whole loop and its hand-written backward in C++ over ATen ops. It is compiled with
``torch.utils.cpp_extension`` the first time it is needed (about a minute on 2 cores) into torch's extension
cache, and reused by every later process. Without a compiler, or with ``CFC_FORECAST_NATIVE=0``, the encoder runs
the pure-PyTorch loop, which computes the same numbers.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from cfc_forecast.core.cell import LECUN_SCALE, LECUN_SLOPE, CfCCell
from cfc_forecast.core.memory import LSTMMemoryCell

_CSRC = Path(__file__).parent / "csrc"
_MODES = {"default": 0, "no_gate": 1, "pure": 2}
# lecun_tanh runs as tanh with its constants folded into the weights (see fold_weights)
_ACTS = {"lecun_tanh": 1, "tanh": 1, "relu": 2, "silu": 3, "gelu": 4}
_status: dict[str, object] = {}
# the fused CPU kernels for float32/64; False runs the device-generic ATen kernels (what CUDA runs), for tests
ALLOW_FUSED = True
# the raw-pointer loop and backward (csrc/raw_loop.h) where they apply; False runs the ATen loop, for tests
ALLOW_RAW = True
# the raw loop's matmuls: our own small GEMM (csrc/small_gemm.h, the same ISA path on every x86 vendor) with
# CFC_FORECAST_GEMM=own; torch's BLAS otherwise (the default until timed on an idle machine)
OWN_GEMM = os.environ.get("CFC_FORECAST_GEMM", "blas") == "own"
if os.environ.get("CFC_FORECAST_GEMM", "blas") not in ("own", "blas"):
    warnings.warn(
        f"CFC_FORECAST_GEMM={os.environ['CFC_FORECAST_GEMM']!r} is neither 'own' nor 'blas': torch's BLAS runs",
        RuntimeWarning,
        stacklevel=2,
    )


def _build_flags() -> tuple[str, list[str]]:
    """Compiler flags and a cache key: SLEEF-vectorised AVX-512 or AVX2 kernels where this CPU runs them."""
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ...
    flags = ["-O3"]
    x86 = platform.machine() in ("x86_64", "AMD64")
    if capability == "AVX512" and x86 and os.environ.get("CFC_FORECAST_AVX512", "1") != "0":
        # where torch itself runs AVX-512: the fused cell update at B = H = 64 takes 4.7 us per step against
        # 7.4 with AVX2 (measured in isolation, 2026-11-28)
        flags += ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw"]
        flags += ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    elif capability in ("AVX2", "AVX512") and x86:
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
        capability = "AVX2"
    # the sources' hash in the name: an edited header rebuilds (torch tracks only the .cpp), and builds for
    # different CPUs or versions never share a cache entry. Their folder too: torch's build file names the sources
    # by absolute path, so two checkouts sharing one entry rebuilt it each time the other had loaded it.
    digest = hashlib.sha256(str(_CSRC.resolve()).encode())
    for path in sorted(_CSRC.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(" ".join(flags).encode() + torch.__version__.encode())
    return f"cfc_forecast_loop_{capability.lower()}_{digest.hexdigest()[:10]}", flags


def native_available() -> bool:
    """Whether the native loop is built and loaded; builds it on the first call.

    Returns False (with one warning saying why) when the build fails, and False without building when the
    environment variable ``CFC_FORECAST_NATIVE`` is ``0``.
    """
    if os.environ.get("CFC_FORECAST_NATIVE", "1") == "0":
        return False
    if "ok" not in _status:
        try:
            name, flags = _build_flags()
            cache = build_lock_path(name).parent
            if not (cache / f"{name}.so").exists():  # the first run's ~15 s of silence otherwise (set by
                # TORCH_EXTENSIONS_DIR); printed, not logged: no logging is configured when the command starts
                print(f"cfc-forecast: building the native CfC loop (once, ~15 s); cached in {cache}", file=sys.stderr)
            _load(name, flags)
            _status.update(ok=True, name=name, flags=flags)
        except Exception as err:  # no compiler, no ninja, no headers: the Python loop still works
            _status["ok"] = False
            _status["error"] = f"{type(err).__name__}: {err}"
            warnings.warn(
                "cfc_forecast: the native CfC loop could not be built, using the pure-PyTorch loop "
                f"(same numbers, slower). Reason: {_status['error'][:500]}",
                RuntimeWarning,
                stacklevel=2,
            )
    return bool(_status["ok"])


def build_lock_path(name: str) -> Path:
    """torch's lock file for the build of ``name``: a plain file, left behind by a process killed mid-load."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False)) / "lock"


def _load(name: str, flags: list[str]) -> None:
    """Build (or find built) and load the extension, safe against a stale lock of a killed process.

    torch serialises builds with a lock *file* that it waits on forever, so one process killed while loading
    (a SIGKILLed tuning worker, say) would hang every later process. Here a kernel lock (``flock``, released when
    its holder dies, whatever the cause) serialises our loads instead; under it no other load of ours runs, so a
    torch lock file found then is stale and is removed.
    """
    from torch.utils.cpp_extension import load

    def build() -> None:
        load(name=name, sources=[str(_CSRC / "cfc_loop.cpp")], extra_cflags=flags, is_python_module=False)

    try:
        import fcntl
    except ImportError:  # no flock (Windows): torch's own lock alone
        build()
        return
    lock = build_lock_path(name)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock.parent.parent / f"{name}.flock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            lock.unlink(missing_ok=True)
            build()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_WIRINGS = {None: 0, "ncps": 1, "paper": 2}


def native_status() -> str:
    """One line on the native loop: built and where, disabled, or why it could not be built."""
    if os.environ.get("CFC_FORECAST_NATIVE", "1") == "0":
        return "native CfC loop: disabled by CFC_FORECAST_NATIVE=0 (the pure-PyTorch loop runs)"
    if "ok" not in _status:
        return "native CfC loop: not built yet (it builds at first use)"
    if _status["ok"]:
        raw = "yes" if torch.ops.cfc_forecast.raw_loop_available() else "no (torch exports no BLAS symbols)"
        if raw == "yes":
            raw += ", matmuls: " + ("our own small GEMM (CFC_FORECAST_GEMM=own)" if OWN_GEMM else "torch's BLAS")
        return f"native CfC loop: ready ({_status['name']}, flags {' '.join(_status['flags'])}; raw loop: {raw})"
    return f"native CfC loop: unavailable, the pure-PyTorch loop runs. Reason: {_status['error']}"


@dataclass(frozen=True)
class _Spec:
    layers: int
    mode: int
    act: int
    head_scale: float
    wiring: int = 0
    forget_bias: float = 1.0


def fold_weights(cell: CfCCell, input_mask: Tensor | None = None) -> tuple[dict, _Spec]:
    """The loop's weights, with lecun_tanh's constants folded in so the loop only needs tanh.

    ``input_mask`` (N1, F), 0/1, multiplies the input half of the first layer: a wired cell's synapses
    (:class:`~cfc_forecast.core.wired.WiredCfCEncoder`).

    lecun(p) = c * tanh(a * p): the slope a scales the layer that produces p, the scale c the layer that reads
    it. Rounding differs from the unfolded form by a few ulps; the values are the same function.
    """
    a, c = LECUN_SLOPE, LECUN_SCALE
    n_layers, hidden, n_in = cell.backbone_layers, cell.hidden_size, cell.input_size
    first = cell.first_layer
    w_x, b_x, w_rec = first.weight[:, :n_in], first.bias, first.weight[:, n_in:]  # (N1, F), (N1,), (N1, H)
    if input_mask is not None:
        w_x = w_x * input_mask
    later = list(cell.backbone)[1:]  # (slicing the ModuleList would build a new module on every call)
    layer_w = [layer.weight for layer in later]
    layer_b = [layer.bias for layer in later]
    head_w, head_b = cell.heads.weight, cell.heads.bias
    if n_layers and cell.activation == "lecun_tanh":
        w_x, b_x, w_rec = w_x * a, b_x * a, w_rec * a
        layer_w = [w * (a * c) for w in layer_w]
        layer_b = [b * a for b in layer_b]
        head_w = head_w * c
    head_scale = 1.0
    if cell.head_activation == "lecun_tanh" and cell.mode != "pure":
        rows = torch.ones(4 * hidden, dtype=head_w.dtype, device=head_w.device)
        rows[: 2 * hidden] = a  # ff1 and ff2 only
        head_scale = c
        if n_layers:
            head_w, head_b = head_w * rows[:, None], head_b * rows
        else:
            w_x, b_x, w_rec = w_x * rows[:, None], b_x * rows, w_rec * rows[:, None]
    weights = {
        "w_x": w_x,
        "b_x": b_x,
        "w_rec": w_rec,
        "w_head": head_w if n_layers else None,
        "b_head": head_b if n_layers else None,
        "A": getattr(cell, "A", None),
        "w_tau": getattr(cell, "w_tau", None),
        "layers": (*layer_w, *layer_b),
    }
    return weights, _Spec(n_layers, _MODES[cell.mode], _ACTS[cell.activation], head_scale)


def _seq_forward(
    spec, xproj, h0, dt, mask, w_rec, w_head, b_head, A, w_tau, drop, mproj, c0, w_mrec, w_x, layers, save
):
    """The native forward: the op's outputs, (states, cell states) first."""
    n = len(layers) // 2
    memory = [t for t in (mproj, c0, w_mrec, w_x) if t is not None]
    torch.ops.cfc_forecast.set_own_gemm(OWN_GEMM)
    outs = torch.ops.cfc_forecast.seq_forward(
        xproj, h0, dt, mask, w_rec, list(layers[:n]), list(layers[n:]), w_head, b_head, A, w_tau, drop,
        memory, spec.layers, spec.mode, spec.act, spec.wiring, spec.head_scale, spec.forget_bias, save, ALLOW_FUSED,
        ALLOW_RAW,
    )  # fmt: skip
    return outs[0], outs[4 + 3 * spec.layers], outs


class _CfCSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, xproj, h0, dt, mask, w_rec, w_head, b_head, A, w_tau, drop, mproj, c0, w_mrec, w_x, *layers):
        n = len(layers) // 2
        save = any(ctx.needs_input_grad)
        args = (xproj, h0, dt, mask, w_rec, w_head, b_head, A, w_tau, drop, mproj, c0, w_mrec, w_x)
        states, c_states, outs = _seq_forward(spec, *args, layers, save)
        if save:
            ctx.spec, ctx.allow_fused, ctx.allow_raw, ctx.own_gemm = spec, ALLOW_FUSED, ALLOW_RAW, OWN_GEMM
            ctx.save_for_backward(h0, dt, mask, w_rec, w_head, A, w_tau, drop, c0, w_mrec, w_x, states, *layers[:n])
            ctx.intermediates = outs[1:]  # neither inputs nor outputs: kept on ctx, freed with the graph
        return states, c_states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states, grad_c):
        h0, dt, mask, w_rec, w_head, A, w_tau, drop, c0, w_mrec, w_x, states, *w_layers = ctx.saved_tensors
        spec = ctx.spec
        # the op reads memory[1:] here (c0, w_mrec, w_x); the forward's mproj slot is not needed, c0 holds it
        memory = [] if not spec.wiring else [c0, c0, w_mrec] + ([w_x] if w_x is not None else [])
        torch.ops.cfc_forecast.set_own_gemm(ctx.own_gemm)
        grads = torch.ops.cfc_forecast.seq_backward(
            grad_states, h0, dt, mask, w_rec, w_layers, w_head, A, w_tau, drop, [states, *ctx.intermediates],
            memory, grad_c, spec.layers, spec.mode, spec.act, spec.wiring, spec.head_scale, ctx.allow_fused,
            ctx.allow_raw,
        )  # fmt: skip
        d_xproj, d_h0, d_dt, d_w_rec, d_wh, d_bh, d_A, d_wt, d_mproj, d_c0, d_w_mrec, d_w_x, *d_layers = grads
        given = lambda t, d: d if t is not None else None  # noqa: E731  (empty placeholders -> None)
        return (
            None, d_xproj, d_h0, d_dt, None, d_w_rec, given(w_head, d_wh), given(w_head, d_bh), given(A, d_A),
            given(w_tau, d_wt), None, given(c0, d_mproj), given(c0, d_c0), given(w_mrec, d_w_mrec),
            given(w_x, d_w_x), *d_layers,
        )  # fmt: skip


def run_native(
    cell: CfCCell,
    x: Tensor,
    h0: Tensor,
    dt: Tensor,
    mask: Tensor | None,
    drop: Tensor | None,
    memory: LSTMMemoryCell | None = None,
    c0: Tensor | None = None,
    wiring: str = "ncps",
    input_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Run ``cell`` (and the mixed-memory LSTM ``memory``) over a sequence with the native loop.

    Args:
        cell: the cell whose weights are used.
        x: inputs (B, T, F).
        h0: initial state (B, H).
        dt: elapsed times (B, T, 1).
        mask: real steps (B, T, 1) bool, or None when every step is real.
        drop: dropout keep masks scaled by 1 / (1 - p), (L, B, T, U), or None.
        memory: the LSTM memory cell of a mixed-memory encoder, or None.
        c0: the memory's initial cell state (B, H), with ``memory``.
        wiring: ``"ncps"`` or ``"paper"``, see :class:`~cfc_forecast.core.encoder.CfCEncoder`.
        input_mask: (N1, F) 0/1 synapses on the input half of the first layer, or None (see :func:`fold_weights`).

    Returns:
        The states (B, T, H) and, with memory, the cell states (B, T, H): views of the loop's feature-major
        (T, H, B) results.
    """
    w, spec = fold_weights(cell, input_mask)
    inference = not torch.is_grad_enabled() or not any(
        t.requires_grad
        for t in (x, h0, dt, *cell.parameters(), *([] if memory is None else memory.parameters()))
    )
    fm = lambda t: None if t is None else t.permute(1, 2, 0)  # noqa: E731  (B, T, N) -> (T, N, B)
    steps, n1, batch = x.shape[1], w["w_x"].shape[0], x.shape[0]

    def project(weight: Tensor, bias: Tensor) -> Tensor:
        """An input projection for all steps in one batched matmul, already feature-major: (T, N, B).

        A fresh temporary that nothing else reads (its autograd node keeps only the weights and x): the loop
        accumulates the steps' matmuls into it in place.
        """
        rows = weight.shape[0]
        args = (bias.view(1, rows, 1).expand(steps, rows, batch), weight.expand(steps, -1, -1), fm(x))
        if inference and x.device.type == "cpu":  # no autograd: the buffer may come from the loop's cache
            return torch.baddbmm(*args, out=torch.ops.cfc_forecast.pool_empty([steps, rows, batch], x.dtype))
        return torch.baddbmm(*args)

    mproj = w_mrec = w_in = None
    if memory is None:
        xproj = project(w["w_x"], w["b_x"])
    else:
        spec = replace(spec, wiring=_WIRINGS[wiring], forget_bias=float(memory.forget_bias))
        mproj, w_mrec = project(memory.input_map.weight, memory.input_map.bias), memory.recurrent_map.weight
        if wiring == "paper":  # the CfC's input is the LSTM's output: only its bias can be hoisted
            xproj, w_in = w["b_x"].view(1, n1, 1).expand(steps, n1, batch).contiguous(), w["w_x"]
        else:
            xproj = project(w["w_x"], w["b_x"])
    col = lambda t: None if t is None else t.t().contiguous()  # noqa: E731  (1, H) or (B, H) -> (H, 1), (H, B)
    args = (
        xproj, col(h0), fm(dt).contiguous(), None if mask is None else fm(mask).contiguous(),
        w["w_rec"], w["w_head"], w["b_head"], col(w["A"]), col(w["w_tau"]),
        None if drop is None else drop.permute(0, 2, 3, 1).contiguous(), mproj, col(c0), w_mrec, w_in,
    )  # fmt: skip
    if inference:  # nothing to differentiate: no autograd node, nothing saved
        states, c_states, _ = _seq_forward(spec, *args, w["layers"], save=False)
    else:
        states, c_states = _CfCSequence.apply(spec, *args, *w["layers"])
    bth = lambda t: t.permute(2, 0, 1)  # noqa: E731  (T, H, B) -> (B, T, H)
    return bth(states), (bth(c_states) if memory is not None else None)
