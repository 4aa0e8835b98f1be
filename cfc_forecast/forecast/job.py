"""The forecasting job: plan the chunks, then for each chunk not yet done read, check, forecast and write.

Several devices: Lightning's distributed predict. With ``devices`` > 1 the first ``trainer.predict`` launches the
other processes (they re-run the same command, find the same plan and the same finished chunks, and so process the
same chunks in the same order); each chunk's windows are shared out by Lightning's distributed sampler, the
forecasts gathered on rank 0, and only rank 0 writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import lightning.pytorch as L
import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cfc_forecast.forecast.prepare import Chunk, Options, prepare
from cfc_forecast.forecast.source import ChunkReader, Plan, describe_ids, input_files, plan, scan
from cfc_forecast.forecast.store import OutputFolder, fingerprint, reason_kind
from cfc_forecast.forecast.trained import JobError, Trained, read_checkpoint
from cfc_forecast.writer import forecast_frame

KEYS = ["series", "origin_time", "time", "variable"]


@dataclass
class JobResult:
    """What a job did: its summary (also in the manifest) and its exit status."""

    summary: dict[str, Any]
    status: int


def _rank() -> int:
    # before Lightning has launched the processes, the launcher's environment says which one this is
    return int(os.environ.get("NODE_RANK", "0")) * 1000 + int(os.environ.get("LOCAL_RANK", "0"))


@contextmanager
def _quiet_chunks():
    """Per-chunk skips are tallied into the summary; the DataModule's per-call log lines would only repeat them."""
    loggers = [logging.getLogger(n) for n in ("datamodules.io", "datamodules.scaling", "lightning.pytorch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class ForecastJob:
    """One batch forecasting job; see ``cfc_forecast.forecast.main`` for the arguments."""

    def __init__(
        self,
        ckpt_path: str,
        input: str | list[str],
        output: str,
        options: Options,
        chunk_size: int,
        batch_size: int,
        trainer_kwargs: dict[str, Any],
        progress: bool = True,
        job_options: dict[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise JobError(f"--batch_size must be >= 1, got {batch_size}")
        self.ckpt_path, self.options, self.batch_size = ckpt_path, options, batch_size
        self.ckpt, self.trained = read_checkpoint(ckpt_path)
        self.files = input_files(input)
        self.lf, self.notes, self.sliceable = scan(self.files, self.trained)
        self.chunk_size, self.trainer_kwargs, self.progress = chunk_size, trainer_kwargs, progress
        job = fingerprint(ckpt_path, self.files, {"chunk_size": chunk_size, **(job_options or {})})
        self.out = OutputFolder(output, job, writer=_rank() == 0)
        self.on_chunk_written = None  # a test hook: called with the chunk index after each chunk is recorded

    def run(self) -> JobResult:
        """Run (or resume) the job; a finished job is left as it is."""
        manifest = self.out.open()
        if manifest.get("finished"):
            summary = manifest["summary"]
            print(
                f"cfc-forecast forecast: this job already finished ({summary['series_forecast']} series "
                f"forecast, {summary['series_skipped']} skipped) in {self.out.path}; nothing to do"
            )
            return JobResult(summary, summary["status"])
        start = time.perf_counter()
        the_plan = plan(self.lf, self.trained, self.chunk_size)
        reader = ChunkReader(self.lf, self.sliceable, self.trained, the_plan, self.out.spill)
        if _rank() == 0:
            reader.prepare()
        done = self.out.done()
        self._forecast_chunks(the_plan, reader, done)
        return self._finish(the_plan, start)

    def _trainer(self) -> L.Trainer:
        kwargs = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        kwargs.update(self.trainer_kwargs)
        devices = kwargs.get("devices", 1)
        if kwargs.get("strategy", "auto") == "auto" and devices not in (1, "1", [0]):
            kwargs["strategy"] = "ddp"  # re-runs the command per process (no pickling of the job)
        return L.Trainer(**kwargs)

    def _forecast_chunks(self, the_plan: Plan, reader: ChunkReader, done: dict[int, dict[str, Any]]) -> None:
        """Forecast the chunks not done yet. While the model runs on chunk k, a thread reads and prepares chunk
        k + 1 and another writes chunk k - 1 (polars, numpy and torch release the GIL in their heavy work), so
        with a core to spare the data handling hides behind the forward pass; at most three chunks are held."""
        model = model_from(self.ckpt)
        trainer = self._trainer()
        pending = [k for k in range(the_plan.n_chunks) if k not in done]
        bar = tqdm(
            total=len(the_plan.ids),
            initial=sum(r["series"] for r in done.values()),
            unit="series",
            desc="forecast",
            dynamic_ncols=True,
            disable=not self.progress or _rank() != 0,
            smoothing=0.1,
        )
        skipped = sum(r["n_skipped"] for r in done.values())

        def load(k: int) -> Chunk:
            return prepare(reader.read(k), self.trained, self.options, f"chunk {k}")

        with _quiet_chunks(), ThreadPoolExecutor(1) as loader, ThreadPoolExecutor(1) as writer:
            ahead = loader.submit(load, pending[0]) if pending else None
            writing = None
            for i, k in enumerate(pending):
                chunk = ahead.result()
                ahead = loader.submit(load, pending[i + 1]) if i + 1 < len(pending) else None
                outputs = self._predict(trainer, model, chunk)
                chunk.dataset = None  # the writer needs the ids and times, not the tensors: free them now
                if writing is not None:
                    writing.result()  # one write in flight: a failed write stops the job before the next
                if trainer.global_rank == 0:
                    writing = writer.submit(self._write, k, chunk, outputs, trainer.world_size > 1)
                skipped += chunk.skipped.height
                bar.set_postfix(skipped=skipped, refresh=False)
                bar.update(chunk.n_series)
            if writing is not None:
                writing.result()
        bar.close()
        if trainer.global_rank != 0:  # the other processes end here; rank 0 writes the report
            raise SystemExit(0)

    def _predict(self, trainer: L.Trainer, model: L.LightningModule, chunk: Chunk) -> list[dict[str, torch.Tensor]]:
        """The chunk's ``predict_step`` outputs (on rank 0, every process's)."""
        if chunk.dataset is None:
            return []
        ds = chunk.dataset
        loader = DataLoader(ds, batch_size=self.batch_size, shuffle=False, collate_fn=ds.collate)
        outputs = [{k: v.cpu() for k, v in o.items()} for o in trainer.predict(model, loader)]
        if trainer.world_size > 1:
            gathered = [None] * trainer.world_size if trainer.global_rank == 0 else None
            torch.distributed.gather_object(outputs, gathered, dst=0)
            outputs = [o for part in gathered or [] for o in part]
        return outputs

    def _write(self, k: int, chunk: Chunk, outputs: list[dict[str, torch.Tensor]], several: bool) -> None:
        frame = sorted_frame(outputs, chunk, self.trained.quantiles)
        if several and frame.height:  # the distributed sampler gives each window to one process, or pads
            frame = frame.unique(KEYS, maintain_order=True).sort(KEYS, maintain_order=True)
        self.out.write_chunk(k, frame, self._record(chunk, frame))
        if self.on_chunk_written is not None:
            self.on_chunk_written(k)

    def _record(self, chunk: Chunk, frame: pl.DataFrame) -> dict[str, Any]:
        return {
            "series": chunk.n_series,
            "series_forecast": chunk.n_forecast,
            "rows": frame.height,
            "n_skipped": chunk.skipped.height,
            "skipped": list(zip(describe_ids(chunk.skipped["series"]), chunk.skipped["reason"].to_list(), strict=True)),
            "row_counts": chunk.row_counts,
            "spacing": chunk.spacing,
            "file": None,
        }

    def _finish(self, the_plan: Plan, start: float) -> JobResult:
        records = self.out.done()
        skipped = [row for r in records.values() for row in r["skipped"]]
        if the_plan.rows_without_id:
            skipped.append([None, f"{the_plan.rows_without_id} rows with an empty series id"])
        report = pl.DataFrame(skipped, schema={"series": pl.String, "reason": pl.String}, orient="row")
        rows: Counter[str] = Counter()
        for r in records.values():
            rows.update(r["row_counts"])
        n_forecast = sum(r["series_forecast"] for r in records.values())
        files = sorted(r["file"] for r in records.values() if r["file"])
        elapsed = time.perf_counter() - start
        summary = {
            "series_in_input": len(the_plan.ids),
            "series_forecast": n_forecast,
            "series_skipped": len({s for s, _ in skipped if s is not None}),
            "skipped_by_reason": dict(Counter(reason_kind(r) for _, r in skipped).most_common()),
            "rows_skipped": dict(rows),
            "rows_written": sum(r["rows"] for r in records.values()),
            "files_written": len(files),
            "notes": self.notes + self._spacing_note(records),
            "seconds_this_run": round(elapsed, 3),
            "status": 0 if n_forecast else 1,
        }
        self.out.finish(summary, report)
        return JobResult(summary, summary["status"])

    def _spacing_note(self, records: dict[int, dict[str, Any]]) -> list[str]:
        spacings = [r["spacing"] for r in records.values() if r["spacing"] == r["spacing"]]
        if not spacings:
            return []
        here, trained = sorted(spacings)[len(spacings) // 2], self.trained.median_step
        if trained > 0 and not 0.1 <= here / trained <= 10:
            return [
                f"the input's median spacing is {here:g} {self.trained.time_unit}, the training data's "
                f"{trained:g}: are the times in {self.trained.time_unit!r} as the model expects?"
            ]
        return []


def sorted_frame(outputs: list[dict[str, torch.Tensor]], chunk: Chunk, quantiles: list[float] | None) -> pl.DataFrame:
    """``forecast_frame`` with its rows sorted by ``KEYS`` as ``predict`` writes them: the windows put in (series,
    origin) order and the targets in name order first, so a sort of every row is needed only when a window's query
    times do not increase."""
    if not outputs:
        return pl.DataFrame()
    cat = {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}
    order = torch.from_numpy(np.lexsort((cat["origin"].numpy(), cat["series"].numpy())))
    names = list(chunk.target_names)
    by_name = sorted(range(len(names)), key=names.__getitem__)
    cat = {k: v[order] for k, v in cat.items()}
    cat["prediction"] = cat["prediction"][:, :, by_name]  # (W, K, C, Q)
    frame = forecast_frame([cat], replace(chunk, target_names=[names[i] for i in by_name]), quantiles)
    times, mask = cat["time"].numpy(), cat["mask"].numpy()  # (W, K): real queries come first
    increasing = bool((np.diff(times, axis=1) > 0)[mask[:, 1:]].all())
    return frame if increasing else frame.sort(KEYS, maintain_order=True)


def model_from(ckpt: dict[str, Any]) -> L.LightningModule:
    """The ``ForecastModule`` of a loaded checkpoint (what ``load_from_checkpoint`` does, without reading the
    file a second time)."""
    from cfc_forecast.module import ForecastModule

    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    try:
        model = ForecastModule(**hparams)
        model.on_load_checkpoint(ckpt)
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError) as err:  # hyperparameters or weights of another cfc-forecast version
        raise JobError(f"the checkpoint does not fit this version's ForecastModule ({err}); refit the model") from None
    return model.eval()


def check_trained_options(trained: Trained, options: Options) -> None:
    """Refuse query times a model cannot honour, before anything is written.

    Raises:
        JobError: query times for a model whose head forecasts fixed steps, query times <= 0, or none for a
            model trained on one window per series without a forecast span.
    """
    spec = trained.spec
    if options.query_times is None and trained.predict_queries is None and spec.mode == "fixed" and not spec.forecast:
        raise JobError("the model forecasts one window per series without a forecast span: give --query_times")
    if options.query_times is None:
        return
    if trained.head != "continuous":
        raise JobError(
            f"--query_times needs a model with the continuous-time head; this model's head is {trained.head!r} "
            f"(it forecasts {trained.spec.horizon or 'its trained'} steps ahead)"
        )
    if min(options.query_times) <= 0:
        raise JobError(f"--query_times must be > 0 (times after the origin), got {options.query_times}")
