"""CfCEncoder at its public boundary: bad input is a ValueError naming the argument; the loop fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cfc_forecast import CfCEncoder, native_available

enc = CfCEncoder(3, 4)
X = torch.randn(2, 5, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"x": torch.randn(5, 3)}, r"x must have shape \(B, T, 3\), got \(5, 3\)"),
        ({"x": torch.randn(2, 5, 4)}, r"x must have shape \(B, T, 3\), got \(2, 5, 4\)"),
        ({"x": torch.ones(2, 5, 3, dtype=torch.long)}, r"x must be a floating-point tensor"),
        ({"dt": torch.ones(2, 4)}, r"dt must have shape \(2, 5\) or \(2, 5, 1\), got \(2, 4\)"),
        ({"dt": torch.ones(2, 5, 2)}, r"dt must have shape \(2, 5\) or \(2, 5, 1\), got \(2, 5, 2\)"),
        ({"dt": -torch.ones(2, 5)}, r"dt must be >= 0 .* got min -1"),
        ({"dt": torch.full((2, 5), float("nan"))}, r"dt must be finite"),
        ({"x": torch.full((2, 5, 3), float("nan"))}, r"x contains NaN"),
        ({"mask": torch.ones(2, 5)}, r"mask must be a bool tensor"),
        ({"mask": torch.ones(2, 4, dtype=torch.bool)}, r"mask must have shape \(2, 5\), got \(2, 4\)"),
        ({"state": torch.zeros(3, 4)}, r"state must have shape \(2, 4\), got \(3, 4\)"),
        ({"state": (torch.zeros(2, 4), torch.zeros(2, 4))}, r"state must be one \(B, H\) tensor"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_argument(kwargs, match):
    args = {"x": X, **kwargs}
    with pytest.raises(ValueError, match=match):
        enc(**args)


def test_value_checks_can_be_switched_off_for_the_hot_path():
    fast = CfCEncoder(3, 4, check_values=False)
    fast(X, -torch.ones(2, 5))  # no device sync, no error; shapes are still checked
    with pytest.raises(ValueError, match="dt must have shape"):
        fast(X, torch.ones(2, 4))


def test_mixed_memory_state_must_be_a_pair():
    mixed = CfCEncoder(3, 4, mixed_memory=True)
    with pytest.raises(ValueError, match=r"state must be a pair \(h, c\)"):
        mixed(X, state=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"state\[1\] \(c\) must have shape \(2, 4\)"):
        mixed(X, state=(torch.zeros(2, 4), torch.zeros(1, 4)))


def test_unknown_impl_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown impl 'fast'"):
        CfCEncoder(3, 4, impl="fast")


def test_without_the_native_loop_the_python_loop_runs_the_same_numbers():
    code = (
        "import torch; from cfc_forecast import CfCEncoder, native_available\n"
        "assert not native_available()\n"
        "torch.manual_seed(0); e = CfCEncoder(3, 4); x = torch.randn(2, 5, 3)\n"
        "assert not e.uses_native(); print(repr(e(x)[0].sum().item()))\n"
    )
    env = {**os.environ, "CFC_FORECAST_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    torch.manual_seed(0)
    e = CfCEncoder(3, 4)
    x = torch.randn(2, 5, 3)
    assert abs(float(out.stdout) - e(x)[0].sum().item()) < 1e-5


def test_a_lock_left_by_a_killed_process_does_not_hang_the_next_build():
    # torch's build lock is a plain file that it waits on forever; a process killed while loading leaves it
    from cfc_forecast.core.native import _build_flags, build_lock_path

    if not native_available():
        pytest.skip("the native CfC loop is not available here (no compiler)")
    lock = build_lock_path(_build_flags()[0])
    lock.write_text("")
    code = "from cfc_forecast import native_available; print(native_available())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=240)
    assert out.stdout.strip() == "True"
    assert not lock.exists()
