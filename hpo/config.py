"""Study files: load, validate once at the edge, and report every problem together.

A problem reads ``FILE: key.path: what is wrong (expected ..., got ...)``. Nothing here
imports torch, transformers or ray, so ``hpo validate`` stays fast.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo._yaml import YamlError, load_yaml
from hpo.data import DataSpec, check_spec, read_problems
from hpo.errors import UserError
from hpo.models import position_limit, read_model_config, resolve_model
from hpo.space import TRAINING_DEFAULTS, SearchSpace, parse_space, resolve_space_path


class ConfigError(UserError):
    """One or more problems in a study, space or retraining file."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# --------------------------------------------------------------------------- sections


@dataclass
class ObjectiveSpec:
    """What the search optimizes."""

    metric: str = "accuracy"
    """Validation metric of the task (accuracy, precision, recall, f1, loss)."""
    direction: str | None = None
    """maximize or minimize; default follows the metric (loss: minimize, else maximize)."""
    select: str = "last"
    """Which evaluation of a trial is its value: last (the end of training) or best (the best
    evaluation on the schedule: early stopping; an exported retrain stops at that step)."""


@dataclass
class BudgetSpec:
    """How much the study may spend."""

    n_trials: int = 20
    """Trials this run adds to the study (a resumed study gets this many more)."""
    timeout: float | None = None
    """Stop starting new trials after this many seconds."""
    max_epochs: float = 1.0
    """Epochs per trial unless the space sets num_train_epochs; also the pruner's max resource."""
    evals_per_epoch: int = 2
    """Validation evaluations (and pruning checks) per epoch."""


@dataclass
class SamplerSpec:
    """Optuna sampler, by name."""

    name: str = "tpe"
    """tpe (multivariate, grouped for the conditional space), random, gp, qmc."""
    seed: int | None = None
    """Sampler seed; default the study's seed."""
    n_startup_trials: int | None = None
    """Random trials before the model-based sampler takes over (tpe, gp)."""
    skip_repeats: float | None = 0.01
    """A sampled configuration with the same categorical values as a COMPLETE trial and every
    numeric parameter within this fraction of its range (on its sampling scale, log or linear)
    is not trained: it takes that trial's value (user attribute ``repeat_of``). 0: exact
    repeats only; null: train every sampled configuration. Enqueued trials always train."""


@dataclass
class PrunerSpec:
    """Optuna pruner, by name; options that a pruner does not take are errors."""

    name: str = "hyperband"
    """hyperband, successive-halving, median, percentile, patient, none."""
    min_resource: int | None = None
    """hyperband / successive-halving: evaluations before a trial can be pruned (default 1)."""
    reduction_factor: int | None = None
    """hyperband / successive-halving: keep 1/reduction_factor at each rung (default 3)."""
    n_startup_trials: int | None = None
    """median / percentile: trials that finish before pruning starts (default 2)."""
    n_warmup_steps: int | None = None
    """median / percentile: evaluations of a trial before it can be pruned (default 1)."""
    percentile: float | None = None
    """percentile: prune below this percentile (default 25)."""
    patience: int | None = None
    """patient: evaluations without improvement tolerated (default 2)."""


@dataclass
class ExecutionSpec:
    """Where and how trials run."""

    workers: int | str = 1
    """Worker processes on this machine: a number or 'auto'."""
    gpus: list[int] | None = None
    """GPU indices to use (default: every visible one)."""
    trials_per_gpu: int = 1
    """Trials packed on one GPU at a time (small PEFT trials fit several)."""
    heartbeat_interval: int | None = None
    """Seconds between worker heartbeats (default 10 on server databases, 60 on SQLite)."""
    grace_period: int | None = None
    """Seconds without a heartbeat before a trial is failed (default 3 x interval)."""
    max_retries: int = 1
    """How often a trial whose worker died is retried with the same parameters."""
    device: str = "auto"
    """auto (CUDA when visible, else CPU), cpu or cuda."""
    min_micro_batch: int = 1
    """Out of memory: the micro-batch is halved (accumulation doubled) down to this floor."""


