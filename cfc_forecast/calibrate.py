"""``cfc-forecast calibrate``: split-conformal prediction intervals for a trained model, in a new checkpoint.

```
cfc-forecast calibrate --ckpt_path runs/<run>/checkpoints/best.ckpt --levels [0.8,0.9]
    [--config runs/<run>/config.yaml] [--output runs/<run>/checkpoints/best.calibrated.ckpt] [--n_buckets 4]
```
The nonconformity scores (:mod:`cfc_forecast.forecaster.conformal`) are computed on the **validation split** of the
config's data (rebuilt from the config; its scaler must be the checkpoint's). That split also chose ``best.ckpt`` (the
epoch of the lowest validation loss) and stopped training early: one number picked among the epochs, so the
validation residuals may be a little smaller than fresh ones and the intervals a little narrow (the optimism is
measured on the test split, before and after, in the report, and stated in the README). The test split is never
used to calibrate; it is scored before and after.

Writes a new checkpoint (atomically, ``cfc_forecast.checkpoints.atomic_write``; never over ``--ckpt_path``) with
the calibration under ``checkpoint["conformal"]`` as plain lists (loads with ``weights_only=True``), and
``<output>.calibration.csv``: coverage, mean width (data units), WQL and CRPS on the test split before and after,
pooled, per variable, per horizon bucket and per both (``cfc_forecast.scores.interval_scores``). Every prediction
path of the new checkpoint (``predict``, ``forecast_rows`` / ``predict_frame``, ``forecast``, ``backtest``) writes
the intervals as the quantile columns ``q<(1-L)/2>`` and ``q<(1+L)/2>`` of each level L (0.8: ``q0.1`` and
``q0.9``), whether or not the model has quantile heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from cfc_forecast.errors import UserError
from cfc_forecast.forecaster import conformal
from cfc_forecast.forecaster.conformal import Calibration
from cfc_forecast.scores import interval_scores


@dataclass
class Calibrated:
    """What :func:`calibrate` made: the new checkpoint, the calibration, and the test scores before and after."""

    path: Path | None
    calibration: Calibration
    report: pl.DataFrame


@dataclass
class _Values:
    """The observed target values of a split: scaled forecasts (N, Q), actuals (N,), offsets, steps, targets and
    windows' scales (for original units)."""

    pred: torch.Tensor
    y: torch.Tensor
    offset: torch.Tensor
    step: torch.Tensor
    variable: torch.Tensor
    scale: torch.Tensor
    loc: torch.Tensor


def observed_values(model: Any, dm: Any, split: str, batch_size: int = 512) -> _Values:
    """The model's scaled forecasts (sorted quantiles, eval mode) at every observed target value of ``split``."""
    ds = dm.dataset(split)
    parts: list[list[torch.Tensor]] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            batch = ds.collate(list(range(start, min(start + batch_size, len(ds)))))
            pred = model(batch)  # (B, K, C, Q) scaled
            y, mask = model._truth(batch)  # (B, K, C)
            b, k, c = y.shape
            where = mask.nonzero(as_tuple=True)
            q = batch.query_t.double()[:, :, None].expand(b, k, c)
            step = torch.arange(k)[None, :, None].expand(b, k, c)
            var = torch.arange(c)[None, None, :].expand(b, k, c)
            scale = batch.target_scale.double()[:, None, :].expand(b, k, c)
            loc = batch.target_loc.double()[:, None, :].expand(b, k, c)
            parts.append([pred[where].double(), y[where].double(), q[where], step[where], var[where], scale[where],
                          loc[where]])  # fmt: skip
    if not parts:
        return _Values(*(torch.zeros(0, model.n_outputs) if i == 0 else torch.zeros(0) for i in range(7)))
    return _Values(*(torch.cat(p) for p in zip(*parts, strict=True)))


