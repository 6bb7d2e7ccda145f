"""What study files and retraining specs share: typed sections, overrides, and the validators
of the keys both formats have (task, seed, model, data, objective, schedule, training).

Every validator reports through ``err`` (one ``key.path: problem`` line each) and goes on, so a
file's problems are reported together. Nothing here imports torch, transformers or ray.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo._yaml import YamlError, load_yaml
from hpo.data import DataSpec, check_spec, read_problems
from hpo.data.spec import GENERIC_KEYS
from hpo.errors import UserError
from hpo.models import position_limit, read_model_config, resolve_model
from hpo.space import TRAINING_DEFAULTS, check_values, parse_param

Err = Callable[[str], None]
"""Receives one problem, ``key.path: what is wrong``; the caller prefixes the file."""


class ConfigError(UserError):
    """One or more problems in a study, space or retraining file."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


DEVICES = ("auto", "cpu", "cuda")
"""Where training runs: auto (CUDA when visible, else CPU), cpu or cuda."""
SELECT = ("last", "best")
"""Which evaluation of a trial is its value."""
EXTRA_TRAINING_KEYS: dict[str, int | None] = {"eval_batch_size": 64, "max_train_steps": None}
"""Training keys beside the TrainingArguments ones, with their defaults."""
TRAINING_KEYS = (*TRAINING_DEFAULTS, *EXTRA_TRAINING_KEYS)
"""Every key a ``training:`` mapping may hold, in the order errors list them."""


@dataclass
class ObjectiveSpec:
    """What the search optimizes."""

    metric: str = "accuracy"
    """Validation metric of the task (accuracy, precision, recall, f1, loss; ROUGE for seq2seq);
    a study file that names none takes its task's default metric."""
    direction: str | None = None
    """maximize or minimize; default follows the metric (loss: minimize, else maximize)."""
    select: str = "last"
    """Which evaluation of a trial is its value: last (the end of training) or best (the best
    evaluation on the schedule: early stopping; an exported retrain stops at that step)."""
    metrics: list[str] | None = None
    """Study files only: several objectives, a task metric first (the primary: pruning and
    ``select`` use it), then one or two costs (:data:`hpo.config.objectives.COSTS`)."""
    directions: list[str] | None = None
    """One per ``metrics`` entry; default each one's natural direction."""

    def resolved_direction(self, task: str) -> str:
        """``direction``, else the one the task gives the metric (a loss: minimize)."""
        from hpo.tasks import TASKS

        known = TASKS.get(task)
        if self.direction:
            return self.direction
        return known.direction(self.metric) if known and self.metric in known.metric_names else "maximize"


@dataclass
class EvaluationSpec:
    """How a trial's value is measured."""

    folds: int | None = None
    """K-fold cross-validation: each trial trains K models on K folds of the pooled train and
    validation rows (stratified and grouped the task's way) and its value is the mean over the
    folds. None: the single validation split."""


