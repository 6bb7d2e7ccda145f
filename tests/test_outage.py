"""The database goes away and comes back: a throwaway PostgreSQL server that the test owns is
restarted, stopped and SIGKILLed while workers train; nothing is lost and no worker crashes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import ROOT, write_study
from pgserver import ThrowawayPostgres, free_port, unavailable

TS = optuna.trial.TrialState
SECRET = "0utage-Pw"


@pytest.fixture
def pg() -> Iterator[ThrowawayPostgres]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no throwaway PostgreSQL: {reason}")
    server = ThrowawayPostgres()
    try:
        yield server
    finally:
        server.close()


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    from hpo.storage import open_storage

    storage = open_storage(url, heartbeat=False)
    try:
        return optuna.load_study(study_name="tiny", storage=storage).get_trials()
    finally:
        storage.engine.dispose()


def _try_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return _trials(url)
    except Exception:  # not created yet, or the server is down
        return []


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_unreachable_database_at_start_is_one_line_and_exit_1(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = write_study(tmp_path, tiny_model_dir)
    url = f"postgresql://hpo:{SECRET}@127.0.0.1:{free_port()}/hpo"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HPO_STORAGE": url}
    proc = subprocess.run(
        [sys.executable, "-m", "hpo", "run", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot open" in lines[0] and "Connection refused" in lines[0], proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_trial_survives_a_short_outage_and_a_long_one_fails_it_with_the_reason(
    pg: ThrowawayPostgres, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Short outage (2 s, patience 4 s): the trial's evaluations and attributes written during
    it are kept and written with its result. Long outage (8 s): its result is given up after
    the patience, stored FAIL with that reason once the database is back, and retried."""
    from hpo.config import load_study
    from hpo.drivers.one_trial import run_one_trial
    from hpo.objective import OptunaRecorder
    from hpo.storage import open_storage
    from hpo.study import open_study

    spec = load_study(
        write_study(tmp_path, tiny_model_dir, execution={"heartbeat_interval": 1, "grace_period": 2})
    )
    storage = open_storage(pg.url, heartbeat_interval=1, grace_period=2)
    study = open_study(spec, storage)
    lines: list[str] = []
    outage = {"seconds": 2.0}

    def objective(trial: Any) -> float:
        trial.suggest_float("x", 0.0, 1.0)
        rec = OptunaRecorder(trial, "accuracy", patience=4)
        rec.report(1, False, {"accuracy": 0.25})
        pg.stop("immediate")
        threading.Timer(outage["seconds"], pg.start).start()
        rec.report(2, True, {"accuracy": 0.5})  # kept while the server is down
        rec.record({"kept": "yes"})
        return 0.5

    t0 = time.monotonic()
    run_one_trial(study, objective, patience=4, say=lines.append)
    first = _trials(pg.url)[0]
    assert first.state == TS.COMPLETE and first.value == 0.5, lines
    assert first.intermediate_values == {1: 0.25, 2: 0.5} and first.user_attrs["kept"] == "yes"
    assert any("database back after" in line for line in lines), lines

    outage["seconds"] = 8.0  # longer than the patience: the result is given up at ~4 s
    run_one_trial(study, objective, patience=4, say=lines.append)
    assert any("result not recorded" in line for line in lines), lines
    # The next trial waits for the database (up to the patience), then fails trial 1 with the
    # reason and runs its retry first.
    outage["seconds"] = 0.5
    run_one_trial(study, objective, patience=30, say=lines.append)
    trials = _trials(pg.url)
    print(f"{time.monotonic() - t0:.1f} s", *lines, sep="\n")
    assert [t.state for t in trials[:3]] == [TS.COMPLETE, TS.FAIL, TS.COMPLETE], lines
    reason = trials[1].user_attrs["fail_reason"]
    assert reason.startswith("result not recorded: database unreachable for") and "db_patience" in reason
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].params == trials[1].params
    assert not any("Traceback" in line for line in lines)


@pytest.mark.slow
def test_two_workers_train_through_a_restart_and_a_kill_9_of_the_database(
    pg: ThrowawayPostgres, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """``hpo run --workers 2`` while the server is restarted, then SIGKILLed and left down for
    longer than the heartbeat grace period: exit 0, no internal error, every trial accounted
    for, and trials that trained across each outage recorded as COMPLETE."""
    path = write_study(
        tmp_path,
        tiny_model_dir,
        training={"max_train_steps": 60},
        sampler={"name": "random", "skip_repeats": None},
        execution={"heartbeat_interval": 1, "grace_period": 3, "db_patience": 120},
    )
    url = pg.url.replace("postgres@", f"postgres:{SECRET}@")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HPO_STORAGE": url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "run", str(path), "--workers", "2", "--n-trials", "8"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def training() -> list[optuna.trial.FrozenTrial]:
        return [t for t in _try_trials(pg.url) if t.state == TS.RUNNING and "strategy" in t.user_attrs]

    try:
        _wait_for(training, 240, "a trial in training")
        restarted = time.time()
        pg.restart()
        _wait_for(
            lambda: [t for t in training() if t.datetime_start.timestamp() > restarted],
            120,
            "a trial after the restart",
        )
        killed = time.time()
        pg.kill9()
        time.sleep(5)  # longer than the grace period (3 s): every heartbeat is stale
        pg.start()
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
        print(proc.stdout.read() if proc.stdout and not proc.stdout.closed else "")
    print(out)
    assert proc.returncode == 0, out
    for bad in ("Traceback", "UnboundLocalError", "Cannot tell", "internal error"):
        assert bad not in out, out
    assert SECRET not in out
    trials = _trials(pg.url)
    assert all(t.state in (TS.COMPLETE, TS.PRUNED, TS.FAIL) for t in trials), [t.state for t in trials]
    done = [t for t in trials if t.state == TS.COMPLETE]
    assert len(done) == 8, [(t.number, t.state, t.user_attrs.get("fail_reason")) for t in trials]
    for t in trials:
        if t.state == TS.FAIL:  # only ever with a reason, and retried to completion
            assert t.user_attrs.get("fail_reason")
            assert any(r.user_attrs.get("retry_of") == t.number and r.state == TS.COMPLETE for r in trials)

    def spans(moment: float) -> bool:
        return any(t.datetime_start.timestamp() < moment < t.datetime_complete.timestamp() for t in done)

    assert spans(restarted) and spans(killed)


def test_a_trial_that_never_beat_is_failed_after_the_grace_period(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A worker killed between starting a trial and its first heartbeat left it RUNNING for
    good (Optuna counts only trials with a stale heartbeat); it is failed and retried."""
    import datetime

    from hpo.config import load_study
    from hpo.storage import open_storage, sweep_stale_trials
    from hpo.study import open_study

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    storage = open_storage(url, heartbeat_interval=1, grace_period=1)
    study = open_study(load_study(write_study(tmp_path, tiny_model_dir)), storage)
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    assert sweep_stale_trials(study) == []  # started just now
    backend = storage._backend if hasattr(storage, "_backend") else storage
    utc_now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    old = utc_now - datetime.timedelta(seconds=30)  # stored as naive UTC
    with backend.engine.begin() as conn:
        import sqlalchemy

        conn.execute(sqlalchemy.text("UPDATE trials SET datetime_start = :t"), {"t": old})
    assert sweep_stale_trials(study) == [0]
    trials = study.get_trials()
    assert trials[0].state == TS.FAIL and trials[0].user_attrs["fail_reason"].startswith("worker lost")
    assert trials[1].state == TS.WAITING and trials[1].user_attrs["retry_of"] == 0
