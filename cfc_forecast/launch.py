"""The ``cfc-forecast`` console script: thread settings first, then the command (``cfc_forecast.cli.main``).

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

from cfc_forecast.errors import UserError  # no torch: errors imports only the standard library

DEFAULT_THREADS = 1
DEFAULT_WAIT_POLICY = "passive"

COMMANDS = {
    "fit": "train a model (--config FILE, or --data.path CSV with its columns; best.ckpt and a run folder)",
    "validate": "score a checkpoint on the validation windows",
    "test": "score a checkpoint on the test windows, beside the naive and linear baselines, with a plot",
    "predict": "forecast from the end of every series with a checkpoint alone (--ckpt_path, --data.path)",
    "forecast": "batch forecasting job over large inputs, resumable (--ckpt_path, --input, --output)",
    "backtest": "rolling-origin evaluation beside the baselines, one checkpoint or a refit per fold (--n_windows)",
    "calibrate": "split-conformal intervals (--levels) stored in a new checkpoint, with test coverage before/after",
    "export": "a checkpoint as an MLflow pyfunc model to load, register and serve (--ckpt_path, --format mlflow)",
    "tune": "an Optuna study over fit configs (--config configs/tune/<study>.yaml)",
    "native": "build the native CfC loop if needed and say whether it is ready",
}
GLOBAL_OPTIONS = {
    "--threads N": "torch's intra-op threads (default 1, or OMP_NUM_THREADS when set)",
    "--debug": "on an error, show the traceback instead of one line",
    "--version": "print the versions and exit",
}


def usage() -> str:
    """``cfc-forecast --help``: every command with a line each, and the options every command takes."""
    width = max(map(len, [*COMMANDS, *GLOBAL_OPTIONS])) + 2
    lines = ["usage: cfc-forecast COMMAND [OPTIONS]   (cfc-forecast COMMAND --help: the command's options)", ""]
    lines += ["commands:", *(f"  {name:<{width}}{text}" for name, text in COMMANDS.items()), ""]
    lines += ["options of every command:", *(f"  {name:<{width}}{text}" for name, text in GLOBAL_OPTIONS.items())]
    return "\n".join(lines)


def take_option(argv: list[str], name: str, with_value: bool) -> tuple[str | bool | None, list[str]]:
    """Remove ``name`` (``--name V``, ``--name=V``, or the bare flag when ``with_value`` is False) from ``argv``.

    Returns:
        The last value given (True for a flag; None when absent) and the remaining arguments.
    """
    value: str | bool | None = None
    rest: list[str] = []
    items = iter(argv)
    for arg in items:
        if arg == name:
            value = next(items, "") if with_value else True
        elif with_value and arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
        else:
            rest.append(arg)
    return value, rest


def parse_threads(value: str | bool | None) -> int | None:
    """``--threads``' value as a count >= 1 (None when not given); a ``UserError`` with the fix otherwise."""
    if value is None:
        return None
    try:
        threads = int(str(value))
    except ValueError:
        threads = 0
    if threads < 1:
        raise UserError(f"--threads takes a whole number >= 1 (e.g. --threads 2), got {value!r}")
    return threads


def thread_env(environ: MutableMapping[str, str], threads: int | None) -> None:
    """Set the OpenMP variables in ``environ``: ``threads`` when given, else keep the user's, else the defaults."""
    if threads is not None:
        environ["OMP_NUM_THREADS"] = str(threads)
    environ.setdefault("OMP_NUM_THREADS", str(DEFAULT_THREADS))
    environ.setdefault("OMP_WAIT_POLICY", DEFAULT_WAIT_POLICY)


def main() -> int:
    """The console script: ``--help``, the thread settings, then ``cfc_forecast.cli.main`` on ``sys.argv``."""
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
    from cfc_forecast.cli import main as cli_main  # imports torch: after the environment is set

    return cli_main()
