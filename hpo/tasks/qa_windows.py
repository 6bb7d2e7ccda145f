"""Extractive question answering: (question, context) windows and from their logits to answers.

The Hugging Face ``run_qa`` recipe:

- :func:`prepare_train_features` / :func:`prepare_eval_features` cut (question, context) pairs
  into overlapping windows of at most ``max_length`` tokens: question first, only the context
  truncated, ``doc_stride`` tokens shared by neighbouring windows.
- :func:`postprocess` turns per-window start/end logits into one answer string per question.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hpo.errors import DataError

NO_OFFSET = None
"""``offset_mapping`` entry of a token outside the context (question, special tokens) in
:func:`prepare_eval_features`. ``datasets`` stores it as a null element of the
``list<list<int64>>`` column and gives it back as None."""

# ---------------------------------------------------------------------------------------
# Features


_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _windows(
    questions: Sequence[str], contexts: Sequence[str], tokenizer: Any, max_length: int, doc_stride: int
) -> Any:
    """Tokenize (question, context) pairs into overlapping context windows (a BatchEncoding).

    Raises:
        ValueError: On a slow tokenizer, inputs of different lengths, or a bad size.
        DataError: When a question leaves no more than ``doc_stride`` tokens for the context.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"question answering needs a fast tokenizer (offsets), got {type(tokenizer).__name__}"
        )
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
    if not 0 <= doc_stride < max_length:
        raise ValueError(f"doc_stride must be >= 0 and < max_length ({max_length}), got {doc_stride}")
    # Some SQuAD questions start with spaces that only waste window tokens (run_qa does the same).
    questions = [q.lstrip() for q in questions]
    # The tokenizer fails on a question that leaves no room for the context ("Truncation
    # error") and panics (a BaseException from Rust) when the room is not above the stride;
    # check first and name the question instead.
    special = tokenizer.num_special_tokens_to_add(pair=True)
    q_lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    longest = max(range(len(q_lengths)), key=q_lengths.__getitem__, default=None)
    if longest is not None:
        room = max_length - special - q_lengths[longest]
        if room <= doc_stride:
            raise DataError(
                f"question {longest} has {q_lengths[longest]} tokens, which leaves {room} context tokens per "
                f"window at max_length {max_length}; that must be more than doc_stride {doc_stride} "
                "(raise max_length or lower doc_stride)"
            )
    return tokenizer(
        questions,
        list(contexts),
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )


def _context_span(sequence_ids: list[int | None]) -> tuple[int, int] | None:
    """First and last token index of the context (sequence 1) in one window, or None."""
    positions = [k for k, s in enumerate(sequence_ids) if s == 1]
    return (positions[0], positions[-1]) if positions else None


def _answer_positions(
    enc: Any, w: int, answer: Mapping[str, Sequence[Any]], cls_token_id: int | None
) -> tuple[int, int]:
    """Start and end token of the first answer in window ``w``, or the CLS index twice."""
    input_ids = enc["input_ids"][w]
    cls = input_ids.index(cls_token_id) if cls_token_id in input_ids else 0
    span = _context_span(enc.sequence_ids(w))
    if span is None:
        return cls, cls
    offsets = enc["offset_mapping"][w]
    start_char = int(answer["answer_start"][0])
    end_char = start_char + len(answer["text"][0])
    first, last = span
    # Label CLS unless the whole answer is inside this window's context: a window with half
    # an answer would teach the model to predict a truncated span.
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return cls, cls
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def prepare_train_features(
    questions: Sequence[str],
    contexts: Sequence[str],
    answers: Sequence[Mapping[str, Sequence[Any]]],
    tokenizer: Any,
    max_length: int,
    doc_stride: int,
) -> dict[str, list[Any]]:
    """Windows of each (question, context) with the first answer's token positions.

    Each pair becomes one or more windows of at most ``max_length`` tokens: ``[CLS] question
    [SEP] context part [SEP]``; neighbouring windows share ``doc_stride`` context tokens; the
    question is never truncated. No padding (a collator pads each batch).

    Args:
        questions: Question of each example.
        contexts: Context of each example.
        answers: Answers of each example in the :func:`normalize_answers` layout; only the
            first answer is used (SQuAD train has one per question).
        tokenizer: A fast Hugging Face tokenizer.
        max_length: Tokens per window, special tokens included.
        doc_stride: Context tokens shared by neighbouring windows.

    Returns:
        Per window: the model inputs (``input_ids``, ``attention_mask``, ``token_type_ids``
        when the tokenizer makes them) and ``start_positions``/``end_positions``, the first
        and last token of the answer, or the CLS index (0 for BERT) for both when the answer
        is not wholly inside the window's context.

    Raises:
        ValueError: On a slow tokenizer or inputs of different lengths.
        DataError: When a question leaves no more than ``doc_stride`` context tokens.
    """
    if len(answers) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    enc = _windows(questions, contexts, tokenizer, max_length, doc_stride)
    out: dict[str, list[Any]] = {name: list(enc[name]) for name in _MODEL_INPUTS if name in enc}
    out["start_positions"], out["end_positions"] = [], []
    for w, example in enumerate(enc["overflow_to_sample_mapping"]):
        start, end = _answer_positions(enc, w, answers[example], tokenizer.cls_token_id)
        out["start_positions"].append(start)
        out["end_positions"].append(end)
    return out


