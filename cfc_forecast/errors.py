"""The errors a person can act on, and how every ``cfc-forecast`` command reports them.

A :class:`UserError` (bad data, bad option, missing file) is reported as one line on stderr,
``cfc-forecast <command>: error: <message>``, and the command exits with ``status`` (2 unless a subclass says
otherwise); no traceback. The message names the file, column, series or argument and the fix. Code anywhere in the
package raises it; the entry points (``cfc_forecast.commands.main`` and the commands it dispatches to) report it.

``UserError`` subclasses ``ValueError`` so that callers of the Python API catching ``ValueError`` keep working.
"""

from __future__ import annotations

import difflib
import errno
import re
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


# what the file system can refuse (disk full, permission denied, I/O error): exit status 3, rerun to resume
IO_FAILURES = {errno.ENOSPC, errno.EACCES, errno.EIO, errno.EROFS, errno.EDQUOT, errno.EPERM}


def from_os_error(err: OSError, hint: str = "") -> UserError:
    """An ``OSError`` no code caught, as a one-line error naming the path: a ``StorageError`` (exit 3) when the
    file system refused (``IO_FAILURES``), else a ``UserError`` (exit 2: a path that does not exist, is a file
    where a folder is needed, ...). ``hint`` is appended (e.g. "; rerun the same command to resume")."""
    where = f"{err.filename}: " if err.filename else ""
    message = f"{where}{err.strerror or err}"
    if err.errno in IO_FAILURES:
        return StorageError(message + hint)
    return UserError(message + "; check the path")



def close_option(name: str, options: list[str]) -> str:
    """``; did you mean --x?`` for the closest of ``options`` to ``name``, or a pointer to ``--help``."""
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if not close and "." in name:  # a misspelled group: compare the last part with each option's last part
        tails = {o.rsplit(".", 1)[-1]: o for o in options if o.startswith(name.rsplit(".", 1)[0] + ".")}
        close = [tails[t] for t in difflib.get_close_matches(name.rsplit(".", 1)[-1], list(tails), n=1)]
    return f"; did you mean {close[0]}?" if close else "; see --help for the options"


def parse_error(message: str, options: list[str]) -> UserError:
    """A jsonargparse parse error (often a dozen lines of union subtypes) as one line naming the option and the fix.

    Args:
        message: the ``ArgumentError``'s text.
        options: the command's option names (``--trainer.max_epochs``, ``--data.time_column``, ...).
    """
    unknown = re.search(r"[Uu]nrecognized arguments: (.*)", message)
    if unknown:
        given = [a.split("=", 1)[0] for a in unknown.group(1).split() if a.startswith("-")] or [unknown.group(1)]
        return UserError(f"unknown option {given[0]}{close_option(given[0], options)}")
    required = re.search(r"the following arguments are required: (.*)", message)
    if required:
        names = [f"--{n.strip().split('.', 1)[-1]}" for n in required.group(1).split(",")]
        hint = " (--data.path FILE with its columns, or --config FILE)" if names == ["--data"] else ""
        return UserError(f"missing {', '.join(names)}{hint}")
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        names = re.findall(r"'([^']*)'", choice.group(2))
        close = difflib.get_close_matches(choice.group(1), names, n=1)
        hint = f"did you mean {close[0]}?" if close else f"choose from {', '.join(names)}"
        return UserError(f"unknown command {choice.group(1)!r}; {hint} (cfc-forecast --help lists them)")
    keys = re.findall(r'[Pp]arser key "([^"]+)"', message)
    prefix = "--" + ".".join(keys) if keys else ""
    rejected = re.search(r"Option '([^']+)' is not accepted", message)
    if rejected:
        name = f"{prefix}.{rejected.group(1)}" if prefix else f"--{rejected.group(1)}"
        return UserError(f"unknown option {name}{close_option(name, options)}")
    lines = [ln.strip(" -") for ln in message.splitlines() if ln.strip()]
    detail = next((ln for ln in lines if ln.startswith("Expected") or "Got value" in ln), lines[-1] if lines else "")
    detail = re.sub(r'[Pp]arser key "[^"]+":\s*', "", detail)
    detail = re.sub(r"Expected an? <class '(?:\w+\.)*(\w+)'>\.?", r"expected \1,", detail)  # <class 'int'>: int
    given = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Given value:")), None)
    if detail.endswith(",") and given is not None:  # a union's innermost value (the first "Given value" line)
        detail += f" got {given!r}"
        if detail.startswith("expected list"):
            detail += f"; write a list in brackets, e.g. '[{given}]'"
    if prefix:
        return UserError(f"{prefix}: {detail}")
    return UserError(" ".join(lines)[:300])
