"""Tasks: one module per task, one explicit registry.

A task owns what depends on it: the columns it reads, its label vocabulary, how its text is
encoded, its model class and head, its collator, its metrics and whether each is maximised
(:class:`~hpo.tasks.base.Task`). Adding a task is one module exposing ``TASK``, one line in
:data:`TASKS` and one row in the task x strategy test matrix. Importing this package imports
nothing heavy.
"""

from __future__ import annotations

from hpo.tasks import (
    causal_lm_task,
    question_answering,
    seq2seq,
    sequence_classification,
    token_classification,
)
from hpo.tasks.base import Evaluator, Metric, Role, Task

__all__ = ["TASKS", "Evaluator", "Metric", "Role", "Task", "get_task"]

TASKS: dict[str, Task] = {
    "sequence-classification": sequence_classification.TASK,
    "causal-lm": causal_lm_task.TASK,
    "seq2seq": seq2seq.TASK,
    "token-classification": token_classification.TASK,
    "question-answering": question_answering.TASK,
}


def get_task(name: str) -> Task:
    """The task registered as ``name``.

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(sorted(TASKS))})") from None
