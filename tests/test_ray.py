"""Ray Tune backend: same space, same storage, trials that read like the Optuna driver's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, write_study

from hpo.cli import main
from hpo.config import load_study

ray = pytest.importorskip("ray")
cloudpickle = pytest.importorskip("ray.cloudpickle")
TS = optuna.trial.TrialState
# What make_objective records on a finished trial; Ray's trials must carry the same.
OPTUNA_DRIVER_ATTRS = {
    "strategy", "config", "seed", "device", "worker", "trainable_params", "total_params",
    "trainable_percent", "val_accuracy", "val_precision", "val_recall", "val_f1", "val_loss",
    "train_seconds", "samples_per_second", "peak_memory_mb", "steps", "evaluations",
}  # fmt: skip


@pytest.fixture
def ray_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HPO_RAY_STORAGE", str(tmp_path / "ray_results"))
    return tmp_path / "ray_results"


@pytest.mark.slow  # a local Ray cluster: make test-slow
def test_two_concurrent_ray_trials_land_in_the_shared_study(
    tmp_path: Path, tiny_model_dir: Path, local_ray: None, ray_results: Path
) -> None:
    from hpo.drivers.ray import run_ray
    from hpo.options import resolve_options

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = load_study(write_study(tmp_path, tiny_model_dir, training={"max_train_steps": 30}))
    opts = resolve_options({"n_trials": 2}, spec)
    study = run_ray(
        spec,
        url,
        n_trials=opts.n_trials,
        timeout=opts.timeout,
        gpus=opts.gpus,
        trials_per_gpu=opts.trials_per_gpu,
    )

    # The same study as the Optuna driver's: the settings stored by open_study, same name.
    stored = optuna.load_study(study_name="tiny", storage=url)
    assert stored.user_attrs["hpo_config"]["name"] == "tiny"
    trials = stored.get_trials()
    assert len(trials) == 2 and all(t.state == TS.COMPLETE for t in trials), [t.state for t in trials]
    for t in trials:
        assert OPTUNA_DRIVER_ATTRS <= set(t.user_attrs), sorted(OPTUNA_DRIVER_ATTRS - set(t.user_attrs))
        assert t.user_attrs["strategy"] == t.params["strategy"] and ("lora.r" in t.params) == (
            t.params["strategy"] == "lora"
        )
        assert set(t.intermediate_values) == {1, 2}
        assert t.value == t.user_attrs["val_accuracy"] == t.intermediate_values[2]
        assert "stopped_early" not in t.user_attrs
    # Two Ray workers ran them at the same time.
    a, b = trials
    assert a.user_attrs["worker"] != b.user_attrs["worker"]
    assert a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
    assert len(study.get_trials()) == 2
    # Ray's experiment folder (tuner state, searcher state, trial configs) never holds the URL.
    written = [f for f in ray_results.rglob("*") if f.is_file()]
    assert written and not [f for f in written if url.encode() in f.read_bytes()]


@pytest.mark.slow  # a local Ray cluster: make test-slow
def test_ray_honours_skip_repeats_like_the_optuna_driver(
    tmp_path: Path, tiny_model_dir: Path, local_ray: None, ray_results: Path
) -> None:
    """One fixed configuration, three Ray trials one at a time: the first trains, the others
    repeat it (sampler.skip_repeats) and take its value without training."""
    from hpo.drivers.ray import run_ray

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    space = {"strategy": ["full"], "learning_rate": 1e-3, "per_device_train_batch_size": [16]}
    spec = load_study(
        write_study(tmp_path, tiny_model_dir, name="rep", space=space, training={"max_train_steps": 4})
    )
    run_ray(spec, url, n_trials=3, timeout=None, workers=1, gpus=None, trials_per_gpu=1)
    trials = optuna.load_study(study_name="rep", storage=url).get_trials()
    assert [t.state for t in trials] == [TS.COMPLETE] * 3
    trained = [t for t in trials if "repeat_of" not in t.user_attrs]
    assert len(trained) == 1 and "train_seconds" in trained[0].user_attrs
    for t in trials:
        if t is not trained[0]:
            assert t.user_attrs["repeat_of"] == trained[0].number and t.value == trained[0].value
            assert "train_seconds" not in t.user_attrs and t.user_attrs["backend"] == "ray"


def test_each_pruner_runs_as_its_ray_scheduler(tmp_path: Path) -> None:
    """pruner: none runs every trial to its end (it had been ASHA whatever the pruner); median is
    Ray's median stopping rule with the median pruner's warm-up and start-up, which never pauses a
    trial (a paused trial would start again from step 0: no checkpoints)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler

    from hpo.drivers.ray_schedulers import ray_scheduler

    def scheduler(pruner: dict[str, object]) -> tuple[object, str]:
        return ray_scheduler(load_study(write_study(tmp_path, Path("m"), pruner=pruner)), 4)

    fifo, words = scheduler({"name": "none"})
    assert type(fifo) is FIFOScheduler and words == "no early stopping (pruner: none), 4 evaluations"
    for name in ("hyperband", "successive-halving"):
        asha, words = scheduler({"name": name, "min_resource": 2, "reduction_factor": 2})
        assert isinstance(asha, ASHAScheduler) and words == "ASHA up to 4 evaluations"
        assert asha._max_t == 4 and asha._reduction_factor == 2
        assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [4, 2]  # rungs
    rule, words = scheduler({"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1})
    assert isinstance(rule, MedianStoppingRule) and words == "median stopping rule from evaluation 2 of 4"

    class Controller:  # a trial waits for room: Ray's rule would pause the one reporting
        def get_live_trials(self) -> list[object]:
            return [type("Pending", (), {"status": "PENDING"})()]

    class Trial:
        def __init__(self, trial_id: str) -> None:
            self.trial_id = trial_id

    trials = {name: Trial(name) for name in "abcd"}

    def report(trial: str, evaluation: int, accuracy: float) -> str:
        result = {"training_iteration": evaluation, "accuracy": accuracy}
        return str(rule.on_trial_result(Controller(), trials[trial], result))  # type: ignore[attr-defined]

    assert report("a", 1, 0.9) == report("a", 2, 0.9) == TrialScheduler.CONTINUE
    assert report("b", 1, 0.8) == TrialScheduler.CONTINUE
    # At evaluation 2 only one other trial got there (n_startup_trials 2): it goes on, unpaused.
    assert report("b", 2, 0.8) == TrialScheduler.CONTINUE
    assert report("c", 1, 0.1) == TrialScheduler.CONTINUE  # warm-up: evaluation 1 never stops
    assert report("c", 2, 0.1) == TrialScheduler.STOP  # below the median of a and b
    assert report("d", 1, 0.95) == report("d", 2, 0.95) == TrialScheduler.CONTINUE


@pytest.mark.parametrize("pruner", ["percentile", "patient"])
def test_a_pruner_ray_cannot_run_is_one_line_before_anything_starts(
    pruner: str,
    tmp_path: Path,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write_study(tmp_path, tiny_model_dir, pruner={"name": pruner})
    db = tmp_path / "hpo.db"
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    assert main(["run", str(path), "--storage", f"sqlite:///{db}", "--backend", "ray"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"hpo run: error: {path}: pruner.name: {pruner} has no Ray Tune scheduler; "
        "use hyperband, successive-halving, median, none or --backend optuna"
    ), err
    assert not db.exists()


def test_searcher_marks_stopped_trials_fails_errored_ones_and_pickles_no_storage(tmp_path: Path) -> None:
    from hpo.drivers.ray import _searcher_class
    from hpo.drivers.ray_trial import EVAL_KEY, FINAL_KEY
    from hpo.storage import open_storage

    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    storage = open_storage(url, heartbeat=False)

    def space(trial: optuna.Trial) -> None:
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)

    searcher = _searcher_class()(space=space, metric="accuracy", mode="max", storage=storage, study_name="s")
    for tid in ("stopped", "finished", "errored"):
        assert "lr" in searcher.suggest(tid)
    searcher.on_trial_result("stopped", {"accuracy": 0.6, EVAL_KEY: 1, "training_iteration": 1})
    searcher.on_trial_complete("stopped", {"accuracy": 0.6, EVAL_KEY: 1})
    searcher.on_trial_complete("finished", {"accuracy": 0.8, EVAL_KEY: 2, FINAL_KEY: True})
    searcher.on_trial_complete("errored", {"accuracy": 0.7, EVAL_KEY: 1}, error=True)
    stopped, finished, errored = optuna.load_study(study_name="s", storage=url).get_trials()
    assert stopped.state == TS.COMPLETE and stopped.user_attrs["stopped_early"] is True
    assert stopped.intermediate_values == {1: 0.6}
    assert finished.state == TS.COMPLETE and "stopped_early" not in finished.user_attrs
    assert finished.intermediate_values == {2: 0.8}
    assert errored.state == TS.FAIL and errored.user_attrs["fail_reason"]
    assert searcher.open_trials() == []
    # Tune pickles its searcher into the experiment folder: no storage (URL, password) in it.
    blob = cloudpickle.dumps(searcher)
    assert str(tmp_path).encode() not in blob and b"sqlite" not in blob


def test_searcher_asks_for_nothing_after_the_deadline_or_a_signal_and_fails_open_trials(
    tmp_path: Path,
) -> None:
    from hpo.drivers.ray import _RunControl, _searcher_class, max_trials_at_once
    from hpo.storage import open_storage

    url = f"sqlite:///{tmp_path / 'hpo.db'}"

    def space(trial: optuna.Trial) -> None:
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)

    control = _RunControl(timeout=3600)
    searcher = _searcher_class()(
        space=space,
        metric="accuracy",
        mode="max",
        storage=open_storage(url, heartbeat=False),
        study_name="s",
        control=control,
    )
    control.start()
    for tid in ("ran", "waiting"):
        assert "lr" in searcher.suggest(tid)
    ran, _ = searcher.open_trials()
    ran.set_user_attr("worker", "host:1")  # what the trainable records first
    control.signum = signal.SIGINT
    assert searcher.suggest("after") == "FINISHED"
    assert searcher.fail_open("interrupted (SIGINT)", "interrupted (SIGINT) before it started") == [0, 1]
    searcher.on_trial_complete("ran", {"accuracy": 0.5})  # Tune closing it later changes nothing
    trials = optuna.load_study(study_name="s", storage=url).get_trials()
    assert [(t.state, t.user_attrs["fail_reason"]) for t in trials] == [
        (TS.FAIL, "interrupted (SIGINT)"),
        (TS.FAIL, "interrupted (SIGINT) before it started"),
    ]
    control = _RunControl(timeout=0.0)
    control.start()
    assert control.stop_suggesting() and not _RunControl(None).stop_suggesting()
    # Trials at once: what the cluster fits (fractional GPUs included), at least one.
    assert max_trials_at_once({"cpu": 1.0}, {"CPU": 2.0}) == 2
    assert max_trials_at_once({"cpu": 1.0, "gpu": 1 / 3}, {"CPU": 16.0, "GPU": 2.0}) == 6
    assert max_trials_at_once({"cpu": 1.0, "gpu": 1.0}, {"CPU": 8.0}) == 1


@pytest.mark.slow  # a local Ray cluster: make test-slow
def test_single_strategy_space_runs_on_ray_one_trial_at_a_time_and_keeps_each_failure_reason(
    tmp_path: Path,
    tiny_model_dir: Path,
    local_ray: None,
    ray_results: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``strategy: [lora]`` is a fixed parameter (no Optuna ``strategy`` param); a trial that
    raises stores its own exception; ``--workers 1`` runs one Ray trial at a time."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = write_study(
        tmp_path,
        tiny_model_dir,
        space={
            "strategy": ["lora"],
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 16,
            # A regex over module names; no_such_module raises in the trainable (PEFT finds no
            # module to adapt).
            "strategies": {"lora": {"target_modules": [".*query", "no_such_module"]}},
        },
        # Random sampler, seed 0: no_such_module, .*query, no_such_module.
        sampler={"name": "random", "seed": 0},
        budget={"n_trials": 3, "max_epochs": 1, "evals_per_epoch": 1},
        training={"max_train_steps": 4},
    )
    argv = ["run", str(path), "--storage", url, "--backend", "ray", "--workers", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "at most 1 trial at a time" in out
    assert "\nlora " in out.split("per strategy:")[1], out
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert [t.params["lora.target_modules"] for t in trials] == [
        "no_such_module",
        ".*query",
        "no_such_module",
    ]
    assert [t.state for t in trials] == [TS.FAIL, TS.COMPLETE, TS.FAIL]
    for t in trials:
        assert "strategy" not in t.params and t.user_attrs["strategy"] == "lora"
        if t.state == TS.FAIL:
            assert t.user_attrs["fail_reason"].startswith(
                "NoMatchingPeftModuleError: No modules were targeted"
            )
        else:
            assert t.value == t.user_attrs["val_accuracy"]
    # One at a time: each trial was asked for after the previous one finished.
    for a, b in zip(trials, trials[1:], strict=False):
        assert a.datetime_complete is not None and b.datetime_start is not None
        assert b.datetime_start >= a.datetime_complete, (a.number, b.number)


@pytest.mark.slow  # a local Ray cluster: make test-slow
def test_ray_timeout_lets_running_trials_finish_and_a_run_that_completes_none_exits_1(
    tmp_path: Path,
    tiny_model_dir: Path,
    local_ray: None,
    ray_results: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = write_study(tmp_path, tiny_model_dir, training={"max_train_steps": 20})
    argv = ["run", str(path), "--storage", url, "--backend", "ray", "--n-trials", "4"]
    # The local Ray fits 2 trials (2 CPUs): both are asked for at once, when Tune starts, and
    # each takes seconds just to start its process (imports), so the deadline passes while they
    # run. Both finish; no other starts, and none was asked for ahead, waiting for a free CPU.
    assert main([*argv, "--timeout", "2"]) == 0
    assert "at most 2 trials at a time" in capsys.readouterr().out
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert [t.state for t in trials] == [TS.COMPLETE] * 2, [
        (t.state, t.user_attrs.get("fail_reason")) for t in trials
    ]
    for t in trials:
        assert t.value == t.user_attrs["val_accuracy"] and "stopped_early" not in t.user_attrs
    # A run whose deadline passes before its first trial: no trial of *this* run completed.
    assert main([*argv, "--timeout", "0.001"]) == 1
    out, err = capsys.readouterr()
    assert "per strategy:" in out
    assert err.strip().splitlines() == ["hpo run: error: no trial of this run completed: none ran"], err
    assert len(optuna.load_study(study_name="tiny", storage=url).get_trials()) == 2


def _running_ray_trial(url: str) -> bool:
    """A trial whose Ray trainable has started (it records its worker first)."""
    try:
        trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    except Exception:  # the study is not there yet
        return False
    return any(t.state == TS.RUNNING and "worker" in t.user_attrs for t in trials)


@pytest.mark.slow  # a local Ray cluster: make test-slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ray_run_interrupted_by_a_signal_fails_its_trial_in_flight_and_exits_130(
    tmp_path: Path, tiny_model_dir: Path, sig: signal.Signals
) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM to the
    command (as a service manager sends it), once a Ray trial trains. About 17 s here."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    # 100,000 steps: far longer than the test waits; the signal comes mid-training.
    path = write_study(tmp_path, tiny_model_dir, training={"max_train_steps": 100_000})
    env = dict(os.environ, HPO_RAY_STORAGE=str(tmp_path / "ray_results"))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpo",
            "run",
            str(path),
            "--storage",
            url,
            "--backend",
            "ray",
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a command in a terminal
    )
    try:
        end = time.monotonic() + 180
        while not _running_ray_trial(url):
            assert proc.poll() is None and time.monotonic() < end, "no Ray trial started"
            time.sleep(0.5)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert f"{sig.name}: stopping the Ray run" in out and "hpo run: interrupted" in out, out
    # No Python traceback, no stack dump of Ray's core worker (absl: "*** SIGTERM received").
    assert "Traceback" not in out and "***" not in out, out
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert [t.state for t in trials] == [TS.FAIL], [t.state for t in trials]
    assert trials[0].user_attrs["fail_reason"] == f"interrupted ({sig.name})"