def check_evaluation(evaluation: EvaluationSpec, objective: ObjectiveSpec, err: Err, task: str = "") -> None:
    """``evaluation.folds``: an integer >= 2; not with ``objective.select: best`` (each fold would
    stop at its own step, and a retrain on the pooled rows has none to stop at); not for a task
    whose rows encode to several features (QA windows: folds select tokenized rows)."""
    from hpo.tasks import TASKS

    k = evaluation.folds
    if k is None:
        return
    if task in TASKS and TASKS[task].row_features:
        err(
            f"evaluation.folds: not supported for task {task} (a row is cut into several windows); use a validation split"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        err(f"evaluation.folds: expected an integer >= 2 (or null for the validation split), got {k!r}")
    elif objective.select == "best":
        err("evaluation.folds: cannot be combined with objective.select: best (use select: last)")


def evaluation_dict(evaluation: EvaluationSpec) -> dict[str, Any] | None:
    """The stored/exported evaluation section; None for the single validation split, so studies
    and specs written before the key existed still match."""
    return {"folds": evaluation.folds} if evaluation.folds else None


# --------------------------------------------------------------------------- typed sections


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (inner,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is Any:
        return True
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(hint, str(hint))


def parse_section(cls: type, raw: Any, path: str, err: Err) -> Any:
    """Build dataclass ``cls`` from a mapping, naming unknown keys and wrong types.

    Args:
        cls: A dataclass whose every field has a default (a key left out keeps it).
        raw: The mapping as read; None is an empty one.
        path: The section's key path (``budget``), the prefix of every problem.
        err: Receives the problems; a key with a problem keeps its default.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        err(f"{path}: expected a mapping, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in names:
            err(f"{path}.{key}: unknown key (known: {', '.join(sorted(names))})")
            continue
        if not _type_ok(value, hints[key]):
            err(f"{path}.{key}: expected {_type_name(hints[key])}, got {value!r}")
            continue
        kwargs[key] = value
    return cls(**kwargs)


def load_mapping(path: Path, overrides: dict[str, Any] | None, expected: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping, with ``--set`` overrides applied.

    Raises:
        ConfigError: unreadable or invalid YAML, or not a mapping.
    """
    try:
        raw = load_yaml(path)
    except YamlError as e:
        raise ConfigError([str(e)]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected {expected}, got {type(raw).__name__}"])
    for key, value in (overrides or {}).items():
        apply_override(raw, key, value)
    return raw


def apply_override(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested mapping, creating mappings on the way."""
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


# --------------------------------------------------------------------------- keys both formats have


def parse_task(raw: dict[str, Any], err: Err) -> tuple[str, dict[str, Any]]:
    """``task:``: a name from the task registry (default sequence-classification), or a mapping
    ``{name: ..., option: value}`` with the task's options (``Task.options``).

    Returns:
        (task name, the options the file sets).
    """
    from hpo.tasks import TASKS

    value = raw.get("task", "sequence-classification")
    options: dict[str, Any] = {}
    if isinstance(value, dict):
        options = {k: v for k, v in value.items() if k != "name"}
        value = value.get("name")
        if value is None:
            err("task.name: missing (the task, e.g. sequence-classification)")
            return "sequence-classification", {}
    if not isinstance(value, str) or value not in TASKS:
        err(f"task: unknown task {value!r} (known: {', '.join(sorted(TASKS))})")
        return "sequence-classification", {}
    known = TASKS[value].options
    good: dict[str, Any] = {}
    for key, option in options.items():
        if key not in known:
            err(f"task.{key}: unknown option for task {value} (its options: {', '.join(known) or 'none'})")
        elif known[key] is not None and not _type_ok(option, type(known[key])):
            err(f"task.{key}: expected {_type_name(type(known[key]))}, got {option!r}")
        else:
            good[key] = option
    return value, good


def parse_model_trust(raw: dict[str, Any], err: Err) -> tuple[str | None, bool]:
    """``revision`` and ``trust_remote_code``: a model repository's own Python code runs only
    when the file says so and pins the code it trusts (a full 40-character commit hash: a
    branch or tag can move to code nobody reviewed).
    """
    revision = raw.get("revision")
    trust = raw.get("trust_remote_code", False)
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        err(f"revision: expected a commit hash, branch or tag, got {revision!r}")
        revision = None
    if not isinstance(trust, bool):
        err(f"trust_remote_code: expected true or false, got {trust!r}")
        trust = False
    if trust and not (isinstance(revision, str) and re.fullmatch(r"[0-9a-f]{40}", revision)):
        got = f"revision {revision!r}" if revision else "no revision"
        err(
            "trust_remote_code: true runs Python code from the model's repository; it needs "
            f"revision: pinned to a full 40-character commit hash (got {got})"
        )
        trust = False
    return revision, trust


def parse_seed(raw: dict[str, Any], err: Err) -> int:
    """``seed:``, a non-negative integer (default 0)."""
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        err(f"seed: expected a non-negative integer, got {seed!r}")
        return 0
    return seed


def looks_local(ref: str) -> bool:
    """A model or data reference that can only be meant as a path on disk (not an alias, a
    builtin or a hub id)."""
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1


def resolve_model_ref(
    refs: list[tuple[str, str]], base_dir: Path, err: Err, *, shown: str | None = None
) -> tuple[str, dict[str, Any] | None]:
    """Resolve a model reference and read its config.json (strategy and length checks need it).

    Args:
        refs: (key path, reference as written) pairs, tried in order until one has a config.json
            on disk; the last is the model as the file names it. A study file gives
            ``[("model", "minilm")]``; a retraining spec ``[("model.path", "/abs/folder"),
            ("model.name", "minilm")]`` (the resolved path wins while it is still there).
        base_dir: The file's folder; relative paths resolve against it.
        err: Receives an alias whose package is missing, or a local-looking model that is not
            on disk (``model: local model folder ... not found or has no config.json``).
        shown: The folder that problem names; default the first reference, resolved.

    Returns:
        What ``from_pretrained`` loads (a folder, or a hub id as written; "" after a problem)
        and the config, None when it is not on disk (hub id, offline).
    """
    resolved = ""
    for key, ref in refs:
        try:
            resolved = resolve_model(ref, base_dir)
        except ValueError as e:
            err(f"{key}: {e}")
            return "", None
        config = read_model_config(resolved)
        if config is not None:
            return resolved, config
    if looks_local(refs[-1][1]):
        folder = shown if shown is not None else resolve_model(refs[0][1], base_dir)
        err(f"model: local model folder {folder!r} not found or has no config.json")
        return "", None
    return resolved, None  # a hub id; from_pretrained fetches it where a network exists


def parse_data(
    raw_data: Any,
    base_dir: Path,
    seed: int,
    err: Err,
    extra_keys: tuple[str, ...] = (),
    read: bool = False,
    task: str = "sequence-classification",
) -> DataSpec:
    """The ``data:`` mapping as a DataSpec; problems go to ``err``.

    Its keys are the generic ones (:data:`hpo.data.spec.GENERIC_KEYS`, ``format``) and one per
    role of ``task`` (``text: sentence``). ``extra_keys`` are skipped here (the caller reads
    them), e.g. ``fingerprint`` in a retraining spec. With ``read``, a spec that passes the
    cheap checks is also loaded (:func:`hpo.data.read_problems`) and what the data itself gets
    wrong is reported as ``data: FILE: problem``."""
    from hpo.tasks import get_task

    roles = {r.name: r for r in get_task(task).roles}
    data = DataSpec(source="", task=task)
    if raw_data is None:
        err("data: missing (expected a mapping with at least 'source')")
        return data
    if not isinstance(raw_data, dict):
        err(f"data: expected a mapping, got {type(raw_data).__name__}")
        return data
    generic = {*GENERIC_KEYS, "format"}
    data_fields = generic | set(roles)
    hints = typing.get_type_hints(DataSpec)
    kwargs: dict[str, Any] = {"base_dir": str(base_dir), "seed": seed, "task": task}
    columns: dict[str, str | None] = {}
    bad_keys: list[str] = []  # the data is read only from a spec whose keys are all valid
    for key, value in raw_data.items():
        if key in extra_keys:
            continue
        if key not in data_fields:
            err(f"data.{key}: unknown key (known: {', '.join(sorted(data_fields | set(extra_keys)))})")
            bad_keys.append(key)
            continue
        hint = hints[key] if key in generic else (str | None if not roles[key].required else str)
        if not _type_ok(value, hint):
            err(f"data.{key}: expected {_type_name(hint)}, got {value!r}")
            bad_keys.append(key)
        elif key in roles:
            columns[key] = value
        else:
            kwargs[key] = value
    kwargs["columns"] = columns
    if "source" not in raw_data:
        err("data.source: missing (a local folder or file, a hub dataset id, or builtin:reviews)")
        return data
    data = DataSpec(**kwargs)
    cheap = check_spec(data)
    for msg in cheap:
        err(msg)
    if read and not cheap and not bad_keys:
        for msg in read_problems(data):
            err(msg if msg.startswith("data.") else f"data: {msg}")
    return data


def check_max_length(
    max_length: Any,
    model_config: dict[str, Any] | None,
    extra_positions: dict[str, int],
    err: Err,
) -> None:
    """``data.max_length`` (plus the virtual tokens a strategy adds) against the model's positions.

    Args:
        max_length: The data spec's max_length (skipped unless an integer).
        model_config: The base model's config.json, or None when it cannot be read (no check).
        extra_positions: Strategy -> the most positions it adds in front of the text.
        err: Receives ``data.max_length: ...`` problems.
    """
    limit = position_limit(model_config)
    if limit is None or isinstance(max_length, bool) or not isinstance(max_length, int):
        return
    n, where = limit
    if max_length > n:
        err(
            f"data.max_length: must be <= {n}, the model's position limit ({where} in its config.json), "
            f"got {max_length}"
        )
        return
    for sname, extra in extra_positions.items():
        if extra and max_length + extra > n:
            err(
                f"data.max_length: {max_length} tokens plus up to {extra} virtual tokens of strategy '{sname}' "
                f"exceed the model's {n} positions ({where}); lower data.max_length to at most {n - extra} "
                "or num_virtual_tokens"
            )


def objective_dict(metric: str, direction: str | None, select: str) -> dict[str, Any]:
    """The stored/exported objective section; ``select`` only when it is not the default
    (last), so studies and specs written before the key existed still match."""
    out: dict[str, Any] = {"metric": metric, "direction": direction}
    if select != "last":
        out["select"] = select
    return out


def default_metric(task: str) -> str:
    """The objective metric of a study file that names none: the task's (``Task.default_metric``)."""
    from hpo.tasks import TASKS

    known = TASKS.get(task)
    return known.default_metric if known is not None else ObjectiveSpec.metric


def check_objective(objective: ObjectiveSpec, task: str, err: Err, *, multi: bool = False) -> None:
    """The metric must be one the task reports; the direction maximize, minimize or unset.
    ``multi``: a study file, where ``objective.metrics`` may name several objectives (checked by
    :func:`hpo.config.objectives.check_objectives` first)."""
    from hpo.tasks import TASKS

    metrics = TASKS[task].metric_names
    if not multi and (objective.metrics is not None or objective.directions is not None):
        err("objective.metrics: a retraining spec names one metric (objective.metric)")
    if objective.metric not in metrics:
        err(
            f"objective.metric: unknown metric {objective.metric!r} for task {task} (known: {', '.join(metrics)})"
        )
    if objective.direction not in (None, "maximize", "minimize"):
        err(f"objective.direction: expected maximize or minimize, got {objective.direction!r}")
    if objective.select not in SELECT:
        err(f"objective.select: expected {' or '.join(SELECT)}, got {objective.select!r}")


def check_task(
    task: str,
    options: dict[str, Any],
    metric: str,
    model_config: dict[str, Any] | None,
    err: Err,
    max_length: Any = None,
) -> None:
    """The task's own checks: its option values (and the objective metric and
    ``data.max_length`` they must fit), and whether it runs on the model
    (``Task.check_options``, ``Task.check_model``)."""
    from hpo.tasks import TASKS

    known = TASKS[task]
    for msg in known.option_problems(options, metric, max_length):
        err(msg)
    for msg in known.check_model(model_config):
        err(f"model: {msg}")


def check_schedule(budget: Any, err: Err) -> None:
    """Epochs and evaluations per epoch of a study's or a retraining spec's budget."""
    if budget.max_epochs <= 0:
        err(f"budget.max_epochs: must be > 0, got {budget.max_epochs}")
    if budget.evals_per_epoch < 1:
        err(f"budget.evals_per_epoch: must be >= 1, got {budget.evals_per_epoch}")


def parse_training(raw: Any, err: Err, *, complete: bool) -> dict[str, Any]:
    """The ``training:`` mapping: fixed training arguments (TrainingArguments names) plus
    eval_batch_size and max_train_steps, each checked like a search-space value.

    Args:
        raw: The mapping as read (None: empty).
        err: Receives the problems; a key with a problem is left out of the result.
        complete: A retraining spec's section: every argument is returned (defaults for the
            ones left out), null is refused except for num_train_epochs (the budget's
            max_epochs). Otherwise (a study file) only the keys given are returned and a
            list or mapping is pointed to the search space.
    """
    out: dict[str, Any] = {**TRAINING_DEFAULTS, **EXTRA_TRAINING_KEYS} if complete else {}
    raw = raw or {}
    if not isinstance(raw, dict):
        err(f"training: expected a mapping, got {type(raw).__name__}")
        raw = {}
    for key, value in raw.items():
        if key not in TRAINING_KEYS:
            err(f"training.{key}: unknown training argument (known: {', '.join(TRAINING_KEYS)})")
            continue
        if key in EXTRA_TRAINING_KEYS:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                err(f"training.{key}: expected a positive integer, got {value!r}")
                continue
        elif isinstance(value, (list, dict)):
            hint = "" if complete else " (ranges belong in the search space)"
            err(f"training.{key}: expected a single value{hint}, got {value!r}")
            continue
        elif complete and value is None and key != "num_train_epochs":
            err(f"training.{key}: expected a value, got null")
            continue
        elif value is not None or not complete:
            local: list[str] = []
            param = parse_param(value, f"training.{key}", local)
            if param is not None:
                check_values(key, param, f"training.{key}", local)
            for m in local:
                err(m)
            if local:
                continue
        out[key] = value
    if complete and out.get("eval_batch_size") is None:
        out["eval_batch_size"] = EXTRA_TRAINING_KEYS["eval_batch_size"]
    return out
