"""Task x strategy matrix for NER and extractive QA on a tiny BERT built from a config.

Per task one study trains every strategy that runs on an encoder (a trial each, through the
real driver and SQLite); each trial is then exported and retrained to the same validation
value, its model reloaded with ``load_trained`` and checked to predict what the retrained
model predicts; and each strategy is stopped by a real Optuna pruner at its first evaluation.
Prefix tuning (it needs a decoder's key/value cache) is rejected by ``hpo validate``.
Set-up (data, tokenizer, tokenized splits, the study's trials) is shared by the cases of a task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import write_study
from task_data import write_ner_folder, write_squad_folder

from hpo.cli import main
from hpo.config import load_study
from hpo.tasks import get_task

STRATEGIES = ["full", "partial", "adapter", "lora", "prompt"]
# Learning rates that move a 32-wide model in 3 steps; per strategy as a person would pick them.
LEARNING_RATES = {"full": 3e-3, "partial": 3e-3, "adapter": 5e-3, "lora": 1e-2, "prompt": 3e-2}
METRICS = {
    "token-classification": ("f1", "precision", "recall", "accuracy", "loss"),
    "question-answering": ("f1", "exact_match", "loss"),
}
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models
TS = optuna.trial.TrialState


@dataclass
class TaskStudy:
    """One task's study, run once for every case of that task."""

    task: str
    path: Path
    url: str
    ctx: Any
    root: Path


def _space() -> dict[str, Any]:
    return {
        "strategy": STRATEGIES,
        "learning_rate": {"low": 1e-4, "high": 5e-2, "log": True},
        "per_device_train_batch_size": [8],
        "strategies": {
            "partial": {"trainable_top_layers": [1]},
            "adapter": {"reduction_factor": [4]},
            "lora": {"r": [4]},
            "prompt": {"num_virtual_tokens": [4]},
        },
    }


def _write(task: str, root: Path, model_dir: Path, space: dict[str, Any] | None = None) -> Path:
    if task == "token-classification":
        data = write_ner_folder(root / "data", {"train": 24, "validation": 12, "test": 12})
        extra: dict[str, Any] = {"task": task}
    else:
        data = write_squad_folder(root / "data", {"train": (3, 4), "validation": (2, 3), "test": (2, 2)})
        # 64-token windows sharing 16: every context spans several windows
        extra = {"task": {"name": task, "doc_stride": 16, "max_answer_length": 8}}
    return write_study(
        root,
        model_dir,
        name=f"{task}-matrix",
        data={"source": str(data), "max_length": 64},
        space=space or _space(),
        budget={"n_trials": len(STRATEGIES), "max_epochs": 1, "evals_per_epoch": 2},
        **extra,
    )


