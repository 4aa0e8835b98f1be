"""The dispatcher behind the ``cfc-forecast`` console script (``cfc_forecast.launch``) and ``python -m cfc_forecast``.

It picks the command: ``--help``, ``--version``, ``native``, ``tune`` (``cfc_forecast.tune``), ``forecast`` (the batch
job), ``predict`` from a checkpoint (``cfc_forecast.forecast.predict``), ``backtest``, ``calibrate``, ``export``, or
a LightningCLI subcommand (``cfc_forecast.cli``), and reports a user error as one line with exit status 2. The
commands import nothing from here, so no import runs in a circle (``tune`` builds on ``cfc_forecast.cli``; ``cli``
knows no ``tune``).
"""

from __future__ import annotations

import os
import sys

import torch
from jsonargparse import ArgumentError

from cfc_forecast import __version__, noise
from cfc_forecast.argv import parse_threads, take_option, usage
from cfc_forecast.cli import cli
from cfc_forecast.core.native import native_available, native_status
from cfc_forecast.errors import UserError, from_os_error, parse_error, report
from cfc_forecast.forecast.predict import main as predict_main
from cfc_forecast.forecast.predict import wants_test_windows


def main(args: list[str] | None = None) -> int:
    """The console script (behind ``cfc_forecast.launch``): ``--help``, ``--version``, ``native``, ``tune``,
    ``forecast``, ``predict``, or a LightningCLI subcommand; returns the exit status.

    Every command takes ``--threads N`` (torch's intra-op threads) and ``--debug``. A user error (``UserError``, a
    parse error) is one line ``cfc-forecast <command>: error: ...`` and exit status 2; ``--debug`` raises it
    instead, with its traceback."""
    argv = sys.argv[1:] if args is None else list(args)
    noise.quiet()
    debug, argv = take_option(argv, "--debug", with_value=False)
    threads, argv = take_option(argv, "--threads", with_value=True)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    try:
        if (n := parse_threads(threads)) is not None:
            torch.set_num_threads(n)
            os.environ["OMP_NUM_THREADS"] = str(n)  # for the processes this command starts
        if args is None:  # LightningCLI, and DDP when it re-executes the command, read sys.argv
            sys.argv[1:] = argv
        return _dispatch(argv, None if args is None else argv)
    except (UserError, ArgumentError) as err:  # one line, no traceback (cfc_forecast.errors)
        if debug:
            raise
        return report(command, err if isinstance(err, UserError) else parse_error(str(err), _options_of(command)))
    except OSError as err:  # a path no check caught (an output folder that cannot be made, a full disk): one line
        if debug:
            raise
        return report(command, from_os_error(err))


def _options_of(command: str | None) -> list[str]:
    """The option names of ``tune``, ``forecast``, ``export`` and ``backtest`` (their own parsers), for the suggestion
    of a parse error."""
    from jsonargparse import ArgumentParser

    if command == "tune":
        from cfc_forecast.tune.cli import build_parser

        parser = build_parser()
    elif command in ("forecast", "export"):
        from cfc_forecast.export import export
        from cfc_forecast.forecast import forecast

        parser = ArgumentParser()
        parser.add_function_arguments(forecast if command == "forecast" else export, as_positional=False)
    elif command in ("backtest", "calibrate"):
        from cfc_forecast.backtest import backtest
        from cfc_forecast.calibrate import calibrate

        parser = ArgumentParser()
        parser.add_function_arguments(backtest if command == "backtest" else calibrate, as_positional=False)
    else:
        return []
    return [o for action in parser._actions for o in action.option_strings if o.startswith("--")]


def _dispatch(argv: list[str], args: list[str] | None) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[:1] == ["--version"]:
        print(f"cfc-forecast {__version__} (torch {torch.__version__}, {torch.get_num_threads()} intra-op threads)")
        return 0
    if argv[:1] == ["native"]:
        if argv[1:]:
            raise UserError(f"native takes no arguments, got {' '.join(argv[1:])}")
        ok = native_available()
        print(native_status())
        from cfc_forecast.core.kernels import fused_status  # no triton import: only whether it is installed

        print(fused_status())
        return 0 if ok else 1
    if argv[:1] == ["tune"]:  # Optuna studies over fit configs (cfc_forecast/tune)
        from cfc_forecast.tune import main as tune_main

        return tune_main(argv[1:])
    if argv[:1] == ["forecast"]:  # batch forecasting jobs over large inputs (cfc_forecast/forecast)
        from cfc_forecast.forecast import main as forecast_main

        return forecast_main(argv[1:])
    if argv[:1] == ["predict"] and not wants_test_windows(argv):  # from a checkpoint alone
        return predict_main(argv[1:])
    if argv[:1] == ["backtest"]:  # rolling-origin evaluation (cfc_forecast/backtest)
        from cfc_forecast.backtest import main as backtest_main

        return backtest_main(argv[1:])
    if argv[:1] == ["calibrate"]:  # split-conformal intervals in a new checkpoint (cfc_forecast/calibrate.py)
        from cfc_forecast.calibrate import main as calibrate_main

        return calibrate_main(argv[1:])
    if argv[:1] == ["export"]:  # an MLflow pyfunc model (cfc_forecast/export)
        from cfc_forecast.export import main as export_main

        return export_main(argv[1:])
    cli(args)  # None: LightningCLI reads sys.argv itself
    return 0


if __name__ == "__main__":  # python -m cfc_forecast.commands
    sys.exit(main())
