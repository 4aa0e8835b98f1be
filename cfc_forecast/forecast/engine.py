"""``cfc-forecast forecast --engine ray``: the batch job's chunks scored on a Ray cluster with Ray Data.

```
ray start --head                      # or a cluster: ray start --address HEAD:6379 on every other node
cfc-forecast forecast --engine ray --address auto --ckpt_path model.ckpt --input drop/ --output forecasts/
```
The driver (this process) plans the job as the single-machine job does (``ForecastJob``: the checkpoint, the input
files, the sorted series ids cut into chunks of ``chunk_size`` series, the output folder with its lock, manifest and
per-chunk records). Ray Data then reads the Parquet files (``read_parquet``), tags every row with its chunk
(``map_batches``: a join with the plan's id table; rows of finished chunks and rows without an id drop out here),
groups the rows by chunk (``groupby(...).map_groups``: a shuffle, so a chunk holds every row of its series), and an
actor pool of :class:`ChunkWorker` (the model loaded once per actor, ``num_gpus`` per actor where the cluster has
GPUs) forecasts each chunk with a :class:`~cfc_forecast.forecast.scorer.Scorer` and writes its part and record
through the job's own ``OutputFolder.write_chunk`` (atomic writes; a chunk is done once its record exists). So the
parts equal the single-machine job's part for part (``part-<chunk>``), a rerun (either engine) redoes only the
chunks without a record, and a chunk the engine retries after an actor died is rewritten, never duplicated. Ray's
own ``write_parquet`` is neither atomic nor resumable, and is not used.

Every node must see the checkpoint, the input and the output folder under the same paths (a shared file system, or
object storage mounted as one). Rows within a chunk reach the actor in no fixed order: they are sorted by series
and time, which gives what the input order gives for every model but one trained to keep the "first" or "last" of
duplicate time stamps (refused here: the single-machine job keeps the input's order).

Resources: the reads, the shuffle and the actors share the cluster's CPUs; an actor pool that takes every CPU
starves the read tasks and the job waits forever without an error (measured here when issue 23 was filed: 2
one-CPU actors on 2 CPUs). So the default pool leaves one CPU free: ``workers`` = CPUs - 1 (at least 1) actors of
``cpus_per_worker`` = 1.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from cfc_forecast.forecast.job import ForecastJob, chunk_record
from cfc_forecast.forecast.prepare import Options, prepare
from cfc_forecast.forecast.scorer import Scorer
from cfc_forecast.forecast.source import Plan
from cfc_forecast.forecast.store import OutputFolder
from cfc_forecast.forecast.trained import JobError

CHUNK = "__chunk"


class ChunkWorker:
    """A Ray Data actor: one model, many chunks. Called with every row of one chunk (an Arrow table with the
    ``__chunk`` column); writes the chunk's part and record; returns one row: chunk, series, skipped.

    Args:
        ckpt_path: the checkpoint (a path every node can read). output: the job's folder.
        output_format: "parquet" or "csv". options: the job's forecasting options (model terms).
        batch_size: windows per forward pass. device: "cpu" or "cuda".
    """

    def __init__(
        self, ckpt_path: str, output: str, output_format: str, options: Options, batch_size: int, device: str
    ) -> None:
        self.scorer = Scorer(ckpt_path, device, batch_size)
        self.options = options
        self.out = OutputFolder(output, {}, writer=True, output_format=output_format)

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        trained = self.scorer.trained
        frame = pl.from_arrow(table)
        k = int(frame[CHUNK][0])
        record_path = self.out.records / f"{k:06d}.json"
        if not record_path.exists():  # else a retried block: this chunk was done before the actor died
            keys = [c for c in (trained.id_column, trained.time_column) if c is not None]
            frame = frame.drop(CHUNK).sort(keys, maintain_order=True)
            chunk = prepare(frame, trained, self.options, f"chunk {k}")
            forecasts = self.scorer.forecast_chunk(chunk)
            self.out.write_chunk(k, forecasts, chunk_record(chunk, forecasts))
        record = json.loads(record_path.read_text())
        return {"chunk": np.asarray([k]), "series": np.asarray([record["series"]]),
                "skipped": np.asarray([record["n_skipped"]])}  # fmt: skip


def _tag_chunks(batch: pa.Table, table: pa.Table, id_column: str | None) -> pa.Table:
    """The batch's rows of pending chunks with their chunk number (an inner join with the plan's id table)."""
    frame = pl.from_arrow(batch)
    if id_column is None:
        return frame.with_columns(pl.lit(0, pl.UInt32).alias(CHUNK)).to_arrow()
    ids = pl.from_arrow(table)
    return frame.join(ids, on=id_column, how="inner", maintain_order="left").to_arrow()


class RayForecastJob(ForecastJob):
    """The batch job with its chunks scored by Ray Data (see the module docstring).

    Args:
        address: the Ray cluster ("auto": the one ``ray start`` started on this machine; None: an existing
            ``ray.init`` in this process, else a local cluster started for the job).
        workers: actors in the pool (None: the cluster's CPUs / ``cpus_per_worker`` - 1, at least 1).
        cpus_per_worker: CPUs per actor (fractions allowed). gpus_per_worker: GPUs per actor (None: 1 where the
            cluster has GPUs, else 0; the model then runs on "cuda").
        worker: the actor class (a subclass of :class:`ChunkWorker`).
        Other arguments: as :class:`~cfc_forecast.forecast.job.ForecastJob`.

    Raises:
        JobError: the input is not Parquet of one schema, or the model keeps the first / last duplicate.
    """

    def __init__(
        self,
        *args: Any,
        address: str | None = None,
        workers: int | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float | None = None,
        worker: type[ChunkWorker] = ChunkWorker,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not self.sliceable:
            raise JobError(
                "--engine ray reads Parquet files of one schema (one time type and zone); convert the CSV files or "
                "the files of other schemas to one Parquet schema, or run the job without --engine ray"
            )
        if self.trained.duplicates in ("first", "last"):
            raise JobError(
                f"the model keeps the {self.trained.duplicates} row of duplicate time stamps, which depends on the "
                "input's row order; a distributed read does not keep it: run the job without --engine ray"
            )
        if workers is not None and workers < 1:
            raise JobError(f"--workers must be >= 1, got {workers}")
        if cpus_per_worker <= 0:
            raise JobError(f"--cpus_per_worker must be > 0, got {cpus_per_worker}")
        self.address, self.workers, self.worker = address, workers, worker
        self.cpus_per_worker, self.gpus_per_worker = cpus_per_worker, gpus_per_worker

    def _resources(self) -> tuple[int, float]:
        """The pool's size and the GPUs per actor, from the cluster's resources."""
        import ray

        total = ray.cluster_resources()
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if total.get("GPU", 0) >= 1 else 0.0
        if self.workers is not None:
            return self.workers, gpus
        by_cpu = int(total.get("CPU", 1) // self.cpus_per_worker) - 1
        by_gpu = int(total.get("GPU", 0) // gpus) if gpus else by_cpu
        return max(1, min(by_cpu, by_gpu)), gpus

    def _forecast_chunks(self, the_plan: Plan, reader: Any, done: dict[int, dict[str, Any]]) -> None:
        import ray
        from tqdm.auto import tqdm

        pending = [k for k in range(the_plan.n_chunks) if k not in done]
        if not pending:
            return
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False)
        workers, gpus = self._resources()
        table = self._id_table(the_plan, pending)
        ds = ray.data.read_parquet([str(p) for p in self.files], columns=self.trained.columns)
        id_column = self.trained.id_column
        ds = ds.map_batches(_tag_chunks, batch_format="pyarrow", fn_kwargs={"table": table, "id_column": id_column})
        kwargs = dict(ckpt_path=str(self.ckpt_path), output=str(self.out.path), output_format=self.out.output_format,
                      options=self.options, batch_size=self.batch_size, device="cuda" if gpus else "cpu")  # fmt: skip
        scored = ds.groupby(CHUNK, num_partitions=min(len(pending), 4 * workers)).map_groups(
            self.worker,
            batch_format="pyarrow",
            fn_constructor_kwargs=kwargs,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=self.cpus_per_worker,
            num_gpus=gpus,
        )
        initial = sum(r["series"] for r in done.values())
        bar = tqdm(total=len(the_plan.ids), initial=initial, unit="series", desc="forecast (ray)",
                   disable=not self.progress, dynamic_ncols=True, smoothing=0.1)  # fmt: skip
        for batch in scored.iter_batches(batch_format="numpy", batch_size=None):
            bar.update(int(batch["series"].sum()))
        bar.close()

    def _id_table(self, the_plan: Plan, pending: list[int]) -> pa.Table | None:
        """The pending chunks' series ids with their chunk numbers (the plan numbers the sorted ids)."""
        if self.trained.id_column is None:
            return None
        chunk = np.arange(len(the_plan.ids), dtype=np.uint32) // the_plan.chunk_size
        frame = pl.DataFrame({self.trained.id_column: the_plan.ids, CHUNK: chunk})
        return frame.filter(pl.col(CHUNK).is_in(pending)).to_arrow()


def ray_available() -> None:
    """Raise a ``JobError`` saying how to install Ray when ``ray.data`` cannot be imported."""
    try:
        import ray.data  # noqa: F401
    except ImportError as err:
        raise JobError(
            f"--engine ray needs Ray Data ({err}); install it with pip install 'cfc-forecast[deploy]'"
        ) from None
