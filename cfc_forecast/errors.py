"""The errors a person can act on, and how every ``cfc-forecast`` command reports them.

A :class:`UserError` (bad data, bad option, missing file) is reported as one line on stderr,
``cfc-forecast <command>: error: <message>``, and the command exits with ``status`` (2 unless a subclass says
otherwise); no traceback. The message names the file, column, series or argument and the fix. Code anywhere in the
package raises it; the entry points (``cfc_forecast.cli.main`` and the commands it dispatches to) report it.

``UserError`` subclasses ``ValueError`` so that callers of the Python API catching ``ValueError`` keep working.
"""

from __future__ import annotations

import sys

PROG = "cfc-forecast"


class UserError(ValueError):
    """A problem the user can fix; reported as one line and exit status ``status`` (2) by the entry points."""

    status: int = 2


def report(command: str | None, err: BaseException, status: int | None = None) -> int:
    """Print ``err`` as ``cfc-forecast <command>: error: <message>`` (one line) on stderr; return the exit status
    (``status``, else ``err.status``, else 2)."""
    name = f"{PROG} {command}" if command else PROG
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"{name}: error: {message}", file=sys.stderr, flush=True)
    if status is not None:
        return status
    return int(getattr(err, "status", 2))


class StorageError(UserError):
    """The file system refused a read or write (disk full, permission denied, I/O error): exit status 3."""

    status: int = 3
