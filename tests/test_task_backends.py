"""Every task beyond classification through the dashboard and the Ray backend.

Per task (NER, extractive QA, causal LM, seq2seq) a two-trial study on a tiny model built from
a config: the dashboard's API shows the task's objective (name and direction), each trial's
task metrics and evaluations, and the files `hpo retrain` attached to the trial (the sample
generations of the generative tasks among them); and the same study runs on a local Ray
cluster (slow) into the Optuna storage with the task's metrics, as the Optuna driver records
them.
"""

from __future__ import annotations

import io
import json
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import write_study
from task_data import write_ner_folder, write_squad_folder
from test_task_causal_lm import clm_study
from test_task_seq2seq import PAIRS as S2S_PAIRS
from test_task_seq2seq import write_s2s_study

from hpo.config import load_study

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models
TS = optuna.trial.TrialState
TASKS = ["token-classification", "question-answering", "causal-lm", "seq2seq"]
# One strategy per study, at a learning rate that moves a tiny model in a few steps.
LORA_SPACE = {
    "strategy": ["lora"],
    "learning_rate": {"low": 5e-3, "high": 2e-2, "log": True},
    "per_device_train_batch_size": [8],
    "strategies": {"lora": {"r": [4]}},
}


@dataclass(frozen=True)
class Case:
    """A task's tiny study and what the dashboard must show of it."""

    task: str
    name: str
    metric: str
    direction: str
    generative: bool


CASES = {
    "token-classification": Case("token-classification", "ner", "f1", "maximize", False),
    "question-answering": Case("question-answering", "qa", "f1", "maximize", False),
    "causal-lm": Case("causal-lm", "clm", "rougeL", "maximize", True),
    "seq2seq": Case("seq2seq", "s2s", "loss", "minimize", True),
}


def write_task_study(case: Case, root: Path, models: dict[str, Path]) -> Path:
    """The two-trial study of ``case`` in ``root`` (LoRA only, random sampler, no pruner)."""
    common: dict[str, Any] = {
        "name": case.name,
        "space": LORA_SPACE,
        "objective": {"metric": case.metric},
        "budget": {"n_trials": 2, "max_epochs": 1, "evals_per_epoch": 2},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
    }
    if case.task == "token-classification":
        data = write_ner_folder(root / "data", {"train": 16, "validation": 8, "test": 8})
        return write_study(
            root, models["bert"], task=case.task, data={"source": str(data), "max_length": 48}, **common
        )
    if case.task == "question-answering":
        data = write_squad_folder(root / "data", {"train": (2, 4), "validation": (1, 3), "test": (1, 2)})
        task = {"name": case.task, "doc_stride": 16, "max_answer_length": 8}
        return write_study(
            root, models["bert"], task=task, data={"source": str(data), "max_length": 64}, **common
        )
    if case.task == "causal-lm":
        return clm_study(root, models["llama"], **common)
    data_dir = root / "pairs"
    data_dir.mkdir()
    lines = [json.dumps({"document": doc, "headline": head}) for doc, head in S2S_PAIRS]
    (data_dir / "train.jsonl").write_text("\n".join(lines) + "\n")
    return write_s2s_study(root, models["t5"], data_dir, **common)


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path, tiny_llama_dir: Path, tiny_t5_dir: Path) -> dict[str, Path]:
    return {"bert": tiny_model_dir, "llama": tiny_llama_dir, "t5": tiny_t5_dir}


@pytest.fixture(scope="module", params=TASKS)
def retrained(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]
) -> tuple[Case, str, int]:
    """The task's study run by the Optuna driver, its best trial exported and retrained with the
    storage (the retrain attaches its files to the trial); (case, storage URL, best trial)."""
    import hpo
    from hpo.drivers.worker import run_worker

    case = CASES[request.param]
    root = tmp_path_factory.mktemp(case.name)
    url = f"sqlite:///{root / 'hpo.db'}"
    with pytest.MonkeyPatch.context() as mp:
        # The module fixture runs before the autouse cache fixture: keep the cache out of the repo.
        mp.setenv("HPO_CACHE_DIR", str(root / "cache"))
        mp.setattr("hpo.context.CACHE_DIR", root / "cache")
        run_worker(
            load_study(write_task_study(case, root, models)), url, n_trials=2, timeout=None, quiet=True
        )
        spec = hpo.export(case.name, root / "best.yaml", storage=url)
        hpo.retrain(spec, root / "run", storage=url, quiet=True)
    return case, url, hpo.best(case.name, url).number


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return bytes(r.read())


