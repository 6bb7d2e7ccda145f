"""The :class:`Task` record: everything hpo knows about one kind of fine-tuning task.

Nothing outside ``hpo/tasks/`` assumes labels, classification heads or "higher is better":
the data loader asks the task for its column roles and label vocabulary, the training path
for its model class, head initialisation, collator and evaluation, the study file for its
metrics and their directions, the report for which metrics are fractions. Importing this
module imports nothing heavy; a task's functions import torch and transformers when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Metric:
    """One validation metric a task reports."""

    name: str
    """As written in ``objective.metric`` and stored as the ``val_<name>`` trial attribute."""
    direction: str
    """``maximize`` or ``minimize``: the objective's default direction for this metric."""
    fraction: bool = True
    """A value in [0, 1] (plots put it on a 0..1 axis); loss and perplexity are not."""
    description: str = ""


@dataclass(frozen=True)
class Role:
    """A column a task reads: its name in hpo's frames and its ``data:`` key in a study file."""

    name: str
    """The ``data:`` key (``text``, ``label``) and the column's name in the loaded frames."""
    default: str | None
    """The source column it reads when the study file does not say (None: only if given)."""
    required: bool = True
    """False: used when present (``text_pair``)."""
    target: bool = False
    """What the model learns to predict (a label, tags, answers): an evaluation split needs it."""
    description: str = ""


@dataclass(frozen=True)
class Vocabulary:
    """A task's label set, from the train split: ``names[i]`` is label ``i``, ``keys[i]`` how
    the data writes it (``"1"`` for a class the source calls ``pos``). Empty for tasks that
    predict text or spans."""

    names: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)


@dataclass
class Evaluator:
    """How the Trainer scores one evaluation split for a task.

    ``compute_metrics`` gets the Trainer's ``EvalPrediction``; ``preprocess_logits`` (optional)
    shrinks each batch's logits before the Trainer accumulates them (a causal LM's vocabulary
    logits would not fit). ``model`` is set to the model being trained before each evaluation,
    for tasks that generate text to score it.
    """

    compute_metrics: Callable[[Any], dict[str, float]]
    preprocess_logits: Callable[[Any, Any], Any] | None = None
    model: Any = None


def no_option_problems(options: dict[str, Any], metric: str, max_length: Any = None) -> list[str]:
    """A task whose options need no check beyond their types."""
    return []


def any_model(model_config: dict[str, Any] | None) -> list[str]:
    """A task that runs on any model the Auto class loads (the load itself reports the rest)."""
    return []


def no_trainer_arguments(options: dict[str, Any]) -> dict[str, Any]:
    """A task that trains with hpo's TrainingArguments as they are."""
    return {}


