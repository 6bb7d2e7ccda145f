"""Local workers and joining workers: one study, many processes, dead and interrupted workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import ROOT, service_url, write_study

from hpo.cli import main
from hpo.drivers.slots import Slot, detect_gpus, plan_slots

TS = optuna.trial.TrialState
SECRET = "s3cret-Pw"
# The attributes every finished trial carries, whichever process ran it.
TRIAL_ATTRS = (
    "strategy", "config", "seed", "device", "worker", "trainable_params", "total_params",
    "val_accuracy", "val_loss", "train_seconds", "samples_per_second", "peak_memory_mb",
)  # fmt: skip


def _study_file(tmp_path: Path, model_dir: Path, steps: int, **over: Any) -> Path:
    """Trials of ``steps`` optimizer steps (about 0.05 s each here) and 2 evaluations."""
    over.setdefault("training", {"max_train_steps": steps})
    # Parallel workers sample in a timing-dependent order: repeats (sampler.skip_repeats)
    # would make the set of trained trials vary from run to run; train every one.
    over.setdefault("sampler", {"name": "random", "skip_repeats": None})
    return write_study(tmp_path, model_dir, **over)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _hpo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _trials(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    from hpo.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False)).get_trials()


def _wait_for(
    predicate: Any,
    timeout: float,
    what: str,
    poll: float = 0.1,
    procs: tuple[subprocess.Popen[str], ...] = (),
) -> Any:
    """``predicate()`` once it is true; fails at ``timeout``, or at once when every one of
    ``procs`` has exited (nothing can change any more), with their output in the message."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if procs and all(p.poll() is not None for p in procs):
            outs = [f"pid {p.pid} exit {p.returncode}:\n{p.communicate()[0]}" for p in procs]
            raise AssertionError(f"every process exited while waiting for {what}\n" + "\n".join(outs))
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _running_trial_of_a_worker(url: str) -> optuna.trial.FrozenTrial | None:
    """A trial that just started training (no evaluation yet), with its worker's pid."""
    try:
        trials = _trials(url)
    except Exception:  # the study is not there yet
        return None
    for t in trials:
        if t.state == TS.RUNNING and "strategy" in t.user_attrs and not t.intermediate_values:
            return t
    return None


def _pid(trial: optuna.trial.FrozenTrial) -> int:
    host, pid = trial.user_attrs["worker"].rsplit(":", 1)
    assert host == socket.gethostname()
    return int(pid)


def _assert_accounted(trials: list[optuna.trial.FrozenTrial], n_evals: int = 2) -> None:
    """Every trial finished, numbers unique, finished ones intact."""
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) and sorted(numbers) == list(range(len(numbers)))
    assert all(t.state in (TS.COMPLETE, TS.PRUNED, TS.FAIL) for t in trials), [t.state for t in trials]
    for t in trials:
        if t.state == TS.COMPLETE:
            assert set(t.intermediate_values) == set(range(1, n_evals + 1)), t.intermediate_values
            assert all(k in t.user_attrs for k in TRIAL_ATTRS), sorted(t.user_attrs)
            assert t.value == t.user_attrs["val_accuracy"]
            assert t.user_attrs["strategy"] == t.params["strategy"]
        elif t.state == TS.FAIL:
            assert t.user_attrs.get("fail_reason"), t.number


def _dump_database(url: str) -> str:
    """Every row of every table, as text."""
    import sqlalchemy

    from hpo.storage import normalize_url

    engine = sqlalchemy.create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return "\n".join(
                repr(conn.execute(sqlalchemy.text(f"SELECT * FROM {table}")).fetchall())
                for table in sqlalchemy.inspect(engine).get_table_names()
            )
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- slots


