"""Whether the database can be reached: which errors mean "it is away", what this process saw
of outages, how long the server has been up, and whether heartbeats may be trusted yet.

While no worker could write heartbeats (a server restart, a network gone), every running
trial's heartbeat goes stale. A sweep right after the database came back would fail trials
whose workers are alive and about to beat again, so sweeps wait (:func:`sweep_allowed`) until
the server has been up, and this process has reached it again, for a grace period: enough for
every live worker to beat once more.
"""

from __future__ import annotations

import threading
import time
from typing import Any


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the database cannot be reached.

    Connection refused or dropped, a server shutting down, a pool that timed out waiting for a
    connection: SQLAlchemy's ``OperationalError``/``InterfaceError``/``TimeoutError`` and any
    ``DBAPIError`` that invalidated its connection, possibly wrapped in Optuna's
    ``StorageInternalError``. A constraint violation or a bad value is not transient.
    """
    import sqlalchemy.exc as sa

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (sa.OperationalError, sa.InterfaceError, sa.TimeoutError)):
            return True
        if isinstance(e, sa.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        e = e.__cause__ or e.__context__
    return False


class _Connectivity:
    """When this process last failed to reach the database, and when it reached it again."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.down_since: float | None = None
        self.up_since: float | None = None  # None: no outage seen by this process
        self.outages = 0

    def failed(self) -> None:
        with self.lock:
            if self.down_since is None:
                self.down_since = time.monotonic()
                self.outages += 1

    def succeeded(self) -> float | None:
        """Record a success; returns how long the database was away, if it just came back."""
        with self.lock:
            if self.down_since is None:
                return None
            away = time.monotonic() - self.down_since
            self.down_since = None
            self.up_since = time.monotonic()
            return away

    def up_for(self) -> float:
        """Seconds since this process reached the database again (inf: never lost it; 0: away)."""
        with self.lock:
            if self.down_since is not None:
                return 0.0
            return float("inf") if self.up_since is None else time.monotonic() - self.up_since


CONNECTIVITY = _Connectivity()


def drop_session(storage: Any) -> None:
    remove = getattr(storage, "remove_session", None)
    if remove is None:
        return
    try:
        remove()
    except Exception:
        pass  # the session's connection is gone; the pool replaces it (pre-ping)


def server_uptime(storage: Any) -> float | None:
    """Seconds the database server has been up (PostgreSQL, MySQL); None where unknown."""
    import sqlalchemy

    backend = getattr(storage, "_backend", storage)
    engine = getattr(backend, "engine", None)
    if engine is None:
        return None
    dialect = engine.dialect.name
    if dialect == "postgresql":
        query = "SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())"
    elif dialect in ("mysql", "mariadb"):
        query = "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'"
    else:
        return None
    with engine.connect() as conn:
        value = conn.execute(sqlalchemy.text(query)).scalar()
    return None if value is None else float(value)


def sweep_allowed(storage: Any, grace: float | None) -> bool:
    """Whether heartbeats are trustworthy enough to fail stale trials now.

    Not while this process cannot reach the database, nor within ``grace`` seconds of reaching
    it again, nor within ``grace`` seconds of the server's start (a restart that this process did
    not notice): in those windows live workers have not had the chance to beat.
    """
    if grace is None:
        return True
    if CONNECTIVITY.up_for() < grace:
        return False
    try:
        uptime = server_uptime(storage)
    except Exception as e:
        if is_transient(e):
            CONNECTIVITY.failed()
            return False
        return True  # a server that refuses the query (permissions): heartbeats alone decide
    return uptime is None or uptime >= grace


def started_without_heartbeat(storage: Any, study_id: int, older_than: float) -> list[int]:
    """RUNNING trials of the study that never recorded a heartbeat, started over ``older_than``
    seconds ago: their worker died between starting the trial and its first beat (a SIGKILL, or
    a database that went away right then). Optuna never counts them as stale.
    """
    import datetime

    import optuna
    from optuna.storages._rdb import models

    backend = getattr(storage, "_backend", storage)
    session = backend.scoped_session()
    try:
        beat = models.TrialHeartbeatModel
        rows = (
            # Optuna 5 keeps the start as naive UTC in this column (its datetime_start property
            # converts it to local time).
            session.query(models.TrialModel.trial_id, models.TrialModel._datetime_start_utc)
            .outerjoin(beat, beat.trial_id == models.TrialModel.trial_id)
            .filter(models.TrialModel.study_id == study_id)
            .filter(models.TrialModel.state == optuna.trial.TrialState.RUNNING)
            .filter(beat.trial_id.is_(None))
            .all()
        )
        session.commit()
    finally:
        session.close()
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    limit = now - datetime.timedelta(seconds=older_than)
    return [trial_id for trial_id, start in rows if start is not None and start < limit]


def stale_trial_ids(storage: Any, study_id: int, optuna_stale: Any) -> list[int]:
    """The trials a sweep may fail: Optuna's stale ones (``optuna_stale(study_id)``) and those
    that never beat, and none while heartbeats cannot be trusted (:func:`sweep_allowed`)."""
    grace = storage.grace_period
    if not sweep_allowed(storage, grace):
        return []
    ids: list[int] = optuna_stale(study_id)
    return ids + started_without_heartbeat(storage, study_id, (grace or 0) + 10)
