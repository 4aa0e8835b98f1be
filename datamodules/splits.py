"""Where the train / val / test splits lie: time cut-offs (given or as fractions of the time range), or a
seeded assignment of whole series."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from cfc_forecast.errors import UserError
from datamodules.build import SplitPlan
from datamodules.io import TIME, Table
from datamodules.stamps import user_time


def seeded_series_split(n: int, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """(n,) split codes 0/1/2: test = p[:n_test], train = p[n_test:n - n_val], val = the rest.

    ``p = RandomState(seed).permutation(n)`` over the sorted series ids: scikit-learn's ``train_test_split`` order,
    as the PhysioNet protocol (data/README.md) spells it out.
    """
    n_test, n_val = round(fractions[2] * n), round(fractions[1] * n)
    perm = np.random.RandomState(seed).permutation(n)  # noqa: NPY002 - the protocol's generator
    codes = np.ones(n, dtype=np.int64)
    codes[perm[:n_test]] = 2
    codes[perm[n_test : n - n_val]] = 0
    return codes


def split_plan(table: Table, cfg: Any, assign_series: Callable[[pl.Series], np.ndarray]) -> SplitPlan:
    """The split plan of ``cfg`` (a ``SeriesDataModule``'s settings) on ``table``.

    Raises:
        UserError: cut-offs that do not increase or do not parse.
    """
    if cfg.split_by == "series":
        return SplitPlan(codes=assign_series(table.series_ids), fit=cfg.scale_fit)
    if cfg.split_times is not None:
        cuts = [user_time(c, table.codec, "split_times") for c in cfg.split_times]
        if any(b <= a for a, b in zip(cuts, cuts[1:], strict=False)):
            raise UserError(f"split_times must increase, got {cfg.split_times}")
    else:
        t, (f_train, f_val, _) = table.frame[TIME], cfg.split_fractions
        t0, span = float(t.min()), float(t.max()) - float(t.min())
        cuts = [t0 + f_train * span, t0 + (f_train + f_val) * span]
    edges = [-math.inf, *cuts[:2], cuts[2] if len(cuts) == 3 else math.inf]
    return SplitPlan(bounds=list(zip(edges[:-1], edges[1:], strict=True)), fit=cfg.scale_fit)
