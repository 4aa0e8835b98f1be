"""Opening a study's storage: any SQLAlchemy URL; SQLite with a long busy timeout, so parallel workers wait for the
file lock instead of dying of "database is locked"; heartbeats, so a trial whose worker died is failed and retried."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage

SQLITE_BUSY_TIMEOUT_S = 600  # a writer waits this long for another process's lock before SQLite gives up
OPEN_ATTEMPTS = 3


def open_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = None,
    for_trial: bool = False,
) -> RDBStorage:
    """An optuna ``RDBStorage`` on ``url``.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:////abs/study.db`` or ``postgresql+psycopg2://user:pw@host:5432/db``.
        heartbeat_interval, grace_period: seconds (see :class:`~cfc_forecast.tune.spec.StudySpec`); None: no
            heartbeat (a trial's own process: its worker beats for it).
        max_retry: how often a trial found abandoned is queued again with its parameters.
        for_trial: skip the schema checks (the worker has made the tables).

    Raises:
        ValueError: a URL SQLAlchemy cannot open, with the reason.
    """
    engine_kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # optuna marks the heartbeat options experimental; they are what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = None
        if heartbeat_interval is not None:
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        kwargs = dict(engine_kwargs=engine_kwargs, skip_compatibility_check=for_trial, skip_table_creation=for_trial,
                      heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                      heartbeat_stale_trial_callback=retry)  # fmt: skip
        attempts = 0
        while True:
            try:
                return RDBStorage(url, **kwargs)
            except ImportError as err:
                raise ValueError(f"storage {redact(url)}: the database driver is missing ({err})") from None
            except Exception as err:  # SQLAlchemy's errors: name the URL (without its password) and the reason
                attempts += 1
                # two workers that open a new database at once race to create its tables: the loser tries again
                if attempts < OPEN_ATTEMPTS and "already exists" in str(err):
                    time.sleep(1.0)
                    continue
                raise ValueError(f"storage {redact(url)} cannot be opened: {type(err).__name__}: {err}") from None


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and tables)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
