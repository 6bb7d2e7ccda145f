"""The ``causal-lm`` task record: instruction tuning and plain language modelling of a decoder.

Data in the formats people bring (:data:`~hpo.tasks.causal_lm.FORMATS`): chat ``messages``,
``prompt``/``completion`` columns, alpaca ``instruction``/``input``/``output``, or one ``text``
column. Each is a ``data:`` key; without any, the format is found from the file's column
names. Every split is normalized to ``prompt`` (text, or the chat turns before the last
assistant turn) and ``completion``; the loss covers the completion tokens only (the
tokenizer's chat template renders prompts when it has one). Metrics: the token-weighted
validation loss and its perplexity, and, with ``task.generation_rows``, ROUGE of greedy
generations on that many validation rows. The building blocks live in
:mod:`hpo.tasks.causal_lm` and :mod:`hpo.tasks.generation_metrics`.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from hpo.errors import DataError
from hpo.tasks import causal_lm
from hpo.tasks.base import (
    Evaluator,
    Metric,
    Role,
    Task,
    any_train,
    keep_labels,
    no_key,
    no_vocabulary,
)
from hpo.tasks.generation_metrics import ROUGE_KEYS, loss_metrics, rouge
from hpo.tasks.heads import keep_pretrained_head

NAME = "causal-lm"
METRICS = (
    Metric(
        "loss", "minimize", fraction=False, description="nats per completion token (prompt tokens masked)"
    ),
    Metric("perplexity", "minimize", fraction=False, description="exp(loss)"),
    *(
        Metric(key, "maximize", description=f"{key} F-measure of greedy generations (task.generation_rows)")
        for key in ROUGE_KEYS
    ),
)
ROLES = (
    Role(
        "messages", None, required=False, target=True, description="chat turns; the last is the assistant's"
    ),
    Role("prompt", None, required=False, description="the prompt text (format prompt-completion)"),
    Role("completion", None, required=False, target=True, description="the text to learn"),
    Role("instruction", None, required=False, description="alpaca: the instruction"),
    Role("input", None, required=False, description="alpaca: the optional input after the instruction"),
    Role("output", None, required=False, target=True, description="alpaca: the text to learn"),
    Role("text", None, required=False, target=True, description="plain language modelling: every token"),
)
OPTIONS: dict[str, Any] = {
    "chat_template": None,
    "generation_rows": 0,
    "max_new_tokens": 64,
    "sample_rows": 16,
    "prompt_prefix": "",
}
"""``chat_template``: null (use the tokenizer's when it has one and the data has prompts), true
or false. ``generation_rows``: validation rows generated greedily and scored by ROUGE at every
evaluation (0: no ROUGE). ``max_new_tokens``: most tokens generated per row. ``sample_rows``:
test rows whose generations ``hpo retrain`` writes to ``samples.jsonl``. ``prompt_prefix``: text
put before every text prompt (an instruction for data that has none, e.g. ``"Write a headline
for this news sentence:\n\n"``), in training and generation alike."""

ENCODER_TYPES = ("albert", "bert", "deberta", "deberta-v2", "distilbert", "electra", "mpnet", "roberta")
"""Model types that are encoders only: AutoModelForCausalLM cannot load them as a decoder."""


# --------------------------------------------------------------------------- data


def data_format(columns: dict[str, str], found: list[str], shown: str) -> str:
    """The format of a split: the one whose roles the study names, else found from its columns.

    Raises:
        DataError: the named roles belong to different formats, or no format fits the columns.
    """
    if columns:
        fits = [f for f, roles in causal_lm.FORMATS.items() if set(columns) <= set(roles)]
        if not fits:
            keys = ", ".join(f"data.{r}" for r in columns)
            raise DataError(
                f"{shown}: {keys} belong to different data formats (one of: "
                + "; ".join(f"{f}: {', '.join(r)}" for f, r in causal_lm.FORMATS.items())
                + ")"
            )
        return fits[0]
    fmt = causal_lm.detect_format(found)
    if fmt is None:
        raise DataError(
            f"{shown}: no causal-lm data format in columns {', '.join(found) or 'none'} (expected messages; "
            "prompt and completion; instruction, [input,] output; or text — or name yours with "
            "data.prompt and data.completion)"
        )
    return fmt


def normalize(df: pd.DataFrame, columns: dict[str, str], shown: str) -> pd.DataFrame:
    """The split as ``prompt``/``completion`` pairs (see :func:`hpo.tasks.causal_lm.to_pairs`)."""
    fmt = data_format(columns, [str(c) for c in df.columns], shown)
    return causal_lm.to_pairs(df, fmt, columns, shown)


def group(frame: pd.DataFrame) -> pd.Series:
    """Rows with the same prompt stay on one side of a carve."""
    return frame["prompt"].map(lambda p: p if isinstance(p, str) else json.dumps(list(p), sort_keys=True))


def prompts_of(frame: pd.DataFrame, options: dict[str, Any]) -> list[Any]:
    """The split's prompts, ``task.prompt_prefix`` before each text prompt (chat turns as they are)."""
    prefix = options.get("prompt_prefix") or ""
    return [prefix + p if isinstance(p, str) and prefix else p for p in frame["prompt"].tolist()]


def use_chat_template(options: dict[str, Any], tokenizer: Any, prompts: list[Any]) -> bool:
    """``task.chat_template``, or when unset: the tokenizer has a template and some row a prompt."""
    if options.get("chat_template") is not None:
        return bool(options["chat_template"])
    has_prompt = any(not isinstance(p, str) or p.strip() for p in prompts)
    return bool(getattr(tokenizer, "chat_template", None)) and has_prompt


def encode(
    frame: pd.DataFrame,
    tokenizer: Any,
    max_length: int,
    label_names: list[str],
    options: dict[str, Any],
    split: str,
) -> dict[str, list[Any]]:
    """Token ids, attention mask and labels (-100 on prompt tokens); rows with no completion
    token left after truncation are dropped."""
    prompts = prompts_of(frame, options)
    chat = use_chat_template(options, tokenizer, prompts)
    enc = causal_lm.encode(prompts, frame["completion"].tolist(), tokenizer, max_length, chat)
    return dict(enc.columns)


# --------------------------------------------------------------------------- model and metrics


def load_model(path: str, label_names: list[str], **options: Any) -> Any:
    """The pretrained decoder with its (often tied) LM head, in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **options)


def collator(tokenizer: Any, model: Any = None) -> Any:
    """Pads input ids with the pad token (EOS when the tokenizer has none) and labels with -100."""
    from transformers import DataCollatorForSeq2Seq

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return DataCollatorForSeq2Seq(tokenizer, model=None, label_pad_token_id=causal_lm.IGNORE_INDEX)


def options_of(ctx: Any) -> dict[str, Any]:
    """The task options of the worker's study, defaults filled in."""
    return {**OPTIONS, **ctx.spec.task_options}


def rows_of(ctx: Any, split: str, n: int) -> pd.DataFrame:
    """The first ``n`` rows of a loaded split (already a seeded sample of the source)."""
    frame = getattr(ctx.data, split)
    return frame.iloc[: max(0, n)]


def generate_rows(ctx: Any, model: Any, rows: pd.DataFrame) -> list[str]:
    """Greedy completions of the rows' prompts, tokenized as training tokenized them."""
    options = options_of(ctx)
    prompts = prompts_of(rows, options)
    return causal_lm.generate(
        model,
        ctx.tokenizer,
        prompts,
        max_new_tokens=int(options["max_new_tokens"]),
        chat_template=use_chat_template(options, ctx.tokenizer, prompts),
        batch_size=int(ctx.spec.training.get("eval_batch_size") or 8),
        max_prompt_length=ctx.spec.data.max_length,
    )


def evaluator(ctx: Any, split: str) -> Evaluator:
    """Token-weighted loss and perplexity; ROUGE on ``task.generation_rows`` rows of the split."""
    n = int(options_of(ctx)["generation_rows"])
    ev = Evaluator(compute_metrics=loss_metrics, preprocess_logits=causal_lm.preprocess_logits)

    def compute(p: Any) -> dict[str, float]:
        out = loss_metrics(p.predictions)
        rows = rows_of(ctx, split, n)
        if len(rows):
            out.update(rouge(generate_rows(ctx, ev.model, rows), rows["completion"].tolist()))
        return out

    ev.compute_metrics = compute
    return ev


def samples(ctx: Any, model: Any, split: str) -> list[dict[str, Any]]:
    """Prompt, reference and greedy generation of ``task.sample_rows`` rows of the split."""
    rows = rows_of(ctx, split, int(options_of(ctx)["sample_rows"]))
    if not len(rows):
        return []
    generated = generate_rows(ctx, model, rows)
    return [
        {"input": p if isinstance(p, str) else list(p), "reference": c, "generated": g}
        for p, c, g in zip(prompts_of(rows, options_of(ctx)), rows["completion"], generated, strict=True)
    ]


# --------------------------------------------------------------------------- validation


def check_options(options: dict[str, Any], metric: str, max_length: Any = None) -> list[str]:
    """Option values in range; a ROUGE objective needs generated rows."""
    problems: list[str] = []
    if options["chat_template"] not in (None, True, False):
        problems.append(f"task.chat_template: expected true, false or null, got {options['chat_template']!r}")
    for key, low in (("generation_rows", 0), ("max_new_tokens", 1), ("sample_rows", 0)):
        value = options[key]
        if isinstance(value, int) and not isinstance(value, bool) and value < low:
            problems.append(f"task.{key}: must be >= {low}, got {value}")
    if metric in ROUGE_KEYS and not options["generation_rows"]:
        problems.append(
            f"task.generation_rows: objective.metric {metric!r} scores generated text; set "
            "task.generation_rows to the validation rows to generate (e.g. 32)"
        )
    return problems


def check_model(model_config: dict[str, Any] | None) -> list[str]:
    """A decoder: not an encoder-decoder, not an encoder-only model type."""
    if not model_config:
        return []
    model_type = model_config.get("model_type")
    if model_config.get("is_encoder_decoder") or (
        model_type in ENCODER_TYPES and not model_config.get("is_decoder")
    ):
        kind = "an encoder-decoder" if model_config.get("is_encoder_decoder") else "an encoder"
        return [
            f"task {NAME} needs a decoder (a model AutoModelForCausalLM loads); model type {model_type!r} "
            f"is {kind}"
        ]
    return []


TASK = Task(
    name=NAME,
    description="instruction tuning / language modelling of a decoder; loss on the completion tokens",
    metrics=METRICS,
    default_metric="loss",
    roles=ROLES,
    normalize=normalize,
    vocabulary=no_vocabulary,
    apply_vocabulary=keep_labels,
    stratify=no_key,
    group=group,
    check_train=any_train,
    encode=encode,
    auto_class="AutoModelForCausalLM",
    load_model=load_model,
    init_head=keep_pretrained_head,
    collator=collator,
    evaluator=evaluator,
    prefix_tuning=True,
    options=OPTIONS,
    check_options=check_options,
    check_model=check_model,
    samples=samples,
)
