"""Extractive question answering (SQuAD v1.1 style): answers, metrics, the task.

The official SQuAD JSON is read by :func:`hpo.data.read_squad_json`; tables and hub datasets
give flat ``question, context, answers{text[], answer_start[]}`` rows.

- :func:`normalize_answers` accepts the answer layouts that tables and datasets hold and
  checks every answer against its context.
- Windows and post-processing live in :mod:`hpo.tasks.qa_windows`: long contexts are cut into
  overlapping windows (``max_length``, ``doc_stride``) and the best valid span over all
  windows of a question is its answer.
- :func:`normalize_answer`, :func:`exact_match`, :func:`f1`, :func:`squad_metrics`: the official
  SQuAD v1.1 evaluation, as fractions in [0, 1] rather than percent.
- :data:`TASK` is the ``question-answering`` record the registry holds.
"""

from __future__ import annotations

import numbers
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from hpo.errors import DataError
from hpo.tasks.base import Evaluator, Metric, Role, Task, any_train, keep_labels, no_key, no_vocabulary
from hpo.tasks.columns import check_text, select_columns
from hpo.tasks.heads import reinit_linear_head
from hpo.tasks.qa_windows import postprocess, prepare_eval_features, prepare_train_features

METRICS = (
    Metric("f1", "maximize", description="SQuAD v1.1 token F1 against the best-matching reference answer"),
    Metric(
        "exact_match",
        "maximize",
        description="share of questions answered exactly (SQuAD v1.1 normalisation)",
    ),
    Metric(
        "loss",
        "minimize",
        fraction=False,
        description="start/end cross-entropy per window on the validation split",
    ),
)
"""Validation metrics of the task (SQuAD token F1 and exact match as fractions, loss)."""
ROLES = (
    Role("question", "question", description="the question"),
    Role("context", "context", description="the passage that holds the answer"),
    Role(
        "answers",
        "answers",
        target=True,
        description='{"text": [...], "answer_start": [...]} or a list of {text, answer_start}',
    ),
    Role(
        "id", "id", required=False, description="question id (SQuAD's); the row number when the data has none"
    ),
    Role(
        "title",
        "title",
        required=False,
        description="article: one article's questions stay on one side of a carve (else one context's)",
    ),
)
OPTIONS: dict[str, Any] = {"doc_stride": 32, "n_best": 20, "max_answer_length": 30}
"""Task options (``task: {name: question-answering, doc_stride: 64}``): context tokens that
neighbouring windows share; start and end candidates tried per window; longest answer in
tokens. ``data.max_length`` is the window length."""


def normalize_answers(
    answers: Sequence[Any], contexts: Sequence[str], shown: str
) -> list[dict[str, list[Any]]]:
    """Bring each row's answers into the ``{"text": [...], "answer_start": [...]}`` layout and check them.

    Accepted per row: that layout (with lists, tuples or numpy arrays as values, as JSON,
    pandas and parquet give them back), or a list/array of ``{"text", "answer_start"}``
    objects (the official SQuAD layout).

    Args:
        answers: The ``answers`` column, one entry per row.
        contexts: The context of each row.
        shown: How messages name the file.

    Returns:
        One ``{"text": list[str], "answer_start": list[int]}`` per row, plain Python values.

    Raises:
        DataError: ``shown: row i: problem`` (rows counted from 0, the frame's position) for
            the first row with an unknown layout, no answer, texts and starts of different
            lengths, a non-integer start, or an answer that is not at its ``answer_start``
            in the context.
    """
    if len(answers) != len(contexts):
        raise ValueError(f"normalize_answers: {len(answers)} answers but {len(contexts)} contexts")
    out: list[dict[str, list[Any]]] = []
    for i, (value, context) in enumerate(zip(answers, contexts, strict=True)):
        at = f"{shown}: row {i}: answers"
        texts, starts = _answer_lists(value, at)
        if not texts:
            raise DataError(f"{at}: no answer (every question needs one)")
        if len(texts) != len(starts):
            raise DataError(f"{at}: {len(texts)} texts but {len(starts)} answer_start values")
        clean_starts: list[int] = []
        for n, (text, start) in enumerate(zip(texts, starts, strict=True)):
            if not isinstance(text, str):
                raise DataError(f"{at}.text[{n}]: expected a string, got {show_value(text)}")
            start_int = _as_int(start)
            if start_int is None:
                raise DataError(f"{at}.answer_start[{n}]: expected an integer, got {show_value(start)}")
            if not isinstance(context, str):
                raise DataError(f"{shown}: row {i}: context: expected a string, got {show_value(context)}")
            problem = answer_problem(context, text, start_int)
            if problem:
                raise DataError(f"{at}[{n}]: {problem}")
            clean_starts.append(start_int)
        # str(): numpy.str_ from parquet arrays becomes a plain str.
        out.append({"text": [str(t) for t in texts], "answer_start": clean_starts})
    return out