@dataclass
class StudySpec:
    """One study file, validated and resolved."""

    name: str
    """Study name in the storage."""
    model: str
    """Alias (minilm), local path or hub id, as written."""
    data: DataSpec
    """Where the labelled data comes from and how it is split."""
    space: SearchSpace
    """The resolved search space."""
    task: str = "sequence-classification"
    """Task from the task registry."""
    description: str = ""
    """Shown in the dashboard; generated from model, data and space when empty."""
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    training: dict[str, Any] = field(default_factory=dict)
    """Fixed training arguments (same names as the space's shared parameters) plus eval_batch_size."""
    storage: str | None = None
    """Storage URL from the file (flag and HPO_STORAGE take precedence)."""
    seed: int = 0
    """Seed for data subsampling, model initialisation, training and the sampler."""
    space_ref: str = "default"
    """The `space:` entry as written."""
    path: str = ""
    """The study file."""
    model_path: str = ""
    """The resolved model reference (a folder for aliases and local paths)."""

    @property
    def direction(self) -> str:
        return self.objective.direction or default_direction(self.task, self.objective.metric)

    def summary(self) -> str:
        """One line for the dashboard and `hpo studies`."""
        if self.description:
            return self.description
        from hpo.data import describe_source

        return (
            f"{self.task}: {self.model} on {describe_source(self.data)}; space {self.space_ref} "
            f"({', '.join(self.space.strategies)}); {self.direction} {self.objective.metric}"
        )


SAMPLERS = ("tpe", "random", "gp", "qmc")
PRUNER_OPTIONS: dict[str, tuple[str, ...]] = {
    "hyperband": ("min_resource", "reduction_factor"),
    "successive-halving": ("min_resource", "reduction_factor"),
    "median": ("n_startup_trials", "n_warmup_steps"),
    "percentile": ("percentile", "n_startup_trials", "n_warmup_steps"),
    "patient": ("patience",),
    "none": (),
}
EXTRA_TRAINING_KEYS: dict[str, int | None] = {"eval_batch_size": 64, "max_train_steps": None}
TOP_KEYS = {f.name for f in dataclasses.fields(StudySpec)} - {"space_ref", "path", "model_path"}


# --------------------------------------------------------------------------- generic section parsing


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


def _section(cls: type, raw: Any, path: str, err: typing.Callable[[str], None]) -> Any:
    """Build dataclass ``cls`` from a mapping, naming unknown keys and wrong types."""
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


def parse_data(
    raw_data: Any,
    base_dir: Path,
    seed: int,
    err: typing.Callable[[str], None],
    extra_keys: tuple[str, ...] = (),
    read: bool = False,
) -> DataSpec:
    """The ``data:`` mapping as a DataSpec; problems go to ``err``. ``extra_keys`` are skipped
    here (the caller reads them), e.g. ``fingerprint`` in a retraining spec. With ``read``, a
    spec that passes the cheap checks is also loaded (:func:`hpo.data.read_problems`) and what
    the data itself gets wrong is reported as ``data: FILE: problem``."""
    data = DataSpec(source="")
    if raw_data is None:
        err("data: missing (expected a mapping with at least 'source')")
        return data
    if not isinstance(raw_data, dict):
        err(f"data: expected a mapping, got {type(raw_data).__name__}")
        return data
    data_fields = {f.name for f in dataclasses.fields(DataSpec)} - {"base_dir"}
    hints = typing.get_type_hints(DataSpec)
    kwargs: dict[str, Any] = {"base_dir": str(base_dir), "seed": seed}
    bad_keys: list[str] = []  # the data is read only from a spec whose keys are all valid
    for key, value in raw_data.items():
        if key in extra_keys:
            continue
        if key not in data_fields:
            err(f"data.{key}: unknown key (known: {', '.join(sorted(data_fields | set(extra_keys)))})")
            bad_keys.append(key)
        elif not _type_ok(value, hints[key]):
            err(f"data.{key}: expected {_type_name(hints[key])}, got {value!r}")
            bad_keys.append(key)
        else:
            kwargs[key] = value
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
    err: typing.Callable[[str], None],
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


