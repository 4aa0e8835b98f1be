"""``PhysioNetDataModule``: PhysioNet/CinC 2012, the t-PatchGNN irregular forecasting protocol.

Protocol (../shared/data/README.md): all 12,000 records (sets A, B, C), 41 channels (Age, Gender, Height,
ICUType, Weight and 36 time series; RecordID dropped), time in hours (``hh + mm/60``), values of one variable at
one time stamp averaged; split by record 60/20/20 with ``p = RandomState(42).permutation(12000)`` over the
records ordered by set, then RecordID (test ``p[:2400]``, train ``p[2400:9600]``, val ``p[9600:]``); observe
every value before 24 h, forecast every observed value in [24 h, 48 h]; per-channel min-max scaling over the
train+val records. Values are used as recorded (a missing static descriptor's -1 counts as an observation);
``minus_one_missing=True`` treats every -1 as missing instead (not the comparable number).

Parsing: the 12,000 member files are concatenated into one CSV buffer and read by polars in one call; the
parsed long table is cached as Parquet keyed by the sha256 of the sources.
"""

from __future__ import annotations

import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import polars as pl

from datamodules.base import SeriesDataModule
from datamodules.paths import cache_dir, data_dir, require_file, sha256_of

log = logging.getLogger(__name__)

SETS = ("a", "b", "c")
DESCRIPTORS = ["Age", "Gender", "Height", "ICUType", "Weight"]
SERIES_VARIABLES = [
    "Albumin",
    "ALP",
    "ALT",
    "AST",
    "Bilirubin",
    "BUN",
    "Cholesterol",
    "Creatinine",
    "DiasABP",
    "FiO2",
    "GCS",
    "Glucose",
    "HCO3",
    "HCT",
    "HR",
    "K",
    "Lactate",
    "Mg",
    "MAP",
    "MechVent",
    "Na",
    "NIDiasABP",
    "NIMAP",
    "NISysABP",
    "PaCO2",
    "PaO2",
    "pH",
    "Platelets",
    "RespRate",
    "SaO2",
    "SysABP",
    "Temp",
    "TroponinI",
    "TroponinT",
    "Urine",
    "WBC",
]
CHANNELS = DESCRIPTORS + SERIES_VARIABLES
SCHEMA = {"time": pl.String, "variable": pl.String, "value": pl.Float64}


def _members(source: Path) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every record file of one set, from a tarball or an extracted folder."""
    if source.is_dir():
        return [(p.name, p.read_bytes()) for p in sorted(source.glob("*.txt"))]
    with tarfile.open(source, "r:gz") as tar:
        return [(Path(m.name).name, tar.extractfile(m).read()) for m in tar if m.isfile() and m.name.endswith(".txt")]


def parse_set(source: Path, set_name: str) -> pl.DataFrame:
    """Long table ``set, record, time (h), variable, value`` of one set; one polars read for all its files.

    Raises:
        ValueError: a member that is not a ``Time,Parameter,Value`` file, or rows that do not parse.
    """
    bodies, records, lines = [], [], []
    for name, data in _members(source):
        header, _, body = data.partition(b"\n")
        if header.strip() != b"Time,Parameter,Value":
            raise ValueError(f"{source}: {name} does not start with 'Time,Parameter,Value'")
        body = body if body.endswith(b"\n") or not body else body + b"\n"
        bodies.append(body)
        records.append(int(Path(name).stem))
        lines.append(body.count(b"\n"))
    frame = pl.read_csv(b"".join(bodies), has_header=False, new_columns=list(SCHEMA), schema=SCHEMA)
    if frame.height != sum(lines):
        raise ValueError(f"{source}: parsed {frame.height} rows from {sum(lines)} lines; a file is malformed")
    hm = frame["time"].str.split_exact(":", 1).struct.unnest()
    hours = hm["field_0"].cast(pl.Int32, strict=False) + hm["field_1"].cast(pl.Int32, strict=False) / 60.0
    if hours.null_count():
        raise ValueError(f"{source}: {hours.null_count()} time stamps are not hh:mm")
    return frame.with_columns(
        pl.lit(set_name).alias("set"),
        pl.Series("record", np.repeat(records, lines), pl.Int64),
        hours.alias("time"),
    ).select("set", "record", "time", "variable", "value")


def load_physionet(root: Path, cache: Path | None) -> pl.DataFrame:
    """The parsed long table of sets A, B and C, from the Parquet cache when its source checksum matches."""
    sources = []
    for s in SETS:
        tarball, folder = root / f"set-{s}.tar.gz", root / f"set-{s}"
        sources.append(tarball if tarball.exists() or not folder.is_dir() else folder)
    for src in sources:
        require_file(src, "PhysioNet 2012 set")
    files = [f for src in sources for f in ([src] if src.is_file() else sorted(src.glob("*.txt")))]
    target = None
    if cache is not None:
        target = cache / f"physionet2012-{sha256_of(files)[:20]}.parquet"
        if target.exists():
            return pl.read_parquet(target)
    frame = pl.concat([parse_set(src, s) for src, s in zip(sources, SETS, strict=True)])
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        frame.write_parquet(tmp)
        os.replace(tmp, target)  # atomic: a concurrent reader sees the old state or the whole file
    return frame


class PhysioNetDataModule(SeriesDataModule):
    """PhysioNet 2012 ICU records: observe the first 24 h, forecast every observation in [24 h, 48 h].

    Args:
        data_dir: folder holding ``physionet2012/`` (tarballs or extracted ``set-x/`` folders); default
            ``$CFC_FORECAST_DATA`` or ``../shared/data``.
        cache_dir: where the parsed table is cached as Parquet; default ``$CFC_FORECAST_CACHE`` or
            ``~/.cache/cfc_forecast``.
        use_cache: read and write the cache.
        minus_one_missing: treat every recorded -1 as missing (the reference keeps it as a value).
        observe_hours: the origin: inputs before it, targets from it on (24 in the protocol).
        forecast_hours: targets in [origin, origin + forecast_hours] (24 in the protocol).
        batch_size: records per batch. num_workers: DataLoader workers. pin_memory: pin batches for a GPU.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        cache_dir: str | None = None,
        use_cache: bool = True,
        minus_one_missing: bool = False,
        observe_hours: float = 24.0,
        forecast_hours: float = 24.0,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            layout="long",
            id_column="record",
            time_column="time",
            targets=CHANNELS,
            inputs=CHANNELS,
            time_unit="h",
            duplicates="mean",
            origin=observe_hours,
            forecast=forecast_hours,
            split_by="series",
            split_fractions=(0.6, 0.2, 0.2),
            seed=42,
            scaling="minmax",
            scale_fit="train+val",
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        self.save_hyperparameters()

    def _root(self) -> Path:
        return data_dir(self.hparams.data_dir) / "physionet2012"

    def _source(self) -> str:
        return str(self._root())

    def _read(self) -> pl.DataFrame:
        h = self.hparams
        frame = load_physionet(self._root(), cache_dir(h.cache_dir) if h.use_cache else None)
        firsts = frame.group_by("set").agg(pl.col("record").min().alias("lo"), pl.col("record").max().alias("hi"))
        firsts = firsts.sort("set")
        if (firsts["lo"][1:].to_numpy() <= firsts["hi"][:-1].to_numpy()).any():
            raise ValueError(
                f"{self._root()}: record ids of the sets overlap; the protocol's order needs set A < set B < set C"
            )
        if h.minus_one_missing:
            frame = frame.with_columns(pl.when(pl.col("value") == -1).then(None).otherwise("value").alias("value"))
        return frame.drop("set")
