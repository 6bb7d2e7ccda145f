"""Sequence-to-sequence generation (T5-style encoder-decoder): source text in, target text out.

- :func:`encode` tokenizes sources (with an optional task prefix such as ``"summarize: "``)
  and targets; the targets become ``labels``.
- :func:`preprocess_logits` (with :func:`~hpo.tasks.generation_metrics.loss_metrics`) gives the
  exact token-weighted evaluation loss without keeping the logits.
- :func:`generate` decodes greedily for generation metrics such as ROUGE.

Heavy packages (torch, transformers) are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from hpo.errors import DataError
from hpo.tasks.base import Evaluator, Metric, Role, Task, any_train, keep_labels, no_key, no_vocabulary
from hpo.tasks.columns import check_text, select_columns
from hpo.tasks.generation_metrics import ROUGE_KEYS, loss_metrics, rouge, token_nll
from hpo.tasks.heads import keep_pretrained_head

__all__ = ["TASK", "encode", "generate", "loss_metrics", "preprocess_logits"]


def _check_texts(values: Sequence[Any], what: str, allow_empty: bool) -> list[str]:
    out: list[str] = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise DataError(f"encode: {what} of row {i}: expected text, got {type(v).__name__}")
        if not allow_empty and not v.strip():
            raise DataError(f"encode: {what} of row {i} is empty")
        out.append(v)
    return out


def _check_length(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DataError(f"encode: {name} must be an integer >= 1, got {value!r}")


def encode(
    sources: Sequence[str],
    targets: Sequence[str],
    tokenizer: Any,
    max_source_length: int,
    max_target_length: int,
    source_prefix: str = "",
) -> dict[str, list[list[int]]]:
    """Tokenizes source/target pairs for an encoder-decoder.

    Both sides get the tokenizer's special tokens (T5 appends EOS) and are cut on the right
    when too long (a cut target loses its EOS). Nothing is padded: a collator such as
    ``DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)`` pads each
    batch, labels with -100, and builds ``decoder_input_ids`` from the labels.

    Args:
        sources: Input texts.
        targets: Texts to generate, one per source.
        tokenizer: The model's tokenizer.
        max_source_length: Source tokens per example after truncation (prefix included).
        max_target_length: Target tokens per example after truncation.
        source_prefix: Text put before every source (T5's task prefixes, e.g. ``"summarize: "``).

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels``, one unpadded list per row.

    Raises:
        DataError: Lengths differ, a value is not text, a target is empty, or a length is < 1.
    """
    if len(sources) != len(targets):
        raise DataError(f"encode: {len(sources)} sources but {len(targets)} targets")
    _check_length("max_source_length", max_source_length)
    _check_length("max_target_length", max_target_length)
    src = [source_prefix + s for s in _check_texts(sources, "source", allow_empty=False)]
    tgt = _check_texts(targets, "target", allow_empty=False)
    columns: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    chunk = 2048  # rows per tokenizer call, to bound peak memory on large splits
    for start in range(0, len(src), chunk):
        enc = tokenizer(src[start : start + chunk], truncation=True, max_length=max_source_length)
        lab = tokenizer(text_target=tgt[start : start + chunk], truncation=True, max_length=max_target_length)
        columns["input_ids"].extend(list(x) for x in enc["input_ids"])
        columns["attention_mask"].extend(list(x) for x in enc["attention_mask"])
        columns["labels"].extend(list(x) for x in lab["input_ids"])
    return columns


def preprocess_logits(logits: Any, labels: Any) -> Any:
    """Per-sequence NLL and token count for Trainer's ``preprocess_logits_for_metrics``.

    Decoder logits at position t predict label t (the decoder input is the labels shifted
    right), so there is no shift; -100 positions are skipped. See
    :func:`~hpo.tasks.generation_metrics.token_nll`.

    Returns:
        A float32 tensor ``(batch, 2)``: summed NLL in nats, number of labelled tokens.
    """
    return token_nll(logits, labels, shift=False)


def generate(
    model: Any,
    tokenizer: Any,
    sources: Sequence[str],
    max_new_tokens: int,
    max_source_length: int,
    source_prefix: str = "",
    batch_size: int = 8,
) -> list[str]:
    """Greedy outputs of an encoder-decoder for ``sources``.

    Sources are tokenized as :func:`encode` does (prefix, truncation) and padded per batch
    (on the right: the encoder sees the whole source and the mask hides the padding).
    Generation costs a decoder pass per new token: meant for a bounded sample of rows.

    Args:
        model: A seq2seq model (a PEFT model too), on any device.
        tokenizer: Its tokenizer.
        sources: Input texts.
        max_new_tokens: Most tokens generated per row.
        max_source_length: Source tokens after truncation.
        source_prefix: As for :func:`encode`.
        batch_size: Rows per ``generate`` call.

    Returns:
        One decoded output per source (special tokens removed, whitespace stripped).
    """
    import torch

    src = [source_prefix + s for s in _check_texts(sources, "source", allow_empty=False)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(src), batch_size):
            enc = tokenizer(
                src[start : start + batch_size],
                truncation=True,
                max_length=max_source_length,
                padding=True,
                return_tensors="pt",
            ).to(device)
            with torch.no_grad():
                seqs = model.generate(
                    input_ids=enc["input_ids"],
                    attention_mask=enc["attention_mask"],
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                )
            # An encoder-decoder returns decoder tokens only (starting with the start token).
            out.extend(t.strip() for t in tokenizer.batch_decode(seqs, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------- the task record

TASK_NAME = "seq2seq"
METRICS = (
    Metric(
        "loss", "minimize", fraction=False, description="token-weighted cross-entropy of the targets (nats)"
    ),
    Metric("perplexity", "minimize", fraction=False, description="exp(loss)"),
    Metric("rouge1", "maximize", description="ROUGE-1 F of greedy outputs on generation_rows rows"),
    Metric("rouge2", "maximize", description="ROUGE-2 F of greedy outputs on generation_rows rows"),
    Metric("rougeL", "maximize", description="ROUGE-L (LCS) F of greedy outputs on generation_rows rows"),
)
ROLES = (
    Role("text", "text", description="the input text (document, question, sentence to translate)"),
    Role("target", "target", target=True, description="the text to generate (headline, summary, answer)"),
)
OPTIONS: dict[str, Any] = {
    "source_prefix": "",
    "max_target_length": 64,
    "max_new_tokens": 64,
    "generation_rows": 64,
    "sample_rows": 32,
}
"""Task options (``task: {name: seq2seq, ...}``): the text put before every input (T5's
``"summarize: "``); target tokens kept for training and the loss; most tokens generated per
row; validation rows generated for ROUGE at each evaluation (the first ones of the split, the
same in every trial; 0: no ROUGE); test rows whose outputs ``hpo retrain`` writes to
``samples.jsonl``. The input is cut at ``data.max_length`` tokens."""


def normalize(df: pd.DataFrame, columns: dict[str, str], shown: str) -> pd.DataFrame:
    """Columns text and target, both non-empty text."""
    out = select_columns(df, columns, shown)
    for role in ("text", "target"):
        check_text(out[role], shown, columns[role])
    return out


def group(frame: pd.DataFrame) -> pd.Series:
    """Copies of one input stay on one side of a carve (a test input seen in training is no test)."""
    return frame["text"]


def encode_split(
    frame: pd.DataFrame,
    tokenizer: Any,
    max_length: int,
    label_names: list[str],
    options: dict[str, Any],
    split: str,
) -> dict[str, list[Any]]:
    """Inputs cut at ``max_length`` tokens, targets at ``max_target_length``, as :func:`encode`."""
    opts = {**OPTIONS, **options}
    return encode(
        frame["text"].tolist(),
        frame["target"].tolist(),
        tokenizer,
        max_length,
        int(opts["max_target_length"]),
        str(opts["source_prefix"]),
    )


def load_model(path: str, label_names: list[str], **options: Any) -> Any:
    """The pretrained encoder-decoder with its LM head (nothing is new)."""
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(path, **options)


def collator(tokenizer: Any, model: Any = None) -> Any:
    """Pad inputs with the pad token and labels with -100; ``decoder_input_ids`` from the labels."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)


def options_of(ctx: Any) -> dict[str, Any]:
    """The task options of a worker's study, defaults filled in."""
    return {**OPTIONS, **ctx.spec.task_options}


def generate_rows(ctx: Any, model: Any, rows: pd.DataFrame) -> list[str]:
    """Greedy outputs for the rows' inputs, encoded as training encoded them."""
    opts = options_of(ctx)
    return generate(
        model,
        ctx.tokenizer,
        rows["text"].tolist(),
        int(opts["max_new_tokens"]),
        int(ctx.spec.data.max_length),
        str(opts["source_prefix"]),
        batch_size=int(ctx.spec.training.get("eval_batch_size") or 64),
    )


def evaluator(ctx: Any, split: str) -> Evaluator:
    """Token-weighted loss over the whole split; ROUGE of greedy outputs on its first
    ``generation_rows`` rows (the model being trained is set on the evaluator before each
    evaluation)."""
    rows = getattr(ctx.data, split).iloc[: max(0, int(options_of(ctx)["generation_rows"]))]
    evaluation = Evaluator(compute_metrics=lambda p: {}, preprocess_logits=preprocess_logits)

    def compute(p: Any) -> dict[str, float]:
        metrics = loss_metrics(p.predictions, p.label_ids)
        if len(rows):
            metrics.update(rouge(generate_rows(ctx, evaluation.model, rows), rows["target"].tolist()))
        return metrics

    evaluation.compute_metrics = compute
    return evaluation


def samples(ctx: Any, model: Any, split: str) -> list[dict[str, Any]]:
    """Input, reference and greedy output of the split's first ``sample_rows`` rows."""
    rows = getattr(ctx.data, split).iloc[: max(0, int(options_of(ctx)["sample_rows"]))]
    if not len(rows):
        return []
    outputs = generate_rows(ctx, model, rows)
    return [
        {"input": s, "reference": r, "generated": g}
        for s, r, g in zip(rows["text"], rows["target"], outputs, strict=True)
    ]


def check_options(options: dict[str, Any], metric: str, max_length: Any = None) -> list[str]:
    """Option values in range; a ROUGE objective needs generated rows."""
    problems = []
    for key, low in (
        ("max_target_length", 1),
        ("max_new_tokens", 1),
        ("generation_rows", 0),
        ("sample_rows", 0),
    ):
        value = options[key]
        if isinstance(value, int) and not isinstance(value, bool) and value < low:
            problems.append(f"task.{key}: must be >= {low}, got {value}")
    if metric in ROUGE_KEYS and options["generation_rows"] == 0:
        problems.append(
            f"task.generation_rows: objective.metric {metric!r} scores generated text; set "
            "task.generation_rows to the validation rows to generate (e.g. 32)"
        )
    return problems


def check_model(model_config: dict[str, Any] | None) -> list[str]:
    """An encoder-decoder (T5, BART): what ``AutoModelForSeq2SeqLM`` loads."""
    if not model_config or model_config.get("is_encoder_decoder"):
        return []
    return [
        f"task {TASK_NAME} needs an encoder-decoder (a model AutoModelForSeq2SeqLM loads, such as T5); "
        f"model type {model_config.get('model_type')!r} is not one"
    ]


TASK = Task(
    name=TASK_NAME,
    description="text in, text out with an encoder-decoder (T5): summaries, headlines; scored by ROUGE",
    metrics=METRICS,
    default_metric="rougeL",
    roles=ROLES,
    normalize=normalize,
    vocabulary=no_vocabulary,
    apply_vocabulary=keep_labels,
    stratify=no_key,
    group=group,
    check_train=any_train,
    encode=encode_split,
    auto_class="AutoModelForSeq2SeqLM",
    load_model=load_model,
    init_head=keep_pretrained_head,
    collator=collator,
    evaluator=evaluator,
    options=OPTIONS,
    check_options=check_options,
    check_model=check_model,
    trainer=("Seq2SeqTrainer", "Seq2SeqTrainingArguments"),
    samples=samples,
)
