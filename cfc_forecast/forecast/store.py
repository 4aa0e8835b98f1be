"""A job's output folder: one Parquet part per chunk, progress records, the skipped-series report, the manifest.

```
<output>/manifest.json            the job (checkpoint, inputs, options) and, once finished, its summary
<output>/part-<chunk>.parquet     forecasts of one chunk of series (long layout, as cfc-forecast predict writes)
<output>/skipped_series.csv       series, reason: every series (or series and origin) not forecast
<output>/.work/                   spilled input chunks and one record per finished chunk (removed at the end)
<output>/.lock                    flock held by the job working in the folder (released when it ends or dies)
```
Every file is written under a temporary name in the folder, fsynced and renamed, so a reader (or a rerun) never
sees half a file. A chunk counts as done only once its record exists, and its record is written after its part: a
job killed at any point and rerun with the same command redoes at most the chunks in flight (the one being written
and the one being forecast), overwriting their parts, so the output has no duplicate and no gap; a job killed before
its manifest was written starts over. One job at a time works in a folder (``.lock``); a job refused (another job's
folder, files no job wrote, a folder in use) writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import polars as pl

from cfc_forecast.checkpoints import atomic_write
from cfc_forecast.forecast.trained import JobError
from cfc_forecast.runs import FolderLock

MANIFEST, SKIPPED, WORK, LOCK = "manifest.json", "skipped_series.csv", ".work", ".lock"
__all__ = ["OutputFolder", "atomic_write", "fingerprint", "reason_kind", "write_json"]


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(value, indent=2, default=str) + "\n"))


def file_digest(path: Path) -> str:
    """SHA-256 of a file (the checkpoint: a retrained model in the same place is another job)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(ckpt_path: str, files: list[Path], options: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same job: the checkpoint's content, the input files (path, size, modification
    time) and every option that changes the output."""
    return {
        "checkpoint": {"path": str(Path(ckpt_path).resolve()), "sha256": file_digest(Path(ckpt_path))},
        "inputs": [
            {"path": str(p.resolve()), "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in files
        ],
        "options": options,
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for key in ("checkpoint", "inputs", "options"):
        if old.get(key) != new.get(key):
            out.append(f"{key}: was {old.get(key)}, now {new.get(key)}")
    return out


class OutputFolder:
    """The output folder of one job; only the process with ``writer=True`` (rank 0) writes.

    Args:
        path: the folder. job: the job's fingerprint. writer: whether this process writes.
    """

    def __init__(
        self, path: str | Path, job: dict[str, Any], writer: bool = True, output_format: str = "parquet"
    ) -> None:
        self.path, self.job, self.writer, self.output_format = Path(path), job, writer, output_format
        self.work = self.path / WORK
        self.spill = self.work / "spill"
        self.records = self.work / "chunks"
        self.lock: FolderLock | None = None

    def open(self) -> dict[str, Any]:
        """Lock the folder; create it for a new job, or return the manifest of the same job started before.

        Raises:
            JobError: the folder holds another job, or files that no job wrote (nothing is written then).
            UserError: another process works in the folder.
        """
        self._check()  # before the lock: a refused job creates nothing, not even the lock file
        if self.writer:
            self.lock = FolderLock(self.path, "job")
        manifest = self._check()  # again under the lock: the folder may have changed while we waited
        if manifest is not None:
            self._clean_temporaries()
            if manifest.get("finished") and self.writer:
                shutil.rmtree(self.work, ignore_errors=True)
            return manifest
        manifest = {"job": self.job, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished": False}
        if self.writer:
            # a job killed before its manifest left only work files: start it over
            shutil.rmtree(self.work, ignore_errors=True)
            self._clean_temporaries()
            write_json(self.path / MANIFEST, manifest)
            self.records.mkdir(parents=True, exist_ok=True)
        return manifest

    def _check(self) -> dict[str, Any] | None:
        """The manifest of this job in the folder (None: none yet).

        Raises:
            JobError: another job's manifest, or files that no job wrote.
        """
        manifest_path = self.path / MANIFEST
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            diff = _differences(manifest.get("job", {}), self.job)
            if diff:
                raise JobError(
                    f"--output {str(self.path)!r} holds another job's forecasts ({'; '.join(diff)}); "
                    "give another output folder, or remove this one to start over"
                )
            return manifest
        ours = {WORK, LOCK, f".{MANIFEST}.tmp"}
        foreign = [p.name for p in self.path.iterdir() if p.name not in ours] if self.path.is_dir() else []
        if foreign:
            raise JobError(
                f"--output {str(self.path)!r} is not empty and holds no {MANIFEST} (it holds "
                f"{', '.join(sorted(foreign)[:3])}); give an empty or new folder"
            )
        return None

    def close(self) -> None:
        """Release the folder's lock."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _clean_temporaries(self) -> None:
        if self.writer:
            for tmp in self.path.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def done(self) -> dict[int, dict[str, Any]]:
        """The records of the chunks finished so far, by chunk."""
        return {int(p.stem): json.loads(p.read_text()) for p in self.records.glob("*.json")}

    def part_name(self, k: int) -> str:
        return f"part-{k:06d}.{self.output_format}"

    def write_chunk(self, k: int, frame: pl.DataFrame, record: dict[str, Any]) -> None:
        """Write chunk ``k``'s forecasts (if any), then its record: the chunk is done."""
        if frame.height:
            write = frame.write_csv if self.output_format == "csv" else frame.write_parquet
            atomic_write(self.path / self.part_name(k), write)
            record["file"] = self.part_name(k)
        write_json(self.records / f"{k:06d}.json", record)

    def finish(self, summary: dict[str, Any], skipped: pl.DataFrame) -> None:
        """Write the skipped-series report and the finished manifest; remove the work folder (where that fails, a
        note in the summary and the manifest says so: the forecasts are complete, a rerun removes it)."""
        atomic_write(self.path / SKIPPED, skipped.write_csv)
        manifest = json.loads((self.path / MANIFEST).read_text())
        manifest.update(finished=True, summary=summary)
        write_json(self.path / MANIFEST, manifest)
        try:
            shutil.rmtree(self.work)
        except OSError as err:
            summary["notes"].append(f"{self.work} could not be removed ({err.strerror or err}); rerun to remove it")
            write_json(self.path / MANIFEST, manifest)


def reason_kind(reason: str) -> str:
    """A reason without its details (counts, names, origins), for the summary's tally."""
    reason = re.sub(r"^origin .+?: ", "", reason)  # a date-time origin holds colons, never ": "
    reason = re.sub(r"\s*\[[^\]]*\]", "", reason)
    reason = re.sub(r"^\d+ ", "", reason)
    return re.sub(r"\s*\([^)]*\)", "", reason)
