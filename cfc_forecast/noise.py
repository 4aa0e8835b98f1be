"""Lines a ``cfc-forecast`` command does not print: each names its exact message and the module that emits it.

Installed by the entry point (``cfc_forecast.commands.main``) only, never on import: a Python user keeps every warning.
No blanket filter: each entry says why the line does not apply to a person running the command.
"""

from __future__ import annotations

import logging
import re
import warnings

# (message regex, module): warnings.filterwarnings matches the message's start and the module that warns
_WARNINGS = [
    # Lightning's own use of a torch API that torch deprecated: nothing a user of this command can change
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree"),
    # LightningCLI seeds every run (0 unless --seed_everything says otherwise) and records the seed in run.json
    (r"No seed found, seed set to 0", r"lightning\.fabric\.utilities\.seed"),
    # the epoch's metrics (metrics.csv, the progress bar, best.ckpt) are logged whatever the logging interval
    (r"The number of training batches \(\d+\) is smaller than the logging interval", r"lightning\.pytorch\.loops"),
]
# (logger, message starts): log records dropped (after a "[rank: N] " prefix)
_LOGS = [
    # rank_zero_info's logger: advertisements for Lightning's cloud services, unrelated to the run
    ("lightning.pytorch.utilities.rank_zero", ("💡 Tip: For seamless cloud",)),
    # the seed is recorded in the run's config.yaml and run.json; printed first on stderr, it stood above a
    # command's one-line error
    ("lightning.fabric.utilities.seed", ("Seed set to ",)),
]

# (logger, message starts): each such line printed once per command; every Trainer prints them (a backtest builds
# one per origin or fold, predict one per chunk), and a repeat says nothing new. A line that differs (another
# device used) is printed: only a repeat of the exact same line is dropped.
_ONCE = [
    # the device banner of lightning.pytorch.trainer.setup._log_device_info
    ("lightning.pytorch.utilities.rank_zero", ("GPU available: ", "TPU available: ", "HPU available: ")),
    # the CUDA accelerator's per-process line, on every Trainer's setup
    ("lightning.pytorch.accelerators.cuda", ("LOCAL_RANK: ",)),
]


class _OncePerCommand(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        line = re.sub(r"^\[rank: \d+\] ", "", record.getMessage())
        if not line.startswith(self.starts):
            return True
        if line in self.seen:
            return False
        self.seen.add(line)
        return True


class _DropLines(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not re.sub(r"^\[rank: \d+\] ", "", str(record.msg)).startswith(self.starts)


def quiet() -> None:
    """Install the filters above (idempotent); a command starts with none of the ``_ONCE`` lines printed yet."""
    for message, module in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    for name, starts in _LOGS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in log.filters):
            log.addFilter(_DropLines(starts))
    for name, starts in _ONCE:
        log = logging.getLogger(name)
        for old in [f for f in log.filters if isinstance(f, _OncePerCommand)]:
            log.removeFilter(old)
        log.addFilter(_OncePerCommand(starts))
