"""``ParquetForecastWriter``: forecasts in long layout, in the data's own units and time stamps.

Each process writes its part (``part-rank<r>.parquet``); after a barrier rank 0 merges the parts into one file
(written to a temporary name, then renamed, so a reader never sees half a file) and removes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import polars as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


def forecast_frame(outputs: list[dict[str, torch.Tensor]], dm: Any, quantiles: list[float] | None) -> pl.DataFrame:
    """Long-layout forecasts from ``ForecastModule.predict_step`` outputs.

    Args:
        outputs: the predict_step dicts of one process.
        dm: the DataModule that made the batches (``series_ids``, ``target_names``, ``decode_times``).
        quantiles: the model's quantile levels (a column ``q<level>`` each), or None.

    Returns:
        Columns ``series``, ``origin_time``, ``time``, ``variable``, ``prediction`` (the point forecast) and,
        with quantiles, one column per level; one row per window, query and target.
    """
    if not outputs:
        return pl.DataFrame()
    cat = {k: _cat_padded([o[k] for o in outputs]).cpu().numpy() for k in outputs[0]}
    pred, mask = cat["prediction"], cat["mask"]  # (N, K, C, Q), (N, K)
    win, k = np.nonzero(mask)  # real queries
    names = list(dm.target_names)
    c = len(names)
    win_c, k_c = np.repeat(win, c), np.repeat(k, c)
    var_c = np.tile(np.arange(c), len(win))
    values = pred[win_c, k_c, var_c]  # (rows, Q)
    q = list(quantiles or [])
    point = min(range(len(q)), key=lambda i: abs(q[i] - 0.5)) if q else 0
    columns = {
        "series": pl.Series(dm.series_ids).gather(cat["series"][win_c]),
        "origin_time": dm.decode_times(cat["origin"][win_c]),
        "time": dm.decode_times(cat["time"][win_c, k_c]),
        "variable": pl.Series(names).gather(var_c),
        # a calibrated model's own point forecast (its quantile columns are rearranged), else the output nearest 0.5
        "prediction": cat["point"][win_c, k_c, var_c] if "point" in cat else values[:, point],
    }
    for i, level in enumerate(q):
        columns[f"q{level:g}"] = values[:, i]
    return pl.DataFrame(columns)


def _cat_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along the windows; batches of a split pad their queries to their own K (a continuous-time head's
    windows hold different numbers of queries), so (B, K, ...) parts are padded to the largest K first (padded
    queries are masked, as within a batch)."""
    if parts[0].dim() < 2 or len({p.shape[1] for p in parts}) == 1:
        return torch.cat(parts)
    k = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, k - p.shape[1])) for p in parts])


class ParquetForecastWriter(BasePredictionWriter):
    """Write a ``predict`` run's forecasts to ``<output_dir>/<filename>`` (long layout, original units).

    Args:
        output_dir: folder of the output (created). filename: the merged file's name.
    """

    def __init__(self, output_dir: str, filename: str = "predictions.parquet") -> None:
        super().__init__(write_interval="epoch")
        self.output_dir, self.filename = Path(output_dir), filename

    @property
    def path(self) -> Path:
        """The merged output file."""
        return self.output_dir / self.filename

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        outputs = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        quantiles = getattr(pl_module, "output_levels", None)
        frame = forecast_frame(list(outputs), trainer.datamodule, quantiles)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        part = self.output_dir / f"part-rank{rank}.parquet"
        frame.write_parquet(part)
        trainer.strategy.barrier("forecast-writer")
        if rank == 0:
            parts = [self.output_dir / f"part-rank{r}.parquet" for r in range(trainer.world_size)]
            frames = [f for p in parts if (f := pl.read_parquet(p)).height]
            merged = pl.concat(frames) if frames else frame
            if merged.height:
                # the unrepeated sampler gives each window to one rank; unique() guards against a padded one
                merged = merged.unique(["series", "origin_time", "time", "variable"], maintain_order=True)
                merged = merged.sort(["series", "origin_time", "time", "variable"], maintain_order=True)
            tmp = self.path.with_suffix(".tmp")
            merged.write_parquet(tmp)
            os.replace(tmp, self.path)
            for p in parts:
                p.unlink(missing_ok=True)
        trainer.strategy.barrier("forecast-writer-done")
