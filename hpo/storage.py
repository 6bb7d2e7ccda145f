"""Storage URLs: the default and its environment variable (resolved with the other run options
in :mod:`hpo.options`), redaction, RDB engine settings, heartbeats, and the retry of trials
whose worker died.

Workers are stateless; the study in the database is the state. A worker records a heartbeat
for its running trial every ``heartbeat_interval`` seconds; any worker that starts a trial
first fails every trial of the study whose heartbeat is older than ``grace_period`` (its
worker died) and queues a copy with the same parameters (``retry_of`` links the two), up to
``max_retries`` times per original trial. A trial whose worker ran on this host (same host
name, boot and process namespace) and is no longer running is failed at the next sweep,
without waiting for its heartbeat to go stale.
"""

from __future__ import annotations

import functools
import os
import random
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from hpo.errors import UserError
from hpo.rdb import storage_class

DEFAULT_STORAGE = "sqlite:///studies/hpo.db"
ENV_VAR = "HPO_STORAGE"

# SQLite serialises writers on one file lock. 4 processes x 25 trivial trials ran clean here
# (NOTES.md); above that a study belongs in a server database.
SQLITE_MAX_WORKERS = 4


class StorageError(UserError):
    """A storage URL that is malformed or a database that cannot be reached (a user error)."""


# scheme://user:PASSWORD@host  and  ?password=PASSWORD / &passwd=PASSWORD in a query string
_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<pw>[^&\s]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """Replace the password of every URL in ``text`` with ``***``."""
    text = _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)
    return _QUERY_PASSWORD.sub(lambda m: f"{m['head']}***", text)


def is_sqlite(url: str) -> bool:
    """Whether ``url`` names an SQLite database."""
    return url.startswith("sqlite")


_SQLITE_URL = re.compile(r"^(?P<scheme>sqlite(?:\+\w+)?):(?P<rest>.*)$", re.DOTALL)
_SQLITE_FORMS = "sqlite:///relative/path.db, sqlite:////absolute/path.db or sqlite:///:memory:"


def sqlite_path(url: str) -> str:
    """The database file of an SQLite URL (``:memory:`` for an in-memory database).

    SQLAlchemy reads ``sqlite:///x.db`` as the relative path ``x.db`` and ``sqlite:////x.db`` as
    ``/x.db``; with two slashes (``sqlite://x.db``) the path would be taken as a host name and
    the URL refused, after a folder named ``sqlite:`` had been made. So the form is checked here,
    before anything touches the disk.

    Raises:
        StorageError: ``url`` is not a well-formed SQLite URL.
    """
    m = _SQLITE_URL.match(url)
    if m is None:
        raise StorageError(f"storage {redact(url)}: not an SQLite URL (expected {_SQLITE_FORMS})")
    scheme, rest = m["scheme"], m["rest"]
    if rest == "//":
        return ":memory:"  # SQLAlchemy's own spelling of an in-memory database
    if not rest.startswith("///"):
        tail = rest.lstrip("/")
        hint = f"{scheme}:///{tail}" if tail else f"{scheme}:///PATH"
        raise StorageError(
            f"storage {redact(url)}: malformed SQLite URL: a file path follows three slashes, "
            f"e.g. {redact(hint)} (expected {_SQLITE_FORMS})"
        )
    path = rest[3:].split("?", 1)[0]
    if not path:
        raise StorageError(f"storage {redact(url)}: names no database file (expected {_SQLITE_FORMS})")
    return path


def backend_name(url: str) -> str:
    """sqlite, postgresql, mysql, ... (the dialect without its driver)."""
    name = url.split(":", 1)[0].split("+", 1)[0]
    return {"postgres": "postgresql", "mariadb": "mysql"}.get(name, name)


def normalize_url(url: str) -> str:
    """The URL SQLAlchemy is given: a ``postgresql://`` URL stays exactly as written.

    SQLAlchemy 2.1 opens ``postgresql://`` with psycopg 3, which is a dependency, so the URL
    a user gives hpo is the one that works in plain ``optuna.load_study`` and in the
    ``optuna-dashboard`` command too. Only spellings SQLAlchemy does not take are rewritten:
    ``postgres://`` (Heroku's alias) -> ``postgresql://``; ``mysql://``/``mariadb://`` ->
    ``mysql+pymysql://`` (SQLAlchemy's MySQL default is mysqlclient, which is not installed);
    ``mariadb+DRIVER://`` -> ``mysql+DRIVER://``. A URL that names its driver
    (``postgresql+psycopg2://``, ``mysql+pymysql://``) is left as it is.
    """
    if url.startswith(("mysql://", "mariadb://")):
        return "mysql+pymysql://" + url.split("://", 1)[1]
    if url.startswith("mariadb+"):
        return "mysql+" + url.split("+", 1)[1]
    if url.startswith("postgres://"):
        return "postgresql://" + url.split("://", 1)[1]
    return url


def engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine settings suited to many worker processes sharing one database."""
    if is_sqlite(url):
        # Writers queue on SQLite's file lock; wait for it (seconds) instead of failing with
        # "database is locked".
        return {"connect_args": {"timeout": 120}}
    # A worker uses at most 2 connections at once (its trial loop and its heartbeat thread), so
    # 32 workers hold ~64 of PostgreSQL's default 100. Pre-ping replaces connections the server
    # dropped; recycle (s) stays under MySQL's wait_timeout; connect_timeout (s) makes an
    # unreachable host an error within seconds rather than minutes.
    return {
        "pool_size": 2,
        "max_overflow": 2,
        "pool_timeout": 60,
        "pool_pre_ping": True,
        "pool_recycle": 600,
        "connect_args": {"connect_timeout": 10},
    }


def default_heartbeat(url: str) -> int:
    """Seconds between heartbeats: 10 on a server database, 60 on SQLite (its writes queue)."""
    return 60 if is_sqlite(url) else 10


def check_workers(url: str, workers: int) -> None:
    """Refuse more local workers than SQLite serves without lock errors.

    Raises:
        StorageError: ``url`` is SQLite and ``workers`` exceeds ``SQLITE_MAX_WORKERS``.
    """
    if is_sqlite(url) and workers > SQLITE_MAX_WORKERS:
        raise StorageError(
            f"{workers} workers on SQLite ({redact(url)}): SQLite serialises every write and "
            f"serves at most {SQLITE_MAX_WORKERS} workers on one study; use PostgreSQL or MySQL "
            "for more (--storage postgresql://USER@HOST/DB or mysql://USER@HOST/DB)"
        )


class RetryWithLink:
    """Heartbeat-stale callback: queue the failed trial again with the same parameters.

    Wraps Optuna's ``RetryHeartbeatStaleTrialCallback`` (system attrs ``failed_trial`` and
    ``retry_history``) and also records, as user attributes that the dashboard and
    ``hpo compare`` show, ``retry_of`` (the trial it repeats) and ``retry_history``.
    The queued trial is WAITING; the next worker that asks for a trial runs it first.
    """

    def __init__(self, max_retry: int):
        self.max_retry = max_retry

    def __call__(self, study: Any, trial: Any) -> None:
        if len(trial.system_attrs.get("retry_history", [])) + 1 > self.max_retry:
            return
        enqueue_retry(study, trial)


def enqueue_retry(study: Any, trial: Any) -> None:
    """Queue ``trial`` again (WAITING, same parameters, linked by ``retry_of``/``retry_history``).

    Its system attributes go with it (its checkpoint key among them: ``hpo.checkpoints``), but
    for the host id: the retry runs wherever a worker takes it.
    """
    import optuna

    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k != HOST_ID_ATTR}
    system_attrs["retry_history"] = history
    system_attrs.setdefault("failed_trial", history[0])
    study.add_trial(
        optuna.create_trial(
            state=optuna.trial.TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={"retry_of": trial.number, "retry_history": history},
            system_attrs=system_attrs,
        )
    )


def retry_callback(max_retries: int) -> Any:
    """The stale-trial callback for ``max_retries`` (None when retries are off)."""
    return RetryWithLink(max_retries) if max_retries > 0 else None


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retries: int = 1,
    heartbeat: bool = True,
) -> Any:
    """Open an Optuna RDB storage; heartbeats fail and retry trials whose worker died.

    Args:
        url: SQLAlchemy URL; ``mysql://`` and ``postgres://`` are normalised.
        heartbeat_interval: seconds between heartbeats (default: ``default_heartbeat``).
        grace_period: seconds without a heartbeat before a trial is failed (default 3 x interval).
        max_retries: retries of a trial whose worker died (0: none).
        heartbeat: False for a read-only use (listing, comparing) that never runs trials.

    Raises:
        StorageError: malformed URL or unreachable database (the message has no password).
    """
    import optuna
    import sqlalchemy.exc

    url = normalize_url(url)
    if is_sqlite(url):
        db = sqlite_path(url)  # a malformed URL is refused before any folder is made
        if db != ":memory:":
            try:
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(
                    f"storage {redact(url)}: cannot create the folder of {db} ({e.strerror or e})"
                ) from None
    if heartbeat:
        heartbeat_interval = heartbeat_interval or default_heartbeat(url)
        grace_period = grace_period or 3 * heartbeat_interval
    else:
        heartbeat_interval = grace_period = None
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                # Heartbeats and the retry callback are marked experimental; the warning says
                # nothing a user can act on.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return storage_class()(
                    url,
                    engine_kwargs=engine_kwargs(url),
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=retry_callback(max_retries) if heartbeat else None,
                )
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
            if attempt + 1 < SCHEMA_RACE_ATTEMPTS and _lost_schema_race(e):
                # Another worker created the tables (or their types) between our check and our
                # CREATE: the next attempt finds them.
                time.sleep(0.1 + random.random() * 0.4)
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StorageError(f"storage {redact(url)}: cannot open ({redact(first)})") from None
    raise AssertionError("unreachable")


# Workers of an array job that start together on an empty database all create Optuna's tables;
# on PostgreSQL the losers got `duplicate key value violates unique constraint
# "pg_type_typname_nsp_index"` (8 processes released at once, tests/test_cluster.py).
SCHEMA_RACE_ATTEMPTS = 5


def _lost_schema_race(e: BaseException) -> bool:
    """A CREATE that failed because another process created the same object first."""
    import sqlalchemy.exc

    text = str(e).lower()
    return isinstance(e, sqlalchemy.exc.SQLAlchemyError) and (
        "already exists" in text or "duplicate key" in text or "duplicate entry" in text
    )


def heartbeat_interval_of(storage: Any) -> int | None:
    """Seconds between heartbeats of a storage (also through Optuna's cache wrapper), or None."""
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get is not None else None


# Launch workers set this False: their parent watches its own workers and names how one died
# (exit code, signal) before a sibling's sweep would find the process gone.
CHECK_LOCAL_WORKERS = True
# System attribute: the host identity (``local_host_id``) of the worker process running a trial.
HOST_ID_ATTR = "hpo:worker_host_id"


@functools.cache
def local_host_id() -> str:
    """Boot and process-namespace identity of this host, so that a pid is only ever checked in
    the namespace it belongs to (two containers can share a host name but not their pids).
    """
    parts = []
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:  # not Linux: the host name alone
        pass
    return f"{socket.gethostname()}/{'/'.join(parts)}"


def local_worker_gone(trial: Any) -> str | None:
    """Why ``trial``'s worker process is known to be gone, or None (alive, elsewhere, unknown).

    Only a worker on this host (``HOST_ID_ATTR``) is checked: its pid no longer exists, is a
    zombie, or belongs to a process started after the trial (the pid was reused).
    """
    import psutil

    worker = str(trial.user_attrs.get("worker", ""))
    pid_text = worker.rpartition(":")[2]
    if not pid_text.isdigit() or trial.system_attrs.get(HOST_ID_ATTR) != local_host_id():
        return None
    pid = int(pid_text)
    if pid == os.getpid():
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return f"worker lost: process {worker} is no longer running (exited)"
        created = proc.create_time()
    except psutil.NoSuchProcess:
        return f"worker lost: process {worker} is no longer running"
    except psutil.AccessDenied:
        return None  # it exists; whose it is cannot be told
    started = trial.datetime_start
    # 1 s: process start times are computed from the boot time, rounded to the second.
    if started is not None and created > started.timestamp() + 1.0:
        return f"worker lost: process {worker} is no longer running (its pid now belongs to another process)"
    return None


def sweep_stale_trials(study: Any) -> list[int]:
    """Fail the study's trials whose worker stopped; queue their retries.

    A trial is failed when its heartbeat is older than the grace period, or at once when its
    worker ran on this host and its process is gone (``local_worker_gone``).

    Returns:
        Numbers of the trials this call failed (another worker may have failed some first).
    """
    import optuna

    storage = study._storage
    if heartbeat_interval_of(storage) is None:
        return []
    running = storage.get_all_trials(
        study._study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
    )
    if not running:
        return []
    failed = []
    if CHECK_LOCAL_WORKERS:
        for t in running:
            reason = local_worker_gone(t)
            if reason is not None and fail_trial(study, t._trial_id, reason):
                failed.append(t.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    now_failed = {
        t._trial_id
        for t in storage.get_all_trials(
            study._study_id, deepcopy=False, states=(optuna.trial.TrialState.FAIL,)
        )
    }
    failed += [t.number for t in running if t._trial_id in now_failed and t.number not in failed]
    return sorted(failed)


def failed_trial_lines(study: Any, numbers: list[int]) -> list[str]:
    """``trial 4 failed (worker lost: ...); its retry is queued`` for each swept trial."""
    if not numbers:
        return []
    import optuna

    storage = study._storage
    trials = storage.get_all_trials(study._study_id, deepcopy=False)
    by_number = {t.number: t for t in trials}
    queued = {t.user_attrs.get("retry_of") for t in trials if t.state == optuna.trial.TrialState.WAITING}
    lines = []
    for number in numbers:
        reason = by_number[number].user_attrs.get("fail_reason", "worker lost")
        retry = "its retry is queued" if number in queued else "not retried (execution.max_retries)"
        lines.append(f"trial {number} failed ({reason}); {retry}")
    return lines


def running_trial_lines(study: Any) -> list[str]:
    """One line per RUNNING trial of another worker: how old its heartbeat is and when it is
    failed without one (what a worker that waits for it is waiting for).
    """
    import optuna

    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    ages_of = getattr(backend, "heartbeat_ages", None)
    grace = getattr(backend, "grace_period", None)
    if ages_of is None or grace is None:
        return []
    ages = ages_of(study._study_id)
    lines = []
    for t in storage.get_all_trials(
        study._study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
    ):
        worker = t.user_attrs.get("worker", "?")
        if t._trial_id not in ages:
            continue
        age = ages[t._trial_id]
        lines.append(
            f"trial {t.number} of worker {worker} is RUNNING with a heartbeat {age:.0f} s old; "
            f"it is failed if none comes within {max(0.0, grace - age):.0f} s"
        )
    return lines


def fail_trial(study: Any, trial_id: int, reason: str, retry: bool = True) -> bool:
    """Fail a RUNNING trial now (its worker is known to be gone) and queue its retry.

    Returns:
        True if this call failed it (False: it had already finished).
    """
    import optuna

    storage = study._storage
    try:
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        if not storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    get_callback = getattr(storage, "get_heartbeat_stale_trial_callback", None)
    callback = get_callback() if get_callback is not None else None
    if retry and callback is not None:
        callback(study, storage.get_trial(trial_id))
    return True


def write_trial_attrs(
    storage: Any, trial_id: int, attrs: dict[str, Any], system_attrs: dict[str, Any] | None = None
) -> None:
    """Set several user (and system) attributes of a running trial in one transaction.

    A trial records ~20 attributes when it ends; one commit each cost 5 ms on PostgreSQL and
    13 ms on SQLite here (0.1-0.25 s per trial); one commit for all of them costs one. Falls
    back to one write per key on storages other than Optuna's RDB storage (in-memory, journal)
    or if Optuna's internals moved.
    """
    system_attrs = system_attrs or {}
    if not attrs and not system_attrs:
        return
    backend = getattr(storage, "_backend", storage)  # through Optuna's cache layer
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        set_attr = backend._set_trial_attr_without_commit
        scoped = backend.scoped_session
    except (ImportError, AttributeError):
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for key, value in system_attrs.items():
            storage.set_trial_system_attr(trial_id, key, value)
        return
    with _create_scoped_session(scoped, True) as session:
        for key, value in attrs.items():
            set_attr(session, models.TrialUserAttributeModel, trial_id, key, value)
        for key, value in system_attrs.items():
            set_attr(session, models.TrialSystemAttributeModel, trial_id, key, value)


def write_user_attrs(trial: Any, attrs: dict[str, Any], system_attrs: dict[str, Any] | None = None) -> None:
    """:func:`write_trial_attrs` on an ``optuna.Trial``, keeping its cached copy up to date."""
    write_trial_attrs(trial.storage, trial._trial_id, attrs, system_attrs)
    cached = getattr(trial, "_cached_frozen_trial", None)
    if cached is not None:
        cached.user_attrs.update(attrs)
        cached.system_attrs.update(system_attrs or {})


def open_existing_storage(url: str) -> Any:
    """Open a storage that must already exist (reading commands never create a database).

    Raises:
        UserError: a SQLite file that does not exist, or an unreachable database.
    """
    import warnings

    from optuna.exceptions import ExperimentalWarning

    from hpo.storage import is_sqlite, open_storage, redact, sqlite_path

    if is_sqlite(url):
        db = sqlite_path(url)  # a malformed URL is an error here, before anything is created
        if db != ":memory:" and not Path(db).is_file():
            raise UserError(
                f"storage {redact(url)}: no database at {db} (run a study first, or pass --storage)"
            )
    # Heartbeats are an experimental Optuna feature; a reader never uses them, so say nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return open_storage(url, heartbeat=False)