def fit_calibration(
    model: Any, dm: Any, levels: list[float], n_buckets: int = 4, min_scores: int = 30, split: str = "val"
) -> Calibration:
    """Fit split-conformal intervals for ``model`` on ``dm``'s ``split`` and set ``model.conformal`` (the Python
    counterpart of ``cfc-forecast calibrate``: ``forecast_rows(model, rows, datamodule=dm)`` then writes them).

    Args:
        model: a ``ForecastModule`` (not the per-step head). dm: the built DataModule it was fitted on.
        levels: central interval levels in (0, 1). n_buckets: query-offset buckets (continuous head; the direct
            head's buckets are its K steps). min_scores: the fewest scores a cell uses alone (else it is pooled).

    Raises:
        UserError: bad levels, the per-step head, too few calibration values.
    """
    levels = check_levels(levels)
    if model.head_name == "step":
        raise UserError("calibrate: a per-step model (head 'step') forecasts no future; nothing to calibrate")
    if n_buckets < 1 or min_scores < 1:
        raise UserError(f"--n_buckets and --min_scores must be >= 1, got {n_buckets} and {min_scores}")
    method = "cqr" if model.quantile_levels else "residual"
    v = observed_values(model, dm, split)
    scores = conformal.scores_of(v.pred[:, None, :], v.y[:, None], method)[:, 0]  # (N,)
    if model.head_name == "direct":
        buckets, edges, bucket = "step", [], v.step
        nb = int(model.hparams.horizon or (int(v.step.max()) + 1 if len(v.step) else 1))
    else:
        buckets, edges = "offset", conformal.offset_edges(v.offset, n_buckets)
        bucket, nb = torch.bucketize(v.offset, torch.tensor(edges, dtype=torch.float64), right=True), len(edges) + 1
    qhat, counts, pooled = conformal.fit(scores, bucket, v.variable, nb, list(dm.target_names), levels, min_scores)
    need = max([min_scores] + [conformal.needed(lv) for lv in levels])  # what a cell needs to stand alone
    model.conformal = Calibration(levels, method, model.quantile_levels, buckets, edges, qhat, counts, pooled,
                                  split, need)  # fmt: skip
    return model.conformal


def check_levels(levels: Any) -> list[float]:
    """Sorted distinct levels in (0, 1).

    Raises:
        UserError: none, or one outside (0, 1).
    """
    vals = sorted({float(v) for v in (levels if isinstance(levels, (list, tuple)) else [levels])})
    if not vals or not all(0 < v < 1 for v in vals):
        raise UserError(f"--levels must be interval levels in (0, 1) such as [0.8,0.9], got {levels}")
    return vals


def test_report(model: Any, dm: Any, calibration: Calibration, split: str = "test") -> pl.DataFrame:
    """Scores of the model's own outputs ("before") and of the calibrated ones ("after") on ``split``, in the data's
    units: :func:`cfc_forecast.scores.interval_scores` with a column ``when``."""
    v = observed_values(model, dm, split)
    names = list(dm.target_names)
    bucket = calibration.bucket_of(v.offset[:, None])[:, 0] if calibration.buckets == "offset" else v.step
    bucket = bucket.clamp(max=calibration.n_buckets - 1).numpy()
    parts = []
    raw_levels = model.quantile_levels or [0.5]
    after = calibration.apply_values(v.pred, torch.from_numpy(bucket), v.variable)
    for when, pred, levels in (("before", v.pred, raw_levels), ("after", after, calibration.output_levels)):
        values = (pred * v.scale[:, None] + v.loc[:, None]).numpy()  # (N, Q) in the data's units
        y = (v.y * v.scale + v.loc).numpy()
        frame = interval_scores(values, y, levels, calibration.levels, v.variable.numpy(), bucket, names)
        parts.append(frame.select(pl.lit(split).alias("split"), pl.lit(when).alias("when"), *frame.columns))
    return pl.concat(parts, how="diagonal_relaxed")


def pooled_table(report: pl.DataFrame) -> str:
    """The pooled rows of a report as a fixed-width table."""
    rows = report.filter(pl.col("scope") == "pooled")
    lines = [f"{'split':<6}{'when':<8}{'level':>7}{'n':>9}{'coverage':>10}{'width':>11}{'wql':>9}{'crps':>11}"]

    def cell(x: float | None, width: int, spec: str) -> str:
        return f"{'-':>{width}}" if x is None else f"{x:>{width}{spec}}"

    for r in rows.iter_rows(named=True):
        head = f"{r['split']:<6}{r['when']:<8}{cell(r['level'], 7, '.2f')}{r['n']:>9}"
        lines.append(
            f"{head}{cell(r['coverage'], 10, '.4f')}{cell(r['width'], 11, '.4g')}{r['wql']:>9.4f}{r['crps']:>11.4g}"
        )
    return "\n".join(lines)


