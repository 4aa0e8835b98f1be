"""The ``cfc-forecast`` command.

This version knows the commands of the CfC core; the forecaster's LightningCLI (fit / validate / test / predict)
takes this entry point over when it lands.
"""

from __future__ import annotations

import sys

import torch

from cfc_forecast import __version__
from cfc_forecast.native import native_available, native_status

USAGE = """usage: cfc-forecast <command>

commands:
  native      build the native CfC loop now (otherwise built at first use) and report its status
  --version   print the versions of cfc-forecast and torch
"""


def main(args: list[str] | None = None) -> int:
    """Run the command in ``args`` (default: ``sys.argv[1:]``) and return its exit status."""
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if argv[0] == "--version":
        print(f"cfc-forecast {__version__} (torch {torch.__version__})")
        return 0
    if argv[0] == "native":
        ok = native_available()
        print(native_status())
        return 0 if ok else 1
    print(f"cfc-forecast: unknown command {argv[0]!r}\n{USAGE}", end="", file=sys.stderr)
    return 2
