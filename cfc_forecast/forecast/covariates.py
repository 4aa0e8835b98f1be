"""The covariates of rows to forecast (``prepare``'s part for them): static values, categorical codes, and the
known-future values on the rows at the query times.

Static values are each series' one value (numeric ones scaled with the training scaler, a missing one 0 as in
training); categorical columns are coded with the training vocabularies (``datamodules.categories``; labels unseen
in training are counted). A model with known-future variables reads them on rows of their own at its query times,
after each series' history (its last row with a target or a past-only input observed) with empty targets; a query
time without such a row (the same time within ``TOLERANCE`` time units) skips the window with its reason: nothing
is filled in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cfc_forecast.forecast.trained import Trained
from datamodules.build import series_labels, static_matrix
from datamodules.categories import MISSING, encode, label_hint, unseen
from datamodules.dataset import SeriesTensors
from datamodules.io import Table
from datamodules.scaling import Scaler
from datamodules.stamps import shown_time
from datamodules.timing import TimeCodec, calendar_features
from datamodules.windows import Windows, searchsorted_by_series

TOLERANCE = 1e-6  # time units: a row "at" a query time
AFTER_END = "give rows after the end with empty targets"  # the fix for a missing known-future row (predict's)


def category_codes(table: Table, trained: Trained) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
    """Codes of the time-varying (N, Vc) and static (n_series, Sc) categorical columns with the training
    vocabularies, and per column with labels unseen in training: ``{"values": n, "examples": first five}``, with
    ``"hint"`` where they look like a training label written otherwise (``categories.label_hint``)."""
    frame, ids, vocab = table.frame, table.series_ids, trained.vocabularies
    labels = {c: frame[c] for c in dict.fromkeys(trained.cat_inputs + trained.cat_future)}
    static = {c: series_labels(frame, c, ids) for c in trained.cat_static}
    unseen_labels = {}
    for c, values in (labels | static).items():
        n, examples = unseen(values, vocab[c])
        if n:
            hint = label_hint(examples, vocab[c])
            unseen_labels[c] = {"values": n, "examples": examples, **({"hint": hint} if hint else {})}
    stack = lambda cols: None if not cols else torch.from_numpy(  # noqa: E731
        np.stack([encode(v, vocab[c]) for c, v in cols.items()], axis=1))  # fmt: skip
    return stack(labels), stack(static), unseen_labels


def untrained_empty(table: Table, trained: Trained, end: np.ndarray, offsets: np.ndarray) -> dict[str, int]:
    """Per categorical column that had no empty value in training: how many empty values the model reads in it
    (coded ``MISSING``, an embedding that was never trained). A past-only column counts each series' history rows
    (up to ``end``, (n_series,) row index: the rows after it carry known-future values), a known-future column
    every row, a static column each series without a label. Empty for checkpoints that do not record it."""
    if trained.missing_in_training is None:
        return {}
    frame, trained_empty = table.frame, set(trained.missing_in_training)
    in_history = np.arange(frame.height) <= np.repeat(end, np.diff(offsets))
    counts = {}
    for c in dict.fromkeys(trained.cat_inputs + trained.cat_future):
        empty = frame[c].is_null().to_numpy() & (in_history | (c in trained.cat_future))
        counts[c] = int(empty.sum())
    for c in trained.cat_static:
        counts[c] = series_labels(frame, c, table.series_ids).null_count()
    return {c: n for c, n in counts.items() if n and c not in trained_empty}


def with_empty(unseen_labels: dict[str, Any], empty: dict[str, int]) -> dict[str, Any]:
    """``unseen_labels`` (``category_codes``) with ``"empty": n`` per column of ``untrained_empty``."""
    out = {c: dict(u) for c, u in unseen_labels.items()}
    for c, n in empty.items():
        out.setdefault(c, {"values": 0, "examples": []})["empty"] = n
    return out


def static_values(table: Table, trained: Trained) -> torch.Tensor | None:
    """(n_series, S) numeric static covariates scaled with the training scaler; a missing one is 0, as in training."""
    if not trained.static:
        return None
    n = len(table.series_ids)
    raw = static_matrix(table.frame, trained.static, n, table.series_ids)
    scaled = Scaler(trained.static_loc, trained.static_scale, trained.static).transform(raw, np.zeros(n, np.int64))
    return torch.from_numpy(np.nan_to_num(scaled).astype(np.float32))


def history_end(trained: Trained, mask: np.ndarray, codes: torch.Tensor | None, offsets: np.ndarray) -> np.ndarray:
    """(n_series,) each series' last history row: its last row for a model without known-future variables; else
    its last row with a target or a past-only input observed (the rows after it, with empty targets, carry the
    known-future values)."""
    if not trained.has_future:
        return offsets[1:] - 1
    cols = [trained.variables.index(c) for c in trained.variables
            if c in trained.targets or (c in trained.inputs and c not in trained.known_future)]  # fmt: skip
    seen = mask[:, cols].any(axis=1)
    cat_dyn = list(dict.fromkeys(trained.cat_inputs + trained.cat_future))
    past = [cat_dyn.index(c) for c in trained.cat_inputs if c not in trained.cat_future]
    if past:
        seen |= (codes[:, past] != MISSING).any(dim=1).numpy()
    index = np.where(seen, np.arange(len(seen)), -1)
    return np.maximum.reduceat(index, offsets[:-1]) if len(index) else offsets[1:] - 1


def query_rows(
    series: np.ndarray, times: np.ndarray, offsets: np.ndarray, w: Windows, q: np.ndarray, valid: np.ndarray,
    trained: Trained,
) -> tuple[np.ndarray, np.ndarray]:
    """(W, K) the row at each query time (-1: none; the same time within ``TOLERANCE``), and (W,) whether a
    model with known-future variables lacks a row at one of its queries."""
    if not trained.has_future or not len(w):
        return np.full(q.shape, -1, dtype=np.int64), np.zeros(len(w), dtype=bool)
    at = (w.origin[:, None] + q).reshape(-1)
    owner = np.repeat(w.series, q.shape[1])
    row = searchsorted_by_series(series, times, owner, at - TOLERANCE, "left")
    inside = row < offsets[owner + 1]
    found = inside & (np.abs(times[np.minimum(row, len(times) - 1)] - at) <= TOLERANCE)
    rows = np.where(found, row, -1).reshape(q.shape)
    return rows, ((rows < 0) & valid).any(axis=1)


def _future_values(
    w: Windows, q: np.ndarray, valid: np.ndarray, rows: np.ndarray, scaled: np.ndarray, trained: Trained,
    codec: TimeCodec,
) -> np.ndarray:
    """(W, K, Fk) float32: the numeric known-future variables at the query rows (scaled; an empty cell is 0, as in
    training), then the calendar features of the query times; 0 at padded queries."""
    cols = [trained.variables.index(c) for c in trained.known_future]
    known = scaled[np.maximum(rows, 0)][..., cols]  # (W, K, Fk_numeric)
    cal = calendar_features((w.origin[:, None] + q).reshape(-1), codec, trained.calendar).reshape(*q.shape, -1)
    return (np.concatenate([known, cal], axis=-1) * valid[..., None]).astype(np.float32)


def no_row_reasons(
    reasons: np.ndarray, no_row: np.ndarray, rows: np.ndarray, w: Windows, q: np.ndarray, valid: np.ndarray,
    trained: Trained, codec: TimeCodec,
) -> None:
    """Set ``reasons`` (W,) of the windows that lack a row at a query time and nothing else stopped: the
    covariates and the first such time."""
    if not no_row.any():
        return
    first = np.argmax((rows < 0) & valid, axis=1)
    stamps = np.asarray([shown_time(t, codec) for t in w.origin + q[np.arange(len(w)), first]], dtype=object)
    late = no_row & np.asarray([r is None for r in reasons], dtype=bool)
    names = ", ".join(trained.known_future + trained.cat_future)
    reasons[late] = [f"no row with the known-future covariates [{names}] at a query time (first: {t}); {AFTER_END}"
                     for t in stamps[late]]  # fmt: skip


def future_inputs(
    w: Windows, q: np.ndarray, valid: np.ndarray, rows: np.ndarray, scaled: np.ndarray, tensors: SeriesTensors,
    trained: Trained, codec: TimeCodec,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The windows' (W, K, Fk) float32 numeric known-future covariates and calendar features, and (W, K, Fkc)
    int64 categorical codes, at the query times (0 at padded queries); None where the model reads none or no
    window is left."""
    future = future_cat = None
    if (trained.calendar or trained.known_future) and len(w):
        future = torch.from_numpy(_future_values(w, q, valid, rows, scaled, trained, codec))
    if trained.cat_future and len(w):
        picked = tensors.codes[torch.from_numpy(np.maximum(rows, 0))][..., tensors.future_cat_cols]  # (W, K, Fkc)
        future_cat = picked * torch.from_numpy(valid)[..., None]
    return future, future_cat
