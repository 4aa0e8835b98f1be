"""The forecasting job: plan the chunks, then for each chunk not yet done read, check, forecast and write.

Several devices: Lightning's distributed predict. With ``devices`` > 1 the first ``trainer.predict`` launches the
other processes (they re-run the same command, find the same plan and the same finished chunks, and so process the
same chunks in the same order); each chunk's windows are shared out by Lightning's distributed sampler, the
forecasts gathered on rank 0, and only rank 0 writes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import polars as pl
import torch
from tqdm.auto import tqdm

from cfc_forecast.forecast.prepare import Chunk, Options, prepare
from cfc_forecast.forecast.rows import KEYS, predict_chunk, sorted_frame, spacing_note, trainer_for, unseen_notes
from cfc_forecast.forecast.source import ChunkReader, Plan, describe_ids, input_files, plan, scan
from cfc_forecast.forecast.store import OutputFolder, fingerprint, reason_kind
from cfc_forecast.forecast.trained import JobError, model_from, read_checkpoint
from cfc_forecast.runs import is_global_zero


@dataclass
class JobResult:
    """What a job did: its summary (also in the manifest) and its exit status."""

    summary: dict[str, Any]
    status: int


def _rank() -> int:
    # before Lightning has launched the processes, the launcher's environment says which one this is (0: the writer)
    return 0 if is_global_zero() else 1


def chunk_record(chunk: Chunk, frame: pl.DataFrame) -> dict[str, Any]:
    """What the job records for a finished chunk (its forecasts' row count, skipped series, row counts, spacing);
    ``OutputFolder.write_chunk`` adds the part's file name. Every engine writes the same records."""
    return {
        "series": chunk.n_series,
        "series_forecast": chunk.n_forecast,
        "rows": frame.height,
        "n_skipped": chunk.skipped.height,
        "skipped": list(zip(describe_ids(chunk.skipped["series"]), chunk.skipped["reason"].to_list(), strict=True)),
        "row_counts": chunk.row_counts,
        "unseen": chunk.unseen,
        "spacing": chunk.spacing,
        "file": None,
    }


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
        output_format: str = "parquet",
    ) -> None:
        if batch_size < 1:
            raise JobError(f"--batch_size must be >= 1, got {batch_size}")
        self.ckpt_path, self.options, self.batch_size = ckpt_path, options, batch_size
        self.ckpt, self.trained = read_checkpoint(ckpt_path)
        self.files = input_files(input)
        self.lf, self.notes, self.sliceable = scan(self.files, self.trained)
        self.chunk_size, self.trainer_kwargs, self.progress = chunk_size, trainer_kwargs, progress
        job = fingerprint(ckpt_path, self.files, {"chunk_size": chunk_size, **(job_options or {})})
        self.out = OutputFolder(output, job, writer=_rank() == 0, output_format=output_format)
        self.on_chunk_written = None  # a test hook: called with the chunk index after each chunk is recorded

    def run(self) -> JobResult:
        """Run (or resume) the job; a finished job is left as it is."""
        try:
            return self._run()
        finally:
            self.out.close()

    def _run(self) -> JobResult:
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
        done = self.out.done()
        self._forecast_chunks(the_plan, reader, done)
        return self._finish(the_plan, start)

    def _forecast_chunks(self, the_plan: Plan, reader: ChunkReader, done: dict[int, dict[str, Any]]) -> None:
        """Forecast the chunks not done yet. While the model runs on chunk k, a thread reads and prepares chunk
        k + 1 and another writes chunk k - 1 (polars, numpy and torch release the GIL in their heavy work), so
        with a core to spare the data handling hides behind the forward pass; at most three chunks are held."""
        if _rank() == 0:
            reader.prepare()  # spill unsorted input into chunks (other engines read the input themselves)
        model = model_from(self.ckpt)
        trainer = trainer_for(self.trainer_kwargs)
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
                outputs = predict_chunk(trainer, model, chunk, self.batch_size)
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

    def _write(self, k: int, chunk: Chunk, outputs: list[dict[str, torch.Tensor]], several: bool) -> None:
        frame = sorted_frame(outputs, chunk, self.trained.quantiles)
        if several and frame.height:  # the distributed sampler gives each window to one process, or pads
            frame = frame.unique(KEYS, maintain_order=True).sort(KEYS, maintain_order=True)
        self.out.write_chunk(k, frame, chunk_record(chunk, frame))
        if self.on_chunk_written is not None:
            self.on_chunk_written(k)

    def _finish(self, the_plan: Plan, start: float) -> JobResult:
        records = self.out.done()
        skipped = [row for r in records.values() for row in r["skipped"]]
        if the_plan.rows_without_id:
            skipped.append([None, f"{the_plan.rows_without_id} rows with an empty series id"])
        report = pl.DataFrame(skipped, schema={"series": pl.String, "reason": pl.String}, orient="row")
        rows: Counter[str] = Counter()
        for r in records.values():
            rows.update(r["row_counts"])
        unseen: dict[str, Any] = {}  # categorical labels unseen in training, over every chunk
        for r in records.values():
            for c, u in (r.get("unseen") or {}).items():
                seen = unseen.setdefault(c, {"values": 0, "examples": []})
                seen["values"] += u["values"]
                seen["examples"] = sorted(set(seen["examples"]) | set(u["examples"]))[:5]
                if u.get("hint") and not seen.get("hint"):
                    seen["hint"] = u["hint"]
                if u.get("empty"):
                    seen["empty"] = seen.get("empty", 0) + u["empty"]
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
            "unseen_categories": unseen,
            "notes": self.notes + self._spacing_note(records) + unseen_notes(unseen),
            "seconds_this_run": round(elapsed, 3),
            "status": 0 if n_forecast else 1,
        }
        self.out.finish(summary, report)
        return JobResult(summary, summary["status"])

    def _spacing_note(self, records: dict[int, dict[str, Any]]) -> list[str]:
        spacings = [r["spacing"] for r in records.values() if r["spacing"] == r["spacing"]]
        return spacing_note(sorted(spacings)[len(spacings) // 2], self.trained) if spacings else []
