"""Metrics of the generative tasks: token-weighted loss and perplexity, ROUGE.

The loss half serves both generative tasks: :func:`token_nll` reduces a batch's logits to
two numbers per row inside the Trainer's evaluation loop (``preprocess_logits_for_metrics``)
and :func:`loss_metrics` adds them up at the end (``compute_metrics``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["ROUGE_KEYS", "loss_metrics", "rouge", "token_nll"]

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
"""ROUGE variants :func:`rouge` reports."""


def token_nll(logits: Any, labels: Any, shift: bool) -> Any:
    """Per-row summed negative log-likelihood and number of labelled tokens.

    Args:
        logits: ``(batch, seq, vocab)`` tensor, or a tuple whose first item is one. When it is
            longer than the labels (prompt tuning prepends virtual tokens to a causal LM) its
            last ``seq`` positions are used.
        labels: ``(batch, seq)`` token ids; -100 marks positions the loss skips.
        shift: True for a causal LM (logits at t predict the label at t + 1), False for an
            encoder-decoder (decoder logits at t predict the label at t).

    Returns:
        A float32 tensor ``(batch, 2)``: summed NLL in nats, number of labelled tokens.
    """
    import torch
    import torch.nn.functional as F

    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    n = labels.shape[1]
    if logits.shape[1] < n:
        raise ValueError(f"logits cover {logits.shape[1]} positions but labels {n}")
    logits = logits[:, logits.shape[1] - n :]
    labels = labels.to(logits.device)
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    rows = []
    # One row at a time: the float32 log-softmax of a whole batch is another
    # batch x seq x vocab copy (8 x 512 x 49k = 800 MB); a row is 100 MB.
    for row_logits, row_labels in zip(logits, labels, strict=True):
        nll = F.cross_entropy(row_logits.float(), row_labels, ignore_index=-100, reduction="sum")
        rows.append(torch.stack([nll, (row_labels != -100).sum().float()]))
    return torch.stack(rows).detach()


def loss_metrics(preprocessed: Any, label_ids: Any = None) -> dict[str, float]:
    """Token-weighted loss and perplexity over a whole evaluation set.

    The Trainer's own ``eval_loss`` is a mean of per-batch means, so a batch of short
    completions weighs as much as one of long ones; this is total NLL over total labelled
    tokens. Returned as ``loss``, it replaces the Trainer's ``eval_loss`` (the Trainer writes
    its own first, then prefixes the metric keys).

    Args:
        preprocessed: The concatenated :func:`token_nll` rows (``EvalPrediction.predictions``),
            ``(rows, 2)`` (array or list of rows), or a tuple whose first item is that.
        label_ids: ``EvalPrediction.label_ids``; not needed (the counts are in
            ``preprocessed``), accepted so the call reads like every ``compute_metrics``.

    Returns:
        ``{"loss": nats per token, "perplexity": exp(loss)}``.

    Raises:
        ValueError: If there is no labelled token.
    """
    import numpy as np

    del label_ids
    # A tuple when the model returned several outputs; a list is rows.
    if isinstance(preprocessed, tuple):
        preprocessed = preprocessed[0]
    arr = np.asarray(preprocessed, dtype=np.float64).reshape(-1, 2)
    total_nll, total_tokens = float(arr[:, 0].sum()), float(arr[:, 1].sum())
    if total_tokens <= 0:
        raise ValueError("loss_metrics: no labelled token in the evaluation set")
    loss = total_nll / total_tokens
    # exp overflows a float above 709.78 nats per token; a random 49k-vocab model is near 11.
    perplexity = math.exp(loss) if loss < 700 else math.inf
    return {"loss": loss, "perplexity": perplexity}


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures, each in [0, 1].

    Google's ``rouge-score`` with its default tokenizer (lower-cased, split on anything that is
    not a letter or digit; needs no NLTK download) and the Porter stemmer (words longer than 3
    characters). ROUGE-L is the sentence-level LCS variant (not ``rougeLsum``).

    Args:
        predictions: Generated texts.
        references: One reference per prediction.

    Returns:
        ``{"rouge1", "rouge2", "rougeL"}``: F-measures averaged over the pairs.

    Raises:
        ValueError: If the lists are empty or differ in length.
    """
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"rouge: {len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("rouge: no predictions")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        # score(target, prediction): the reference comes first.
        scores = scorer.score(ref, pred)
        for key in ROUGE_KEYS:
            totals[key] += scores[key].fmeasure
    return {key: totals[key] / len(predictions) for key in ROUGE_KEYS}
