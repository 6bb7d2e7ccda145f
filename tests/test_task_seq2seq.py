"""The seq2seq task end to end on a tiny T5 built from a config: every strategy trains, reports
its metrics, prunes, exports and retrains to the same value; what cannot run is refused by
``hpo validate``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo._yaml import dump_yaml
from hpo.cli import main
from hpo.config import ConfigError, load_study
from hpo.drivers.worker import run_worker
from hpo.retrain import load_trained, retrain
from hpo.tasks.generation_metrics import rouge

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models
TS = optuna.trial.TrialState
STRATEGIES = ["full", "partial", "adapter", "lora", "prompt"]
# 24 short document -> headline pairs: 6 carved for validation, 6 for test, 12 train (3 steps of 4).
PAIRS = [
    ("the hotel room was clean and the staff were friendly", "clean room friendly staff"),
    ("the plot of the film made no sense at all", "film plot makes no sense"),
    ("shares closed lower on monday after weak trade data", "shares close lower"),
    ("the city council approved a new budget for schools", "council approves school budget"),
    ("heavy rain flooded roads across the north on sunday", "rain floods northern roads"),
    ("the team won its third match in a row at home", "team wins third in a row"),
    ("oil prices rose sharply as supply fell in october", "oil prices rise sharply"),
    ("the museum reopened after two years of repairs", "museum reopens after repairs"),
    ("a new bridge over the river opened to traffic today", "new river bridge opens"),
    ("the bank cut its interest rate by half a point", "bank cuts interest rate"),
    ("police arrested two men after a robbery downtown", "two arrested after robbery"),
    ("the singer announced a world tour for next summer", "singer announces world tour"),
    ("farmers protested against lower milk prices in the capital", "farmers protest milk prices"),
    ("the airline added ten new routes to europe this year", "airline adds europe routes"),
    ("scientists found water ice near the moon's south pole", "water ice found on moon"),
    ("the president met union leaders to end the strike", "president meets union leaders"),
    ("a fire destroyed a warehouse near the port overnight", "fire destroys port warehouse"),
    ("the school will teach coding to every pupil from may", "school to teach coding"),
    ("exports grew faster than expected in the third quarter", "exports grow faster than expected"),
    ("the old theatre will be turned into a library", "theatre to become library"),
    ("the government raised the minimum wage by five percent", "minimum wage raised"),
    ("the zoo welcomed a baby elephant born last week", "zoo welcomes baby elephant"),
    ("car sales fell for the fourth month running", "car sales fall again"),
    ("the festival drew a record crowd of fifty thousand", "festival draws record crowd"),
]
SPACE = {
    "strategy": STRATEGIES,
    "learning_rate": {"low": 1e-7, "high": 5e-2, "log": True},
    "per_device_train_batch_size": [4],
    "strategies": {
        "partial": {"trainable_top_layers": [1]},
        "adapter": {"reduction_factor": [4]},
        "lora": {"r": [2]},
        "prompt": {"num_virtual_tokens": [4]},
    },
}
# Learning rates that move each strategy's loss on 12 rows in 3 steps (prompt tuning needs more).
TRAINED_LR = {"full": 1e-2, "partial": 1e-2, "adapter": 2e-2, "lora": 2e-2, "prompt": 5e-2}


def write_s2s_study(root: Path, model_dir: Path, data_dir: Path, **over: Any) -> Path:
    """A seq2seq study on the tiny T5 and the 24 pairs; keys in ``over`` replace the defaults."""
    study: dict[str, Any] = {
        "name": "s2s",
        "task": {
            "name": "seq2seq",
            "source_prefix": "summarize: ",
            "max_target_length": 12,
            "max_new_tokens": 6,
            "generation_rows": 4,
            "sample_rows": 4,
        },
        "model": str(model_dir),
        "data": {
            "source": str(data_dir),
            "text": "document",
            "target": "headline",
            "validation_size": 0.25,
            "test_size": 0.25,
            "max_length": 32,
        },
        "space": SPACE,
        "objective": {"metric": "loss"},
        "budget": {"n_trials": 5, "max_epochs": 1, "evals_per_epoch": 2},
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        **over,
    }
    path = root / "study.yaml"
    path.write_text(dump_yaml(study))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pairs")
    lines = [json.dumps({"document": doc, "headline": head}) for doc, head in PAIRS]
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    return d


@pytest.fixture(scope="module")
def db(
    tmp_path_factory: pytest.TempPathFactory, tiny_t5_dir: Path, data_dir: Path
) -> Iterator[tuple[str, Path]]:
    """One study: a trained trial per strategy, then a pruned one per strategy (learning rate 1e-7)."""
    root = tmp_path_factory.mktemp("s2s")
    url = f"sqlite:///{root / 'hpo.db'}"
    path = write_s2s_study(root, tiny_t5_dir, data_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPO_CACHE_DIR", str(root / "cache"))
        mp.setattr("hpo.context.CACHE_DIR", root / "cache")
        study = optuna.create_study(study_name="s2s", storage=url, direction="minimize")
        for s in STRATEGIES:
            study.enqueue_trial({"strategy": s, "learning_rate": TRAINED_LR[s]})
        run_worker(load_study(path), url, n_trials=5, timeout=None, quiet=True, threads=1)
        for s in STRATEGIES:
            study.enqueue_trial({"strategy": s, "learning_rate": 1e-7})
        # Prune a trial whose loss at an evaluation is above the best trained trial's there.
        pruner = {
            "pruner": {"name": "percentile", "percentile": 1.0, "n_startup_trials": 1, "n_warmup_steps": 0}
        }
        run_worker(
            load_study(path, {"pruner": pruner["pruner"]}),
            url,
            n_trials=5,
            timeout=None,
            quiet=True,
            threads=1,
        )
    yield url, root


def _trials(url: str) -> list[Any]:
    return optuna.load_study(study_name="s2s", storage=url).get_trials()


def test_every_strategy_trains_reports_and_prunes(db: tuple[str, Path]) -> None:
    trials = _trials(db[0])
    assert len(trials) == 10
    complete = {t.params["strategy"]: t for t in trials[:5]}
    pruned = {t.params["strategy"]: t for t in trials[5:]}
    assert all(t.state == TS.COMPLETE for t in complete.values()), {s: t.state for s, t in complete.items()}
    assert set(complete) == set(pruned) == set(STRATEGIES)
    assert all(t.state == TS.PRUNED for t in pruned.values()), {s: t.state for s, t in pruned.items()}
    for s, t in complete.items():
        a = t.user_attrs
        assert t.value == a["val_loss"] and 0 < a["val_loss"] < 10
        assert a["val_perplexity"] == pytest.approx(2.718281828 ** a["val_loss"], rel=1e-6)
        for key in ("val_rouge1", "val_rouge2", "val_rougeL"):
            assert 0.0 <= a[key] <= 1.0, (s, key, a[key])
        assert sorted(t.intermediate_values) == [1, 2]
        assert 0 < a["trainable_params"] <= a["total_params"]
        assert (a["trainable_params"] == a["total_params"]) == (s == "full"), s
        assert pruned[s].intermediate_values[1] > t.intermediate_values[1], s
    # Every strategy trained: the loss fell from the untrained model's (the pruned trials' first
    # evaluation, learning rate 1e-7).
    untrained = pruned["full"].intermediate_values[1]
    for s, t in complete.items():
        assert t.value < untrained, (s, t.value, untrained)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_export_retrain_reproduces_and_reloads(db: tuple[str, Path], tmp_path: Path, strategy: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import T5ForConditionalGeneration

    url, _ = db
    trial = next(t for t in _trials(url) if t.params["strategy"] == strategy and t.state == TS.COMPLETE)
    spec = tmp_path / "best.yaml"
    assert main(["export", "s2s", "--trial", str(trial.number), "-o", str(spec), "--storage", url]) == 0
    out = tmp_path / "run"
    result = retrain(spec, out, quiet=True)
    assert result.validation["loss"] == trial.value  # bit for bit on CPU
    for key in ("rouge1", "rouge2", "rougeL"):
        assert result.validation[key] == trial.user_attrs[f"val_{key}"]
        assert 0.0 <= result.test[key] <= 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["difference_from_trial"] == 0 and set(metrics["test"]) >= {"loss", "rougeL"}
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    docs = dict(PAIRS)
    assert len(samples) == 4  # task.sample_rows test rows
    for row in samples:
        assert set(row) == {"input", "reference", "generated"} and isinstance(row["generated"], str)
        assert docs[row["input"]] == row["reference"]
    # The same 4 rows are the ones the test ROUGE scores (task.generation_rows): the written
    # outputs give it back.
    by_hand = rouge([r["generated"] for r in samples], [r["reference"] for r in samples])
    assert {k: result.test[k] for k in by_hand} == pytest.approx(by_hand, abs=1e-12)

    model, tok = load_trained(out / "model")
    inner = model.get_base_model() if isinstance(model, PeftModel) else model
    assert isinstance(inner, T5ForConditionalGeneration)
    assert isinstance(model, PeftModel) == (strategy in ("lora", "prompt"))
    enc = tok(["summarize: the hotel room was clean"], return_tensors="pt")
    labels = tok(text_target=["clean room"], return_tensors="pt")["input_ids"]
    result.model.eval()
    with torch.no_grad():
        again = model(**enc, labels=labels).loss
        trained = result.model(**enc, labels=labels).loss
    assert again.item() == pytest.approx(trained.item(), rel=1e-6)


def test_study_defaults_and_task_checks(
    tmp_path: Path, tiny_t5_dir: Path, tiny_model_dir: Path, data_dir: Path
) -> None:
    # No objective: the task's default, ROUGE-L, maximized.
    spec = load_study(write_s2s_study(tmp_path, tiny_t5_dir, data_dir, objective=None), read_data=True)
    assert (spec.task, spec.objective.metric, spec.direction) == ("seq2seq", "rougeL", "maximize")
    assert spec.task_options["source_prefix"] == "summarize: "
    assert spec.space.strategies == STRATEGIES
    bad = write_s2s_study(
        tmp_path,
        tiny_t5_dir,
        data_dir,
        task={"name": "seq2seq", "beam_size": 4, "max_new_tokens": "many"},
        data={"source": str(data_dir), "text": "document", "target": "summary"},
        objective={"metric": "accuracy"},
    )
    with pytest.raises(ConfigError) as e:
        load_study(bad, read_data=True)
    text = str(e.value)
    assert len(text.splitlines()) == 4, text
    assert "task.beam_size: unknown option for task seq2seq" in text
    assert "task.max_new_tokens: expected an integer, got 'many'" in text
    assert (
        "objective.metric: unknown metric 'accuracy' for task seq2seq (known: loss, perplexity, rouge1"
        in text
    )
    assert "column 'summary' not found (columns: document, headline)" in text
    # Values out of range; a ROUGE objective with no generated rows; a model that is no encoder-decoder.
    bad = write_s2s_study(
        tmp_path,
        tiny_model_dir,
        data_dir,
        task={"name": "seq2seq", "max_new_tokens": 0, "generation_rows": 0},
        objective={"metric": "rougeL"},
        space={"strategy": ["lora"]},
    )
    with pytest.raises(ConfigError) as e:
        load_study(bad)
    text = str(e.value)
    assert "task.max_new_tokens: must be >= 1, got 0" in text
    assert "task.generation_rows: objective.metric 'rougeL' scores generated text" in text
    assert "model: task seq2seq needs an encoder-decoder" in text and "model type 'bert' is not one" in text


def test_validate_refuses_prefix_tuning_naming_task_strategy_and_model(
    tmp_path: Path, tiny_t5_dir: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = {"strategy": ["lora", "prompt"], "strategies": {"prompt": {"prompt_type": ["prompt", "prefix"]}}}
    path = write_s2s_study(tmp_path, tiny_t5_dir, data_dir, space=space)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "prefix" in x)
    assert "strategies.prompt: strategy 'prompt'" in line and "'seq2seq'" in line and "'t5'" in line
    assert "generate() drops the prefix" in line
    assert main(["validate", str(write_s2s_study(tmp_path, tiny_t5_dir, data_dir))]) == 0


def test_partial_and_adapter_on_t5_cover_encoder_and_decoder(tiny_t5_dir: Path) -> None:
    import copy

    import torch
    from transformers import AutoModelForSeq2SeqLM

    from hpo.strategies import count_parameters, get_strategy
    from hpo.strategies.adapter import find_injection_points

    model = get_strategy("partial").apply(
        AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir), {"trainable_top_layers": 1}
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for stack in ("encoder", "decoder"):
        assert any(n.startswith(f"{stack}.block.1.") for n in trainable)
        assert not any(n.startswith(f"{stack}.block.0.") for n in trainable)
        assert f"{stack}.final_layer_norm.weight" in trainable
    assert "shared.weight" not in trainable  # the embedding (tied to the LM head) stays frozen

    fresh = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir).eval()
    assert find_injection_points(fresh) == [
        "encoder.block.0.layer.0.SelfAttention.o",
        "encoder.block.0.layer.1.DenseReluDense.wo",
        "encoder.block.1.layer.0.SelfAttention.o",
        "encoder.block.1.layer.1.DenseReluDense.wo",
        "decoder.block.0.layer.0.SelfAttention.o",
        "decoder.block.0.layer.2.DenseReluDense.wo",
        "decoder.block.1.layer.0.SelfAttention.o",
        "decoder.block.1.layer.2.DenseReluDense.wo",
    ]
    # Adapters start as the identity: the adapted model computes what the base model does.
    adapted = get_strategy("adapter").apply(copy.deepcopy(fresh), {"reduction_factor": 4}).eval()
    ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    with torch.no_grad():
        torch.testing.assert_close(
            adapted(input_ids=ids, labels=ids).logits, fresh(input_ids=ids, labels=ids).logits
        )
    added = 8 * (2 * 32 * 8 + 32 + 8)  # 8 adapters of 32 -> 8 -> 32, with biases
    assert count_parameters(adapted)[1] == count_parameters(fresh)[1] + added


def test_shipped_headlines_t5_study_validates_offline(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[1]
    if not (root.parent / "shared" / "data" / "headlines" / "train.jsonl").is_file():
        pytest.skip("../shared/data/headlines not present")
    # HF_HUB_OFFLINE is set for the test run: the hub model is not fetched, the data is read.
    assert main(["validate", str(root / "studies" / "headlines-t5.yaml")]) == 0
    out = capsys.readouterr().out
    assert "seq2seq: google/flan-t5-small on headlines" in out and "maximize rougeL" in out
    spec = load_study(root / "studies" / "headlines-t5.yaml", read_data=True)
    assert spec.space.strategies == STRATEGIES and spec.task_options["source_prefix"] == "summarize: "


def test_compare_and_report_show_the_task_metrics(
    db: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = db
    trials = _trials(url)
    best = min((t for t in trials if t.state == TS.COMPLETE), key=lambda t: t.value)
    assert main(["compare", "s2s", "--by", "strategy", "--storage", url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["strategy"] for r in rows} == set(STRATEGIES)
    assert min(float(r["best_value"]) for r in rows) == best.value
    out = tmp_path / "report"
    assert main(["report", "s2s", "-o", str(out), "--storage", url]) == 0
    assert (out / "best_trial_metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "best_trial_metrics.html").read_text()
    assert all(m in page for m in ("rouge1", "rouge2", "rougeL"))
