"""``ForecastPlot``: at the end of ``test``, a PNG of three test windows (history, actual, forecast, interval)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from cfc_forecast.batch import Batch

PERCENTILES = (25, 50, 75)


class ForecastPlot(Callback):
    """Draw the test windows at the 25th, 50th and 75th percentile of per-window error, one row each.

    The per-window error is the mean absolute error of the point forecast over the window's observed targets, in
    scaled units (so variables of different size weigh alike): the rows show a good, a typical and a poor window,
    not the first ones. Every target gets a column: its history (when an input holds the same quantity), the
    actual targets and the forecast (``predict_step``'s, with the outermost quantile interval when trained with
    quantiles), in the data's units against the data's own time stamps (date-times where the data have them).
    Each panel is titled with the series id and the variable; one legend names the lines.

    Args:
        percentiles: the per-window error percentiles drawn. filename: the PNG's name in the run directory.
    """

    def __init__(self, percentiles: tuple[int, ...] = PERCENTILES, filename: str = "test_forecasts.png") -> None:
        self.percentiles, self.filename = tuple(percentiles), filename
        self._errors: list[np.ndarray] = []
        self._seen = 0
        self.path: Path | None = None
        self.windows: list[int] = []  # the test windows drawn (indices into dm.dataset("test"))
        self.figure: Any = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._errors, self._seen = [], 0

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Batch, batch_idx: int, *args
    ) -> None:
        if not trainer.is_global_zero:
            return
        with torch.no_grad():
            pred = pl_module(batch)[..., getattr(pl_module, "point", 0)]  # (B, K, C) scaled
        per_step = getattr(pl_module, "head_name", "") == "step"
        y, mask = (batch.y_step, batch.y_step_mask) if per_step else (batch.y, batch.y_mask)
        m = mask.float()
        n = m.sum((1, 2))
        err = ((pred - y).abs() * m).sum((1, 2)) / n.clamp(min=1)
        self._errors.append(torch.where(n > 0, err, torch.nan).double().cpu().numpy())

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._errors or not trainer.is_global_zero:
            return
        errors = np.concatenate(self._errors)
        loader = trainer.test_dataloaders
        loader = loader[0] if isinstance(loader, (list, tuple)) else loader
        order = np.asarray(list(iter(loader.sampler)))[: len(errors)]  # the global index of each window seen
        self.windows = pick_windows(errors, order, self.percentiles)
        if not self.windows:
            return
        dm = trainer.datamodule
        batch = dm.dataset("test").collate(self.windows).to(pl_module.device)
        with torch.no_grad():
            out = {k: v.cpu() for k, v in pl_module.predict_step(batch, 0).items()}
        self.figure = draw(dm, batch.to("cpu"), out, pl_module, [self._label(errors, w, order) for w in self.windows])
        self.path = Path(trainer.default_root_dir) / self.filename  # not log_dir: it broadcasts (rank 0 only here)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.figure.savefig(self.path, dpi=110)
        from matplotlib import pyplot as plt

        plt.close(self.figure)
        self._errors = []

    def _label(self, errors: np.ndarray, window: int, order: np.ndarray) -> str:
        err = errors[int(np.flatnonzero(order == window)[0])]
        rank = 100 * np.mean(errors[np.isfinite(errors)] <= err)
        return f"window MAE {err:.3g} scaled (p{rank:.0f})"


def pick_windows(errors: np.ndarray, order: np.ndarray, percentiles: tuple[int, ...]) -> list[int]:
    """The global indices of the windows at ``percentiles`` of ``errors`` (NaN: no observed target), distinct."""
    scored = np.flatnonzero(np.isfinite(errors))
    if len(scored) == 0:
        return []
    ranked = scored[np.argsort(errors[scored], kind="stable")]
    picks = [ranked[round(p / 100 * (len(ranked) - 1))] for p in percentiles]
    return [int(order[i]) for i in dict.fromkeys(picks)]


def _times(dm: Any, values: torch.Tensor) -> np.ndarray:
    """Absolute float times -> the data's time stamps (numpy datetime64 for date-time data, else floats)."""
    flat = values.double().numpy()
    if getattr(dm, "_table", None) is not None and dm._table.codec.is_datetime:
        return dm.decode_times(flat).dt.replace_time_zone(None).to_numpy()
    return flat


def draw(dm: Any, b: Batch, out: dict[str, torch.Tensor], module: Any, notes: list[str]) -> Any:
    """The figure: a row per window of ``b``, a column per target, from ``predict_step``'s output ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import dates as mdates
    from matplotlib import pyplot as plt

    pred, at, queries = out["prediction"], out["time"], out["mask"]  # (B, K, C, Q), (B, K), (B, K)
    names = list(dm.target_names)
    source, ids = list(dm.target_input_index), dm.series_ids
    point = getattr(module, "point", 0)
    per_step = getattr(module, "head_name", "") == "step"
    truth, truth_mask = (b.y_step, b.y_step_mask) if per_step else (b.y, b.y_mask)
    inputs_at = b.t_abs if b.t_abs is not None else b.origin[:, None] + b.t.double()
    rows = b.batch_size
    fig, axes = plt.subplots(rows, len(names), figsize=(4.0 * len(names), 2.6 * rows), squeeze=False)
    for i in range(rows):
        steps, q = b.step_mask[i], queries[i]
        for c, name in enumerate(names):
            ax = axes[i, c]
            scale, loc = float(b.target_scale[i, c]), float(b.target_loc[i, c])
            if source[c] >= 0:
                seen = steps & b.x_mask[i, :, source[c]]
                ax.plot(_times(dm, inputs_at[i, seen]), b.x[i, seen, source[c]] * scale + loc, ".-", color="0.55",
                        ms=3, lw=0.8, label="history")  # fmt: skip
            if truth is not None:
                seen = q & truth_mask[i, :, c]
                ax.plot(_times(dm, at[i, seen]), truth[i, seen, c] * scale + loc, "k.", ms=5, label="actual")
            ax.plot(_times(dm, at[i, q]), pred[i, q, c, point], "-", color="tab:blue", lw=1.4, label="forecast")
            if pred.shape[-1] > 1:
                ax.fill_between(_times(dm, at[i, q]), pred[i, q, c, 0], pred[i, q, c, -1], color="tab:blue",
                                alpha=0.2, label="interval")  # fmt: skip
            ax.axvline(_times(dm, b.origin[i : i + 1])[0], color="0.8", lw=0.8)
            ax.set_title(f"series {ids[int(b.series[i])]} · {name} · {notes[i]}", fontsize=8)
            ax.set_ylabel(name, fontsize=8)
            ax.tick_params(labelsize=7)
            if np.issubdtype(_times(dm, b.origin[:1]).dtype, np.datetime64):
                locator = mdates.AutoDateLocator(minticks=3, maxticks=5)  # 4-inch panels: labels must not collide
                ax.xaxis.set_major_locator(locator)
                ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False)
    unit = "" if np.issubdtype(_times(dm, b.origin[:1]).dtype, np.datetime64) else f" ({dm.time_unit})"
    fig.supxlabel(f"time{unit}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig
