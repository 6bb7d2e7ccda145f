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
    for method in ("search", "recipe"):
        # as `hpo run --set key=value` reads them: values as YAML
        sets = {k: loads_yaml(str(v)) for k, v in tasks.overrides(c, False, method).items()}
        spec = load_study(ROOT / c.study, sets)
        assert spec.data.train_limit == c.search["data.train_limit"]
    assert spec.space.strategies == ["full"] and spec.budget.n_trials == 1