def _is_sequence(value: Any) -> bool:
    """A list, tuple or numpy array (what JSON, pandas and parquet give back), not a string."""
    import numpy as np  # already loaded by pandas

    return isinstance(value, (list, tuple, np.ndarray))


def _answer_lists(value: Any, at: str) -> tuple[list[Any], list[Any]]:
    """(texts, starts) of one row's answers in either layout."""
    if isinstance(value, Mapping):
        missing = [k for k in ("text", "answer_start") if k not in value]
        if missing:
            raise DataError(
                f"{at}: missing key {missing[0]!r} (keys: {', '.join(map(str, value)) or 'none'})"
            )
        texts, starts = value["text"], value["answer_start"]
        if not _is_sequence(texts) or not _is_sequence(starts):
            raise DataError(
                f"{at}: expected lists under text and answer_start, got {type(texts).__name__} and "
                f"{type(starts).__name__}"
            )
        return list(texts), list(starts)
    if _is_sequence(value):
        texts, starts = [], []
        for n, answer in enumerate(value):
            if not isinstance(answer, Mapping) or "text" not in answer or "answer_start" not in answer:
                raise DataError(
                    f"{at}[{n}]: expected an object with text and answer_start, got {show_value(answer)}"
                )
            texts.append(answer["text"])
            starts.append(answer["answer_start"])
        return texts, starts
    raise DataError(
        f'{at}: expected {{"text": [...], "answer_start": [...]}} or a list of '
        f"{{text, answer_start}} objects, got {type(value).__name__}"
    )


def _as_int(value: Any) -> int | None:
    """``value`` as an int when it is an integral number, else None (strings and bools too)."""
    if isinstance(value, bool):
        return None
    # numbers.Integral covers numpy.int64 from parquet; an integral float (12.0) comes from a
    # column that pandas widened to float because another row had a missing value.
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(float(value))
    return None


