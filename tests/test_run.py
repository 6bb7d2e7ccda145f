"""End to end on one machine: a tiny BERT trained for real, trials stored, pruned, failed, resumed."""

from __future__ import annotations

import glob
import json
import tempfile
from pathlib import Path

import optuna
import pytest
from conftest import write_study

from hpo.cli import main
from hpo.config import load_study
from hpo.drivers.worker import run_worker

TS = optuna.trial.TrialState


def _study(url: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def test_run_records_trials_prunes_and_resumes(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = write_study(
        tmp_path,
        tiny_model_dir,
        budget={"n_trials": 5, "max_epochs": 1, "evals_per_epoch": 3},
        # Validation loss varies continuously even on a tiny model; prune anything worse than
        # the best trial so far at the same evaluation.
        objective={"metric": "loss"},
        pruner={"name": "percentile", "percentile": 99.0, "n_startup_trials": 1, "n_warmup_steps": 0},
        sampler={"name": "random", "seed": 3},
    )
    assert main(["run", str(path), "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "per strategy:" in out and "best: trial" in out

    study = _study(url)
    trials = study.get_trials()
    assert len(trials) == 5
    assert {t.state for t in trials} <= {TS.COMPLETE, TS.PRUNED}
    assert any(t.state == TS.PRUNED for t in trials), [t.state for t in trials]
    for t in trials:
        assert t.intermediate_values, f"trial {t.number} has no intermediate values"
        assert set(t.intermediate_values) <= {1, 2, 3}
        strategy = t.params["strategy"]
        assert t.user_attrs["strategy"] == strategy
        assert ("lora.r" in t.params) == (strategy == "lora")
        if t.state == TS.COMPLETE:
            a = t.user_attrs
            for key in (
                "trainable_params",
                "total_params",
                "val_accuracy",
                "val_precision",
                "val_recall",
                "val_f1",
                "val_loss",
                "train_seconds",
                "samples_per_second",
                "peak_memory_mb",
                "device",
                "worker",
                "seed",
            ):
                assert key in a, key
            assert 0.0 <= a["val_accuracy"] <= 1.0 and a["val_loss"] == t.value
            assert 0 < a["trainable_params"] <= a["total_params"]
            assert (a["trainable_params"] == a["total_params"]) == (strategy == "full")
            assert a["device"] == "cpu" and a["peak_memory_mb"] > 0
            cfg = json.loads(a["config"])
            assert cfg["strategy"] == strategy
            assert cfg["training"]["learning_rate"] == t.params["learning_rate"]
    # The study carries what the dashboard and later workers need.
    assert study.metric_names == ["loss"]
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs["hpo_config"]["space"]["strategy"] == ["full", "lora"]
    assert study.user_attrs["data_fingerprint"]
    # No checkpoint litter.
    assert list(scratch.iterdir()) == []
    assert not glob.glob(str(tmp_path / "**" / "checkpoint-*"), recursive=True)

    # Running the same study again resumes it and adds trials.
    assert main(["run", str(path), "--storage", url, "--n-trials", "2"]) == 0
    assert len(_study(url).get_trials()) == 7

    # `hpo studies` lists it with counts by state and the best strategy.
    capsys.readouterr()
    assert main(["studies", "--storage", url]) == 0
    listing = capsys.readouterr().out
    assert "tiny" in listing and "best_strategy" in listing


def test_failing_trial_is_recorded_and_the_study_goes_on(tmp_path: Path, tiny_model_dir: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = write_study(
        tmp_path,
        tiny_model_dir,
        space={
            "strategy": ["lora", "full"],
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 16,
            # No such module in BERT: the strategy raises when the trial builds its model.
            "strategies": {"lora": {"target_modules": "no_such_module"}},
        },
        sampler={"name": "random", "seed": 0},
        budget={"n_trials": 4, "max_epochs": 1, "evals_per_epoch": 1},
    )
    spec = load_study(path)
    run_worker(spec, url, n_trials=4, timeout=None, quiet=True)
    trials = _study(url).get_trials()
    assert len(trials) == 4
    failed = [t for t in trials if t.state == TS.FAIL]
    done = [t for t in trials if t.state == TS.COMPLETE]
    assert failed and done
    assert all(t.params["strategy"] == "lora" for t in failed)
    assert all("target_modules" in t.user_attrs["fail_reason"] for t in failed)
    assert all(t.params["strategy"] == "full" for t in done)


def test_bad_data_is_a_user_error_before_any_database(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("sentence,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(40)))
    path = write_study(tmp_path, tiny_model_dir, data={"source": str(csv), "text": "review"})
    db = tmp_path / "x.db"
    assert main(["run", str(path), "--storage", f"sqlite:///{db}"]) == 1
    err = capsys.readouterr().err
    assert "review" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not db.exists()


def test_changed_study_file_does_not_mix_into_existing_study(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = write_study(
        tmp_path, tiny_model_dir, budget={"n_trials": 1, "max_epochs": 1, "evals_per_epoch": 1}
    )
    assert main(["run", str(path), "--storage", url]) == 0
    path = write_study(
        tmp_path, tiny_model_dir, budget={"n_trials": 1, "max_epochs": 1, "evals_per_epoch": 1}, seed=5
    )
    capsys.readouterr()
    assert main(["run", str(path), "--storage", url]) == 1
    assert "already exists with different settings (data.seed, seed)" in capsys.readouterr().err
    assert len(_study(url).get_trials()) == 1


def _repeat_probe(lr: float, bs: int, tolerance: float | None, enqueue: bool = False) -> int | None:
    """Which trial a sampled (lr, bs) repeats in a study holding one trained trial at 4.94e-5/16."""
    from hpo.objective import OptunaRecorder, find_repeat

    lr_dist = optuna.distributions.FloatDistribution(2e-5, 5e-5, log=True)
    bs_dist = optuna.distributions.CategoricalDistribution([16, 32])
    study = optuna.create_study(direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            params={"learning_rate": 4.94e-5, "bs": 16},
            distributions={"learning_rate": lr_dist, "bs": bs_dist},
            value=0.8,
        )
    )
    # A trained trial's own repeat is never matched (no chains): this one is at the probe point.
    study.add_trial(
        optuna.trial.create_trial(
            params={"learning_rate": lr, "bs": bs},
            distributions={"learning_rate": lr_dist, "bs": bs_dist},
            value=0.8,
            user_attrs={"repeat_of": 0},
        )
    )
    fixed = {"learning_rate": lr, "bs": bs}
    if enqueue:
        study.enqueue_trial(fixed)
    else:
        study.sampler = optuna.samplers.PartialFixedSampler(fixed, optuna.samplers.RandomSampler())
    trial = study.ask()
    trial.suggest_float("learning_rate", 2e-5, 5e-5, log=True)
    trial.suggest_categorical("bs", [16, 32])
    recorder = OptunaRecorder(trial, "accuracy")
    found = find_repeat(recorder.frozen(), recorder.complete_trials(), tolerance)
    return None if found is None else found.number


def test_a_repeat_is_within_the_tolerance_of_each_range_on_its_sampling_scale() -> None:
    assert _repeat_probe(4.96e-5, 16, 0.01) == 0  # ln(4.96/4.94) = 0.44% of ln(5/2)
    assert _repeat_probe(4.80e-5, 16, 0.01) is None  # 3.1% of the log range
    assert _repeat_probe(4.80e-5, 16, 0.05) == 0
    assert _repeat_probe(4.94e-5, 32, 0.5) is None  # categorical values must be equal
    assert _repeat_probe(4.96e-5, 16, 0.0) is None and _repeat_probe(4.94e-5, 16, 0.0) == 0
    assert _repeat_probe(4.94e-5, 16, None) is None  # skip_repeats: null
    assert _repeat_probe(4.94e-5, 16, 0.01, enqueue=True) is None  # a user's own trial trains


def test_repeated_configurations_are_not_trained(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same strategy, learning rate and batch size, same seed: only the first trial trains."""
    url = f"sqlite:///{tmp_path / 'rep.db'}"
    path = write_study(
        tmp_path,
        tiny_model_dir,
        name="rep",
        space={"strategy": ["full"], "learning_rate": 1e-3, "per_device_train_batch_size": [16, 32]},
        budget={"n_trials": 4, "max_epochs": 1, "evals_per_epoch": 2},
    )
    assert main(["run", str(path), "--storage", url]) == 0
    printed = capsys.readouterr().out
    trials = _study(url, "rep").get_trials()
    assert [t.state for t in trials] == [TS.COMPLETE] * 4
    trained = {t.params["per_device_train_batch_size"]: t for t in trials if "repeat_of" not in t.user_attrs}
    assert set(trained) == {16, 32}  # both batch sizes were drawn and trained once each
    repeats = [t for t in trials if "repeat_of" in t.user_attrs]
    assert len(repeats) == 2
    for t in repeats:
        original = trained[t.params["per_device_train_batch_size"]]
        assert t.user_attrs["repeat_of"] == original.number and t.value == original.value
        assert t.intermediate_values == {} and "train_seconds" not in t.user_attrs
        assert f"[repeat of #{original.number}, not trained]" in printed

    out = tmp_path / "x.yaml"
    assert main(["export", "rep", "--trial", str(repeats[0].number), "-o", str(out), "--storage", url]) == 0
    text = out.read_text()
    assert "repeats it (sampler.skip_repeats) and was not trained" in text
    assert f"trial: {repeats[0].user_attrs['repeat_of']}\n" in text


def test_run_in_which_every_trial_fails_exits_1_and_names_the_reasons(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = write_study(
        tmp_path,
        tiny_model_dir,
        space={
            "strategy": ["lora"],
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 16,
            # No such module in BERT: every trial raises when it builds its model.
            "strategies": {"lora": {"target_modules": "no_such_module"}},
        },
        budget={"n_trials": 2, "max_epochs": 1, "evals_per_epoch": 1},
    )
    for run in (1, 2):
        assert main(["run", str(path), "--storage", url]) == 1
        out, err = capsys.readouterr()
        # The normal summary first (whole study), then one error line about this run only.
        assert f"{2 * run} trials (FAIL {2 * run})" in out and "per strategy:" in out
        assert "\nlora " in out  # the per-strategy table has the (fixed) strategy's row
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith("hpo run: error: no trial of this run completed: 2 failed (2x "), lines
        assert "NoMatchingPeftModuleError: No modules were targeted" in lines[0]
    assert [t.state for t in _study(url).get_trials()] == [TS.FAIL] * 4


def test_a_run_with_pruned_but_no_complete_trial_is_not_an_error() -> None:
    from hpo.results import run_failure

    def trial(state: optuna.trial.TrialState, reason: str = "") -> optuna.trial.FrozenTrial:
        attrs = {"fail_reason": reason} if reason else {}
        return optuna.trial.create_trial(
            state=state, value=0.5 if state == TS.COMPLETE else None, user_attrs=attrs
        )

    assert run_failure([]) == "no trial of this run completed: none ran"
    assert run_failure([trial(TS.PRUNED), trial(TS.FAIL, "x")]) is None
    assert run_failure([trial(TS.COMPLETE)]) is None
    assert run_failure(
        [trial(TS.FAIL, "ValueError: b"), trial(TS.FAIL, "KeyError: 'a'"), trial(TS.FAIL, "KeyError: 'a'")]
    ) == ("no trial of this run completed: 3 failed (2x KeyError: 'a'; 1x ValueError: b)")


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_resume_proposes_new_configurations_and_fresh_runs_reproduce(
    sampler: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Item 1 (resuming replayed the sampler): a second `hpo run` on the same database trains
    new configurations instead of storing the first run's as repeats; the same study file on a
    fresh database gives the same trials, the first run's and the resumed run's alike.
    """
    # TPE stays in its random start-up phase here (10 > 4 trials): the phase that replayed.
    path = write_study(
        tmp_path,
        tiny_model_dir,
        training={"max_train_steps": 2},
        budget={"n_trials": 2, "max_epochs": 1, "evals_per_epoch": 1},
        sampler={"name": sampler, "seed": 0, "n_startup_trials": 10}
        if sampler == "tpe"
        else {"name": sampler},
    )
    runs = []
    for db in ("a.db", "b.db"):
        url = f"sqlite:///{tmp_path / db}"
        assert main(["run", str(path), "--storage", url]) == 0
        assert main(["run", str(path), "--storage", url]) == 0
        assert main(["run", str(path), "--storage", url, "--n-trials", "1"]) == 0
        runs.append(_study(url).get_trials())
    first, again = runs
    assert len(first) == 5
    assert [t.params for t in first] == [t.params for t in again]  # reproducible from a fresh database
    for t in first:
        assert "repeat_of" not in t.user_attrs, (t.number, t.user_attrs.get("repeat_of"), t.params)
        assert t.intermediate_values and "train_seconds" in t.user_attrs
    # The learning rate is continuous: every trial is a new point.
    assert len({t.params["learning_rate"] for t in first}) == 5
