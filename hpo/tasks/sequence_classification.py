"""Sequence classification: binary or multi-class, label names kept on the model config."""

from __future__ import annotations

from typing import Any

import pandas as pd

from hpo.errors import DataError
from hpo.tasks.base import Evaluator, Metric, Role, Task, Vocabulary
from hpo.tasks.class_labels import class_labels, label_keys, map_labels
from hpo.tasks.columns import check_text, select_columns
from hpo.tasks.heads import reinit_linear_head

METRICS = (
    Metric("accuracy", "maximize", description="share of examples whose class is right"),
    Metric("precision", "maximize", description="binary for two classes, macro-averaged otherwise"),
    Metric("recall", "maximize", description="binary for two classes, macro-averaged otherwise"),
    Metric("f1", "maximize", description="binary for two classes, macro-averaged otherwise"),
    Metric("loss", "minimize", fraction=False, description="cross-entropy on the validation split"),
)
ROLES = (
    Role("text", "text", description="the input text"),
    Role("text_pair", None, required=False, description="a second text (sentence-pair tasks)"),
    Role("label", "label", target=True, description="the class: integers or strings; names are kept"),
)


# --------------------------------------------------------------------------- data


def normalize(df: pd.DataFrame, columns: dict[str, str], shown: str) -> pd.DataFrame:
    """Columns text, [text_pair], label; texts checked; labels as canonical keys ("1", "pos")."""
    out = select_columns(df, columns, shown)
    for role in ("text", "text_pair"):
        if role in out:
            check_text(out[role], shown, columns[role])
    out["label"] = label_keys(out["label"], shown, columns["label"])
    return out


def vocabulary(
    train: pd.DataFrame, columns: dict[str, str], shown: str, class_names: list[str] | None
) -> Vocabulary:
    """The classes of the whole train split, sorted (numerically when they are integers)."""
    keys, names = class_labels(list(train["label"]), shown, columns["label"], class_names)
    return Vocabulary(names=names, keys=keys)


def apply_vocabulary(
    frame: pd.DataFrame, vocab: Vocabulary, columns: dict[str, str], shown: str
) -> pd.DataFrame:
    """Labels as integers 0..k-1; a class train does not have is an error."""
    return map_labels(frame, list(frame["label"]), vocab.keys, shown, columns["label"])


def stratify(frame: pd.DataFrame) -> pd.Series:
    """Carving and subsampling keep the class balance."""
    return frame["label"]


def group(frame: pd.DataFrame) -> pd.Series:
    """Copies of one text (SST-2's train.tsv repeats 371 of 67,349) stay on one side of a carve."""
    return frame["text"] if "text_pair" not in frame else frame["text"] + "\x1f" + frame["text_pair"]


def check_train(train: pd.DataFrame, columns: dict[str, str], shown: str) -> None:
    """Two classes at least must be left after carving and subsampling."""
    if train["label"].nunique() < 2:
        raise DataError(
            f"{shown}: a single class is left in train after carving and subsampling; raise data.train_limit"
        )


def encode(
    frame: pd.DataFrame,
    tokenizer: Any,
    max_length: int,
    label_names: list[str],
    options: dict[str, Any],
    split: str,
) -> dict[str, list[Any]]:
    """Texts (and pairs) truncated to ``max_length`` tokens, unpadded; labels as ``labels``."""
    texts = frame["text"].tolist()
    pairs = frame["text_pair"].tolist() if "text_pair" in frame else None
    columns: dict[str, list[Any]] = {}
    chunk = 2048  # rows per tokenizer call, to bound peak memory on large splits
    for start in range(0, len(texts), chunk):
        enc = tokenizer(
            texts[start : start + chunk],
            pairs[start : start + chunk] if pairs is not None else None,
            truncation=True,
            max_length=max_length,
            padding=False,
        )
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            if name in enc:
                columns.setdefault(name, []).extend(enc[name])
    columns["labels"] = frame["label"].astype("int64").tolist()
    return columns


# --------------------------------------------------------------------------- model and metrics


def load_model(path: str, label_names: list[str], **options: Any) -> Any:
    """Load the base weights with a fresh classification head of ``len(label_names)`` outputs;
    ``options``: ``revision``/``trust_remote_code`` (:func:`hpo.models.pretrained_options`)."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
        **options,
    )


def collator(tokenizer: Any, model: Any = None) -> Any:
    """Pad each batch to its longest sequence (inputs were tokenized without padding)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def compute_metrics(logits: Any, labels: Any) -> dict[str, float]:
    """Accuracy, precision, recall and F1 (binary for two classes, macro otherwise)."""
    import numpy as np
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    if isinstance(logits, tuple):
        logits = logits[0]
    preds = np.asarray(logits).argmax(axis=-1)
    labels = np.asarray(labels)
    n_classes = np.asarray(logits).shape[-1]
    average = "binary" if n_classes == 2 else "macro"
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, preds, average=average, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


def evaluator(ctx: Any, split: str) -> Evaluator:
    """Scores a split from the classifier's logits (the Trainer adds the loss)."""
    return Evaluator(compute_metrics=lambda p: compute_metrics(p.predictions, p.label_ids))


TASK = Task(
    name="sequence-classification",
    description="one label per text (or text pair): sentiment, topic, entailment",
    metrics=METRICS,
    default_metric="accuracy",
    roles=ROLES,
    normalize=normalize,
    vocabulary=vocabulary,
    apply_vocabulary=apply_vocabulary,
    stratify=stratify,
    group=group,
    check_train=check_train,
    encode=encode,
    auto_class="AutoModelForSequenceClassification",
    load_model=load_model,
    init_head=reinit_linear_head,
    collator=collator,
    evaluator=evaluator,
)
