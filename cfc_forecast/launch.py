"""The ``cfc-forecast`` console script: thread settings first, then the command (``cfc_forecast.commands.main``).

The OpenMP runtime reads ``OMP_NUM_THREADS`` and ``OMP_WAIT_POLICY`` once, when torch loads it, and the CLI imports
torch at module level; so they are set here, in a module that imports nothing heavy, before the CLI is imported.
Processes the command starts (DDP ranks, which re-execute this entry point, tuning and forecasting workers)
inherit the environment. ``import cfc_forecast`` sets nothing.

The default: one intra-op thread, and waiting OpenMP threads sleep (``passive``) instead of spinning. The models
here take many small steps (a recurrent cell over each window's observations: matrices of ~64 x 200); splitting such
a step over threads saves little on idle cores and costs a synchronisation per operation, and on a busy machine a
thread that spins waiting for a descheduled partner made the quickstart 10x slower (414 s against 40 s beside one
busy core on 2). ``benchmarks/threads.py`` measures the choices idle and beside copies of itself (README, "Speed").
An explicit ``--threads N`` wins, then an ``OMP_NUM_THREADS`` already in the environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

from cfc_forecast.argv import parse_threads, take_option, usage  # no torch

DEFAULT_THREADS = 1
DEFAULT_WAIT_POLICY = "passive"

def thread_env(environ: MutableMapping[str, str], threads: int | None) -> None:
    """Set the OpenMP variables in ``environ``: ``threads`` when given, else keep the user's, else the defaults."""
    if threads is not None:
        environ["OMP_NUM_THREADS"] = str(threads)
    environ.setdefault("OMP_NUM_THREADS", str(DEFAULT_THREADS))
    environ.setdefault("OMP_WAIT_POLICY", DEFAULT_WAIT_POLICY)


def main() -> int:
    """The console script: ``--help``, the thread settings, then ``cfc_forecast.commands.main`` on ``sys.argv``."""
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    try:
        threads = parse_threads(take_option(argv, "--threads", with_value=True)[0])
    except ValueError as err:
        command = argv[0] if not argv[0].startswith("-") else None
        print(f"cfc-forecast{' ' + command if command else ''}: error: {err}", file=sys.stderr)
        return 2
    thread_env(os.environ, threads)
    from cfc_forecast.commands import main as cli_main  # imports torch: after the environment is set

    return cli_main()
