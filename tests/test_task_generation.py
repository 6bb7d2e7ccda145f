"""Generative task building blocks: formats, encoding, token-weighted loss, generation, ROUGE, PEFT."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import SHARED_DATA, train_tiny_bpe

from hpo.data import DataError
from hpo.tasks import causal_lm, generation_metrics, seq2seq

INSTRUCTIONS = SHARED_DATA / "instructions" / "train.jsonl"
HEADLINES = SHARED_DATA / "headlines" / "train.jsonl"


def _read_jsonl(path: Path) -> pd.DataFrame:
    if not path.is_file():
        pytest.skip(f"{path} not present")
    with path.open(encoding="utf-8") as fh:
        return pd.DataFrame.from_records([json.loads(line) for line in fh if line.strip()])


@pytest.fixture(scope="module")
def llama(tiny_llama_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def t5(tiny_t5_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    return AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir), AutoTokenizer.from_pretrained(tiny_t5_dir)


def _collate(tokenizer: Any, columns: dict[str, list[list[int]]], model: Any = None) -> dict[str, Any]:
    from transformers import DataCollatorForSeq2Seq

    rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100, return_tensors="pt")
    return dict(collator(rows))


# ---------------------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["messages", "text"], "messages"),
        (["id", "prompt", "completion"], "prompt-completion"),
        (["instruction", "input", "output"], "alpaca"),
        (["instruction", "output"], "alpaca"),
        (["text", "label"], "text"),
        (["document", "headline"], None),
        (["prompt"], None),
    ],
)
def test_detect_format(columns: list[str], expected: str | None) -> None:
    assert causal_lm.detect_format(columns) == expected


def test_to_pairs_alpaca_on_instructions_data() -> None:
    frame = _read_jsonl(INSTRUCTIONS)
    assert causal_lm.detect_format(list(frame.columns)) == "alpaca"
    pairs = causal_lm.to_pairs(frame, "alpaca", shown="train.jsonl")
    assert list(pairs.columns) == ["prompt", "completion"]
    assert len(pairs) == len(frame) == 252
    assert pairs["completion"].tolist() == frame["output"].tolist()
    with_input = [i for i, v in enumerate(frame["input"]) if v.strip()]
    without_input = [i for i, v in enumerate(frame["input"]) if not v.strip()]
    assert with_input and without_input  # the file has both kinds
    i, j = with_input[0], without_input[0]
    assert pairs["prompt"][i] == frame["instruction"][i] + "\n\n" + frame["input"][i]
    assert pairs["prompt"][j] == frame["instruction"][j]


def test_to_pairs_alpaca_without_input_column() -> None:
    frame = pd.DataFrame({"instruction": ["Say hi.", "Count to 2."], "output": ["hi", "1 2"]})
    pairs = causal_lm.to_pairs(frame, "alpaca")
    assert pairs["prompt"].tolist() == ["Say hi.", "Count to 2."]
    # A column the user names must exist, even for an optional role.
    with pytest.raises(DataError, match="column 'context' \\(input\\) not found"):
        causal_lm.to_pairs(frame, "alpaca", {"input": "context"})


def test_to_pairs_headlines_with_mapped_columns() -> None:
    frame = _read_jsonl(HEADLINES)
    assert causal_lm.detect_format(list(frame.columns)) is None
    pairs = causal_lm.to_pairs(frame, "prompt-completion", {"prompt": "document", "completion": "headline"})
    assert len(pairs) == 185
    assert pairs["prompt"].tolist() == frame["document"].tolist()
    assert pairs["completion"].tolist() == frame["headline"].tolist()


def test_to_pairs_messages_keeps_the_turns_before_the_last_assistant_turn() -> None:
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris.", "weight": 1},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]
    # The second row is a CSV cell: the conversation's JSON text.
    frame = pd.DataFrame({"messages": [conv, json.dumps(conv[1:3])]})
    pairs = causal_lm.to_pairs(frame, "messages")
    assert pairs["completion"].tolist() == ["Rome.", "Paris."]
    assert pairs["prompt"][0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},  # extra keys dropped
        {"role": "user", "content": "And of Italy?"},
    ]
    assert pairs["prompt"][1] == [{"role": "user", "content": "Capital of France?"}]


def test_to_pairs_text_has_empty_prompts() -> None:
    pairs = causal_lm.to_pairs(pd.DataFrame({"body": ["one line.", "two lines."]}), "text", {"text": "body"})
    assert pairs["prompt"].tolist() == ["", ""]
    assert pairs["completion"].tolist() == ["one line.", "two lines."]


_USER = {"role": "user", "content": "Hi"}
_BOT = {"role": "assistant", "content": "Hello"}


@pytest.mark.parametrize(
    ("frame", "fmt", "columns", "match"),
    [
        (
            pd.DataFrame({"prompt": ["a"]}),
            "prompt-completion",
            None,
            "column 'completion' \\(completion\\) not found",
        ),
        (pd.DataFrame({"q": ["a"], "a": ["b"]}), "prompt-completion", {"prompt": "q"}, "column 'completion'"),
        (
            pd.DataFrame({"prompt": ["a", "b", "c"], "completion": ["x", " ", ""]}),
            "prompt-completion",
            None,
            "column 'completion' has 2 empty values \\(first at data row 1\\)",
        ),
        (
            pd.DataFrame({"prompt": ["a", 7], "completion": ["x", "y"]}),
            "prompt-completion",
            None,
            "column 'prompt', data row 1: expected text, got int",
        ),
        (
            pd.DataFrame({"instruction": ["a", None], "output": ["x", "y"]}),
            "alpaca",
            None,
            "column 'instruction', data row 1: missing value, expected text",
        ),
        (
            pd.DataFrame({"messages": [[_USER, _BOT], [_USER]]}),
            "messages",
            None,
            "column 'messages', data row 1: the last message has role 'user'; expected a final assistant turn",
        ),
        (
            pd.DataFrame({"messages": [[_USER, {"role": "assistant", "content": " "}]]}),
            "messages",
            None,
            "data row 0: the final assistant turn is empty",
        ),
        (pd.DataFrame({"messages": [[_BOT]]}), "messages", None, "data row 0: no turn before the final"),
        (
            pd.DataFrame({"messages": ["not json"]}),
            "messages",
            None,
            "data row 0: expected a list of messages",
        ),
        (
            pd.DataFrame({"messages": [[_USER, {"role": "assistant"}]]}),
            "messages",
            None,
            "message 1: content",
        ),
        (pd.DataFrame({"messages": [[_USER, "Hello"]]}), "messages", None, "message 1: expected a mapping"),
        (pd.DataFrame({"text": ["a"]}), "chat", None, "unknown data format 'chat'"),
        (
            pd.DataFrame({"text": ["a"]}),
            "text",
            {"prompt": "a"},
            "unknown column role 'prompt' for format 'text'",
        ),
        (pd.DataFrame({"text": []}), "text", None, "no rows"),
    ],
)
def test_to_pairs_errors_name_column_and_row(
    frame: pd.DataFrame, fmt: str, columns: dict[str, str] | None, match: str
) -> None:
    with pytest.raises(DataError, match=match) as info:
        causal_lm.to_pairs(frame, fmt, columns, shown="train.jsonl")
    assert str(info.value).startswith("train.jsonl: ")


# ---------------------------------------------------------------------------------------
# Encoding (causal LM)


def _labelled(enc: causal_lm.Encoded, row: int) -> list[int]:
    return [t for t in enc.columns["labels"][row] if t != -100]


def test_encode_chat_template_labels_only_the_completion(llama: tuple[Any, Any]) -> None:
    _, tok = llama
    prompts: list[Any] = ["What is 2+2?", [{"role": "system", "content": "Be brief."}, _USER]]
    enc = causal_lm.encode(prompts, ["4.", "Hello there."], tok, max_length=256, chat_template=True)
    assert enc.rows == [0, 1] and enc.dropped == [] and enc.truncated == 0
    for row, (prompt, completion) in enumerate(
        [([{"role": "user", "content": "What is 2+2?"}], "4."), (prompts[1], "Hello there.")]
    ):
        ids, labels = enc.columns["input_ids"][row], enc.columns["labels"][row]
        assert enc.columns["attention_mask"][row] == [1] * len(ids)
        prompt_text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
        # The prompt, tokenized alone (as generation sees it), is exactly a prefix of the sequence.
        assert ids[: len(prompt_ids)] == prompt_ids
        assert labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
        assert labels[len(prompt_ids) :] == ids[len(prompt_ids) :]
        # The labelled part is the completion and the template's end of turn (= EOS here).
        assert tok.decode(_labelled(enc, row)) == completion + "<|im_end|>"
        assert labels[-1] == tok.eos_token_id
        # The whole sequence is the template's rendering of the conversation, minus the
        # newline after the last end-of-turn.
        full = tok.apply_chat_template(
            [*prompt, {"role": "assistant", "content": completion}], tokenize=False
        )
        assert tok.decode(ids) == full.rstrip("\n")


_PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)
_THINK_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['role'] == 'assistant' %}{{ '<think></think>' }}{% endif %}"
    "{{ m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_NOT_PREFIX_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>bot\\n' }}{% endif %}"
)


@pytest.mark.parametrize(
    ("template", "labelled"),
    [
        # No end-of-turn marker in the template: the EOS is appended.
        (_PLAIN_TEMPLATE, "Fine.<|im_end|>"),
        # A header the template writes before the content is learned with it.
        (_THINK_TEMPLATE, "<think></think>Fine.<|im_end|>"),
        # The generation prompt is not how the template starts an assistant turn: completion + EOS.
        (_NOT_PREFIX_TEMPLATE, "Fine.<|im_end|>"),
    ],
)
def test_encode_follows_how_the_template_renders_an_assistant_turn(
    tiny_llama_dir: Path, template: str, labelled: str
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = template
    enc = causal_lm.encode(["How are you?"], ["Fine."], tok, 64, chat_template=True)
    assert tok.decode(_labelled(enc, 0)) == labelled
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "How are you?"}], add_generation_prompt=True, tokenize=False
    )
    assert tok.decode(enc.columns["input_ids"][0]) == prompt + labelled


def test_encode_without_chat_template_is_prompt_completion_eos(llama: tuple[Any, Any]) -> None:
    _, tok = llama
    enc = causal_lm.encode(["The plot was"], [" good."], tok, max_length=64, chat_template=False)
    prompt_ids = tok("The plot was")["input_ids"]
    assert prompt_ids[0] == tok.bos_token_id  # the tokenizer's own BOS stays on the prompt
    completion_ids = tok(" good.", add_special_tokens=False)["input_ids"]
    assert enc.columns["input_ids"][0] == prompt_ids + completion_ids + [tok.eos_token_id]
    assert _labelled(enc, 0) == completion_ids + [tok.eos_token_id]
    with pytest.raises(DataError, match="chat messages need the chat template on"):
        causal_lm.encode([[_USER]], ["x"], tok, max_length=64, chat_template=False)


def test_encode_text_format_labels_every_token(llama: tuple[Any, Any]) -> None:
    _, tok = llama
    pairs = causal_lm.to_pairs(pd.DataFrame({"text": ["The hotel was clean.", "Bad food."]}), "text")
    enc = causal_lm.encode(
        pairs["prompt"].tolist(), pairs["completion"].tolist(), tok, 64, chat_template=False
    )
    for row, text in enumerate(["The hotel was clean.", "Bad food."]):
        ids, labels = enc.columns["input_ids"][row], enc.columns["labels"][row]
        assert ids == tok(text)["input_ids"] + [tok.eos_token_id]
        # Only the BOS (position 0, which nothing predicts) is unlabelled.
        assert labels == [-100] + ids[1:]
    with pytest.raises(
        DataError, match="prompt of row 0 is empty; plain text \\(no prompt\\) needs the chat template off"
    ):
        causal_lm.encode([""], ["x"], tok, 64, chat_template=True)


def test_encode_truncates_the_prompt_from_the_left_then_the_completion(llama: tuple[Any, Any]) -> None:
    _, tok = llama
    long_prompt = "The room was clean and the staff were friendly. " * 6
    full = causal_lm.encode([long_prompt], ["Fine."], tok, max_length=512, chat_template=True)
    prompt_len = full.columns["labels"][0].count(-100)
    completion = _labelled(full, 0)
    assert prompt_len > 40 and len(completion) < 10

    enc = causal_lm.encode([long_prompt], ["Fine."], tok, max_length=30, chat_template=True)
    ids = enc.columns["input_ids"][0]
    assert len(ids) == 30 and enc.truncated == 1
    # The completion is whole; the prompt kept its end (the generation prompt).
    assert _labelled(enc, 0) == completion
    assert ids == full.columns["input_ids"][0][-30:]
    assert tok.decode(ids[: 30 - len(completion)]).endswith("<|im_start|>assistant\n")

    # A completion longer than max_length: no prompt left, the completion cut on the right.
    long_completion = "It was a very good movie with a great cast. " * 4
    whole = causal_lm.encode(["Review?"], [long_completion], tok, max_length=512, chat_template=True)
    cut = causal_lm.encode(["Review?"], [long_completion], tok, max_length=12, chat_template=True)
    assert cut.columns["input_ids"][0] == _labelled(whole, 0)[:12]
    assert cut.columns["labels"][0] == cut.columns["input_ids"][0]


def test_encode_drops_rows_without_a_learnable_token() -> None:
    from transformers import PreTrainedTokenizerFast

    # A GPT-2/SmolLM2-style tokenizer: no BOS. An empty prompt and completion leave only the
    # EOS, at position 0, which nothing predicts.
    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_tiny_bpe(["<|endoftext|>"]), eos_token="<|endoftext|>"
    )
    enc = causal_lm.encode(["", "", "Say"], ["", "Hi", " hi"], tok, max_length=16, chat_template=False)
    assert enc.dropped == [0] and enc.rows == [1, 2]
    assert enc.columns["labels"][0] == enc.columns["input_ids"][0]  # text-style row: all labelled
    with pytest.raises(DataError, match="all 2 rows have no completion token to learn"):
        causal_lm.encode(["", ""], ["", ""], tok, max_length=16, chat_template=False)


def test_encode_input_errors(llama: tuple[Any, Any], t5: tuple[Any, Any]) -> None:
    _, tok = llama
    with pytest.raises(DataError, match="2 prompts but 1 completions"):
        causal_lm.encode(["a", "b"], ["c"], tok, 16, chat_template=False)
    with pytest.raises(DataError, match="max_length must be an integer >= 2, got 1"):
        causal_lm.encode(["a"], ["c"], tok, 1, chat_template=False)
    with pytest.raises(DataError, match="completion of row 0: expected text, got NoneType"):
        causal_lm.encode(["a"], [None], tok, 16, chat_template=False)  # type: ignore[list-item]
    # The T5 tokenizer has no chat template.
    with pytest.raises(DataError, match="has no chat template"):
        causal_lm.encode(["a"], ["c"], t5[1], 16, chat_template=True)


def test_encode_instructions_data_with_chat_template(llama: tuple[Any, Any]) -> None:
    _, tok = llama
    pairs = causal_lm.to_pairs(_read_jsonl(INSTRUCTIONS), "alpaca")
    enc = causal_lm.encode(
        pairs["prompt"].tolist(), pairs["completion"].tolist(), tok, 256, chat_template=True
    )
    assert enc.dropped == [] and enc.rows == list(range(252))
    assert 0 < enc.truncated < 252  # the byte-level test vocabulary makes long rows
    assert max(len(ids) for ids in enc.columns["input_ids"]) == 256
    assert all(labels[-1] == tok.eos_token_id or len(labels) == 256 for labels in enc.columns["labels"])


def test_collator_pads_labels_with_ignore_index(llama: tuple[Any, Any]) -> None:
    _, tok = llama
    enc = causal_lm.encode(["Hi", "A longer prompt here"], ["Yes.", "No."], tok, 64, chat_template=True)
    batch = _collate(tok, enc.columns)
    short = len(enc.columns["input_ids"][0])
    assert batch["input_ids"].shape[0] == 2 and batch["input_ids"].shape[1] > short
    assert batch["input_ids"][0, short:].tolist() == [tok.pad_token_id] * (
        batch["input_ids"].shape[1] - short
    )
    assert batch["attention_mask"][0, short:].sum().item() == 0
    assert batch["labels"][0, short:].tolist() == [-100] * (batch["labels"].shape[1] - short)
    assert batch["labels"][0, :short].tolist() == enc.columns["labels"][0]


# ---------------------------------------------------------------------------------------
# Token-weighted loss


def test_loss_is_the_completion_tokens_nll_computed_by_hand(llama: tuple[Any, Any]) -> None:
    import torch

    model, tok = llama
    enc = causal_lm.encode(
        ["What is 2+2?", "Name a colour.", "Say something long about hotels."],
        ["4.", "Blue, or maybe green.", "The room was clean and the staff were friendly."],
        tok,
        128,
        chat_template=True,
    )
    batch = _collate(tok, enc.columns)
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    pre = causal_lm.preprocess_logits(out.logits, batch["labels"])
    assert pre.shape == (3, 2)

    # By hand: the token at t is predicted by the logits at t - 1; only completion tokens count.
    total_nll, total_tokens = 0.0, 0
    for row in range(3):
        ids = enc.columns["input_ids"][row]
        n_prompt = enc.columns["labels"][row].count(-100)
        logp = torch.log_softmax(out.logits[row].double(), dim=-1)
        row_nll = -sum(logp[t - 1, ids[t]].item() for t in range(n_prompt, len(ids)))
        row_tokens = len(ids) - n_prompt
        assert pre[row, 0].item() == pytest.approx(row_nll, rel=1e-5)
        assert pre[row, 1].item() == row_tokens == len(_labelled(enc, row))
        total_nll += row_nll
        total_tokens += row_tokens
    metrics = causal_lm.loss_metrics(pre.numpy(), batch["labels"].numpy())
    assert metrics["loss"] == pytest.approx(total_nll / total_tokens, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-5)
    # One batch: the same as the model's own loss (mean over the batch's labelled tokens).
    assert metrics["loss"] == pytest.approx(out.loss.item(), rel=1e-5)
    # A random 512-token model is near uniform: about ln(512) = 6.2 nats per token.
    assert 4.0 < metrics["loss"] < 9.0


def test_loss_metrics_weights_tokens_not_batches() -> None:
    # Row 1: 3.0 nats on 1 token; row 2: 3.0 nats on 3 tokens. Token-weighted: 6.0 / 4 = 1.5
    # (the mean of per-row means would be (3.0 + 1.0) / 2 = 2.0).
    assert generation_metrics.loss_metrics([[3.0, 1.0], [3.0, 3.0]]) == {
        "loss": 1.5,
        "perplexity": pytest.approx(math.exp(1.5)),
    }
    # EvalPrediction.predictions may arrive as a tuple.
    assert generation_metrics.loss_metrics(([[3.0, 1.0], [3.0, 3.0]],))["loss"] == 1.5
    assert generation_metrics.loss_metrics([[1e6, 1.0]])["perplexity"] == math.inf
    with pytest.raises(ValueError, match="no labelled token"):
        generation_metrics.loss_metrics([[0.0, 0.0]])


@pytest.mark.parametrize("peft", [None, "prompt"])
def test_trainer_evaluate_reports_the_token_weighted_loss(
    tiny_llama_dir: Path, tmp_path: Path, peft: str | None
) -> None:
    import datasets
    import numpy as np
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    if peft is not None:
        from peft import get_peft_model

        # Prompt tuning's logits are longer than the labels: the Trainer path must still match.
        torch.manual_seed(0)
        model = get_peft_model(model, _peft_config(peft, "CAUSAL_LM"))
    enc = causal_lm.encode(
        ["Hi", "Name a colour.", "Review this hotel.", "Say yes.", "Why?"],
        ["Hello.", "Blue.", "The room was clean and the staff were friendly, but noisy.", "Yes.", "Because."],
        tok,
        128,
        chat_template=True,
    )
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True
    )
    trainer = Trainer(
        model=model,
        args=args,
        eval_dataset=datasets.Dataset.from_dict(enc.columns),
        data_collator=DataCollatorForSeq2Seq(tok, label_pad_token_id=-100),
        preprocess_logits_for_metrics=causal_lm.preprocess_logits,
        compute_metrics=lambda p: causal_lm.loss_metrics(p.predictions, p.label_ids),
    )
    metrics = trainer.evaluate()

    batch = _collate(tok, enc.columns)
    model.eval()
    with torch.no_grad():
        expected = model(**batch).loss.item()  # one batch: mean over all labelled tokens
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    # The Trainer's own figure (mean of batch means) differs: batches of 2 rows differ in length.
    batch_means = []
    for start in range(0, 5, 2):
        part = _collate(tok, {k: v[start : start + 2] for k, v in enc.columns.items()})
        with torch.no_grad():
            batch_means += [model(**part).loss.item()] * len(part["input_ids"])
    assert abs(float(np.mean(batch_means)) - expected) > 1e-3


# ---------------------------------------------------------------------------------------
# Generation


def test_generate_batched_left_padding_equals_one_by_one(llama: tuple[Any, Any]) -> None:
    model, tok = llama
    prompts = ["Hi", "Tell me about the hotel room and the staff.", [{"role": "user", "content": "Why?"}]]
    batched = causal_lm.generate(model, tok, prompts, max_new_tokens=6, chat_template=True, batch_size=3)
    single = [causal_lm.generate(model, tok, [p], max_new_tokens=6, chat_template=True)[0] for p in prompts]
    assert batched == single
    assert len(batched) == 3 and all(isinstance(t, str) for t in batched)
    plain = causal_lm.generate(model, tok, ["The plot", "The room was"], 4, chat_template=False, batch_size=2)
    assert len(plain) == 2
    assert model.training is False  # the fixture model was in eval mode and stays so


def test_stop_token_ids(llama: tuple[Any, Any]) -> None:
    _, tok = llama
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert causal_lm.stop_token_ids(tok, chat_template=True) == [im_end]
    assert causal_lm.stop_token_ids(tok, chat_template=False) == [tok.eos_token_id]


def _overfit(model: Any, batch: dict[str, Any], steps: int, lr: float) -> float:
    import torch

    torch.manual_seed(0)
    model.eval()  # dropout off: the same few steps always reach the same loss
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return float(loss.item())


def test_generate_returns_the_learned_completion_without_the_prompt(tiny_llama_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # A copy of the tiny model learns two completions; greedy generation must give them back
    # exactly: same prompt tokens as training, stop at <|im_end|>, prompt cut off.
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompts, completions = ["Rate the hotel.", "Rate the movie, please."], ["great room", "bad plot"]
    enc = causal_lm.encode(prompts, completions, tok, 64, chat_template=True)
    # Measured: loss 0.04 after 40 steps (2 s on 2 cores).
    assert _overfit(model, _collate(tok, enc.columns), steps=40, lr=1e-2) < 0.1
    assert causal_lm.generate(model, tok, prompts, max_new_tokens=10, chat_template=True) == completions


# ---------------------------------------------------------------------------------------
# Seq2seq


def test_seq2seq_encode(t5: tuple[Any, Any]) -> None:
    _, tok = t5
    cols = seq2seq.encode(
        ["the room was clean", "bad plot"], ["clean", "bad"], tok, 64, 8, source_prefix="summarize: "
    )
    assert cols["input_ids"][0] == tok("summarize: the room was clean")["input_ids"]
    assert cols["input_ids"][0][-1] == tok.eos_token_id
    assert cols["attention_mask"][1] == [1] * len(cols["input_ids"][1])
    assert cols["labels"][0] == tok("clean")["input_ids"] and cols["labels"][0][-1] == tok.eos_token_id
    cut = seq2seq.encode(["the room was clean " * 10], ["the room was clean " * 5], tok, 12, 5)
    assert len(cut["input_ids"][0]) == 12 and len(cut["labels"][0]) == 5
    with pytest.raises(DataError, match="target of row 1 is empty"):
        seq2seq.encode(["a", "b"], ["x", " "], tok, 8, 8)
    with pytest.raises(DataError, match="source of row 0: expected text, got float"):
        seq2seq.encode([float("nan")], ["x"], tok, 8, 8)  # type: ignore[list-item]
    with pytest.raises(DataError, match="max_target_length must be an integer >= 1, got 0"):
        seq2seq.encode(["a"], ["x"], tok, 8, 0)


def test_seq2seq_headlines_loss_is_token_weighted(t5: tuple[Any, Any]) -> None:
    import torch

    model, tok = t5
    frame = _read_jsonl(HEADLINES).head(6)
    cols = seq2seq.encode(frame["document"].tolist(), frame["headline"].tolist(), tok, 128, 32, "summarize: ")
    batch = _collate(tok, cols, model=model)
    assert "decoder_input_ids" in batch
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    pre = seq2seq.preprocess_logits(out.logits, batch["labels"])
    assert pre[:, 1].tolist() == [float(len(x)) for x in cols["labels"]]
    # By hand for row 0: decoder logits at t predict label t (no shift).
    logp = torch.log_softmax(out.logits[0].double(), dim=-1)
    assert pre[0, 0].item() == pytest.approx(
        -sum(logp[t, y].item() for t, y in enumerate(cols["labels"][0])), rel=1e-5
    )
    assert seq2seq.loss_metrics(pre.numpy())["loss"] == pytest.approx(out.loss.item(), rel=1e-5)


def test_seq2seq_generate_returns_the_learned_targets(tiny_t5_dir: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir)
    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    sources, targets = (
        ["the hotel room was clean and quiet", "the plot made no sense"],
        ["clean room", "bad plot"],
    )
    cols = seq2seq.encode(sources, targets, tok, 32, 8, "summarize: ")
    # Measured: loss 0.01 after 30 steps (6 s on 2 busy cores).
    assert _overfit(model, _collate(tok, cols, model=model), steps=30, lr=3e-2) < 0.1
    model.train()
    out = seq2seq.generate(
        model, tok, sources, max_new_tokens=8, max_source_length=32, source_prefix="summarize: "
    )
    assert out == targets
    assert model.training is True  # restored after generating


# ---------------------------------------------------------------------------------------
# ROUGE


def test_rouge_against_hand_computation() -> None:
    # Pair 1: pred "the cat sat on the mat" vs ref "the cat is on the mat", 6 tokens each.
    #   unigrams: the x2, cat, on, mat overlap = 5 -> P = R = 5/6, F1 = 5/6
    #   bigrams: pred {the-cat, cat-sat, sat-on, on-the, the-mat}, ref {the-cat, cat-is, is-on,
    #   on-the, the-mat}: overlap 3 of 5 each -> F = 3/5
    #   LCS: the cat on the mat = 5 -> F = 5/6
    # Pair 2: pred "Cats running!" vs ref "The cat runs fast." after lower-casing, dropping
    #   punctuation and Porter-stemming words longer than 3 letters: [cat, run] vs [the, cat, run, fast]
    #   unigrams: overlap 2 -> P = 2/2, R = 2/4, F = 2PR/(P+R) = 1/1.5 = 2/3
    #   bigrams: [cat-run] vs [the-cat, cat-run, run-fast]: overlap 1 -> P = 1, R = 1/3, F = 1/2
    #   LCS: cat run = 2 -> F = 2/3
    scores = generation_metrics.rouge(
        ["the cat sat on the mat", "Cats running!"], ["the cat is on the mat", "The cat runs fast."]
    )
    assert scores == {
        "rouge1": pytest.approx((5 / 6 + 2 / 3) / 2),  # 0.75
        "rouge2": pytest.approx((3 / 5 + 1 / 2) / 2),  # 0.55
        "rougeL": pytest.approx((5 / 6 + 2 / 3) / 2),  # 0.75
    }
    assert generation_metrics.rouge(["same words"], ["same words"]) == {
        "rouge1": 1.0,
        "rouge2": 1.0,
        "rougeL": 1.0,
    }
    assert generation_metrics.rouge([""], ["a reference"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        generation_metrics.rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        generation_metrics.rouge([], [])


# ---------------------------------------------------------------------------------------
# PEFT on the tiny models: the strategies a generative task can use


def _peft_config(kind: str, task_type: str) -> Any:
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig

    if kind == "lora":
        return LoraConfig(task_type=task_type, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    if kind == "prefix":
        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=4)
    return PromptTuningConfig(task_type=task_type, num_virtual_tokens=4)


@pytest.mark.parametrize("kind", ["lora", "prefix", "prompt"])
def test_peft_forward_backward_on_tiny_llama(tiny_llama_dir: Path, kind: str) -> None:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), _peft_config(kind, "CAUSAL_LM")
    )
    enc = causal_lm.encode(
        ["Hi", "Review this hotel in one line.", [{"role": "system", "content": "Be brief."}, _USER]],
        ["Hello.", "Clean room, friendly staff.", "Hi!"],
        tok,
        64,
        chat_template=True,
    )
    batch = _collate(tok, enc.columns)  # rows of different lengths: padding and a real mask
    assert batch["attention_mask"].min().item() == 0
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    frozen = [p for _, p in model.named_parameters() if not p.requires_grad]
    assert trainable and frozen
    assert all(p.grad is not None for _, p in trainable)
    # LoRA's B starts at zero, so A's first gradient is zero; everything else must move.
    moving = [(n, p) for n, p in trainable if "lora_A" not in n]
    assert moving and all(p.grad.abs().sum() > 0 for _, p in moving), [
        n for n, p in moving if p.grad.abs().sum() == 0
    ]
    assert all(p.grad is None for p in frozen)
    # The token-weighted loss sees the same tokens as the model's loss (prompt tuning's logits
    # carry 4 extra virtual positions in front).
    if kind == "prompt":
        assert out.logits.shape[1] == batch["labels"].shape[1] + 4
    pre = causal_lm.preprocess_logits(out.logits.detach(), batch["labels"])
    assert causal_lm.loss_metrics(pre.numpy())["loss"] == pytest.approx(out.loss.item(), rel=1e-5)
    # Greedy generation through the PEFT model, left padding included.
    prompts = ["Hi", "Review this hotel in one line."]
    batched = causal_lm.generate(model, tok, prompts, max_new_tokens=4, chat_template=True, batch_size=2)
    assert batched == [causal_lm.generate(model, tok, [p], 4, chat_template=True)[0] for p in prompts]


def test_peft_lora_on_tiny_t5(tiny_t5_dir: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    torch.manual_seed(0)
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir)
    model = get_peft_model(
        base, LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, lora_alpha=8, target_modules=["q", "v"])
    )
    cols = seq2seq.encode(
        ["the room was clean", "the plot made no sense at all"], ["clean", "bad plot"], tok, 32, 8
    )
    out = model(**_collate(tok, cols, model=base))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad and p.grad is not None for p in lora)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert len(seq2seq.generate(model, tok, ["the room was clean"], 4, 32)) == 1
