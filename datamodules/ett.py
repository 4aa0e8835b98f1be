"""``ETTDataModule``: ETTh1 / ETTh2 / ETTm1 / ETTm2, the standard long-horizon protocol.

Protocol (Informer / Autoformer / Time-Series-Library, ../shared/data/README.md): split by rows, 12 / 4 / 4
months of 30 days (ETTh: train ``[0, 8640)``, val ``[8640, 11520)``, test ``[11520, 14400)``; ETTm: 4x), later
rows unused; val and test windows begin ``lookback`` rows before their range (inputs reach back, targets never
leave it); per-channel standard scaling (ddof 0) fitted on the train rows; stride 1.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import polars as pl

from datamodules.base import SeriesDataModule
from datamodules.paths import data_dir, require_file
from datamodules.timing import CalendarFeature

CHANNELS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
START = datetime(2016, 7, 1)
MONTH_ROWS = {"h": 30 * 24, "m": 30 * 24 * 4}


def ett_cutoffs(name: str) -> list[str]:
    """The protocol's train / val / test row borders as time stamps (rows 12, 16 and 20 months in)."""
    kind = name[3]
    step = timedelta(hours=1) if kind == "h" else timedelta(minutes=15)
    rows = [12 * MONTH_ROWS[kind], 16 * MONTH_ROWS[kind], 20 * MONTH_ROWS[kind]]
    return [(START + r * step).isoformat(sep=" ") for r in rows]


class ETTDataModule(SeriesDataModule):
    """Electricity Transformer Temperature data with the standard split and scaling.

    Args:
        name: which file: ETTh1, ETTh2, ETTm1 or ETTm2 (``<data_dir>/ETT/<name>.csv``).
        data_dir: folder holding ``ETT/``; default ``$CFC_FORECAST_DATA`` or ``../shared/data``.
        lookback: L input rows (96 in the benchmark tables). horizon: K forecast rows (96, 192, 336, 720).
        features: "M" 7 -> 7 channels, "S" OT -> OT, "MS" 7 -> OT.
        calendar: calendar features of the query times (known-future covariates); none in the protocol.
        time_unit: unit of times in a batch (an ETTh step is 1 h, an ETTm step 0.25 h).
        stride: rows between window starts (1 in the protocol).
        batch_size: windows per batch. num_workers: DataLoader workers. pin_memory: pin batches for a GPU.
    """

    def __init__(
        self,
        name: Literal["ETTh1", "ETTh2", "ETTm1", "ETTm2"] = "ETTh1",
        data_dir: str | None = None,
        lookback: int = 96,
        horizon: int = 96,
        features: Literal["M", "S", "MS"] = "M",
        calendar: list[CalendarFeature] | None = None,
        time_unit: Literal["min", "h"] = "h",
        stride: int = 1,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        targets = CHANNELS if features == "M" else ["OT"]
        inputs = ["OT"] if features == "S" else CHANNELS
        super().__init__(
            time_column="date",
            targets=targets,
            inputs=inputs,
            calendar=calendar,
            time_unit=time_unit,
            lookback=lookback,
            horizon=horizon,
            stride=stride,
            split_times=ett_cutoffs(name),
            scaling="standard",
            scale_fit="train",
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        self.save_hyperparameters()

    def _file(self):
        return require_file(data_dir(self.hparams.data_dir) / "ETT" / f"{self.hparams.name}.csv", "ETT file")

    def _source(self) -> str:
        return str(self._file())

    def _read(self) -> pl.DataFrame:
        path = self._file()
        frame = pl.read_csv(path, try_parse_dates=True)
        if frame.columns != ["date", *CHANNELS] or frame.schema["date"] != pl.Datetime("us"):
            raise ValueError(
                f"{path}: expected columns date, {', '.join(CHANNELS)} with date-times; "
                f"got {frame.schema}. Is this an official ETT file?"
            )
        step = timedelta(hours=1) if self.hparams.name[3] == "h" else timedelta(minutes=15)
        gaps = frame["date"].diff().drop_nulls() != step
        if frame["date"][0] != START or gaps.any():
            raise ValueError(
                f"{path}: the protocol's row split needs rows every {step} from {START}; "
                f"this file starts {frame['date'][0]} with {int(gaps.sum())} irregular steps"
            )
        return frame
