"""Sequence classification: binary or multi-class, label names kept on the model config."""

from __future__ import annotations

from typing import Any

from hpo.tasks.base import Evaluator, Metric, Role, Task
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
    Role("label", "label", description="the class: integers or strings; names are kept"),
)


def load_model(path: str, label_names: list[str]) -> Any:
    """Load the base weights with a fresh classification head of ``len(label_names)`` outputs."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
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
    auto_class="AutoModelForSequenceClassification",
    load_model=load_model,
    init_head=reinit_linear_head,
    collator=collator,
    evaluator=evaluator,
)