def test_slots_one_per_gpu_packed_or_spread() -> None:
    gpus = ["0", "1", "2", "3"]
    slots = plan_slots("auto", None, 1, cores=16, visible=gpus)
    assert [s.gpu for s in slots] == gpus and all(s.threads == 4 for s in slots)
    assert slots[2].env()["CUDA_VISIBLE_DEVICES"] == "2"
    # --gpus picks among the visible GPUs (indices into CUDA_VISIBLE_DEVICES when it is set).
    packed = plan_slots(1, [0, 2], 2, cores=16, visible=["5", "6", "7"])
    assert [s.gpu for s in packed] == ["5", "5", "7", "7"]
    spread = plan_slots(3, [0, 1], None, cores=6, visible=gpus)
    assert [s.gpu for s in spread] == ["0", "1", "0"] and spread[0].threads == 2
    with pytest.raises(Exception, match="GPU 4 is not visible"):
        plan_slots(1, [4], 1, visible=gpus)
    # CPU: auto does not oversubscribe; an explicit count splits the cores.
    cpu = plan_slots("auto", None, 1, cores=8, visible=[])
    assert len(cpu) == 4 and all(s.gpu is None and s.threads == 2 for s in cpu)
    assert len(plan_slots("auto", None, 1, cores=1, visible=[])) == 1
    assert [s.threads for s in plan_slots(3, None, 1, cores=8, visible=[])] == [2, 2, 2]
    # device cpu on a GPU machine hides the GPUs from the workers.
    hidden = plan_slots(2, None, 1, device="cpu", cores=4, visible=gpus)
    assert all(s.env()["CUDA_VISIBLE_DEVICES"] == "" for s in hidden)
    assert Slot(0, None, 1).env().get("CUDA_VISIBLE_DEVICES") is None


def test_detect_gpus_reads_cuda_visible_devices() -> None:
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,1"}) == ["0"]


# --------------------------------------------------------------------------- many workers


@pytest.mark.services
@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_four_workers_share_one_study_on_a_server_database(
    kind: str, tmp_path: Path, tiny_model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from hpo.config import load_study
    from hpo.drivers.local import launch
    from hpo.options import resolve_options

    url = service_url(kind)
    if kind == "postgresql":
        # Trust authentication ignores the password; it must still never surface anywhere.
        url = url.replace("postgres@", f"postgres:{SECRET}@")
    spec = load_study(_study_file(tmp_path, tiny_model_dir, steps=4))
    opts = resolve_options({"workers": 4, "n_trials": 8}, spec)
    study = launch(
        spec,
        url,
        workers=opts.workers,
        gpus=opts.gpus,
        trials_per_gpu=opts.trials_per_gpu,
        n_trials=opts.n_trials,
        timeout=opts.timeout,
        poll_seconds=0.5,
    )
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state == TS.COMPLETE for t in trials)
    _assert_accounted(trials)
    assert len({t.user_attrs["worker"] for t in trials}) >= 2  # trials were spread over workers
    out, err = capfd.readouterr()
    assert "8 finished this run" in out, out
    assert SECRET not in out + err
    assert SECRET not in _dump_database(url)
    # The study and its trials are intact for the next reader.
    assert study.user_attrs["hpo_config"]["name"] == "tiny"


