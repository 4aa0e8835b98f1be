"""``ForecastPlot``: at the end of ``test``, a PNG of a few test windows (history, truth, forecast, interval)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback

from cfc_forecast.batch import Batch


class ForecastPlot(Callback):
    """Draw the first ``n_windows`` windows of the first test batch into the run directory, one row each.

    Every target gets a column: its history (when an input holds the same quantity), the observed targets and
    the forecast at the query times (with the outermost quantile interval when trained with quantiles), all in the
    data's original units. For the per-step head the forecasts and targets sit at the input steps: each is the
    next value, drawn at the time of the step it was made at.

    Args:
        n_windows: windows to draw. filename: the PNG's name in the run directory.
    """

    def __init__(self, n_windows: int = 4, filename: str = "test_forecasts.png") -> None:
        self.n_windows, self.filename = n_windows, filename
        self._batch: Batch | None = None
        self._pred: torch.Tensor | None = None
        self.path: Path | None = None

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Batch, batch_idx: int, *args
    ) -> None:
        if self._batch is not None or not trainer.is_global_zero:
            return
        with torch.no_grad():
            self._pred = batch.to_original_units(pl_module(batch)).cpu()
        self._batch = batch.to("cpu")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch is None or not trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        b, pred = self._batch, self._pred
        dm = trainer.datamodule
        names = list(getattr(dm, "target_names", [f"target {c}" for c in range(pred.shape[2])]))
        source = list(getattr(dm, "target_input_index", [-1] * len(names)))
        rows = min(self.n_windows, b.batch_size)
        fig, axes = plt.subplots(rows, len(names), figsize=(3.2 * len(names), 2.2 * rows), squeeze=False)
        point = getattr(pl_module, "point", 0)
        per_step = getattr(pl_module, "head_name", "") == "step"
        # where forecasts and their targets sit: the query times, or the input steps of the per-step head
        at_t, at_mask = (b.t, b.step_mask) if per_step else (b.query_t, b.query_mask)
        truth, truth_mask = (b.y_step, b.y_step_mask) if per_step else (b.y, b.y_mask)
        for i in range(rows):
            steps, queries = b.step_mask[i], at_mask[i]
            for c, name in enumerate(names):
                ax = axes[i, c]
                scale, loc = float(b.target_scale[i, c]), float(b.target_loc[i, c])
                if source[c] >= 0:
                    seen = steps & b.x_mask[i, :, source[c]]
                    ax.plot(b.t[i, seen], b.x[i, seen, source[c]] * scale + loc, ".-", color="0.5", ms=3, lw=0.8)
                if truth is not None:
                    seen = queries & truth_mask[i, :, c]
                    ax.plot(at_t[i, seen], truth[i, seen, c] * scale + loc, "k.", ms=4)
                q = at_t[i, queries]
                ax.plot(q, pred[i, queries, c, point], "-", color="tab:blue", lw=1.2)
                if pred.shape[-1] > 1:
                    ax.fill_between(q, pred[i, queries, c, 0], pred[i, queries, c, -1], color="tab:blue", alpha=0.2)
                ax.axvline(0.0, color="0.8", lw=0.8)
                if i == 0:
                    ax.set_title(name, fontsize=9)
        fig.supxlabel(f"time relative to the forecast origin ({getattr(dm, 'time_unit', '')})", fontsize=9)
        fig.tight_layout()
        self.path = Path(trainer.default_root_dir) / self.filename  # not log_dir: it broadcasts (rank 0 only here)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.path, dpi=110)
        plt.close(fig)
        self._batch = self._pred = None
