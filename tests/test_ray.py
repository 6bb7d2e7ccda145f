"""Ray Tune backend: same space, same storage, trials that read like the Optuna driver's."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import write_study

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


def test_two_concurrent_ray_trials_land_in_the_shared_study(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpo.ray_backend import run_ray

    monkeypatch.setenv("HPO_RAY_STORAGE", str(tmp_path / "ray_results"))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = load_study(write_study(tmp_path, tiny_model_dir, training={"max_train_steps": 30}))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        study = run_ray(spec, url, n_trials=2)
    finally:
        ray.shutdown()

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
    written = [f for f in (tmp_path / "ray_results").rglob("*") if f.is_file()]
    assert written and not [f for f in written if url.encode() in f.read_bytes()]


def test_searcher_marks_stopped_trials_fails_errored_ones_and_pickles_no_storage(tmp_path: Path) -> None:
    from hpo.ray_backend import EVAL_KEY, FINAL_KEY, _searcher_class
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
