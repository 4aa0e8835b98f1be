"""Checkpoints that survive a kill and load safely.

- :class:`AtomicCheckpointIO` (Lightning's ``CheckpointIO`` extension point) writes ``<dir>/.<name>.tmp``, fsyncs it
  and ``os.replace``\\ s it over ``<dir>/<name>``: a kill or a full disk at any moment leaves the previous checkpoint
  whole, and nothing is written outside the checkpoint's folder (Lightning's own atomic save stages in ``$TMPDIR``
  and falls back to a copy in place when that is another filesystem). It loads through :func:`load_checkpoint`.
- :func:`load_checkpoint` is the one way a checkpoint is read: ``torch.load(weights_only=True)`` passed explicitly
  (so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` cannot turn it off), and a missing, empty, truncated or foreign file is a
  :class:`CheckpointError` naming the file, one line on every command.
- :class:`RngState` stores the torch, numpy and python generators in every checkpoint (tensors and ints, so it loads
  with ``weights_only=True``) and restores them on resume: a fit resumed at an epoch boundary draws the same shuffles
  and dropout masks as the uninterrupted fit. The training sampler draws from torch's global generator (one
  process) or is seeded by epoch (DDP's ``DistributedSampler``), so it is covered too.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cfc_forecast.errors import StorageError, UserError


class CheckpointError(UserError):
    """A checkpoint that cannot be used (missing, empty, truncated, not written by cfc-forecast): exit status 2."""


def atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Call ``write(tmp)`` with ``tmp = <dir>/.<name>.tmp``, fsync it and rename it to ``path``.

    A failure (or a kill) leaves ``path`` as it was; a failed write also removes ``tmp``.

    Raises:
        StorageError: the file system refused (disk full, permission, I/O error); exit status 3.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"{path} could not be written ({err.strerror or err}); the previous file is kept") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # the rename itself is durable only once the folder's entry is on disk
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not sync folders; the rename is still atomic
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``cfc-forecast fit`` with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, empty, truncated, holds Python objects beyond tensors and plain values
            (refused, never executed), or is not a Lightning checkpoint.
        StorageError: the file system refused to read it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; give one such as runs/<run>/checkpoints/last.ckpt")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint is empty (0 bytes); use another one (best.ckpt or last.ckpt)")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save writes a zip archive (legacy: a pickle)
        shown = head.split(b"\n")[0][:40].decode("utf-8", "replace")
        raise CheckpointError(
            f"{path}: not a checkpoint (it starts with {shown!r}); give the .ckpt file cfc-forecast fit wrote, "
            "such as runs/<run>/checkpoints/best.ckpt"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own text goes on to suggest weights_only=False, which would run the file's code: name the object only
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (e.g. {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: it holds Python objects that a cfc-forecast checkpoint never holds{what}; "
            "load only checkpoints written by cfc-forecast fit"
        ) from None
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EIO, errno.EPERM):
            raise StorageError(f"{path}: the checkpoint could not be read ({err.strerror or err})") from err
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated: {str(err)[:120]}); use another one"
        ) from None
    except Exception as err:  # noqa: BLE001 - whatever the unpickler trips on, the file is not a checkpoint
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or not written by torch: {first}); use another one"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict); give one cfc-forecast fit wrote")
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``CheckpointIO``: atomic, fsynced saves in the checkpoint's own folder; safe loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"{path.parent} could not be created ({err.strerror or err})") from err
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # weights_only=True whatever the caller passes: Lightning passes None, which torch < 2.6 (or
        # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1) reads as "unpickle anything"
        return load_checkpoint(path, map_location if map_location is not None else "cpu")


class RngState(Callback):
    """Saves the torch, numpy and python random generators in each checkpoint; restores them when one is loaded."""

    def state_dict(self) -> dict[str, Any]:
        _, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 - the global generator is the state
        version, internal, py_gauss = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },  # fmt: skip
            "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": py_gauss},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # restored when the checkpoint is (before the training loader's first iterator is made; Lightning runs the
        # sanity check with the generators isolated), so the resumed fit's next draw is the uninterrupted fit's
        torch.set_rng_state(state_dict["torch"])
        n = state_dict["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
        p = state_dict["python"]
        random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
        if "cuda" in state_dict and torch.cuda.is_available():
            states = state_dict["cuda"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