def test_dashboard_shows_the_task_objective_metrics_and_retrain_files(
    retrained: tuple[Case, str, int],
) -> None:
    from hpo.dashboard import make_dashboard_server

    case, url, best = retrained
    server = make_dashboard_server(url, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        summaries = json.loads(_get(f"{base}/api/studies"))["study_summaries"]
        study_id = next(s["study_id"] for s in summaries if s["study_name"] == case.name)
        detail = json.loads(_get(f"{base}/api/studies/{study_id}"))
        assert detail["objective_names"] == [case.metric]
        assert [d.lower() for d in detail["directions"]] == [case.direction]
        assert len(detail["trials"]) == 2
        for t in detail["trials"]:
            assert t["state"].lower() == "complete"
            attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
            assert f"val_{case.metric}" in attrs and "val_loss" in attrs
            assert float(attrs[f"val_{case.metric}"]) == pytest.approx(t["values"][0])
            assert [v["step"] for v in t["intermediate_values"]] == [1, 2]  # one per evaluation
        trial = next(t for t in detail["trials"] if t["number"] == best)
        files = {a["filename"]: a for a in trial["artifacts"]}
        expected = {"metrics.json", "metrics.png", "best.yaml"} | (
            {"samples.jsonl"} if case.generative else set()
        )
        assert set(files) == expected
        prefix = f"{base}/artifacts/{study_id}/{trial['trial_id']}"
        metrics = json.loads(_get(f"{prefix}/{files['metrics.json']['artifact_id']}"))
        assert metrics["trial"] == best and case.metric in metrics["test"]
        if case.generative:
            rows = [
                json.loads(line)
                for line in _get(f"{prefix}/{files['samples.jsonl']['artifact_id']}").splitlines()
            ]
            assert rows and {"input", "reference", "generated"} <= set(rows[0])
            assert files["samples.jsonl"]["mimetype"] == "application/jsonl"
        assert b"<html" in _get(f"{base}/dashboard/studies/{study_id}").lower()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow  # a local Ray cluster: make test-slow
@pytest.mark.parametrize("task", TASKS)
def test_each_task_runs_on_ray_with_its_metrics(
    task: str,
    tmp_path: Path,
    models: dict[str, Path],
    local_ray: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hpo.drivers.ray import run_ray

    monkeypatch.setenv("HPO_RAY_STORAGE", str(tmp_path / "ray_results"))
    case = CASES[task]
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = load_study(write_task_study(case, tmp_path, models))
    out = io.StringIO()
    run_ray(spec, url, n_trials=2, timeout=None, gpus=None, trials_per_gpu=1, stream=out)
    first = next(line for line in out.getvalue().splitlines() if line.startswith("ray: "))
    assert "no early stopping (pruner: none), 2 evaluations" in first, out.getvalue()

    study = optuna.load_study(study_name=case.name, storage=url)
    assert study.direction.name.lower() == case.direction
    assert study.metric_names == [case.metric]
    trials = study.get_trials()
    assert len(trials) == 2 and all(t.state == TS.COMPLETE for t in trials), [
        (t.state, t.user_attrs.get("fail_reason")) for t in trials
    ]
    for t in trials:
        assert t.value == t.user_attrs[f"val_{case.metric}"]
        assert t.user_attrs["strategy"] == "lora"
        assert json.loads(t.user_attrs["config"])["strategy_params"]["r"] == 4
        # pruner: none runs every trial to its end on Ray too (no ASHA).
        assert len(t.intermediate_values) == 2 and "stopped_early" not in t.user_attrs, t.user_attrs
