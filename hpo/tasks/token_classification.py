"""Token classification (named-entity recognition): tag sets, sub-word labels, seqeval, the task.

CoNLL files are read by :func:`hpo.data.read_conll`; hub datasets and tables give the same
``tokens``/``tags`` columns.

- :func:`tag_names` orders a tag set the same way every time (the label ids of the model head).
- :func:`check_tags` compares a split's tags with the training tags.
- :func:`encode` tokenizes pre-split words and aligns word tags to the first sub-word.
- :func:`compute_metrics` scores entity spans with seqeval (conlleval-compatible) and tokens by
  accuracy.
- :data:`TASK` is the ``token-classification`` record the registry holds.

Metrics are computed over the words that survive tokenization: a word truncated away by
``max_length``, or one the tokenizer maps to no sub-word at all (a lone control character),
has no labelled position and drops out of both the gold and the predicted sequence. With
``max_length`` long enough for the data this is the conlleval score of the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from hpo.errors import DataError
from hpo.tasks.base import Evaluator, Metric, Role, Task, Vocabulary
from hpo.tasks.columns import select_columns
from hpo.tasks.heads import reinit_linear_head

METRICS = (
    Metric("f1", "maximize", description="entity-level F1 (seqeval, micro-averaged over entity types)"),
    Metric(
        "precision",
        "maximize",
        description="entity-level precision (an entity counts when type, start and end match)",
    ),
    Metric("recall", "maximize", description="entity-level recall"),
    Metric("accuracy", "maximize", description="share of words whose tag is right (first sub-word of each)"),
    Metric(
        "loss",
        "minimize",
        fraction=False,
        description="cross-entropy per labelled word on the validation split",
    ),
)
"""Validation metrics of the task (entity-level precision/recall/F1, token accuracy, loss)."""
ROLES = (
    Role("tokens", "tokens", description="the words of each sentence (a list of strings)"),
    Role(
        "tags",
        "tags",
        target=True,
        description="one tag per word: BIO strings, or integers that a hub ClassLabel names",
    ),
)

IGNORE_INDEX = -100
"""Label of positions the loss and the metrics skip (PyTorch's cross-entropy default)."""

# "B-x" or "I-x" with a non-empty type. Other prefixes (E-, S- of BIOES) are reported by
# check_tags as not BIO, not rejected: seqeval's default mode reads them too.
_BIO = re.compile(r"^(?P<prefix>[BI])-(?P<type>.+)$")


# ---------------------------------------------------------------------------------------
# Tag sets


def _tag_key(tag: str) -> tuple[int, str, int, str]:
    """Sort key: O, then B-/I- tags by entity type (B before I), then anything else by name."""
    if tag == "O":
        return (0, "", 0, "")
    m = _BIO.match(tag)
    if m is not None:
        return (1, m["type"], 0 if m["prefix"] == "B" else 1, "")
    return (2, "", 0, tag)


def tag_names(tag_lists: Iterable[Sequence[str]]) -> list[str]:
    """The distinct tags of ``tag_lists`` in a fixed order: index = label id of the model head.

    The order is ``O`` first (when present), then the ``B-``/``I-`` tags grouped by entity type
    in alphabetical order of the type, ``B-`` before ``I-`` within a type, then any tag of
    another shape (``E-x``, ``S-x``, ``MISC``) in alphabetical order. For WNUT-17 this is the
    order of the Hugging Face ``wnut_17`` dataset: ``O, B-corporation, I-corporation,
    B-creative-work, ...``. The order does not depend on where the tags occur, so the same
    tag set always gets the same ids.

    Args:
        tag_lists: Tags of each sentence (e.g. the ``tags`` column of :func:`hpo.data.read_conll`).

    Returns:
        The sorted distinct tags.
    """
    seen: set[str] = set()
    for tags in tag_lists:
        seen.update(tags)
    return sorted(seen, key=_tag_key)


def check_tags(
    tag_lists: Sequence[Sequence[str]], shown: str, known: Sequence[str] | None = None
) -> list[str]:
    """Check a split's tags: unseen tags are an error, tags that are not BIO a warning.

    Args:
        tag_lists: Tags of each sentence of the split.
        shown: How messages name the split's file.
        known: The training tags (:func:`tag_names` of train), or None to check shapes only
            (e.g. for train itself).

    Returns:
        Warnings, one line per distinct tag that is neither ``O`` nor ``B-type``/``I-type``,
        naming its first sentence and token (both counted from 1) and how often it occurs.
        Such tags are kept: seqeval reads BIOES (``E-``, ``S-``) correctly, but it splits any
        other tag at its first character (``MISC`` becomes prefix ``M`` and type ``ISC``), so
        entity scores over such tags mean little.

    Raises:
        DataError: If a tag does not occur in ``known`` (the model has no output for it);
            the message names the first such tag, where it is, and all unseen tags.
    """
    known_set = set(known) if known is not None else None
    # tag -> (first sentence, first token, count)
    bad_shape: dict[str, list[int]] = {}
    unseen: dict[str, list[int]] = {}
    for i, tags in enumerate(tag_lists, start=1):
        for j, tag in enumerate(tags, start=1):
            if tag != "O" and _BIO.match(tag) is None:
                bad_shape.setdefault(tag, [i, j, 0])[2] += 1
            if known_set is not None and tag not in known_set:
                unseen.setdefault(tag, [i, j, 0])[2] += 1
    if unseen:
        tag, (i, j, _) = next(iter(unseen.items()))
        total = sum(c for _, _, c in unseen.values())
        listed = ", ".join(sorted(unseen, key=_tag_key))
        raise DataError(
            f"{shown}: sentence {i}, token {j}: tag {tag!r} does not occur in the training data "
            f"({total} tokens with unseen tags: {listed})"
        )
    return [
        f"{shown}: sentence {i}, token {j}: tag {tag!r} is not O, B-type or I-type ({n} tokens)"
        for tag, (i, j, n) in sorted(bad_shape.items(), key=lambda kv: _tag_key(kv[0]))
    ]


# ---------------------------------------------------------------------------------------
# Encoding


def encode(
    tokens_batch: list[list[str]],
    tag_ids_batch: list[list[int]] | None,
    tokenizer: Any,
    max_length: int,
) -> dict[str, list[Any]]:
    """Tokenize pre-split sentences and label the first sub-word of each word.

    The words are tokenized with ``is_split_into_words=True``, truncated to ``max_length``
    tokens and not padded (a collator such as ``DataCollatorForTokenClassification`` pads
    each batch, labels with -100). The first sub-word of a word gets the word's tag id; the
    word's other sub-words and the special tokens get -100, so the loss and
    :func:`compute_metrics` see each word once.

    Args:
        tokens_batch: Words of each sentence.
        tag_ids_batch: Tag ids of each sentence (same lengths), or None for unlabelled text.
        tokenizer: A fast Hugging Face tokenizer (``word_ids`` needs one).
        max_length: Tokens per sentence after truncation, special tokens included.

    Returns:
        The tokenizer's model inputs (``input_ids``, ``attention_mask`` and, when it makes
        them, ``token_type_ids``) and, with ``tag_ids_batch``, ``labels``; one list entry
        per sentence.

    Raises:
        ValueError: If the tokenizer is not a fast one, or a sentence's tags do not match
            its words in number.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"encode needs a fast tokenizer (word_ids), got {type(tokenizer).__name__}")
    if tag_ids_batch is not None and len(tag_ids_batch) != len(tokens_batch):
        raise ValueError(f"encode: {len(tokens_batch)} sentences but {len(tag_ids_batch)} tag lists")
    enc = tokenizer(
        tokens_batch,
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
        padding=False,
    )
    out: dict[str, list[Any]] = {
        name: list(enc[name]) for name in ("input_ids", "attention_mask", "token_type_ids") if name in enc
    }
    if tag_ids_batch is None:
        return out
    labels: list[list[int]] = []
    for i, tag_ids in enumerate(tag_ids_batch):
        if len(tag_ids) != len(tokens_batch[i]):
            raise ValueError(f"encode: sentence {i} has {len(tokens_batch[i])} words but {len(tag_ids)} tags")
        row: list[int] = []
        previous: int | None = None
        for word in enc.word_ids(i):
            # None: a special token; same word as before: a continuation sub-word.
            row.append(IGNORE_INDEX if word is None or word == previous else int(tag_ids[word]))
            previous = word
        labels.append(row)
    out["labels"] = labels
    return out


# ---------------------------------------------------------------------------------------
# Metrics


def compute_metrics(logits_or_ids: Any, label_ids: Any, tag_names: Sequence[str]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (seqeval, micro-averaged) and token accuracy.

    Only positions whose label is not -100 count: the first sub-word of each word, as
    :func:`encode` labels them. Entities are read from the tag sequences the way conlleval
    reads them (seqeval's default mode: an ``I-x`` after ``O`` or after another type starts an
    entity); an entity is correct when its type, start and end all match.

    Args:
        logits_or_ids: Logits ``(n, seq, k)`` or predicted ids ``(n, seq)``, as the Trainer
            gives them (a tuple's first element is used). The Trainer pads ``seq`` across
            batches; padded positions carry label -100 and are skipped.
        label_ids: Gold tag ids ``(n, seq)`` with -100 where nothing is scored.
        tag_names: Tag of each id (:func:`tag_names` of train).

    Returns:
        ``precision``, ``recall``, ``f1`` (0 when there is nothing to divide by) and
        ``accuracy`` (correct labelled positions / labelled positions), all in [0, 1].
    """
    import warnings

    import numpy as np
    from seqeval.metrics.sequence_labeling import precision_recall_fscore_support

    if isinstance(logits_or_ids, tuple):
        logits_or_ids = logits_or_ids[0]
    pred = np.asarray(logits_or_ids)
    if pred.ndim == 3:
        pred = pred.argmax(axis=-1)
    gold = np.asarray(label_ids)
    if pred.shape != gold.shape:
        raise ValueError(f"compute_metrics: predictions {pred.shape} and labels {gold.shape} differ in shape")
    mask = gold != IGNORE_INDEX
    names = list(tag_names)
    y_true = [[names[t] for t in g[m]] for g, m in zip(gold, mask, strict=True)]
    y_pred = [[names[t] for t in p[m]] for p, m in zip(pred, mask, strict=True)]
    # The micro average is the "micro avg" row of seqeval's classification_report (the
    # conlleval overall score), without the per-type and weighted rows, which warn and give
    # NaN when there is no entity at all. zero_division=0: 0 instead of a warning when no
    # entity was predicted (early in training) or none is gold.
    with warnings.catch_warnings():
        # seqeval warns once per token whose tag is not X-type; check_tags reports those once.
        warnings.filterwarnings("ignore", message=".*seems not to be NE tag", category=UserWarning)
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, average="micro", zero_division=0
        )
    n_scored = int(mask.sum())
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "accuracy": float((pred[mask] == gold[mask]).sum() / n_scored) if n_scored else 0.0,
    }


