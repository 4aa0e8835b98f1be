"""``Walker2dDataModule``: the CfC paper's irregular Walker2d regression task (its ``Walker2dImitationData``).

Protocol (../shared/data/README.md): sort the 400 rollout files, shuffle them with ``RandomState(125487)``; the
first ``int(0.15 n)`` are test, up to ``int(0.25 n)`` val, the rest train. Per file x = rows ``[0, T-1)``, y = rows
``[1, T)``. One ``RandomState(891374)`` draws, over train, then val, then test files, one number per raw step:
below 0.9 keeps the step with time input ``skip`` (raw steps since the previous kept one). Windows of 64 kept
steps, stride 16, starts ``range(0, n - 64, 16)``; every step's next state is a target, in raw units.

Here the kept steps become rows with time = raw index + 1 (so dt = skip, the first one counted from 0), inputs
``s0..s16`` and per-step targets ``n0..n16`` (the raw next state). ``range(0, n - 64, 16)`` never ends a window at
the last kept step, so that step is dropped and the general count windows (lookback 64, horizon 0, stride 16)
give exactly the paper's windows.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import polars as pl

from datamodules.base import SeriesDataModule
from datamodules.paths import data_dir, require_file

STATE = [f"s{i}" for i in range(17)]
NEXT = [f"n{i}" for i in range(17)]


def load_rollouts(path: Path) -> dict[str, np.ndarray]:
    """Rollout name -> float64 (T, 17) array, from the tarball (or a folder of .npy files)."""
    if path.is_dir():
        return {p.stem: np.load(p) for p in sorted(path.glob("*.npy"))}
    with tarfile.open(path, "r:gz") as tar:
        return {
            Path(m.name).stem: np.load(io.BytesIO(tar.extractfile(m).read()))
            for m in tar
            if m.isfile() and m.name.endswith(".npy")
        }


def paper_split(names: list[str]) -> dict[str, list[str]]:
    """The paper's file split: shuffle the sorted names, then test 15%, val 10%, train the rest."""
    shuffled = sorted(names)
    np.random.RandomState(125487).shuffle(shuffled)  # noqa: NPY002 - the protocol's generator
    n_test, n_val_end = int(0.15 * len(shuffled)), int((0.15 + 0.1) * len(shuffled))
    return {"train": shuffled[n_val_end:], "val": shuffled[n_test:n_val_end], "test": shuffled[:n_test]}


def irregular_frame(rollouts: dict[str, np.ndarray], split: dict[str, list[str]]) -> pl.DataFrame:
    """Wide frame ``file, time, s0..s16, n0..n16`` of the kept steps (the last kept step of each file dropped)."""
    order = split["train"] + split["val"] + split["test"]  # the order the paper's generator is used in
    steps = np.array([len(rollouts[f]) - 1 for f in order])
    keep = np.random.RandomState(891374).rand(int(steps.sum())) < 0.9  # noqa: NPY002 - the protocol's generator
    owner = np.repeat(np.arange(len(order)), steps)
    local = np.arange(len(owner)) - np.repeat(np.cumsum(steps) - steps, steps)
    last_kept = np.zeros_like(keep)
    kept_idx = np.flatnonzero(keep)
    last_kept[kept_idx[np.r_[owner[kept_idx][1:] != owner[kept_idx][:-1], True]]] = True
    rows = keep & ~last_kept
    stacked = np.concatenate([rollouts[f] for f in order])  # raw rows, T per file
    raw_row = np.arange(len(owner)) + owner  # index of raw step `local` of its file within `stacked`
    cols = {"file": np.asarray(order)[owner[rows]], "time": (local[rows] + 1).astype(np.float64)}
    state, nxt = stacked[raw_row[rows]], stacked[raw_row[rows] + 1]
    cols |= {c: state[:, i] for i, c in enumerate(STATE)} | {c: nxt[:, i] for i, c in enumerate(NEXT)}
    return pl.DataFrame(cols)


class Walker2dDataModule(SeriesDataModule):
    """Walker2d rollouts made irregular, per-step next-state regression in raw units.

    Args:
        data_dir: folder holding ``walker2d/walker.tar.gz``; default ``$CFC_FORECAST_DATA`` or ``../shared/data``.
        seq_len: kept steps per window (64 in the paper); windows start every ``seq_len // 4`` steps.
        batch_size: windows per batch. num_workers: DataLoader workers. pin_memory: pin batches for a GPU.
    """

    first_dt_from_zero = True  # the paper's first kept step has time input = its raw index + 1

    def __init__(
        self,
        data_dir: str | None = None,
        seq_len: int = 64,
        batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(
            id_column="file",
            time_column="time",
            inputs=STATE,
            targets=NEXT,
            time_unit="step",
            lookback=seq_len,
            horizon=0,
            stride=seq_len // 4,
            step_targets=True,
            split_by="series",
            scaling="none",
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        self.save_hyperparameters()
        self._split: dict[str, list[str]] = {}

    def _file(self) -> Path:
        return require_file(data_dir(self.hparams.data_dir) / "walker2d" / "walker.tar.gz", "Walker2d tarball")

    def _source(self) -> str:
        return str(self._file())

    def _read(self) -> pl.DataFrame:
        rollouts = load_rollouts(self._file())
        self._split = paper_split(list(rollouts))
        return irregular_frame(rollouts, self._split)

    def _assign_series(self, ids: pl.Series) -> np.ndarray:
        code = {f: k for k, split in enumerate(("train", "val", "test")) for f in self._split[split]}
        return np.array([code[f] for f in ids.to_list()], dtype=np.int64)

    @property
    def target_input_index(self) -> list[int]:
        """Next state ``n_i`` is forecast from current state ``s_i``."""
        return list(range(len(STATE)))

    @property
    def split_files(self) -> dict[str, list[str]]:
        """The rollout names of each split, in the paper's order."""
        self._ensure_built()
        return self._split
