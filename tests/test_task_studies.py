"""The shipped NER and QA studies, end to end on the real data and the real pretrained MiniLM:
``hpo run`` (budget trimmed with ``--set``), ``hpo export`` and ``hpo retrain``, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_DATA

from hpo.cli import main

# Trimmed for a test: one trial on a few rows; the study files as shipped otherwise.
CASES = {
    "wnut17-ner": (
        "wnut17",
        ["data.train_limit=24", "data.validation_limit=16", "data.max_length=32"],
        ("f1", "precision", "recall", "accuracy", "loss"),
    ),
    "squad-minilm": (
        "squad",
        # one held-out article (of 24) keeps the test evaluation short
        [
            "data.train_limit=8",
            "data.validation_limit=6",
            "data.test_size=0.04",
            "data.max_length=128",
            "task.doc_stride=32",
        ],
        ("f1", "exact_match", "loss"),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_shipped_study_runs_exports_and_retrains_offline(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    folder, sets, metrics = CASES[name]
    if not (SHARED_DATA / folder).is_dir():
        pytest.skip(f"{SHARED_DATA / folder} not present")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # threads that wait on each other are far slower on a shared machine
    try:
        _run(name, tmp_path, capsys)
    finally:
        torch.set_num_threads(before)


def _run(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, sets, metrics = CASES[name]
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    args = ["run", str(ROOT / "studies" / f"{name}.yaml"), "--storage", url, "--set", "budget.n_trials=1"]
    args += [
        "--set",
        "budget.max_epochs=1",
        "--set",
        "budget.evals_per_epoch=1",
        "--set",
        "sampler.name=random",
    ]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    spec = tmp_path / "best.yaml"
    assert main(["export", name, "--storage", url, "-o", str(spec)]) == 0
    assert main(["retrain", str(spec), "-o", str(tmp_path / "run")]) == 0
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["metric"] == "f1" and written["difference_from_trial"] == 0.0
    assert set(written["test"]) == set(metrics)
    assert all(0.0 <= written["test"][m] <= 1.0 for m in metrics if m != "loss")
    assert (tmp_path / "run" / "model" / "hpo_model.json").is_file()
    assert "test f1" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["wnut17", "squad"])
def test_benchmark_cases_are_valid_studies_for_both_methods(case: str) -> None:
    """benchmarks/tasks.py's NER and QA rows: the search's and the recipe's overrides validate
    against the shipped study (the recipe: one full fine-tuning configuration)."""
    import sys

    from hpo._yaml import loads_yaml
    from hpo.config import load_study

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import tasks

    c = tasks.CASES[case]
    shipped = load_study(ROOT / c.study)
    for method in ("search", "recipe"):
        # as `hpo run --set key=value` reads them: values as YAML
        sets = {k: loads_yaml(str(v)) for k, v in tasks.overrides(c, False, method).items()}
        spec = load_study(ROOT / c.study, sets)
        # both methods train on the same rows for the same epochs
        assert spec.data.train_limit == c.search.get("data.train_limit", shipped.data.train_limit)
        assert spec.budget.max_epochs == c.search.get("budget.max_epochs", shipped.budget.max_epochs)
    assert spec.space.strategies == ["full"] and spec.budget.n_trials == 1


def test_benchmark_matched_budget() -> None:
    """``--match-budget R``: the search may start trials until R x the recipe's compute less one
    recipe trial; the overrides validate against the shipped QA study; no room is an error."""
    import sys

    from hpo._yaml import loads_yaml
    from hpo.config import load_study

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import tasks

    extra = tasks.matched_budget({"compute_seconds": 625.4, "trial_seconds": 618.3}, 4.0)
    assert extra == {"budget.n_trials": tasks.MATCHED_TRIAL_CAP, "budget.timeout": 1883.3}
    c = tasks.CASES["squad"]
    sets = {k: loads_yaml(str(v)) for k, v in {**tasks.overrides(c, False, "search"), **extra}.items()}
    spec = load_study(ROOT / c.study, sets)
    assert spec.budget.timeout == 1883.3 and spec.budget.n_trials == tasks.MATCHED_TRIAL_CAP
    assert spec.data.train_limit == c.search["data.train_limit"]
    with pytest.raises(ValueError, match="no time for the search"):
        tasks.matched_budget({"compute_seconds": 100.0, "trial_seconds": 100.0}, 1.0)


def test_benchmark_verdict_and_table() -> None:
    """benchmarks/tasks.py's rule: the search must beat the recipe on test in the metric's
    direction at no more than 4x its compute; the table shows wall and CPU figures."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import tasks

    def method(test: float, wall: float, cpu: float, direction: str = "maximize") -> dict:
        return {
            "metric": "f1",
            "direction": direction,
            "best_validation": test,
            "test": test,
            "best_trial": 0,
            "strategy": "full",
            "n_trials": 1,
            "pruned": 0,
            "compute_seconds": wall,
            "compute_cpu_seconds": cpu,
        }

    v = tasks.verdict(method(0.5, 400.0, 390.0), method(0.4, 100.0, 100.0))
    assert v["test_better"] and v["compute_ratio"] == 4.0 and v["cpu_ratio"] == 3.9 and v["target_met"]
    assert not tasks.verdict(method(0.5, 401.0, 390.0), method(0.4, 100.0, 100.0))["target_met"]
    lower = tasks.verdict(method(3.2, 100.0, 1.0, "minimize"), method(3.1, 100.0, 1.0, "minimize"))
    assert lower["test_better"] is False and not lower["target_met"]
    doc = {
        "cases": {
            "x": {
                "task": "t",
                "recipe_name": "r",
                "recipe": method(0.4, 100.0, 100.0),
                "search": method(0.5, 400.0, 390.0),
                "verdict": v,
            }
        }
    }
    assert "| 100 / 400 | 4.0 | 100 / 390 (3.9) | met |" in tasks.markdown(doc)
