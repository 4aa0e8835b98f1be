"""The command line's shared pieces, without torch: the command list and ``--help``, ``take_option`` and
``--threads``. Used by the launcher (``cfc_forecast.launch``), the dispatcher (``cfc_forecast.commands``) and the
LightningCLI (``cfc_forecast.cli``).
"""

from __future__ import annotations

from cfc_forecast.errors import UserError  # no torch: errors imports only the standard library

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