def space_extra_positions(space: SearchSpace) -> dict[str, int]:
    """Strategy -> the most input positions it adds over every value the space can produce."""
    import itertools

    from hpo.strategies import STRATEGIES

    out: dict[str, int] = {}
    for sname in space.strategies:
        st = STRATEGIES[sname]
        own = {k: p for k, p in space.per_strategy.get(sname, {}).items() if k in st.params}
        names = list(own)
        most = 0
        # the same cap as the strategy checks in parse_space, so a wide space stays fast
        for combo in itertools.islice(itertools.product(*[own[k].candidates() for k in names]), 512):
            values = {**st.params, **dict(zip(names, combo, strict=True))}
            most = max(most, st.extra_positions(values))
        out[sname] = most
    return out


SELECT = ("last", "best")


def objective_dict(metric: str, direction: str | None, select: str) -> dict[str, Any]:
    """The stored/exported objective section; ``select`` only when it is not the default
    (last), so studies and specs written before the key existed still match."""
    out: dict[str, Any] = {"metric": metric, "direction": direction}
    if select != "last":
        out["select"] = select
    return out


def default_direction(task: str, metric: str) -> str:
    """The direction a task gives its metric (``minimize`` for a loss); ``maximize`` if unknown."""
    from hpo.tasks import TASKS

    known = TASKS.get(task)
    return known.direction(metric) if known is not None and metric in known.metric_names else "maximize"


def check_objective(objective: ObjectiveSpec, task: str, err: typing.Callable[[str], None]) -> None:
    """The metric must be one the task reports; the direction maximize, minimize or unset."""
    from hpo.tasks import TASKS

    metrics = TASKS[task].metric_names
    if objective.metric not in metrics:
        err(
            f"objective.metric: unknown metric {objective.metric!r} for task {task} (known: {', '.join(metrics)})"
        )
    if objective.direction not in (None, "maximize", "minimize"):
        err(f"objective.direction: expected maximize or minimize, got {objective.direction!r}")
    if objective.select not in SELECT:
        err(f"objective.select: expected {' or '.join(SELECT)}, got {objective.select!r}")


def check_schedule(budget: Any, err: typing.Callable[[str], None]) -> None:
    """Epochs and evaluations per epoch of a study's or a retraining spec's budget."""
    if budget.max_epochs <= 0:
        err(f"budget.max_epochs: must be > 0, got {budget.max_epochs}")
    if budget.evals_per_epoch < 1:
        err(f"budget.evals_per_epoch: must be >= 1, got {budget.evals_per_epoch}")


# --------------------------------------------------------------------------- study files


def load_study(
    path: str | Path, overrides: dict[str, Any] | None = None, *, read_data: bool = False
) -> StudySpec:
    """Load and validate a study file; ``overrides`` are ``--set key.path=value`` pairs.

    Args:
        path: The study file.
        overrides: ``--set`` pairs applied before validation.
        read_data: Also read the data and report what is wrong with it (``hpo validate``);
            ``hpo run`` leaves it off, since its workers load the data right after.

    Raises:
        ConfigError: with every problem in the file (and its search space) listed.
    """
    p = Path(path)
    return parse_study(load_mapping(p, overrides, "a mapping of study settings"), p, read_data=read_data)


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


