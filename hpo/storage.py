"""Storage URLs: resolution (flag > env > file > default), redaction, and RDB engine settings."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hpo.errors import UserError

DEFAULT_STORAGE = "sqlite:///studies/hpo.db"
ENV_VAR = "HPO_STORAGE"


class StorageError(UserError):
    """A storage URL that is malformed or a database that cannot be reached (a user error)."""


def resolve_storage(flag: str | None = None, file_value: str | None = None) -> str:
    """Pick the storage URL: ``--storage``, else ``HPO_STORAGE``, else the study file, else the default."""
    for candidate in (flag, os.environ.get(ENV_VAR), file_value):
        if candidate:
            return candidate
    return DEFAULT_STORAGE


_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)")


def redact(text: str) -> str:
    """Replace the password of every URL in ``text`` with ``***``."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def backend_name(url: str) -> str:
    """sqlite, postgresql, mysql, ... (the dialect without its driver)."""
    return url.split(":", 1)[0].split("+", 1)[0]


def normalize_url(url: str) -> str:
    """Pick the drivers this package installs: ``mysql://`` -> ``mysql+pymysql://``."""
    if url.startswith("mysql://") or url.startswith("mariadb://"):
        return "mysql+pymysql://" + url.split("://", 1)[1]
    if url.startswith("mariadb+"):
        return "mysql+" + url.split("+", 1)[1]
    return url


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine settings suited to many worker processes sharing one database."""
    if is_sqlite(url):
        # Writers queue on SQLite's file lock; wait for it instead of failing with "database is locked".
        return {"connect_args": {"timeout": 120}}
    # Each worker holds a small bounded pool; pre-ping replaces connections a server dropped.
    return {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 600}


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retries: int = 1,
) -> Any:
    """Open an Optuna RDB storage; heartbeats fail and retry trials whose worker died.

    Raises:
        StorageError: malformed URL or unreachable database (the message has no password).
    """
    import optuna
    import sqlalchemy.exc

    url = normalize_url(url)
    if is_sqlite(url):
        db = url.split(":///", 1)[-1]
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
    if heartbeat_interval is None:
        heartbeat_interval = 60 if is_sqlite(url) else 10
    if grace_period is None:
        grace_period = 3 * heartbeat_interval
    callback = (
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retries) if max_retries > 0 else None
    )
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs(url),
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=callback,
        )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"storage {redact(url)}: cannot open ({redact(first)})") from None
