"""Database outages: waiting for the database with backoff, and what a worker remembers while
it is away.

A PostgreSQL or MySQL server restarted (or a network gone) for a while must not cost the trials
that are training: a worker keeps training, keeps what it could not write (``Pending``), and
writes it when the database answers again; a trial's final result is retried with backoff for
``execution.db_patience`` seconds (:func:`call_with_retry`) and only then failed with that reason.
Which errors count as an outage, and when stale heartbeats may be trusted again, is
:mod:`hpo.connectivity`'s.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hpo.connectivity import CONNECTIVITY, drop_session, is_transient
from hpo.errors import UserError
from hpo.periodic import Periodic

T = TypeVar("T")

DEFAULT_PATIENCE = 300
"""Seconds a worker waits for the database at a time (``execution.db_patience``)."""

# Backoff between attempts (s): 0.25, 0.5, 1, 2, 4, then every 5 s (+-20% jitter so that many
# workers do not knock at once when the server is back).
_FIRST_WAIT = 0.25
_MAX_WAIT = 5.0


class DatabaseUnavailable(UserError):
    """The database did not answer within the patience (a user-facing error: exit 1)."""


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
            drop_session(storage)
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


class Heartbeat(Periodic):
    """A trial's heartbeat thread that survives outages (Optuna's dies at the first error).

    Beats every ``interval`` seconds; while the database is away it tries again every
    second or two, so that the first beat after the outage comes within about a second.
    """

    def __init__(self, storage: Any, trial_id: int):
        from hpo.storage import heartbeat_interval_of

        super().__init__(heartbeat_interval_of(storage), "hpo-heartbeat")
        self.storage = storage
        self.trial_id = trial_id

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
                    drop_session(self.storage)
                    wait = min(wait, 1.5)
                # Anything else (the trial was finished by another worker): try again later.
            if self._stop.wait(wait):
                return
