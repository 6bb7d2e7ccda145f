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

from hpo.errors import DataError
from hpo.tasks.generation_metrics import loss_metrics, token_nll

__all__ = ["encode", "generate", "loss_metrics", "preprocess_logits"]


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
