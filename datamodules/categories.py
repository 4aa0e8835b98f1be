"""Categorical covariates: the vocabulary learned on the training split, and labels -> integer codes.

A categorical column holds labels ("Clouds", "Rain"; integers count as labels too: ``3`` is the label "3"), read as
text. Its vocabulary is the sorted distinct labels of the TRAINING rows only (nothing seen in validation, test or at
prediction time enters it: no leakage, and the same data always give the same codes). Codes:

- 0 ``UNKNOWN``: a label not in the vocabulary (unseen in training); counted wherever it occurs at prediction time,
  with a hint where it is a number written otherwise than a training label (``"1.0"`` for ``"1"``: ``label_hint``).
- 1 ``MISSING``: an empty cell (null or blank text). An empty category is a value of its own rather than a masked
  one: "no weather reported" may itself say something, and an embedding has no "last value" to carry forward.
  Where training had no empty value in a column, its "missing" embedding is untrained: empty values at prediction
  time are then counted and reported like unseen labels.
- 2 + i: ``vocabulary[i]``.

The vocabulary is a plain list of strings, so a checkpoint stores it safely for ``weights_only=True`` loads.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from cfc_forecast.errors import UserError

UNKNOWN, MISSING, FIRST = 0, 1, 2
MAX_CATEGORIES = 1000


def as_labels(col: pl.Series) -> pl.Series:
    """A column's values as text labels, blank text as null (an empty cell)."""
    text = col.cast(pl.String)
    return text.str.strip_chars().replace("", None)


def vocabulary(labels: pl.Series, column: str, cap: int = MAX_CATEGORIES) -> list[str]:
    """The sorted distinct non-empty labels of a column's training rows.

    Raises:
        UserError: more than ``cap`` distinct labels (never truncated silently), or none at all.
    """
    levels = sorted(labels.drop_nulls().unique().to_list())
    if len(levels) > cap:
        raise UserError(
            f"categorical column {column!r} has {len(levels)} distinct values in the training split, more than the "
            f"cap of {cap}; raise it with --data.max_categories {len(levels)} or leave the column out of categorical"
        )
    if not levels:
        raise UserError(f"categorical column {column!r} has no value in the training split; drop it")
    return levels


def encode(labels: pl.Series, vocab: list[str]) -> np.ndarray:
    """(N,) int64 codes of text labels: 2 + index in ``vocab``, ``MISSING`` for null, ``UNKNOWN`` for the rest."""
    index = pl.DataFrame({"label": vocab, "code": np.arange(FIRST, FIRST + len(vocab), dtype=np.int64)})
    joined = labels.alias("label").to_frame().join(index, on="label", how="left", maintain_order="left")
    code = joined["code"].fill_null(UNKNOWN).to_numpy().astype(np.int64)
    code[labels.is_null().to_numpy()] = MISSING
    return code


def unseen(labels: pl.Series, vocab: list[str]) -> tuple[int, list[str]]:
    """How many non-empty labels are not in ``vocab``, and the first five of them (sorted)."""
    given = labels.drop_nulls()
    bad = given.filter(~given.is_in(pl.Series(vocab, dtype=pl.String).implode()))
    return len(bad), sorted(bad.unique().to_list())[:5]


def label_hint(examples: list[str], vocab: list[str]) -> str | None:
    """A note for unseen labels that are numbers equal to a training label written otherwise (``"1.0"`` where
    training had ``"1"``): labels are text, so they stay unseen; the note names the likely match. None if none."""
    by_value: dict[float, str] = {}
    for v in vocab:
        try:
            by_value.setdefault(float(v), v)
        except ValueError:
            continue
    for label in examples:
        try:
            match = by_value.get(float(label))
        except ValueError:
            continue
        if match is not None:
            how = "write integers without a decimal point" if "." not in match else "write them as training did"
            return f"{label!r} looks like {match!r} of the training labels: {how} (labels are compared as text)"
    return None