def test_three_workers_on_sqlite_survive_a_killed_worker_then_stop_on_sigterm(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """No "database is locked"; a killed worker's trial is failed at once, retried and its
    worker replaced; SIGTERM to the parent then stops every worker with nothing left RUNNING.
    """
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = _study_file(tmp_path, tiny_model_dir, steps=40)
    proc = _hpo("run", str(path), "--storage", url, "--workers", "3", "--n-trials", "40")
    try:
        victim = _wait_for(lambda: _running_trial_of_a_worker(url), 150, "a running trial")
        os.kill(_pid(victim), signal.SIGKILL)

        def retried() -> list[optuna.trial.FrozenTrial]:
            return [
                t
                for t in _trials(url)
                if t.user_attrs.get("retry_of") == victim.number and t.state == TS.COMPLETE
            ]

        _wait_for(retried, 120, "the retry of the killed trial", 0.3)
        # The retry may be the first trial to finish (a worker still starting up takes it):
        # wait until the other workers have finished one too, then catch one mid-trial.
        _wait_for(
            lambda: sum(t.state == TS.COMPLETE for t in _trials(url)) >= 2,
            120,
            "a second finished trial",
            0.3,
        )
        _wait_for(lambda: _running_trial_of_a_worker(url), 60, "another running trial")
        proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        out, _ = proc.communicate(timeout=90)
        print(f"stopped {time.monotonic() - t_term:.1f} s after SIGTERM")
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert "locked" not in out, out
    trials = _trials(url)
    _assert_accounted(trials)
    killed = trials[victim.number]
    assert killed.state == TS.FAIL
    assert "died: killed by SIGKILL" in killed.user_attrs["fail_reason"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].state == TS.COMPLETE
    assert retries[0].params == killed.params
    assert "restarted" in out and "SIGTERM: stopping" in out
    # Stopped early: fewer than 40 new trials; those in flight were failed as interrupted.
    assert len(trials) < 40
    interrupted = [t for t in trials if t.state == TS.FAIL and t.number != victim.number]
    assert interrupted and all(t.user_attrs["fail_reason"].startswith("interrupted") for t in interrupted)
    assert sum(t.state == TS.COMPLETE for t in trials) >= 2


@pytest.mark.services
def test_sigkilled_joining_worker_trial_fails_within_grace_and_retry_finishes(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Two `hpo worker` processes on PostgreSQL; one dies; the other fails and reruns its trial."""
    from hpo.config import load_study
    from hpo.context import prepare
    from hpo.storage import open_storage
    from hpo.study import open_study

    interval, grace = 1, 3
    url = service_url("postgresql")
    # 640 rows: 40 real steps with evaluations at 20 and 40, so that a trial is caught before
    # its first evaluation even on a busy machine (64 rows stop every trial at 4 steps, about
    # 0.05 s before its first evaluation; CI once timed out waiting, likely all 8 slipping
    # between two looks).
    data = {"source": "builtin:reviews", "train_limit": 640, "validation_limit": 32, "max_length": 32}
    path = _study_file(
        tmp_path,
        tiny_model_dir,
        steps=40,
        data=data,
        execution={"heartbeat_interval": interval, "grace_period": grace},
    )
    spec = load_study(path)
    open_study(spec, open_storage(url), fingerprint=prepare(spec).data.fingerprint)
    doomed = _hpo("worker", str(path), "--storage", url, "--n-trials", "3")
    survivor = _hpo("worker", str(path), "--storage", url, "--n-trials", "5")
    try:
        victim = _wait_for(
            lambda: _running_trial_of_a_worker(url), 120, "a running trial", procs=(doomed, survivor)
        )
        pid = _pid(victim)
        assert pid in (doomed.pid, survivor.pid)
        killed_proc, other = (doomed, survivor) if pid == doomed.pid else (survivor, doomed)
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        _wait_for(lambda: _trials(url)[victim.number].state == TS.FAIL, 60, "the killed trial to fail", 0.2)
        waited = time.monotonic() - t_kill
        print(
            f"killed trial stored FAIL {waited:.1f} s after SIGKILL (grace {grace} s, interval {interval} s)"
        )
        out, _ = other.communicate(timeout=150)
        killed_proc.wait(10)
    finally:
        doomed.kill()
        survivor.kill()
    # Stale once its last heartbeat (<= interval before the kill) is older than grace; the
    # other worker sweeps every interval; timestamps have 1 s resolution; 2 s for a busy host.
    assert waited <= grace + interval + 1 + 2, waited
    assert other.returncode == 0, out
    trials = _trials(url)
    _assert_accounted(trials)
    failed = trials[victim.number]
    # Both workers run on this host: the survivor sees the process gone before the heartbeat
    # goes stale (a worker on another machine is failed by its heartbeat: test_storage.py).
    gone = f"worker lost: process {victim.user_attrs['worker']} is no longer running"
    assert failed.user_attrs["fail_reason"].startswith(gone), failed.user_attrs["fail_reason"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].state == TS.COMPLETE
    assert retries[0].params == failed.params
    assert retries[0].user_attrs["worker"] != failed.user_attrs["worker"]
    # Nothing else was touched: every other trial completed.
    others = [t for t in trials if t.number not in (victim.number, retries[0].number)]
    assert others and all(t.state == TS.COMPLETE for t in others)


# --------------------------------------------------------------------------- joining


def test_worker_with_a_different_study_file_is_refused(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    first = _study_file(tmp_path, tiny_model_dir, steps=2)
    assert main(["run", str(first), "--storage", url, "--n-trials", "1"]) == 0
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    changed = _study_file(other_dir, tiny_model_dir, steps=3)
    capsys.readouterr()
    assert main(["worker", str(changed), "--storage", url, "--n-trials", "1"]) == 1
    err = capsys.readouterr().err
    assert "already exists with different settings (training.max_train_steps)" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert len(_trials(url)) == 1
    # A study that is not there yet is created by the worker (the same command on every node
    # of an array job; tests/test_cluster.py covers workers starting together).
    missing = _study_file(other_dir, tiny_model_dir, steps=2, name="nope")
    assert main(["worker", str(missing), "--storage", url, "--n-trials", "1"]) == 0
    assert [t.state.name for t in optuna.load_study(study_name="nope", storage=url).trials] == ["COMPLETE"]


# --------------------------------------------------------------------------- crashes and resumes


def _long_study_file(tmp_path: Path, model_dir: Path, **over: Any) -> Path:
    """Trials of 120 steps (5-15 s here; ``_study_file``'s 64 rows stop at 4 steps), so that
    a trial caught at its start is still training when the test signals or kills its worker.
    """
    over.setdefault(
        "data", {"source": "builtin:reviews", "train_limit": 1000, "validation_limit": 32, "max_length": 32}
    )
    over.setdefault("budget", {"n_trials": 3, "max_epochs": 2, "evals_per_epoch": 1})
    return _study_file(tmp_path, model_dir, steps=120, **over)


def _kill_a_run_mid_trial(url: str, path: Path) -> optuna.trial.FrozenTrial:
    """Start `hpo run` (one worker), SIGKILL it while a trial trains; the trial stays RUNNING."""
    proc = _hpo("run", str(path), "--storage", url)
    try:
        victim = _wait_for(lambda: _running_trial_of_a_worker(url), 150, "a running trial")
        assert _pid(victim) == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert _trials(url)[victim.number].state == TS.RUNNING
    return victim


def test_retry_of_a_killed_trial_trains_and_counts_toward_n_trials(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Item 2 (retries did not train; a resume after a crash ran more trials than asked).

    A retry is never a repeat (sampler.skip_repeats), even beside a trained trial with the same
    parameters; and `hpo run --n-trials 1` after a crash runs the retry as its one trial.
    """
    from hpo.objective import OptunaRecorder, find_repeat
    from hpo.storage import RetryWithLink

    study = optuna.create_study(direction="maximize")
    dist = {"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-3, log=True)}
    study.add_trial(optuna.create_trial(params={"learning_rate": 5e-4}, distributions=dist, value=0.8))
    study.add_trial(optuna.create_trial(state=TS.FAIL, params={"learning_rate": 5e-4}, distributions=dist))
    RetryWithLink(1)(study, study.trials[1])
    retry = study.ask()
    retry.suggest_float("learning_rate", 1e-4, 1e-3, log=True)
    assert retry.number == 2 and retry.params == {"learning_rate": 5e-4}
    recorder = OptunaRecorder(retry, "accuracy")
    assert find_repeat(recorder.frozen(), recorder.complete_trials(), 0.01) is None

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = _long_study_file(
        tmp_path,
        tiny_model_dir,
        sampler={"name": "random", "skip_repeats": 0.01},
        # Stale 2 s after the kill, so the next run fails the trial by its heartbeat alone.
        execution={"heartbeat_interval": 1, "grace_period": 2},
    )
    victim = _kill_a_run_mid_trial(url, path)
    before = len(_trials(url))
    assert main(["run", str(path), "--storage", url, "--n-trials", "1"]) == 0
    trials = _trials(url)
    _assert_accounted(trials)
    assert trials[victim.number].state == TS.FAIL
    # The rule (README, "Workers that die"): a queued retry of a trial an earlier run lost is
    # one of this run's trials.
    assert len(trials) == before + 1
    rerun = trials[-1]
    assert rerun.user_attrs["retry_of"] == victim.number and rerun.params == victim.params
    assert rerun.state == TS.COMPLETE and "repeat_of" not in rerun.user_attrs
    assert rerun.intermediate_values and rerun.user_attrs["train_seconds"] > 0


def test_trial_of_a_dead_local_worker_is_failed_at_once_and_a_wait_is_announced(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 7 (recovery after a crash waited in silence for the grace period).

    With SQLite's defaults (heartbeat 60 s, grace 180 s) a trial whose worker process on this
    host is gone is failed when the next run starts, with the reason, and its retry runs. A
    RUNNING trial of a worker elsewhere is waited for, and the run says so.
    """
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = _long_study_file(tmp_path, tiny_model_dir)
    victim = _kill_a_run_mid_trial(url, path)
    t0 = time.monotonic()
    proc = _hpo("run", str(path), "--storage", url, "--n-trials", "1")
    try:
        # Below the 180 s grace period: a run that waited for it would time out (a loaded
        # 2-core machine needs well over 90 s for the resumed run, seen in a CI rehearsal).
        out, _ = proc.communicate(timeout=170)
    finally:
        proc.kill()
    took = time.monotonic() - t0
    print(f"resumed run took {took:.1f} s")
    assert proc.returncode == 0, out
    trials = _trials(url)
    _assert_accounted(trials)
    failed = trials[victim.number]
    reason = failed.user_attrs["fail_reason"]
    assert victim.user_attrs["worker"] in reason and "no longer running" in reason, reason
    assert reason in out, out
    retries = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].state == TS.COMPLETE

    # A worker on another host: its trial is waited for, with one line saying what for.
    from hpo.config import load_study
    from hpo.storage import open_storage
    from hpo.study import open_study

    other = tmp_path / "other"
    other.mkdir()
    path2 = _study_file(
        other, tiny_model_dir, steps=2, name="away", execution={"heartbeat_interval": 1, "grace_period": 6}
    )
    storage = open_storage(url, heartbeat_interval=1, grace_period=6)
    study = open_study(load_study(path2), storage)
    away = study.ask()
    away.suggest_categorical("strategy", ["full", "lora"])
    away.set_user_attr("worker", "elsewhere:4242")
    storage.record_heartbeat(away._trial_id)
    capsys.readouterr()
    assert main(["run", str(path2), "--storage", url, "--n-trials", "1"]) == 0
    out = capsys.readouterr().out
    assert "trial 0 of worker elsewhere:4242 is RUNNING with a heartbeat" in out, out
    assert "it is failed if none comes within" in out, out
    away_trials = _trials(url, "away")
    assert away_trials[0].state == TS.FAIL, out
    assert away_trials[0].user_attrs["fail_reason"].startswith("worker lost: no heartbeat")


def _descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_killing_the_parent_stops_its_workers_and_fork_server(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Item 6 (killing the parent left orphans that went on starting trials)."""
    import datetime

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = _long_study_file(tmp_path, tiny_model_dir)
    proc = _hpo("run", str(path), "--storage", url, "--workers", "2", "--n-trials", "40")
    try:
        victim = _wait_for(lambda: _running_trial_of_a_worker(url), 150, "a running trial")
        children = _descendants(proc.pid)
        assert _pid(victim) in children
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = datetime.datetime.now()
        proc.communicate(timeout=30)
        t_kill = time.monotonic()
        _wait_for(
            lambda: not any(_alive(p) for p in children), 60, "the workers and fork server to exit", 0.2
        )
        print(f"every child of the killed parent gone {time.monotonic() - t_kill:.1f} s after SIGKILL")
    finally:
        proc.kill()
        for p in _descendants(os.getpid()):
            if p in children:
                os.kill(p, signal.SIGKILL)
    trials = _trials(url)
    _assert_accounted(trials)  # nothing left RUNNING
    assert len(trials) < 40
    stopped = [t for t in trials if t.state == TS.FAIL]
    assert victim.number in [t.number for t in stopped]
    assert all(t.user_attrs["fail_reason"].startswith("interrupted (parent process died)") for t in stopped)
    # The workers notice within a second or two; no trial starts after that.
    late = [t.number for t in trials if t.datetime_start > killed_at + datetime.timedelta(seconds=3)]
    assert not late, late


def test_ctrl_c_with_several_workers_records_sigint(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Item 9: SIGINT to `hpo run --workers 2` is recorded as SIGINT on the interrupted trials."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = _long_study_file(tmp_path, tiny_model_dir)
    proc = _hpo("run", str(path), "--storage", url, "--workers", "2", "--n-trials", "40")
    try:
        victim = _wait_for(lambda: _running_trial_of_a_worker(url), 150, "a running trial")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert "SIGINT: stopping" in out, out
    trials = _trials(url)
    _assert_accounted(trials)
    interrupted = [t for t in trials if t.state == TS.FAIL]
    assert victim.number in [t.number for t in interrupted]
    reasons = [t.user_attrs["fail_reason"] for t in interrupted]
    # "interrupted (SIGINT) before it started" for a trial asked for as the signal came
    assert all(r.startswith("interrupted (SIGINT)") for r in reasons), reasons


def test_hpo_worker_splits_the_cores_between_the_workers_of_this_host(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 8: `hpo worker` takes --threads, else OMP_NUM_THREADS, else its share of the cores;
    the number reaches torch (each trial records torch_threads).
    """
    from hpo.config import load_study
    from hpo.context import prepare
    from hpo.drivers.slots import cpu_cores, joining_worker_threads
    from hpo.storage import open_storage
    from hpo.study import open_study

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert joining_worker_threads(3) == (3, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert joining_worker_threads(None) == (2, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = _study_file(tmp_path, tiny_model_dir, steps=4)
    spec = load_study(path)
    open_study(spec, open_storage(url), fingerprint=prepare(spec).data.fingerprint)
    workers = [_hpo("worker", str(path), "--storage", url, "--n-trials", "1") for _ in range(2)]
    try:
        outs = [w.communicate(timeout=120)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0, 0], outs
    trials = _trials(url)
    assert len(trials) == 2 and all(t.state == TS.COMPLETE for t in trials)
    share = max(1, cpu_cores() // 2)
    assert [t.user_attrs["torch_threads"] for t in trials] == [share, share]
    assert all(f"{share} torch thread" in out for out in outs), outs
