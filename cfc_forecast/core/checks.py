"""Input checks at the public boundary of the cell and the encoder.

Shape checks are free; value checks (NaN, negative dt) read the data and force a device sync on a GPU, so the
encoder lets a caller switch them off for the hot path (``CfCEncoder(check_values=False)``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_tensor(name: str, t: object, expected: str, ndims: tuple[int, ...]) -> Tensor:
    """Raise a ``ValueError`` naming ``name`` unless ``t`` is a floating tensor with a rank in ``ndims``."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(t).__name__}")
    if t.dim() not in ndims:
        raise ValueError(f"{name} must have shape {expected}, got {_shape(t)}")
    return t


def check_size(name: str, t: Tensor, dim: int, size: int, expected: str) -> None:
    if t.shape[dim] != size:
        raise ValueError(f"{name} must have shape {expected}, got {_shape(t)}")


def check_finite(name: str, t: Tensor) -> None:
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN; fill or mask missing values before the encoder")


def check_dt_values(dt: Tensor) -> None:
    if not torch.isfinite(dt).all():
        raise ValueError("dt must be finite, got inf or NaN elapsed times")
    if (dt < 0).any():
        raise ValueError(f"dt must be >= 0 (elapsed time since the previous step), got min {dt.min().item()}")


def check_cell_inputs(x: Tensor, h: Tensor, dt: Tensor | float, input_size: int, hidden_size: int) -> Tensor:
    """Check one step's arguments; returns dt as a (B, 1) tensor."""
    check_tensor("x", x, f"(B, {input_size})", (2,))
    check_size("x", x, 1, input_size, f"(B, {input_size})")
    batch = x.shape[0]
    check_tensor("h", h, f"({batch}, {hidden_size})", (2,))
    if h.shape != (batch, hidden_size):
        raise ValueError(f"h must have shape ({batch}, {hidden_size}), got {_shape(h)}")
    if not isinstance(dt, Tensor):
        dt = torch.full((batch, 1), float(dt), dtype=x.dtype, device=x.device)
    if dt.shape != (batch, 1):
        raise ValueError(f"dt must have shape ({batch}, 1), got {_shape(dt)}")
    check_finite("x", x)
    check_dt_values(dt)
    return dt


def check_sequence_inputs(
    x: Tensor,
    dt: Tensor | None,
    mask: Tensor | None,
    input_size: int,
    check_values: bool,
) -> tuple[Tensor, Tensor | None]:
    """Check an encoder's x (B, T, F), dt and mask; return dt as (B, T, 1) and mask as (B, T, 1) bool."""
    check_tensor("x", x, f"(B, T, {input_size})", (3,))
    check_size("x", x, 2, input_size, f"(B, T, {input_size})")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    batch, steps = x.shape[:2]
    if dt is None:
        dt = x.new_ones(batch, steps, 1)
    else:
        check_tensor("dt", dt, f"({batch}, {steps}) or ({batch}, {steps}, 1)", (2, 3))
        if dt.shape[:2] != (batch, steps) or (dt.dim() == 3 and dt.shape[2] != 1):
            raise ValueError(f"dt must have shape ({batch}, {steps}) or ({batch}, {steps}, 1), got {_shape(dt)}")
        dt = dt.reshape(batch, steps, 1).to(x.dtype)
    if mask is not None:
        check_tensor("mask", mask, f"({batch}, {steps})", (2,))
        if mask.shape != (batch, steps):
            raise ValueError(f"mask must have shape ({batch}, {steps}), got {_shape(mask)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = real step), got dtype {mask.dtype}")
        mask = mask.unsqueeze(-1)
    if check_values:
        check_finite("x", x)
        check_dt_values(dt)
    return dt, mask


def check_state(state: Tensor, batch: int, hidden_size: int, name: str = "state") -> None:
    check_tensor(name, state, f"({batch}, {hidden_size})", (2,))
    if state.shape != (batch, hidden_size):
        raise ValueError(f"{name} must have shape ({batch}, {hidden_size}), got {_shape(state)}")


def initial_state(state: object, x: Tensor, hidden_size: int, paired: bool) -> tuple[Tensor, Tensor | None]:
    """An encoder's initial ``(h, c)`` from its ``state`` argument: zeros when None; ``c`` is None unless ``paired``
    (mixed memory, where ``state`` must be the pair (h, c)). Every tensor (B, H), B from ``x`` (B, T, F)."""
    batch = x.shape[0]
    if state is None:
        zeros = x.new_zeros(batch, hidden_size)
        return zeros, (zeros if paired else None)
    if paired:
        if not isinstance(state, tuple | list) or len(state) != 2:
            raise ValueError("state must be a pair (h, c) of (B, H) tensors when mixed_memory=True")
        check_state(state[0], batch, hidden_size, "state[0] (h)")
        check_state(state[1], batch, hidden_size, "state[1] (c)")
        return state[0], state[1]
    if isinstance(state, tuple | list):
        raise ValueError("state must be one (B, H) tensor when mixed_memory=False, got a tuple")
    check_state(state, batch, hidden_size)
    return state, None


def load_converted(module: torch.nn.Module, weights: dict[str, Tensor], hint: str) -> None:
    """Load weights converted from another implementation (all of ``module``'s), naming the first whose shape
    differs and what to check (``hint``)."""
    own = module.state_dict()
    for key, value in weights.items():
        if value.shape != own[key].shape:
            raise ValueError(
                f"ncps weight for {key} has shape {tuple(value.shape)}, this encoder expects "
                f"{tuple(own[key].shape)}: check {hint}"
            )
    module.load_state_dict(weights, strict=True)