@pytest.fixture(scope="module", params=sorted(METRICS))
def task_study(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> TaskStudy:
    from hpo.context import prepare
    from hpo.drivers.worker import run_worker

    task = request.param
    root = tmp_path_factory.mktemp(task)
    path = _write(task, root, tiny_model_dir)
    url = f"sqlite:///{root / 'hpo.db'}"
    with pytest.MonkeyPatch.context() as mp:
        # The module fixture runs before the autouse cache fixture: keep the cache out of the repo.
        mp.setenv("HPO_CACHE_DIR", str(root / "cache"))
        mp.setattr("hpo.context.CACHE_DIR", root / "cache")
        spec = load_study(path)
        ctx = prepare(spec)
        study = optuna.create_study(study_name=spec.name, storage=url, direction="maximize")
        for s in STRATEGIES:
            study.enqueue_trial({"strategy": s, "learning_rate": LEARNING_RATES[s]})
        run_worker(spec, url, n_trials=len(STRATEGIES), timeout=None, quiet=True, ctx=ctx, threads=1)
    return TaskStudy(task, path, url, ctx, root)


def _trial(ts: TaskStudy, strategy: str) -> optuna.trial.FrozenTrial:
    study = optuna.load_study(study_name=f"{ts.task}-matrix", storage=ts.url)
    return next(t for t in study.trials if t.params["strategy"] == strategy)


def _predict(model: Any, ctx: Any) -> Any:
    """The model's logits (NER) or start logits (QA) on four validation rows, one per input
    token (prompt tuning's virtual tokens are not scored), in eval mode."""
    import torch

    rows = ctx.datasets["validation"].select(range(4))
    batch = ctx.tokenizer.pad(
        [{k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids")} for r in rows],
        return_tensors="pt",
    )
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    logits = out.logits if "logits" in out else out.start_logits
    assert logits.shape[:2] == batch["input_ids"].shape
    return logits


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_trains_reports_exports_and_retrains_to_the_same_value(
    task_study: TaskStudy, strategy: str, tmp_path: Path
) -> None:
    import torch

    from hpo.retrain import load_trained, retrain

    ts = task_study
    trial = _trial(ts, strategy)
    assert trial.state == TS.COMPLETE, trial.user_attrs.get("fail_reason")
    metrics = METRICS[ts.task]
    recorded = {m: trial.user_attrs[f"val_{m}"] for m in metrics}
    assert all(0.0 <= recorded[m] <= 1.0 for m in metrics if m != "loss") and recorded["loss"] > 0
    assert trial.value == recorded["f1"]  # the task's default objective
    assert len(trial.intermediate_values) == 2  # one report per evaluation, what pruners compare
    assert 0 < trial.user_attrs["trainable_params"] <= trial.user_attrs["total_params"]

    spec_file = tmp_path / "best.yaml"
    assert (
        main(
            [
                "export",
                f"{ts.task}-matrix",
                "--trial",
                str(trial.number),
                "-o",
                str(spec_file),
                "--storage",
                ts.url,
            ]
        )
        == 0
    )
    result = retrain(spec_file, tmp_path / "run", quiet=True)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # Same data, epochs and seed, one code path: the trial's numbers exactly on CPU.
    assert written["validation"]["f1"] == trial.value and written["difference_from_trial"] == 0.0
    assert written["validation"]["loss"] == recorded["loss"]
    assert set(written["test"]) == set(metrics)
    assert all(0.0 <= written["test"][m] <= 1.0 for m in metrics if m != "loss")

    model, _ = load_trained(tmp_path / "run" / "model")
    assert type(model.get_base_model() if hasattr(model, "get_base_model") else model).__name__.endswith(
        "ForTokenClassification" if ts.task == "token-classification" else "ForQuestionAnswering"
    )
    assert torch.allclose(_predict(model, ts.ctx), _predict(result.model, ts.ctx), atol=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_is_pruned_at_its_first_evaluation(task_study: TaskStudy, strategy: str) -> None:
    from hpo.objective import OptunaRecorder, run_trial
    from hpo.training import plan_steps

    ts = task_study
    spec = ts.ctx.spec
    # A pruner every value fails: the trial must stop after its first evaluation.
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    study.enqueue_trial({"strategy": strategy, "learning_rate": LEARNING_RATES[strategy]})
    trial = study.ask()
    cfg = spec.space.sample(trial, spec.training)
    result = run_trial(ts.ctx, cfg, OptunaRecorder(trial, spec.objective.metric))
    assert result.pruned and result.value is None and result.outcome is not None
    planned, _ = plan_steps(len(ts.ctx.datasets["train"]), cfg, spec)
    assert len(result.outcome.history) == 1 and result.outcome.steps < planned
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {
        1: result.outcome.history[0]["f1"]
    }
    assert set(METRICS[ts.task]) <= set(result.outcome.metrics)


@pytest.mark.parametrize("task", sorted(METRICS))
def test_validate_rejects_prefix_tuning_naming_task_strategy_and_model(
    task: str, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = _space()
    space["strategies"]["prompt"]["prompt_type"] = ["prompt", "prefix"]
    path = _write(task, tmp_path, tiny_model_dir, space)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "strategies.prompt: strategy 'prompt': prompt_type 'prefix'" in err
    assert f"prompt_type 'prefix' for task {task!r} needs a model with past key values" in err
    assert "model type 'bert' has none" in err


@pytest.mark.parametrize("task", sorted(METRICS))
def test_validate_reports_every_task_problem_at_once_without_a_database(
    task: str,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hpo._yaml import dump_yaml, load_yaml

    space = _space()
    space["strategies"]["prompt"]["prompt_type"] = ["prefix"]
    path = _write(task, tmp_path, tiny_model_dir, space)
    study = load_yaml(path)
    study["task"] = {"name": task, "window": 3}
    column = "tokens" if task == "token-classification" else "question"
    study["data"][column] = "nope"
    study["objective"] = {"metric": "rouge1"}
    study["storage"] = f"sqlite:///{tmp_path / 'never.db'}"
    path.write_text(dump_yaml(study))
    monkeypatch.setenv("HPO_STORAGE", f"sqlite:///{tmp_path / 'never-either.db'}")
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    known = ", ".join(get_task(task).options) or "none"
    assert f"task.window: unknown option for task {task} (its options: {known})" in err
    assert "column 'nope' not found" in err
    assert (
        f"objective.metric: unknown metric 'rouge1' for task {task} (known: {', '.join(METRICS[task])})"
        in err
    )
    assert (
        f"strategies.prompt: strategy 'prompt': prompt_type 'prefix' for task {task!r} needs a model with "
        "past key values (decoder models); model type 'bert' has none"
    ) in err
    assert not list(tmp_path.glob("*.db"))