@dataclass(frozen=True)
class Task:
    """One kind of task (sequence classification, NER, QA, ...).

    The functions come in the order data flows: read columns, build the label set, encode,
    load the model, train (collator), evaluate.
    """

    name: str
    """Registry name, as written in study files (``sequence-classification``)."""
    description: str
    """One line for ``hpo validate`` and the README."""
    metrics: tuple[Metric, ...]
    """Validation metrics the task reports; the objective optimises one of them."""
    default_metric: str
    """The objective when a study file names none."""
    roles: tuple[Role, ...]
    """Columns the task reads from the data (``data:`` keys)."""
    normalize: Callable[[pd.DataFrame, dict[str, str], str], pd.DataFrame]
    """(a split as read, role -> source column, how messages name the split) -> a frame whose
    columns are the roles, checked (``DataError`` naming file, column and row)."""
    vocabulary: Callable[[pd.DataFrame, dict[str, str], str, list[str] | None], Vocabulary]
    """(normalized train split, role -> source column, shown, class names the source declares)
    -> the label set (an empty one for tasks without labels)."""
    apply_vocabulary: Callable[[pd.DataFrame, Vocabulary, dict[str, str], str], pd.DataFrame]
    """(normalized split, the train split's vocabulary, role -> source column, shown) -> the
    split with its labels as ids; a label train does not have is a ``DataError``."""
    stratify: Callable[[pd.DataFrame], pd.Series | None]
    """A split -> what carving and subsampling stratify by (None: plain seeded sampling)."""
    group: Callable[[pd.DataFrame], pd.Series | None]
    """A split -> a key whose rows stay on one side of a carve (the same text; one article's
    questions), or None."""
    check_train: Callable[[pd.DataFrame, dict[str, str], str], None]
    """(final train split, role -> source column, shown) -> raise ``DataError`` if it cannot
    train (a single class left after subsampling)."""
    encode: Callable[[pd.DataFrame, Any, int, list[str], dict[str, Any], str], dict[str, list[Any]]]
    """(split, tokenizer, max_length, label names, task options, split name) -> the columns of
    the tokenized dataset: model inputs and :attr:`label_columns`."""
    auto_class: str
    """The transformers Auto class of its models (``AutoModelForSequenceClassification``)."""
    load_model: Callable[..., Any]
    """(model path, label names, **from_pretrained options) -> the pretrained model with this
    task's head; the options (``revision``, ``trust_remote_code``) are passed only when a study
    sets them (:func:`hpo.models.pretrained_options`)."""
    init_head: Callable[[Any, int], None]
    """(fresh copy of the base model, seed) -> re-initialise the task head from the seed, so a
    trial and its retrain start from the same weights whichever trials ran before."""
    collator: Callable[[Any, Any], Any]
    """(tokenizer, model) -> the data collator that pads each batch."""
    evaluator: Callable[[Any, str], Evaluator]
    """(worker context, split name) -> how that split is scored."""
    label_columns: tuple[str, ...] = ("labels",)
    """The dataset columns the model's loss reads (the Trainer's ``label_names``)."""
    prefix_tuning: bool = False
    """Whether PEFT prefix tuning runs for this task (it needs a decoder's key/value cache)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Task options a study file may set under ``task:`` (``{name: ..., option: value}``),
    with their defaults (a value's type is checked against its default's unless that is None)."""
    check_options: Callable[[dict[str, Any], str, Any], list[str]] = no_option_problems
    """(the options, defaults filled in; the objective metric; ``data.max_length``) -> problems
    as one-line ``task.<option>: ...`` strings: values out of range (a QA ``doc_stride`` too
    long for the window), a metric the options turn off."""
    check_model: Callable[[dict[str, Any] | None], list[str]] = any_model
    """(the base model's config.json, None when unknown) -> problems: a model this task cannot
    run on (an encoder for a generative task). Runs at validation time: imports nothing heavy."""
    trainer: tuple[str, str] = ("Trainer", "TrainingArguments")
    """The transformers Trainer and TrainingArguments classes the task trains with, by name
    (``("Seq2SeqTrainer", "Seq2SeqTrainingArguments")``)."""
    trainer_arguments: Callable[[dict[str, Any]], dict[str, Any]] = no_trainer_arguments
    """(the options, defaults filled in) -> extra keyword arguments for the TrainingArguments
    class (``predict_with_generate``, ``generation_max_length``)."""
    samples: Callable[[Any, Any, str], list[dict[str, Any]]] | None = None
    """(worker context, trained model, split name) -> generated examples, each a mapping with
    ``input``, ``reference`` and ``generated`` text, which ``hpo retrain`` writes to
    ``samples.jsonl`` next to ``metrics.json``. None: the task generates no text."""
    row_features: bool = False
    """Encoding may cut one row into several features (QA windows), so tokenized rows cannot be
    selected by row position (cross-validation folds refuse the task)."""
    large_groups: bool = False
    """A :attr:`group` holds many rows (one article's questions): a carve takes the share of
    groups that matches the rows asked for, instead of that many groups."""

    def resolved_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """The task's options: its defaults, with what the study file sets."""
        return {**self.options, **given}

    def option_problems(self, given: dict[str, Any], metric: str, max_length: Any) -> list[str]:
        """What is wrong with the options a study file sets (empty when nothing is)."""
        return self.check_options(self.resolved_options(given), metric, max_length)

    def metric(self, name: str) -> Metric:
        """The metric called ``name``.

        Raises:
            KeyError: the task has no such metric.
        """
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Names of the task's metrics, in the order it reports them."""
        return tuple(m.name for m in self.metrics)

    @property
    def chart_metrics(self) -> tuple[tuple[str, ...], bool]:
        """The metrics a bar chart shows side by side, and whether they share a 0..1 axis.

        The fractions (accuracy, F1, exact match, ROUGE) when the task has any; else every
        metric (a loss and a perplexity), each on its own scale.
        """
        fractions = tuple(m.name for m in self.metrics if m.fraction)
        return (fractions, True) if fractions else (self.metric_names, False)

    def chart_metrics_of(self, recorded: Any) -> tuple[tuple[str, ...], bool]:
        """:attr:`chart_metrics` among the metrics a run ``recorded`` (names): the recorded
        fractions when there are any, else every recorded metric on its own scale (a causal
        LM's loss and perplexity when it computed no ROUGE)."""
        have = set(recorded)
        fractions = tuple(m.name for m in self.metrics if m.fraction and m.name in have)
        if fractions:
            return fractions, True
        return tuple(m for m in self.metric_names if m in have), False

    def direction(self, metric: str) -> str:
        """``maximize`` or ``minimize`` for one of the task's metrics."""
        return self.metric(metric).direction

    def role(self, name: str) -> Role:
        """The role called ``name`` (KeyError if the task has none)."""
        for r in self.roles:
            if r.name == name:
                return r
        raise KeyError(name)

    def columns(self, given: dict[str, str | None]) -> dict[str, str]:
        """Role -> source column: what the study file gives, else each role's default; an
        optional role with neither is left out."""
        out: dict[str, str] = {}
        for r in self.roles:
            column = given.get(r.name, r.default)
            if column is not None:
                out[r.name] = column
        return out


def no_vocabulary(
    frame: pd.DataFrame, columns: dict[str, str], shown: str, names: list[str] | None
) -> Vocabulary:
    """The label set of a task that predicts text or spans: empty."""
    return Vocabulary()


def keep_labels(
    frame: pd.DataFrame, vocabulary: Vocabulary, columns: dict[str, str], shown: str
) -> pd.DataFrame:
    """A task without a label set keeps its splits as they are."""
    return frame


def no_key(frame: pd.DataFrame) -> None:
    """No stratification / grouping: plain seeded sampling."""
    return None


def any_train(frame: pd.DataFrame, columns: dict[str, str], shown: str) -> None:
    """A task whose train split trains whatever it holds (at least one row, checked earlier)."""
