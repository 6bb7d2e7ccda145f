"""Database outages: which errors mean "the database is away", waiting for it with backoff, and
what a worker remembers while it is away.

A PostgreSQL or MySQL server restarted (or a network gone) for a while must not cost the trials
that are training: a worker keeps training, keeps what it could not write (``Pending``), and
writes it when the database answers again; a trial's final result is retried with backoff for
``execution.db_patience`` seconds (:func:`call_with_retry`) and only then failed with that reason.

While no worker could write heartbeats, every running trial's heartbeat goes stale. A sweep
right after the database came back would fail trials whose workers are alive and about to beat
again, so sweeps wait (:func:`sweep_allowed`) until the server has been up, and this process
has reached it again, for a grace period: enough for every live worker to beat once more.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hpo.errors import UserError

T = TypeVar("T")

DEFAULT_PATIENCE = 300
"""Seconds a worker waits for the database at a time (``execution.db_patience``)."""

# Backoff between attempts (s): 0.25, 0.5, 1, 2, 4, then every 5 s (+-20% jitter so that many
# workers do not knock at once when the server is back).
_FIRST_WAIT = 0.25
_MAX_WAIT = 5.0


class DatabaseUnavailable(UserError):
    """The database did not answer within the patience (a user-facing error: exit 1)."""


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


def call_with_retry(
    fn: Callable[[], T],
    what: str,
    patience: float,
    *,
    storage: Any = None,
    say: Callable[[str], None] | None = None,
) -> T:
    """``fn()``, retried with backoff while the database cannot be reached, for ``patience`` s.

    Args:
        fn: one database operation (or a few that may run again).
        what: what it does, for messages ("record trial 7's result").
        patience: seconds to keep trying; then :class:`DatabaseUnavailable`.
        storage: the Optuna storage, whose thread-local session is dropped after a failure (it
            may hold a half-done transaction on a dead connection).
        say: one line when the database goes away and one when it is back (None: silent).

    Raises:
        DatabaseUnavailable: still unreachable after ``patience`` seconds.
        Exception: any error that is not an outage, at once.
    """
    start = time.monotonic()
    wait = _FIRST_WAIT
    announced = False
    while True:
        try:
            result = fn()
        except Exception as e:
            if not is_transient(e):
                raise
            CONNECTIVITY.failed()
            _drop_session(storage)
            waited = time.monotonic() - start
            if not announced and say is not None:
                announced = True
                say(f"database unreachable ({first_line(e)}); retrying to {what} for up to {patience:g} s")
            if waited >= patience:
                raise DatabaseUnavailable(
                    f"database unreachable for {waited:.0f} s (execution.db_patience {patience:g} s) "
                    f"while trying to {what}: {first_line(e)}"
                ) from None
            time.sleep(min(wait * random.uniform(0.8, 1.2), max(0.05, patience - waited)))
            wait = min(_MAX_WAIT, wait * 2)
            continue
        away = CONNECTIVITY.succeeded()
        if announced and say is not None:
            say(f"database back after {time.monotonic() - start:.1f} s; {what}: done")
        elif away is not None and say is not None and away > 1.0:
            say(f"database back after {away:.1f} s")
        return result


def first_line(e: BaseException) -> str:
    """The first line of the innermost database error's text, without any password."""
    from hpo.storage import redact

    inner: BaseException = e
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = str(getattr(inner, "orig", None) or inner).strip()
    return redact(text.splitlines()[0] if text else type(inner).__name__)[:200]


def _drop_session(storage: Any) -> None:
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


@dataclass
class Pending:
    """What a running trial could not write while the database was away, to write later."""

    attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    values: dict[int, float] = field(default_factory=dict)
    """Intermediate values by step."""

    def __bool__(self) -> bool:
        return bool(self.attrs or self.system_attrs or self.values)

    def write(self, storage: Any, trial_id: int) -> None:
        """Write everything kept (one transaction for the attributes), then forget it."""
        from hpo.storage import write_trial_attrs

        if self.attrs or self.system_attrs:
            write_trial_attrs(storage, trial_id, self.attrs, self.system_attrs)
            self.attrs, self.system_attrs = {}, {}
        for step, value in sorted(self.values.items()):
            storage.set_trial_intermediate_value(trial_id, step, value)
            del self.values[step]


PENDING: dict[int, Pending] = {}
"""Trial id -> writes kept for it while the database was away (this process's trials)."""


def pending_for(trial_id: int) -> Pending:
    """The writes kept for ``trial_id`` (created empty)."""
    return PENDING.setdefault(trial_id, Pending())


class Heartbeat:
    """A trial's heartbeat thread that survives outages (Optuna's dies at the first error).

    Beats every ``interval`` seconds; while the database is away it tries again every
    second or two, so that the first beat after the outage comes within about a second.
    """

    def __init__(self, storage: Any, trial_id: int):
        from hpo.storage import heartbeat_interval_of

        self.storage = storage
        self.trial_id = trial_id
        self.interval = heartbeat_interval_of(storage)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.interval:
            self._thread = threading.Thread(target=self._run, name="hpo-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        assert self.interval
        while True:
            wait = float(self.interval)
            try:
                self.storage.record_heartbeat(self.trial_id)
                CONNECTIVITY.succeeded()
            except Exception as e:
                if is_transient(e):
                    CONNECTIVITY.failed()
                    _drop_session(self.storage)
                    wait = min(wait, 1.5)
                # Anything else (the trial was finished by another worker): try again later.
            if self._stop.wait(wait):
                return
