"""Lines a ``cfc-forecast`` command does not print: each names its exact message and the module that emits it.

Installed by the entry point (``cfc_forecast.cli.main``) only, never on import: a Python user keeps every warning.
No blanket filter: each entry says why the line does not apply to a person running the command.
"""

from __future__ import annotations

import logging
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
# rank_zero_info's logger: advertisements for Lightning's cloud services, unrelated to the run
_TIPS = ("💡 Tip: For seamless cloud",)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIPS)


def quiet() -> None:
    """Install the filters above (idempotent)."""
    for message, module in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in log.filters):
        log.addFilter(_DropTips())