def parse_study(raw: dict[str, Any], path: Path, *, read_data: bool = False) -> StudySpec:
    """Validate a study mapping read from ``path`` (``read_data``: see :func:`load_study`)."""
    from hpo.tasks import TASKS

    problems: list[str] = []
    fname = str(path)
    base_dir = path.resolve().parent

    def err(msg: str) -> None:
        problems.append(f"{fname}: {msg}")

    for key in raw:
        if key not in TOP_KEYS:
            err(f"{key}: unknown key (known: {', '.join(sorted(TOP_KEYS))})")

    def required_str(key: str) -> str:
        v = raw.get(key)
        if v is None:
            err(f"{key}: missing (expected a string)")
            return ""
        if not isinstance(v, str) or not v.strip():
            err(f"{key}: expected a non-empty string, got {v!r}")
            return ""
        return v

    name = required_str("name")
    if name and (len(name) > 200 or any(c in name for c in "\n\r\t")):
        err(f"name: expected a single-line name of at most 200 characters, got {name[:40]!r}")
    model = required_str("model")
    task = raw.get("task", "sequence-classification")
    if not isinstance(task, str) or task not in TASKS:
        err(f"task: unknown task {task!r} (known: {', '.join(sorted(TASKS))})")
        task = "sequence-classification"
    description = raw.get("description", "")
    if not isinstance(description, str):
        err(f"description: expected a string, got {description!r}")
        description = ""
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        err(f"seed: expected a non-negative integer, got {seed!r}")
        seed = 0
    storage = raw.get("storage")
    if storage is not None and not isinstance(storage, str):
        err(f"storage: expected a URL string, got {storage!r}")
        storage = None

    # model: resolve and read its config.json if it is on disk (strategy checks need it)
    model_path = ""
    model_config: dict[str, Any] | None = None
    if model:
        try:
            model_path = resolve_model(model, base_dir)
        except ValueError as e:
            err(f"model: {e}")
        else:
            model_config = read_model_config(model_path)
            looks_local = model.startswith((".", "/", "~")) or (model.count("/") > 1)
            if model_config is None and looks_local:
                err(f"model: local model folder {model_path!r} not found or has no config.json")

    data = parse_data(raw.get("data"), base_dir, seed, err, read=read_data)

    objective = _section(ObjectiveSpec, raw.get("objective"), "objective", err)
    budget = _section(BudgetSpec, raw.get("budget"), "budget", err)
    sampler = _section(SamplerSpec, raw.get("sampler"), "sampler", err)
    pruner = _section(PrunerSpec, raw.get("pruner"), "pruner", err)
    execution = _section(ExecutionSpec, raw.get("execution"), "execution", err)

    check_objective(objective, task, err)
    if budget.n_trials < 1:
        err(f"budget.n_trials: must be >= 1, got {budget.n_trials}")
    if budget.timeout is not None and budget.timeout <= 0:
        err(f"budget.timeout: must be > 0 seconds, got {budget.timeout}")
    check_schedule(budget, err)
    if sampler.name not in SAMPLERS:
        err(f"sampler.name: unknown sampler {sampler.name!r} (known: {', '.join(SAMPLERS)})")
    if sampler.n_startup_trials is not None and sampler.n_startup_trials < 0:
        err(f"sampler.n_startup_trials: must be >= 0, got {sampler.n_startup_trials}")
    if sampler.skip_repeats is not None and not 0 <= sampler.skip_repeats < 1:
        err(f"sampler.skip_repeats: must be in [0, 1) or null, got {sampler.skip_repeats}")
    if pruner.name not in PRUNER_OPTIONS:
        err(f"pruner.name: unknown pruner {pruner.name!r} (known: {', '.join(PRUNER_OPTIONS)})")
    else:
        allowed = PRUNER_OPTIONS[pruner.name]
        for f in dataclasses.fields(PrunerSpec):
            v = getattr(pruner, f.name)
            if f.name != "name" and v is not None:
                if f.name not in allowed:
                    err(
                        f"pruner.{f.name}: not an option of pruner {pruner.name!r} (its options: {', '.join(allowed) or 'none'})"
                    )
                elif v < (0 if f.name in ("n_startup_trials", "n_warmup_steps") else 1):
                    err(f"pruner.{f.name}: must be positive, got {v}")
        if pruner.percentile is not None and not 0 < pruner.percentile < 100:
            err(f"pruner.percentile: must be in (0, 100), got {pruner.percentile}")
    if isinstance(execution.workers, str) and execution.workers != "auto":
        err(f"execution.workers: expected a positive integer or 'auto', got {execution.workers!r}")
    elif isinstance(execution.workers, int) and execution.workers < 1:
        err(f"execution.workers: must be >= 1, got {execution.workers}")
    if execution.trials_per_gpu < 1:
        err(f"execution.trials_per_gpu: must be >= 1, got {execution.trials_per_gpu}")
    if execution.min_micro_batch < 1:
        err(f"execution.min_micro_batch: must be >= 1, got {execution.min_micro_batch}")
    if execution.max_retries < 0:
        err(f"execution.max_retries: must be >= 0, got {execution.max_retries}")
    if execution.device not in ("auto", "cpu", "cuda"):
        err(f"execution.device: expected auto, cpu or cuda, got {execution.device!r}")

    training = raw.get("training") or {}
    if not isinstance(training, dict):
        err(f"training: expected a mapping, got {type(training).__name__}")
        training = {}
    else:
        from hpo.space import _check_values, _parse_param

        for key, value in training.items():
            if key in EXTRA_TRAINING_KEYS:
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    err(f"training.{key}: expected a positive integer, got {value!r}")
                continue
            if key not in TRAINING_DEFAULTS:
                known = ", ".join([*TRAINING_DEFAULTS, *EXTRA_TRAINING_KEYS])
                err(f"training.{key}: unknown training argument (known: {known})")
                continue
            if isinstance(value, (list, dict)):
                err(
                    f"training.{key}: expected a single value (ranges belong in the search space), got {value!r}"
                )
                continue
            local: list[str] = []
            param = _parse_param(value, f"training.{key}", local)
            if param is not None:
                _check_values(key, param, f"training.{key}", local)
            for m in local:
                err(m)

    # search space
    space_ref = raw.get("space", "default")
    space: SearchSpace | None = None
    if isinstance(space_ref, dict):
        space = parse_space(space_ref, fname, model_config, problems, prefix="space.", task=task)
        space_ref = "inline"
    elif not isinstance(space_ref, str):
        err(f"space: expected a shipped space name, a file path or a mapping, got {space_ref!r}")
    else:
        space_path = resolve_space_path(space_ref, base_dir)
        try:
            raw_space = load_yaml(space_path)
        except YamlError as e:
            known = ", ".join(sorted(p.stem for p in resolve_space_path("x", base_dir).parent.glob("*.yaml")))
            msg = (
                str(e)
                if space_path.exists()
                else f"space: {space_ref!r} not found ({space_path}; shipped: {known})"
            )
            problems.append(msg if space_path.exists() else f"{fname}: {msg}")
        else:
            space = parse_space(raw_space, str(space_path), model_config, problems, task=task)

    if space is not None and data.source:
        check_max_length(data.max_length, model_config, space_extra_positions(space), err)

    if problems:
        raise ConfigError(problems)
    assert space is not None
    return StudySpec(
        name=name,
        model=model,
        data=data,
        space=space,
        task=task,
        description=description,
        objective=objective,
        budget=budget,
        sampler=sampler,
        pruner=pruner,
        execution=execution,
        training=dict(training),
        storage=storage,
        seed=seed,
        space_ref=str(space_ref),
        path=fname,
        model_path=model_path,
    )


def load_space_file(path: str | Path, model_config: dict[str, Any] | None = None) -> SearchSpace:
    """Load a search-space file on its own (``hpo validate search_spaces/x.yaml``)."""
    problems: list[str] = []
    try:
        raw = load_yaml(path)
    except YamlError as e:
        raise ConfigError([str(e)]) from None
    space = parse_space(raw, str(path), model_config, problems)
    if problems or space is None:
        raise ConfigError(problems or [f"{path}: invalid search space"])
    return space


def study_as_dict(spec: StudySpec) -> dict[str, Any]:
    """The resolved study as plain data: stored on the study so later workers can compare."""
    data = dataclasses.asdict(spec.data)
    data.pop("base_dir", None)
    return {
        "name": spec.name,
        "task": spec.task,
        "model": spec.model,
        "data": data,
        "space": spec.space.to_dict(),
        "objective": objective_dict(spec.objective.metric, spec.direction, spec.objective.select),
        "budget": {"max_epochs": spec.budget.max_epochs, "evals_per_epoch": spec.budget.evals_per_epoch},
        "training": dict(spec.training),
        "seed": spec.seed,
    }
