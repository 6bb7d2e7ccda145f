"""Task registry: which model head, collator and metrics a task uses.

Adding a task (token classification, QA, generation) is one module with a ``TASK`` and one
line here. The registry imports nothing heavy; a task's functions import lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpo.tasks import sequence_classification


@dataclass(frozen=True)
class Task:
    """One task kind."""

    name: str
    metrics: tuple[str, ...]
    """Validation metrics the task reports (the objective picks one)."""
    load_model: Callable[[str, int, list[str]], Any]
    """(model path, number of labels, label names) -> a transformers model with the task head."""
    collator: Callable[[Any], Any]
    """tokenizer -> a data collator that pads each batch."""
    compute_metrics: Callable[[Any, Any], dict[str, float]]
    """(logits, labels) as numpy arrays -> metric name -> value."""


TASKS: dict[str, Task] = {
    "sequence-classification": Task(
        name="sequence-classification",
        metrics=sequence_classification.METRICS,
        load_model=sequence_classification.load_model,
        collator=sequence_classification.collator,
        compute_metrics=sequence_classification.compute_metrics,
    ),
}


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(sorted(TASKS))})") from None
