from __future__ import annotations

import dataclasses

import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from cfc_forecast.batch import Batch


def make_batch(b: int = 2, t: int = 3, f: int = 2, k: int = 4, c: int = 1) -> Batch:
    return Batch(
        x=torch.zeros(b, t, f),
        x_mask=torch.ones(b, t, f, dtype=torch.bool),
        t=torch.zeros(b, t),
        dt=torch.zeros(b, t),
        step_mask=torch.ones(b, t, dtype=torch.bool),
        query_t=torch.ones(b, k),
        query_mask=torch.ones(b, k, dtype=torch.bool),
        series=torch.arange(b),
        origin=torch.zeros(b, dtype=torch.float64),
        target_loc=torch.full((b, c), 10.0),
        target_scale=torch.full((b, c), 2.0),
        y=torch.zeros(b, k, c),
        y_mask=torch.ones(b, k, c, dtype=torch.bool),
    )


def test_batch_is_a_plain_dataclass_that_lightning_moves() -> None:
    batch = make_batch()
    assert dataclasses.is_dataclass(batch)
    assert not type(batch).__dataclass_params__.frozen
    moved = move_data_to_device(batch, torch.device("cpu"))
    assert isinstance(moved, Batch)
    assert torch.equal(moved.target_scale, batch.target_scale)
    assert moved.static is None
    assert moved.origin.dtype == torch.float64
    assert batch.batch_size == 2


def test_unscale_inverts_scaling() -> None:
    batch = make_batch()
    raw = batch.unscale(torch.full((2, 4, 1), 0.5))
    assert torch.equal(raw, torch.full((2, 4, 1), 11.0))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("t", torch.zeros(2, 4), r"Batch.t must have shape \(2, 3\), got \(2, 4\)"),
        ("y", torch.zeros(2, 4, 2), r"Batch.y must have shape \(2, 4, 1\)"),
        ("future", torch.zeros(2, 3, 1), r"Batch.future must have shape \(2, 4, Fk\)"),
    ],
)
def test_wrong_shapes_are_named(field: str, value: torch.Tensor, message: str) -> None:
    batch = make_batch()
    setattr(batch, field, value)
    with pytest.raises(ValueError, match=message):
        batch.check()