# ---------------------------------------------------------------------------------------
# Metrics (the official SQuAD v1.1 evaluation script, as fractions)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, remove ASCII punctuation, the articles a/an/the and extra whitespace.

    The order and rules are those of the official SQuAD v1.1 ``evaluate-v1.1.py``.
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _f1_one(prediction: str, reference: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    common = Counter(pred_tokens) & Counter(ref_tokens)
    n_same = sum(common.values())
    # As in v1.1: no shared token (also when both are empty after normalization) scores 0.
    if n_same == 0:
        return 0.0
    precision = n_same / len(pred_tokens)
    recall = n_same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals a normalized reference, else 0.0."""
    _need_references(references)
    return max(float(normalize_answer(prediction) == normalize_answer(r)) for r in references)


def f1(prediction: str, references: Sequence[str]) -> float:
    """Token-overlap F1 of the normalized prediction against the best-matching reference."""
    _need_references(references)
    return max(_f1_one(prediction, r) for r in references)


def _need_references(references: Sequence[str]) -> None:
    if isinstance(references, str) or not references:
        raise ValueError(f"expected a non-empty list of reference answers, got {references!r}")


def squad_metrics(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """Mean exact match and F1 over the questions of ``references``.

    As in the official script, a question without a prediction scores 0 and predictions of
    unknown ids are ignored. Unlike it, the values are fractions in [0, 1], not percent.

    Args:
        predictions: Question id -> predicted answer.
        references: Question id -> its reference answers (at least one each).

    Returns:
        ``{"exact_match": ..., "f1": ...}``.

    Raises:
        ValueError: If ``references`` is empty or a question has no reference.
    """
    if not references:
        raise ValueError("squad_metrics: no reference answers")
    em_total = f1_total = 0.0
    for qid, refs in references.items():
        prediction = predictions.get(qid)
        if prediction is None:
            _need_references(refs)
            continue
        em_total += exact_match(prediction, refs)
        f1_total += f1(prediction, refs)
    n = len(references)
    return {"exact_match": em_total / n, "f1": f1_total / n}


def show_value(value: Any, width: int = 40) -> str:
    """A value for a message: its repr, clipped, or its type for containers."""
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def answer_problem(context: str, text: str, start: int) -> str:
    """Why an answer does not sit at ``start`` in ``context``, or "" when it does."""
    if not text:
        return "empty answer text"
    if not 0 <= start <= len(context) - len(text):
        return f"answer_start {start} is outside the context ({len(context)} characters) for text {text!r}"
    found = context[start : start + len(text)]
    if found != text:
        return f"answer_start {start} does not point at its text {text!r} (the context has {found!r} there)"
    return ""


# ---------------------------------------------------------------------------------------
# The task record: data roles, windows, model, evaluation over all windows of a question

_OPTIONAL = {r.name: r.default for r in ROLES if not r.required}


def normalize(df: pd.DataFrame, columns: dict[str, str], shown: str) -> pd.DataFrame:
    """Columns id, title, question, context, answers (:func:`normalize_answers` layout), checked.

    ``id`` and ``title`` are optional: when the data has no column of their default name, ids
    are the row numbers and titles empty (a column the study names must exist).

    Raises:
        DataError: a missing column, empty or non-text questions or contexts, an answer that is
            not at its offset, a duplicate id.
    """
    given = {
        role: col
        for role, col in columns.items()
        if not (role in _OPTIONAL and col == _OPTIONAL[role] and col not in df.columns)
    }
    out = select_columns(df, given, shown)
    check_text(out["question"], shown, columns["question"])
    check_text(out["context"], shown, columns["context"])
    answers = normalize_answers(out["answers"].tolist(), out["context"].tolist(), shown)
    ids = [str(v) for v in out["id"]] if "id" in out else [str(i) for i in range(len(out))]
    first: dict[str, int] = {}
    for i, qid in enumerate(ids):
        if qid in first:
            raise DataError(
                f"{shown}: column {columns['id']!r}: duplicate id {qid!r} (rows {first[qid]} and {i})"
            )
        first[qid] = i
    titles = [v if isinstance(v, str) else "" for v in out["title"]] if "title" in out else [""] * len(out)
    return pd.DataFrame(
        {
            "id": ids,
            "title": titles,
            "question": out["question"].tolist(),
            "context": out["context"].tolist(),
            "answers": pd.Series(answers, dtype=object).to_numpy(),
        }
    )


def group(frame: pd.DataFrame) -> pd.Series:
    """The article (title) of each question, else its context: a carved test split holds
    unseen articles, never another question on a passage train has seen."""
    return frame["title"].where(frame["title"] != "", frame["context"])


def check_options(options: dict[str, Any], metric: str, max_length: Any) -> list[str]:
    """``doc_stride`` below half of ``data.max_length`` (a window needs room for the question
    and new context); ``n_best`` and ``max_answer_length`` positive."""
    problems: list[str] = []

    def positive_int(key: str, low: int) -> int | None:
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            problems.append(f"task.{key}: expected an integer >= {low}, got {value!r}")
            return None
        return value

    stride = positive_int("doc_stride", 0)
    positive_int("n_best", 1)
    positive_int("max_answer_length", 1)
    if stride is not None and isinstance(max_length, int) and not isinstance(max_length, bool):
        if stride >= max_length // 2:
            problems.append(
                f"task.doc_stride: must be below half of data.max_length ({max_length}) so that each window "
                f"holds the question and new context, got {stride}"
            )
    return problems


def encode(
    frame: pd.DataFrame,
    tokenizer: Any,
    max_length: int,
    label_names: list[str],
    options: dict[str, Any],
    split: str,
) -> dict[str, list[Any]]:
    """Windows of ``max_length`` tokens sharing ``doc_stride``: train windows with the answer's
    token positions; evaluation windows also with their question's id and context offsets."""
    stride = int(options["doc_stride"])
    questions = frame["question"].tolist()
    contexts = frame["context"].tolist()
    answers = frame["answers"].tolist()
    try:
        if split == "train":
            return prepare_train_features(questions, contexts, answers, tokenizer, max_length, stride)
        ids = frame["id"].tolist()
        return prepare_eval_features(ids, questions, contexts, tokenizer, max_length, stride, answers=answers)
    except DataError as exc:
        raise DataError(f"{split} split: {exc}") from None


def load_model(path: str, label_names: list[str], **options: Any) -> Any:
    """The base weights with a fresh span head (start and end logit per token)."""
    from transformers import AutoModelForQuestionAnswering

    return AutoModelForQuestionAnswering.from_pretrained(path, **options)


def collator(tokenizer: Any, model: Any = None) -> Any:
    """Pad each batch of windows to its longest (windows were tokenized without padding)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def evaluator(ctx: Any, split: str) -> Evaluator:
    """SQuAD exact match and F1 of a split: each question's answer is the best valid span over
    all of its windows (``n_best``, ``max_answer_length``); the Trainer adds the loss."""
    frame = getattr(ctx.data, split)
    windows = ctx.datasets[split]  # the dataset the Trainer evaluates, in its order
    options = TASK.resolved_options(ctx.spec.task_options)
    ids = frame["id"].tolist()
    contexts = frame["context"].tolist()
    references = {qid: list(a["text"]) for qid, a in zip(ids, frame["answers"], strict=True)}
    features: dict[str, Any] = {}

    def compute(prediction: Any) -> dict[str, float]:
        if not features:  # read once per Trainer: the offsets of a few thousand windows take seconds
            features.update(example_id=windows["example_id"], offset_mapping=windows["offset_mapping"])
        start_logits, end_logits = prediction.predictions[:2]
        answers = postprocess(
            ids,
            contexts,
            features,
            start_logits,
            end_logits,
            n_best=int(options["n_best"]),
            max_answer_length=int(options["max_answer_length"]),
        )
        return squad_metrics(answers, references)

    return Evaluator(compute_metrics=compute)


TASK = Task(
    name="question-answering",
    description="extractive QA: the answer is a span of the context (SQuAD v1.1), scored by SQuAD F1",
    metrics=METRICS,
    default_metric="f1",
    roles=ROLES,
    normalize=normalize,
    vocabulary=no_vocabulary,
    apply_vocabulary=keep_labels,
    stratify=no_key,
    group=group,
    check_train=any_train,
    encode=encode,
    auto_class="AutoModelForQuestionAnswering",
    load_model=load_model,
    init_head=reinit_linear_head,
    collator=collator,
    evaluator=evaluator,
    label_columns=("start_positions", "end_positions"),
    options=OPTIONS,
    check_options=check_options,
    large_groups=True,
    row_features=True,
)