# ---------------------------------------------------------------------------------------
# The task record: data roles, label set, model, evaluation


def _as_list(value: Any) -> list[Any] | None:
    """A list, tuple or numpy array (JSON, pandas and parquet give these back) as a list."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) == 1:
        return list(value.tolist())
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def normalize(df: pd.DataFrame, columns: dict[str, str], shown: str) -> pd.DataFrame:
    """Columns ``tokens`` (lists of non-empty strings) and ``tags`` (as strings: ``"B-PER"``, or
    ``"3"`` for an integer tag), checked row by row.

    Raises:
        DataError: a missing column, a cell that is not a list (a CSV cell holds text: use
            JSON, parquet or CoNLL), an empty sentence, an empty word, a tag that is neither
            a string nor an integer, or a row whose words and tags differ in number.
    """
    out = select_columns(df, columns, shown)
    words_col, tags_col = columns["tokens"], columns["tags"]
    all_words: list[list[str]] = []
    all_tags: list[list[str]] = []
    for i, (words_value, tags_value) in enumerate(zip(out["tokens"], out["tags"], strict=True)):
        at = f"{shown}: row {i}"
        words, tags = _as_list(words_value), _as_list(tags_value)
        if words is None:
            raise DataError(
                f"{at}: column {words_col!r}: expected a list of words, got {_show(words_value)} "
                "(a CSV cell holds text: use JSON, parquet or CoNLL)"
            )
        if tags is None:
            raise DataError(f"{at}: column {tags_col!r}: expected a list of tags, got {_show(tags_value)}")
        if not words:
            raise DataError(f"{at}: column {words_col!r}: empty sentence")
        if len(words) != len(tags):
            raise DataError(f"{at}: {len(words)} words in {words_col!r} but {len(tags)} tags in {tags_col!r}")
        for j, word in enumerate(words):
            if not isinstance(word, str) or not word:
                raise DataError(
                    f"{at}: column {words_col!r}, word {j}: expected a non-empty string, got {_show(word)}"
                )
        keys: list[str] = []
        for j, tag in enumerate(tags):
            if isinstance(tag, str) and tag.strip():
                keys.append(tag.strip())
            elif not isinstance(tag, bool) and hasattr(tag, "__index__"):  # int, numpy integer
                keys.append(str(int(tag)))
            else:
                raise DataError(
                    f"{at}: column {tags_col!r}, tag {j}: expected a tag string or an integer, got {_show(tag)}"
                )
        all_words.append([str(w) for w in words])
        all_tags.append(keys)
    return pd.DataFrame({"tokens": all_words, "tags": all_tags})


def vocabulary(
    train: pd.DataFrame, columns: dict[str, str], shown: str, class_names: list[str] | None
) -> Vocabulary:
    """The tag set: the train split's tags in :func:`tag_names` order, or, for integer tags,
    the names the source declares (a hub ``ClassLabel``) in their own order.

    Raises:
        DataError: integer tags without names, an integer outside the names, or fewer than two
            tags.
    """
    tag_lists = train["tags"].tolist()
    integers = all(t.lstrip("-").isdigit() for tags in tag_lists for t in tags)
    if integers:
        if class_names is None:
            raise DataError(
                f"{shown}: column {columns['tags']!r} holds integer tags but the data names none; "
                "give tag strings (B-person, O) or a hub dataset whose ClassLabel names them"
            )
        keys = [str(i) for i in range(len(class_names))]
        known = set(keys)
        for tags in tag_lists:
            for t in tags:
                if t not in known:
                    raise DataError(
                        f"{shown}: column {columns['tags']!r}: tag {t} is not one of the {len(keys)} named tags"
                    )
        names = list(class_names)
    else:
        keys = tag_names(tag_lists)
        names = list(keys)
    if len(keys) < 2:
        raise DataError(
            f"{shown}: column {columns['tags']!r} has a single tag ({names[0]!r}); need at least 2"
        )
    return Vocabulary(names=names, keys=keys)


def apply_vocabulary(
    frame: pd.DataFrame, vocab: Vocabulary, columns: dict[str, str], shown: str
) -> pd.DataFrame:
    """Tags as ids (index in the vocabulary); a tag train does not have is an error."""
    tag_lists = frame["tags"].tolist()
    check_tags(tag_lists, shown, vocab.keys)
    index = {k: i for i, k in enumerate(vocab.keys)}
    out = frame.copy()
    out["tags"] = [[index[t] for t in tags] for tags in tag_lists]
    return out


def stratify(frame: pd.DataFrame) -> pd.Series:
    """Whether a sentence holds an entity (a tag other than id 0, ``O`` in :func:`tag_names`
    order and in hub ClassLabels): carving keeps the share of sentences with entities (WNUT-17
    train: 1,228 of 3,394)."""
    return pd.Series([any(t != 0 for t in tags) for tags in frame["tags"]], index=frame.index)


def group(frame: pd.DataFrame) -> pd.Series:
    """Copies of one sentence (retweets) stay on one side of a carve."""
    return pd.Series(["\x1f".join(words) for words in frame["tokens"]], index=frame.index)


def check_train(train: pd.DataFrame, columns: dict[str, str], shown: str) -> None:
    """Some entity must be left in train after carving and subsampling."""
    if not bool(stratify(train).any()):
        raise DataError(
            f"{shown}: no sentence with an entity is left in train after carving and subsampling; "
            "raise data.train_limit"
        )


def encode_split(
    frame: pd.DataFrame,
    tokenizer: Any,
    max_length: int,
    label_names: list[str],
    options: dict[str, Any],
    split: str,
) -> dict[str, list[Any]]:
    """Words tokenized (truncated to ``max_length``, unpadded), tags on first sub-words (:func:`encode`)."""
    words = frame["tokens"].tolist()
    tags = frame["tags"].tolist()
    columns: dict[str, list[Any]] = {}
    chunk = 2048  # sentences per tokenizer call, to bound peak memory on large splits
    for start in range(0, len(words), chunk):
        enc = encode(words[start : start + chunk], tags[start : start + chunk], tokenizer, max_length)
        for name, values in enc.items():
            columns.setdefault(name, []).extend(values)
    return columns


def load_model(path: str, label_names: list[str], **options: Any) -> Any:
    """The base weights with a fresh token-classification head of ``len(label_names)`` outputs.

    A checkpoint that has a head of another size (a classifier fine-tuned on other labels)
    loads too: its head is dropped, and ``init_head`` draws the new one from the trial's seed.
    """
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(
        path,
        ignore_mismatched_sizes=True,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
        **options,
    )


def collator(tokenizer: Any, model: Any = None) -> Any:
    """Pad inputs to the batch's longest sentence and labels with -100."""
    from transformers import DataCollatorForTokenClassification

    return DataCollatorForTokenClassification(tokenizer)


def predicted_ids(logits: Any, labels: Any) -> Any:
    """Each batch's logits (batch x tokens x tags) shrunk to predicted ids before the Trainer
    keeps them: a split's logits would be ``tags`` times larger."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def evaluator(ctx: Any, split: str) -> Evaluator:
    """Entity scores and token accuracy of a split (the Trainer adds the loss)."""
    names = list(ctx.data.label_names)
    return Evaluator(
        compute_metrics=lambda p: compute_metrics(p.predictions, p.label_ids, names),
        preprocess_logits=predicted_ids,
    )


TASK = Task(
    name="token-classification",
    description="one tag per word: named entities (BIO tags), scored by entity F1 (seqeval)",
    metrics=METRICS,
    default_metric="f1",
    roles=ROLES,
    normalize=normalize,
    vocabulary=vocabulary,
    apply_vocabulary=apply_vocabulary,
    stratify=stratify,
    group=group,
    check_train=check_train,
    encode=encode_split,
    auto_class="AutoModelForTokenClassification",
    load_model=load_model,
    init_head=reinit_linear_head,
    collator=collator,
    evaluator=evaluator,
)
