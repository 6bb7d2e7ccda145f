"""Cross-validation (``evaluation: {folds: K}``): folds, a trial's value, pruning per fold, retrain."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import write_study

from hpo._yaml import load_yaml
from hpo.cli import main
from hpo.config import ConfigError, load_study
from hpo.data import DataError, fold_indices
from hpo.drivers.worker import run_worker
from hpo.tasks import get_task

TS = optuna.trial.TrialState
TASK = get_task("sequence-classification")


def test_folds_are_disjoint_stratified_seeded_and_keep_copies_together() -> None:
    # 60 rows, 2:1 classes; 10 texts appear twice (same label), as SST-2's train.tsv repeats some.
    texts = [f"text {i}" for i in range(50)] + [f"text {i}" for i in range(10)]
    labels = [0 if i % 3 else 1 for i in range(50)] + [0 if i % 3 else 1 for i in range(10)]
    frame = pd.DataFrame({"text": texts, "label": labels})
    folds = fold_indices(frame, 5, seed=0, task=TASK)
    assert len(folds) == 5
    held_out = [set(va) for _, va in folds]
    assert sum(len(v) for v in held_out) == len(frame)  # every row held out exactly once
    assert set().union(*held_out) == set(range(len(frame)))
    for tr, va in folds:
        assert not set(tr) & set(va) and len(tr) + len(va) == len(frame)
        fold = frame.iloc[va]
        # stratified: each fold's share of class 1 within a row or two of the whole's (1/3)
        assert abs(int(fold["label"].sum()) - len(fold) / 3) <= 2, fold["label"].tolist()
        # grouped: no text on both sides of a fold
        assert not set(frame.iloc[tr]["text"]) & set(fold["text"])
    assert fold_indices(frame, 5, seed=0, task=TASK) == folds
    assert fold_indices(frame, 5, seed=1, task=TASK) != folds

    with pytest.raises(DataError, match=r"evaluation.folds: 8 folds need at least 8 rows; .* have 6$"):
        fold_indices(frame.head(6), 8, seed=0, task=TASK)


@pytest.mark.parametrize(
    ("evaluation", "objective", "expected"),
    [
        ({"folds": 1}, {}, "evaluation.folds: expected an integer >= 2 (or null for the validation split), got 1"),
        ({"folds": True}, {}, "evaluation.folds: expected an integer or null, got True"),
        ({"folds": "five"}, {}, "evaluation.folds: expected an integer or null, got 'five'"),
        ({"k": 5}, {}, "evaluation.k: unknown key (known: folds)"),
        ({"folds": 3}, {"select": "best"}, "evaluation.folds: cannot be combined with objective.select: best"),
    ],
)
def test_bad_evaluation_is_one_line_naming_the_key(
    tmp_path: Path, tiny_model_dir: Path, evaluation: dict, objective: dict, expected: str
) -> None:
    path = write_study(tmp_path, tiny_model_dir, evaluation=evaluation, objective=objective)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(f"{path}: {expected}"), err.value.problems


@pytest.mark.slow
def test_a_trial_is_the_mean_of_its_folds_prunes_per_fold_and_retrains_on_pooled_rows(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = write_study(
        tmp_path,
        tiny_model_dir,
        name="cv",
        evaluation={"folds": 3},
        budget={"n_trials": 4, "max_epochs": 1, "evals_per_epoch": 2},
        # Validation loss varies continuously even on a tiny model: prune anything worse than
        # the best trial so far after the same number of folds.
        objective={"metric": "loss"},
        pruner={"name": "percentile", "percentile": 99.0, "n_startup_trials": 1, "n_warmup_steps": 0},
        sampler={"name": "random", "seed": 1},
    )
    spec = load_study(path)
    study = run_worker(spec, url, n_trials=4, timeout=None, quiet=True)
    trials = study.get_trials()
    assert study.user_attrs["hpo_config"]["evaluation"] == {"folds": 3}

    complete = [t for t in trials if t.state == TS.COMPLETE]
    assert complete, [t.state for t in trials]
    for t in complete:
        a = t.user_attrs
        values = a["fold_values"]
        assert a["folds"] == 3 and a["folds_trained"] == 3 and len(values) == 3
        assert t.value == pytest.approx(statistics.fmean(values), abs=1e-5)
        assert a["fold_std"] == pytest.approx(statistics.stdev(values), abs=1e-5)
        assert a["val_loss"] == t.value
        # the pruner saw the running mean after each fold (step = fold)
        assert sorted(t.intermediate_values) == [1, 2, 3]
        for k in (1, 2, 3):
            assert t.intermediate_values[k] == pytest.approx(statistics.fmean(values[:k]), abs=1e-5)
    # each fold trains on two thirds of the 96 pooled rows (64 train + 32 validation), batch 16
    assert complete[0].user_attrs["steps"] == 3 * 4

    pruned = [t for t in trials if t.state == TS.PRUNED]
    assert pruned, [(t.number, t.state, t.intermediate_values) for t in trials]
    for t in pruned:
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))
        assert t.user_attrs["folds_trained"] == len(t.intermediate_values) < 3
        assert len(t.user_attrs["fold_values"]) == t.user_attrs["folds_trained"]

    # export + retrain: the chosen config trains on every pooled row, then test is evaluated
    spec_file = tmp_path / "best.yaml"
    assert main(["export", "cv", "-o", str(spec_file), "--storage", url]) == 0
    exported = load_yaml(spec_file)
    assert exported["evaluation"] == {"folds": 3}
    assert len(exported["provenance"]["fold_values"]) == 3
    out = tmp_path / "run"
    assert main(["retrain", str(spec_file), "-o", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trained_on_validation"] is True
    assert metrics["steps"] == 96 // 16  # one epoch over 64 + 32 pooled rows
    assert metrics["data"]["fingerprint"] == study.user_attrs["data_fingerprint"]
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and metrics["data"]["test"] > 0
    assert (out / "model").is_dir()