def calibrate(
    ckpt_path: str,
    levels: list[float] | float = (0.8, 0.9),  # type: ignore[assignment]
    config: str | None = None,
    output: str | None = None,
    n_buckets: int = 4,
    min_scores: int = 30,
) -> Calibrated:
    """Calibrate a checkpoint's intervals on its validation split; write a new checkpoint and the test report.

    Args:
        ckpt_path: a checkpoint written by ``cfc-forecast fit``.
        levels: central interval levels in (0, 1), e.g. [0.8, 0.9] (or one level, 0.8).
        config: the run's ``config.yaml`` (default: ``config.yaml`` in the folder above the checkpoint's).
        output: the new checkpoint (default: ``<name>.calibrated.ckpt`` beside ``ckpt_path``); never ``ckpt_path``.
        n_buckets: query-offset buckets of a continuous-time head (the direct head: one per step).
        min_scores: the fewest scores a (variable, bucket) cell uses alone; fewer: pooled (see ``conformal``).

    Returns:
        :class:`Calibrated`.

    Raises:
        UserError: a missing file, a config whose data are not the checkpoint's, an output that is the input or a
            file that is not a calibrated checkpoint, bad levels, too few calibration values.
    """
    from cfc_forecast.backtest.plan import datamodule_from, read_config
    from cfc_forecast.checkpoints import atomic_write, load_checkpoint
    from cfc_forecast.forecast.trained import JobError, model_from

    check_levels(levels)  # before any data is read
    src = Path(ckpt_path)
    ckpt = load_checkpoint(src)
    out = Path(output) if output else src.with_name(f"{src.stem}.calibrated.ckpt")
    _check_output(src, out)
    cfg_path = Path(config) if config else src.resolve().parent.parent / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"--config {cfg_path}: no such file; give the run's config.yaml (the data it was fitted on)")
    try:
        model = model_from(ckpt)
    except JobError as err:
        raise UserError(str(err)) from None
    dm = datamodule_from(read_config(cfg_path))
    dm.setup()
    _check_scaler(ckpt, dm, src, cfg_path)
    calibration = fit_calibration(model, dm, levels, n_buckets, min_scores)
    report = test_report(model, dm, calibration)
    ckpt["conformal"] = calibration.to_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: torch.save(ckpt, tmp))
    csv = out.with_name(f"{out.name}.calibration.csv")
    atomic_write(csv, report.write_csv)
    n_pooled = int((np.asarray(calibration.pooled) > 0).sum())
    print(f"{pooled_table(report)}\ncalibrated on the {calibration.split} split: {calibration.n_buckets} buckets x "
          f"{len(dm.target_names)} targets, {n_pooled} cells pooled (fewer than {calibration.min_scores} scores)\n"
          f"calibrated checkpoint: {out}\nreport: {csv}", flush=True)  # fmt: skip
    return Calibrated(out, calibration, report)


def _check_output(src: Path, out: Path) -> None:
    from cfc_forecast.checkpoints import CheckpointError, load_checkpoint

    if out.resolve() == src.resolve():
        raise UserError(f"--output {out} is the checkpoint being calibrated; give another file (it is never replaced)")
    if out.exists():
        try:
            calibrated = "conformal" in load_checkpoint(out)
        except CheckpointError:
            calibrated = False
        if not calibrated:
            raise UserError(f"--output {out} exists and is no calibrated checkpoint; give another file")


def _check_scaler(ckpt: dict[str, Any], dm: Any, src: Path, cfg_path: Path) -> None:
    from cfc_forecast.cli import _saved_scaler

    saved, built = _saved_scaler(ckpt), dm._ensure_built().scaler
    same = saved is not None and np.shape(saved["loc"]) == built.loc.shape
    if not same or not (np.allclose(saved["loc"], built.loc) and np.allclose(saved["scale"], built.scale)):
        raise UserError(f"--config {cfg_path}: its data are not the ones {src} was trained on (their scaler differs "
                        "from the checkpoint's); give the run's config.yaml")  # fmt: skip


def main(argv: list[str]) -> int:
    """``cfc-forecast calibrate ARGS``: parse, calibrate, write; status 0."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="cfc-forecast calibrate", exit_on_error=False)
    parser.add_function_arguments(calibrate, as_positional=False)
    args = parser.parse_args(argv)
    calibrate(**{k: v for k, v in args.as_dict().items() if k != "__path__"})
    return 0
