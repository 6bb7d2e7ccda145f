"""Sequence classification: binary or multi-class, label names kept on the model config."""

from __future__ import annotations

from typing import Any

METRICS = ("accuracy", "precision", "recall", "f1", "loss")


def load_model(path: str, num_labels: int, label_names: list[str]) -> Any:
    """Load the base weights with a fresh classification head of ``num_labels`` outputs."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=num_labels,
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )


def collator(tokenizer: Any) -> Any:
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
