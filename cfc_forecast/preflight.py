"""Checks a command makes before it trains or evaluates: every split it will use holds a window.

A split without windows (a horizon longer than the split, a test period with every target missing) is refused
before any training, naming the split, the rows it holds and what to change, instead of a crash after training
(``IndexError`` in ``--test_after_fit``) or a ``test`` that prints no metrics and exits 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cfc_forecast.errors import UserError

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def check_splits(dm: Any, splits: tuple[str, ...]) -> None:
    """Refuse if one of ``splits`` of the DataModule ``dm`` holds no window.

    Raises:
        UserError: the first split without windows: its rows (with a target observed), the window it needs, the
            rows skipped while building, and the options to change.
    """
    if not hasattr(dm, "dataset"):
        return
    for split in splits:
        if len(dm.dataset(split)) == 0:
            raise UserError(_message(dm, split))


def _split_rows(dm: Any, split: str) -> tuple[int, int, int]:
    """Rows of ``split``, rows with a target observed, series with rows in it."""
    from datamodules.io import SERIES, TIME
    from datamodules.splits import split_plan

    table, targets = dm._table, dm._roles_used.targets
    plan = split_plan(table, dm.cfg, dm._assign_series)
    series = table.frame[SERIES].to_numpy()
    code = SPLIT_CODES[split]
    if plan.codes is not None:
        inside = plan.codes[series] == code
    else:
        lo, hi = plan.bounds[code]
        t = table.frame[TIME].to_numpy()
        inside = (t >= lo) & (t < hi)
    observed = np.zeros(len(inside), dtype=bool)
    for name in targets:
        observed |= table.frame[name].is_not_null().to_numpy() & ~table.frame[name].is_nan().fill_null(False).to_numpy()
    return int(inside.sum()), int((inside & observed).sum()), len(np.unique(series[inside]))


def _window(dm: Any) -> str:
    spec = dm.spec
    if spec.mode == "count":
        return f"lookback {spec.lookback} + horizon {spec.horizon} rows of a series, the horizon's targets inside it"
    return f"observe {spec.observe} + forecast {spec.forecast} ({dm.cfg.time_unit}), the forecast's targets inside it"


def _message(dm: Any, split: str) -> str:
    try:
        rows, with_target, n_series = _split_rows(dm, split)
        held = f"it holds {rows} rows ({with_target} with a target observed) of {n_series} series"
    except Exception:  # noqa: BLE001 - a DataModule of another layout: the message without the counts
        held = "it holds too few rows"
    option = "--test_after_fit false, " if split == "test" else ""
    return (
        f"the {split} split has no windows: {held}, and a window needs {_window(dm)}; skipped while building: "
        f"{dict(dm.counts)}; change the window (--data.lookback / --data.horizon, or --data.observe / "
        f"--data.forecast), give the {split} split a larger share (--data.split_fractions or --data.split_times), "
        f"{option}or give data with more rows in that period"
    )
