"""Layouts, time stamps and bad input: wide == long, clear errors, counted skips."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from datamodules import SeriesDataModule

KW = {"id_column": "id", "lookback": 2, "horizon": 1, "split_times": [3.0, 4.0]}


def to_long(wide: pl.DataFrame) -> pl.DataFrame:
    return wide.unpivot(index=["id", "time"], variable_name="variable", value_name="value").drop_nulls("value")


def test_wide_and_long_give_identical_batches(tiny_wide: pl.DataFrame) -> None:
    wide = SeriesDataModule.from_frame(tiny_wide, **KW)
    shuffled = to_long(tiny_wide).sample(fraction=1.0, shuffle=True, seed=3)
    assert shuffled["variable"][0] == "y"  # so default variable order must not follow the row order
    long = SeriesDataModule.from_frame(shuffled, layout="long", **KW)
    for split in ("train", "val", "test"):
        a, b = wide.dataset(split), long.dataset(split)
        assert len(a) == len(b) > 0
        ba, bb = a.collate(list(range(len(a)))), b.collate(list(range(len(b))))
        for name in ("x", "x_mask", "t", "dt", "y", "y_mask", "query_t", "target_loc", "target_scale", "origin"):
            assert torch.equal(getattr(ba, name), getattr(bb, name)), name


def test_files_folder_and_glob_read_the_same(tmp_path, tiny_wide: pl.DataFrame) -> None:
    tiny_wide.filter(pl.col("id") == "a").write_csv(tmp_path / "a.csv")
    tiny_wide.filter(pl.col("id") == "b").write_parquet(tmp_path / "b.parquet")
    ref = SeriesDataModule.from_frame(tiny_wide, **KW).dataset("train")
    for path in (str(tmp_path), str(tmp_path / "*.*"), [str(tmp_path / "a.csv"), str(tmp_path / "b.parquet")]):
        ds = SeriesDataModule(path, **KW).dataset("train")
        assert torch.equal(ds.collate([0, 1]).x, ref.collate([0, 1]).x)


def test_time_zones_and_datetime_strings() -> None:
    utc = ["2021-03-27 21:00", "2021-03-27 22:00", "2021-03-27 23:00", "2021-03-28 00:00", "2021-03-28 01:00"]
    stamps = pl.Series("ts", utc).str.to_datetime().dt.replace_time_zone("UTC").dt.convert_time_zone("Europe/Berlin")
    frame = pl.DataFrame({"ts": stamps, "v": [1.0, 2, 3, 4, 5]})
    dm = SeriesDataModule.from_frame(
        frame,
        time_column="ts",
        lookback=2,
        horizon=1,
        time_unit="h",
        calendar=["hour_of_day"],
        split_times=["2030-01-01", "2031-01-01"],
    )
    b = dm.dataset("train").collate([0, 1, 2])
    # 01:00 CET -> 03:00 CEST is one hour of real time (the DST jump)
    assert b.query_t[:, 0].tolist() == [1.0, 1.0, 1.0]
    assert b.future[:, 0, 0].tolist() == pytest.approx([0 / 23 - 0.5, 1 / 23 - 0.5, 3 / 23 - 0.5])
    assert str(dm.decode_times(b.origin[2:]).dtype) == "Datetime(time_unit='us', time_zone='Europe/Berlin')"
    assert dm.decode_times(b.origin[2:] + 1).dt.hour().to_list() == [3]


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        (lambda f: f.rename({"x": "temp"}), {"targets": ["tmep"]}, r"\['tmep'\] not found.*did you mean \[.*'temp'\]"),
        (lambda f: f.with_columns(pl.col("x").cast(pl.String).fill_null("n/a")), {}, r"column 'x' has 1 non-num"),
        (
            lambda f: f.with_columns(pl.col("time").cast(pl.String) + "x"),
            {},
            r"time column 'time' does not parse as date-times",
        ),
        (
            lambda f: f.with_columns(pl.when(pl.col("x") == 4).then(np.inf).otherwise("x").alias("x")),
            {},
            r"column 'x' has 1 infinite",
        ),
        (lambda f: pl.concat([f, f.head(1)]), {}, r"1 duplicate time stamps.*duplicates='mean'"),
        (lambda f: f.head(0), {}, r"no rows"),
        (lambda f: f.with_columns(pl.lit(None, pl.Float64).alias("x")), {}, r"\['x'\] have no observation at all"),
        (
            lambda f: f.with_columns(pl.when(pl.col("time") > 2).then(None).otherwise("id").alias("id")),
            {},
            r"column 'id' has 5 empty cells",
        ),
    ],
)
def test_bad_input_is_a_clear_error(tiny_wide: pl.DataFrame, change, kwargs: dict, message: str) -> None:
    frame = change(tiny_wide)
    with pytest.raises(ValueError, match=message):
        SeriesDataModule.from_frame(frame, **{**KW, **kwargs}).setup()


def test_bad_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="lookback/horizon"):
        SeriesDataModule(lookback=3, horizon=1, observe="2h")
    with pytest.raises(ValueError, match="choose a windowing"):
        SeriesDataModule()
    with pytest.raises(ValueError, match="not a duration"):
        SeriesDataModule(observe="two days", forecast="1d")
    with pytest.raises(ValueError, match="split_fractions"):
        SeriesDataModule(lookback=3, horizon=1, split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="time unit"):
        SeriesDataModule(lookback=3, horizon=1, time_unit="fortnight")


def test_duplicates_aggregate_and_skips_are_counted(tiny_wide: pl.DataFrame) -> None:
    dup = pl.concat([tiny_wide, tiny_wide.head(1).with_columns(pl.lit(3.0).alias("x"), pl.lit(None).alias("y"))])
    dm = SeriesDataModule.from_frame(dup, duplicates="mean", scaling="none", **KW)
    b = dm.dataset("train").collate([0])
    assert b.x[0, 0].tolist() == [2.0, 0.0]  # x: mean of 1 and 3; y: the single value 0
    empty_row = pl.DataFrame({"id": ["a"], "time": [9.0], "x": [None], "y": [None]}, schema=tiny_wide.schema)
    dm = SeriesDataModule.from_frame(pl.concat([tiny_wide, empty_row]), **KW)
    dm.setup()
    assert dm.counts == {"rows with no value observed": 1}
    long = to_long(tiny_wide).with_columns(
        pl.when(pl.col("time") == 5).then(None).otherwise("variable").alias("variable")
    )
    dm = SeriesDataModule.from_frame(long, layout="long", **KW)
    dm.setup()
    assert dm.counts == {"rows with an empty variable name": 2}
