"""Storage: URLs, redaction, engine settings, heartbeats, the retry of dead workers' trials."""

from __future__ import annotations

import time
from pathlib import Path

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
