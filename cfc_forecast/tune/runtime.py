"""What the tuner does to its own process: GPUs per worker, SIGTERM as an interrupt, optuna's logging."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import optuna


def device_groups(workers: int) -> list[str | None]:
    """CUDA devices per worker: an equal share of the visible GPUs each, or one GPU shared round-robin when there
    are more workers than GPUs; None everywhere without GPUs (CPU trials)."""
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible is not None else []
    if visible is None and torch.cuda.is_available():
        ids = [str(i) for i in range(torch.cuda.device_count())]
    if not ids:
        return [None] * workers
    if workers > len(ids):
        print(f"note: {workers} workers share {len(ids)} GPU(s)", flush=True)
        return [ids[i % len(ids)] for i in range(workers)]
    k = len(ids) // workers
    return [",".join(ids[i * k : (i + 1) * k]) for i in range(workers)]


def sigterm_as_interrupt() -> Any:
    """Treat SIGTERM (a scheduler stopping the job) like Ctrl-C; returns the previous handler (None: not set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


class QuietOptuna(logging.Filter):
    """While trials run: optuna's per-trial INFO lines off (ours replace them), and its warnings about failed trials
    (NaN objective, our stop exception with its traceback) dropped: our line for that trial says why."""

    def __init__(self) -> None:
        super().__init__()
        self.verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.logger = logging.getLogger("optuna.study._optimize")
        self.logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Trial ") and " failed with " in message)

    def restore(self) -> None:
        self.logger.removeFilter(self)
        optuna.logging.set_verbosity(self.verbosity)
