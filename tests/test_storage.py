"""Storage: URLs, redaction, engine settings, heartbeats, the retry of dead workers' trials."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import write_study

from hpo.cli import main
from hpo.drivers.loop import optimize_loop
from hpo.storage import (
    SQLITE_MAX_WORKERS,
    RetryWithLink,
    StorageError,
    backend_name,
    check_workers,
    engine_kwargs,
    normalize_url,
    open_storage,
    redact,
    sweep_stale_trials,
)

TS = optuna.trial.TrialState
SECRET = "s3cret-Pw"


def test_urls_are_normalised_and_passwords_redacted() -> None:
    assert normalize_url("mysql://u:p@h/db") == "mysql+pymysql://u:p@h/db"
    assert normalize_url("mariadb://u@h/db") == "mysql+pymysql://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql://u@h/db"
    # psycopg 3 is SQLAlchemy 2.1's driver for postgresql://: the URL stays as the user wrote it
    assert normalize_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert normalize_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert backend_name("mysql+pymysql://u@h/db") == "mysql"
    assert backend_name("postgres://h/db") == "postgresql"
    text = (
        f"could not open postgresql://alice:{SECRET}@db:5432/hpo and "
        f"mysql+pymysql://bob:{SECRET}@h/x?charset=utf8 or postgresql://h/db?password={SECRET}&sslmode=require"
    )
    out = redact(text)
    assert SECRET not in out
    assert "postgresql://alice:***@db:5432/hpo" in out and "bob:***@h" in out
    assert "password=***&sslmode=require" in out
    assert redact("sqlite:///studies/hpo.db") == "sqlite:///studies/hpo.db"


def test_engine_settings_bound_the_pool_for_many_workers() -> None:
    server = engine_kwargs("postgresql://u@h/db")
    assert server["pool_pre_ping"] is True
    # 2 connections per worker in use at once (trial loop + heartbeat), a bounded overflow.
    assert server["pool_size"] + server["max_overflow"] <= 4
    assert server["connect_args"]["connect_timeout"] > 0
    assert engine_kwargs("sqlite:///x.db")["connect_args"]["timeout"] >= 60


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://alice:{SECRET}@127.0.0.1:1/hpo",
        f"mysql://root:{SECRET}@127.0.0.1:1/hpo",
    ],
)
def test_unreachable_storage_is_a_user_error_without_the_password(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(StorageError) as err:
        open_storage(url)
    assert SECRET not in str(err.value) and "***" in str(err.value)
    assert main(["studies", "--storage", url]) == 1
    out, errout = capsys.readouterr()
    assert SECRET not in out + errout
    assert "cannot open" in errout and len(errout.strip().splitlines()) == 1


def test_sqlite_refuses_more_workers_than_it_serves(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_workers("sqlite:///x.db", SQLITE_MAX_WORKERS)
    check_workers("postgresql://h/db", 64)
    with pytest.raises(StorageError, match="PostgreSQL or MySQL"):
        check_workers("sqlite:///x.db", SQLITE_MAX_WORKERS + 1)
    path = write_study(tmp_path, tiny_model_dir)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    assert main(["run", str(path), "--storage", url, "--workers", str(SQLITE_MAX_WORKERS + 4)]) == 1
    errout = capsys.readouterr().err
    assert "PostgreSQL or MySQL" in errout and "Traceback" not in errout
    assert not (tmp_path / "hpo.db").exists()  # refused before anything was created


def test_retry_callback_links_and_stops_at_the_limit() -> None:
    study = optuna.create_study()
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trial(optuna.create_trial(state=TS.FAIL, params={"x": 0.25}, distributions=dist))
    cb = RetryWithLink(max_retry=2)
    cb(study, study.trials[0])
    first = study.trials[1]
    assert first.state == TS.WAITING and first.params == {"x": 0.25}
    assert first.user_attrs == {"retry_of": 0, "retry_history": [0]}
    assert first.system_attrs["failed_trial"] == 0
    # The retry died too: one more retry (2 allowed), then none.
    study._storage.set_trial_state_values(first._trial_id, TS.RUNNING)
    study._storage.set_trial_state_values(first._trial_id, TS.FAIL)
    cb(study, study.trials[1])
    second = study.trials[2]
    assert second.user_attrs["retry_of"] == 1 and second.user_attrs["retry_history"] == [0, 1]
    assert second.system_attrs["failed_trial"] == 0
    study._storage.set_trial_state_values(second._trial_id, TS.RUNNING)
    study._storage.set_trial_state_values(second._trial_id, TS.FAIL)
    cb(study, study.trials[2])
    assert len(study.trials) == 3


def _both_read_before_either_writes(*storages: Any) -> None:
    """Hold each storage's state change between its read and its write until every storage has
    read: the interleaving of two sweeps (or two workers) that SQLite, with no row locks, allows."""
    barrier = threading.Barrier(len(storages), timeout=20)
    changing = threading.local()
    for storage in storages:
        backend = getattr(storage, "_backend", storage)
        set_state, check = backend.set_trial_state_values, backend.check_trial_is_updatable

        def set_state_values(*args: Any, _set: Any = set_state, **kwargs: Any) -> bool:
            changing.on = True
            try:
                return bool(_set(*args, **kwargs))
            finally:
                changing.on = False

        def check_updatable(trial_id: int, state: Any, _check: Any = check) -> None:
            if getattr(changing, "on", False):
                changing.on = False  # once per change (a value written checks again)
                barrier.wait()  # every storage has read the trial's state
            _check(trial_id, state)

        backend.set_trial_state_values = set_state_values
        backend.check_trial_is_updatable = check_updatable


def _in_threads(*calls: Any) -> list[Any]:
    """Run each call in its own thread; its result, or the exception it raised."""
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_two_sweeps_that_both_read_a_stale_trial_queue_one_retry_and_one_worker_starts_it(
    tmp_path: Path,
) -> None:
    """SQLite has no SELECT ... FOR UPDATE: two sweeps both read a dead worker's trial RUNNING and
    both failed it, so its retry was queued twice and ran twice (seen once in .ci/run); two workers could
    both start one queued trial. A state change now happens only from the state read."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    a, b = (open_storage(url, heartbeat_interval=1, grace_period=1, max_retries=1) for _ in "ab")
    study_a = optuna.create_study(study_name="race", storage=a, direction="maximize")
    study_b = optuna.load_study(study_name="race", storage=b)
    dead = study_a.ask()
    dead.suggest_float("x", 0.0, 1.0)
    dead.set_user_attr("worker", "gone:1")
    a.record_heartbeat(dead._trial_id)
    time.sleep(3.0)  # older than the grace period (+1 s timestamp resolution)
    _both_read_before_either_writes(a, b)

    swept = _in_threads(lambda: sweep_stale_trials(study_a), lambda: sweep_stale_trials(study_b))
    assert not [r for r in swept if isinstance(r, Exception)], swept
    assert [0] in swept, swept
    trials = study_a.get_trials()
    assert [t.state for t in trials] == [TS.FAIL, TS.WAITING], [t.state for t in trials]
    assert trials[1].user_attrs["retry_of"] == dead.number

    # Two workers ask at once: one starts the queued retry, the other gets a new trial.
    asked = _in_threads(study_a.ask, study_b.ask)
    assert not [r for r in asked if isinstance(r, Exception)], asked
    assert sorted(t.number for t in asked) == [1, 2]
    assert [t.state for t in study_a.get_trials()] == [TS.FAIL, TS.RUNNING, TS.RUNNING]

    # A trial told COMPLETE by its worker while a sweep fails it: the second change is refused.
    told = _in_threads(
        lambda: a.set_trial_state_values(asked[0]._trial_id, TS.COMPLETE, [0.5]),
        lambda: b.set_trial_state_values(asked[0]._trial_id, TS.FAIL),
    )
    assert sorted(type(r).__name__ for r in told) == ["UpdateFinishedTrialError", "bool"], told
    finished = study_a.get_trials()[asked[0].number]
    assert (finished.state, finished.value) in ((TS.COMPLETE, 0.5), (TS.FAIL, None))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_trial_of_a_dead_worker_is_failed_and_retried_with_its_parameters(storage_url: str) -> None:
    """Contract over SQLite, PostgreSQL and MariaDB: stale heartbeat -> FAIL + a retry that runs,
    even when the only other worker has spent its budget (it waits for the trial to go stale).
    """
    interval, grace = 1, 2
    storage = open_storage(storage_url, heartbeat_interval=interval, grace_period=grace, max_retries=1)
    study = optuna.create_study(study_name="hb", storage=storage, direction="maximize")
    # A worker asked a trial, sent one heartbeat and died.
    dead = study.ask()
    x = dead.suggest_float("x", 0.0, 1.0)
    dead.set_user_attr("worker", "gone:1")
    storage.record_heartbeat(dead._trial_id)
    assert sweep_stale_trials(study) == []  # not stale yet

    seen: list[tuple[int, float]] = []

    def objective(trial: optuna.Trial) -> float:
        v = trial.suggest_float("x", 0.0, 1.0)
        seen.append((trial.number, v))
        return v

    t0 = time.monotonic()
    # One new trial for this worker; then it waits for the dead trial to go stale and runs its
    # retry, which does not count as a new trial.
    assert optimize_loop(study, objective, n_trials=1) == 1
    # Stale after grace (+1 s timestamp resolution); the worker checks every second.
    assert time.monotonic() - t0 < grace + interval + 4
    trials = study.get_trials()
    assert [t.state for t in trials] == [TS.FAIL, TS.COMPLETE, TS.COMPLETE]
    failed, fresh, retry = trials
    assert failed.user_attrs["fail_reason"].startswith("worker lost: no heartbeat")
    assert "retry_of" not in fresh.user_attrs
    assert retry.params == {"x": x} and retry.value == x
    assert retry.user_attrs["retry_of"] == dead.number
    assert retry.system_attrs["failed_trial"] == dead.number
    assert seen[-1] == (retry.number, x)
    assert sweep_stale_trials(study) == []  # nothing left to sweep