def prepare_eval_features(
    ids: Sequence[str],
    questions: Sequence[str],
    contexts: Sequence[str],
    tokenizer: Any,
    max_length: int,
    doc_stride: int,
    answers: Sequence[Mapping[str, Sequence[Any]]] | None = None,
) -> dict[str, list[Any]]:
    """The windows of :func:`prepare_train_features`, plus what :func:`postprocess` needs.

    Args:
        ids: Id of each example.
        questions: Question of each example.
        contexts: Context of each example.
        tokenizer: A fast Hugging Face tokenizer.
        max_length: Tokens per window, special tokens included.
        doc_stride: Context tokens shared by neighbouring windows.
        answers: Optional answers (:func:`normalize_answers` layout); with them each window
            also gets ``start_positions``/``end_positions`` as in training, so that the
            Trainer can report an evaluation loss.

    Returns:
        Per window: the model inputs, ``example_id`` (the id of its example) and
        ``offset_mapping``: for each token ``[start, end]`` character offsets into the
        context, or None (:data:`NO_OFFSET`) for the question and special tokens, so an
        answer can only be read from the context. With ``answers``, also the positions.

    Raises:
        ValueError: On a slow tokenizer or inputs of different lengths.
        DataError: When a question leaves no more than ``doc_stride`` context tokens.
    """
    if len(ids) != len(questions):
        raise ValueError(f"{len(ids)} ids but {len(questions)} questions")
    if answers is not None and len(answers) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    enc = _windows(questions, contexts, tokenizer, max_length, doc_stride)
    out: dict[str, list[Any]] = {name: list(enc[name]) for name in _MODEL_INPUTS if name in enc}
    out["example_id"], out["offset_mapping"] = [], []
    if answers is not None:
        out["start_positions"], out["end_positions"] = [], []
    for w, example in enumerate(enc["overflow_to_sample_mapping"]):
        out["example_id"].append(ids[example])
        out["offset_mapping"].append(
            [
                [int(s), int(e)] if seq == 1 else NO_OFFSET
                for (s, e), seq in zip(enc["offset_mapping"][w], enc.sequence_ids(w), strict=True)
            ]
        )
        if answers is not None:
            start, end = _answer_positions(enc, w, answers[example], tokenizer.cls_token_id)
            out["start_positions"].append(start)
            out["end_positions"].append(end)
    return out


# ---------------------------------------------------------------------------------------
# From logits to answers


def postprocess(
    example_ids: Sequence[str],
    contexts: Sequence[str],
    features: Any,
    start_logits: Any,
    end_logits: Any,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """The best answer span of each example over all of its windows.

    In each window, the ``n_best`` highest start logits and the ``n_best`` highest end logits
    are paired; a pair is a candidate when both tokens are in the context, start <= end and
    the span has at most ``max_answer_length`` tokens. The candidate with the highest start
    + end logit over all windows of the example wins (the first one met on ties).

    Args:
        example_ids: Id of each example.
        contexts: Context of each example.
        features: ``example_id`` and ``offset_mapping`` per window, as
            :func:`prepare_eval_features` returns them (a dict or a ``datasets.Dataset``).
        start_logits: ``(windows, seq)`` start logits, in window order. The Trainer pads
            ``seq`` across batches (with -100); positions past a window's length are ignored.
        end_logits: ``(windows, seq)`` end logits.
        n_best: Starts and ends tried per window.
        max_answer_length: Longest answer, in tokens.

    Returns:
        Example id -> answer text (the context characters from the start token's first
        character to the end token's last); "" when no window has a candidate.

    Raises:
        ValueError: On duplicate example ids, a window of an unknown example, or logits
            whose row count is not the number of windows.
    """
    import numpy as np

    starts_all = np.asarray(start_logits)
    ends_all = np.asarray(end_logits)
    window_examples = list(features["example_id"])
    offsets_all = features["offset_mapping"]
    if starts_all.shape[0] != len(window_examples) or ends_all.shape[0] != len(window_examples):
        raise ValueError(
            f"postprocess: {len(window_examples)} windows but logits of shape {starts_all.shape} and {ends_all.shape}"
        )
    position = {}
    for i, example_id in enumerate(example_ids):
        if example_id in position:
            raise ValueError(f"postprocess: duplicate example id {example_id!r}")
        position[example_id] = i
    best: dict[str, tuple[float, str]] = {}
    for w, example_id in enumerate(window_examples):
        if example_id not in position:
            raise ValueError(f"postprocess: window {w} belongs to unknown example {example_id!r}")
        offsets = offsets_all[w]
        n_tokens = min(len(offsets), starts_all.shape[1])
        in_context = np.array([offsets[k] is not None for k in range(n_tokens)], dtype=bool)
        s_logits = starts_all[w, :n_tokens]
        e_logits = ends_all[w, :n_tokens]
        # Highest first; a stable sort keeps the lower index first among equal logits.
        s_idx = np.argsort(-s_logits, kind="stable")[:n_best]
        e_idx = np.argsort(-e_logits, kind="stable")[:n_best]
        length = e_idx[None, :] - s_idx[:, None] + 1  # tokens in span (start row, end column)
        valid = (
            in_context[s_idx][:, None]
            & in_context[e_idx][None, :]
            & (length >= 1)
            & (length <= max_answer_length)
        )
        if not valid.any():
            continue
        scores = np.where(valid, s_logits[s_idx][:, None] + e_logits[e_idx][None, :], -np.inf)
        flat = int(np.argmax(scores))  # first maximum in row-major order
        si, ei = s_idx[flat // scores.shape[1]], e_idx[flat % scores.shape[1]]
        score = float(scores.flat[flat])
        if example_id not in best or score > best[example_id][0]:
            context = contexts[position[example_id]]
            best[example_id] = (score, context[offsets[si][0] : offsets[ei][1]])
    return {example_id: best[example_id][1] if example_id in best else "" for example_id in example_ids}
