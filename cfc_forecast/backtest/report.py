"""What a backtest could not score: the series skipped at each origin and the forecasts without an actual.

Each origin's ``forecast_report`` says which series it skipped (with ``predict``'s reasons); they are kept beside the
origin's forecasts (``origins/<i>.json``) and gathered into the backtest folder's ``skipped_series.csv`` (``series,
reason``, the reason led by its origin as ``predict --origins`` writes it), counted in the closing line and in
``backtest.json``. A backtest where no forecast has an observed value is refused (it has no score to show); one
where only some (series, origin) pairs are scored warns with the counts.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from cfc_forecast.errors import UserError
from cfc_forecast.forecast.covariates import AFTER_END
from cfc_forecast.forecast.rows import Forecasts
from cfc_forecast.forecast.store import reason_kind
from cfc_forecast.forecast.trained import Trained

SKIPPED = "skipped_series.csv"


def origin_record(report: Forecasts, origin: str, trained: Trained) -> dict[str, Any]:
    """What one origin's forecast left out: ``n_series``, ``n_forecast`` and ``skipped`` ([series, reason] pairs,
    each reason led by ``origin <origin>: `` as ``predict --origins`` writes it, with the backtest's own fix:
    :func:`backtest_reason`)."""
    skipped = [[s, backtest_reason(r if r.startswith("origin ") else f"origin {origin}: {r}", trained)]
               for s, r in report.skipped.iter_rows()]  # fmt: skip
    return {"n_series": report.n_series, "n_forecast": report.n_forecast, "skipped": skipped}


def backtest_reason(reason: str, trained: Trained) -> str:
    """``predict``'s reason with a fix a backtest can act on: a missing known-future row is not fixed by adding
    rows after the end (in a backtest the rows after the origin are the data's own), so the reason says the data
    has none at that query time and, for a grid head, that its grid times are not the data's rows."""
    if not reason.endswith(f"; {AFTER_END}"):
        return reason
    why = reason[: -len(AFTER_END)] + "the data has no row with them at that time"
    if trained.head != "continuous":
        why += (f": a {trained.head}-head model forecasts on its grid (origin + k x each series' spacing) and those "
                "times do not match the data's rows; fit with --model.head continuous")  # fmt: skip
    return why


def write_record(path: Path, record: dict[str, Any]) -> None:
    """``record`` as JSON at ``path``, atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


def gather(out: Path, n_windows: int) -> tuple[pl.DataFrame, int]:
    """Every origin's skipped series as ``series, reason`` and the (series, origin) pairs in the input (the sum
    over origins of the series in the data); a folder of a backtest from before these records counts none."""
    rows, pairs = [], 0
    for i in range(n_windows):
        path = out / "origins" / f"{i:04d}.json"
        if path.exists():
            record = json.loads(path.read_text())
            rows += record["skipped"]
            pairs += record["n_series"]
    return pl.DataFrame(rows, schema={"series": pl.String, "reason": pl.String}, orient="row"), pairs


def counts(frame: pl.DataFrame, skipped: pl.DataFrame, pairs: int) -> dict[str, Any]:
    """The counts ``backtest.json`` holds: (series, origin) pairs in the input, skipped, forecast, scored (with at
    least one forecast that has an actual), and the skipped ones by reason."""
    model = frame.filter(pl.col("forecaster") == "model")
    scored = model.filter(pl.col("actual").is_not_null())
    return {
        "series_origins": pairs,
        "skipped": int(skipped["series"].is_not_null().sum()),  # a null series: rows without a series id
        "forecast": model.select("series", "origin_time").n_unique() if model.height else 0,
        "scored": scored.select("series", "origin_time").n_unique() if scored.height else 0,
        "scored_origins": scored["origin_time"].n_unique(),
        "scored_series": scored["series"].n_unique(),
        "skipped_by_reason": dict(Counter(map(reason_kind, skipped["reason"])).most_common()),
    }


def summary_lines(tally: dict[str, Any], out: Path) -> list[str]:
    """``predict``'s lines on skipped series (per series and origin), for the closing summary."""
    if not tally["skipped_by_reason"]:
        return []
    lines = [f"series skipped: {tally['skipped']} of {tally['series_origins']} (series, origin) (see {out / SKIPPED})"]
    return lines + [f"  {n:>8}  {reason}" for reason, n in tally["skipped_by_reason"].items()]


def partial_warning(tally: dict[str, Any], n_windows: int, trained: Trained) -> list[str]:
    """A warning when only some (series, origin) pairs are scored; none when all are (or none: see :func:`refuse`).
    It names ``skipped_series.csv`` only when series were skipped (the file is written then), and a forecast without
    an observed value from a grid head comes with the hint of :func:`refuse`."""
    if not tally["scored"] or tally["scored"] >= tally["series_origins"]:
        return []
    unscored = tally["forecast"] - tally["scored"]
    parts = [f"{tally['skipped']} skipped ({SKIPPED})"] if tally["skipped"] else []
    if unscored:
        part = f"{unscored} forecast only at times without an observed value"
        if trained.head != "continuous":
            part += (f" (a {trained.head}-head model forecasts on its grid, origin + k x each series' spacing: where "
                     "the data has no rows at those times, fit with --model.head continuous)")  # fmt: skip
        parts.append(part)
    return [
        f"scored {tally['scored']} of {tally['series_origins']} (series, origin) pairs ({tally['scored_origins']} of "
        f"{n_windows} origins, {tally['scored_series']} series): {', '.join(parts)}"
    ]


def refuse(tally: dict[str, Any], trained: Trained, out: Path) -> None:
    """Refuse a backtest in which no forecast has an observed value (its scores would be empty), saying why.

    Raises:
        UserError: when ``tally`` counts no scored pair; the message names the cause and the fix.
    """
    if tally["scored"]:
        return
    kept = f"the forecasts{' and ' + SKIPPED if tally['skipped_by_reason'] else ''} are kept in {out}"
    grid = (
        f"a {trained.head}-head model forecasts on its grid (origin + k x each series' spacing, about "
        f"{trained.median_step:.6g} {trained.time_unit}) and this data has no rows at those times; fit with "
        "--model.head continuous (it forecasts at each series' observed times), or give data with rows on that grid"
    )
    if not tally["forecast"]:
        top = next(iter(tally["skipped_by_reason"]), "no series in the data")
        grid_miss = trained.head != "continuous" and "known-future" in top
        if grid_miss:  # the reason's own fix (backtest_reason) is the grid's, said in full below
            top = top.split("; ")[0]
        why = f"no series could be forecast at any origin ({tally['skipped']} (series, origin) skipped, e.g. {top})"
        if grid_miss:
            why += f": {grid}"
        raise UserError(f"{why}; {kept}")
    if trained.head != "continuous":
        raise UserError(f"no forecast time has an observed value: {grid}; {kept}")
    raise UserError(f"no forecast time has an observed value: the series have no target value in [origin, origin + "
                    f"span] at any origin (fewer --n_windows or a longer --horizon); {kept}")  # fmt: skip
