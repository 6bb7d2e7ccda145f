"""Study files: load, validate once at the edge, and report every problem together.

A problem reads ``FILE: key.path: what is wrong (expected ..., got ...)``. Nothing here
imports torch, transformers or ray, so ``hpo validate`` stays fast. The keys a retraining spec
has too (task, seed, model, data, objective, training) are validated in :mod:`hpo.config.fields`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo._yaml import YamlError, load_yaml
from hpo.config.fields import (
    DEVICES,
    ConfigError,
    Err,
    EvaluationSpec,
    ObjectiveSpec,
    check_evaluation,
    check_max_length,
    check_objective,
    check_schedule,
    check_task,
    default_metric,
    evaluation_dict,
    load_mapping,
    objective_dict,
    parse_data,
    parse_model_trust,
    parse_section,
    parse_seed,
    parse_task,
    parse_training,
    resolve_model_ref,
)
from hpo.config.objectives import (
    CONSTRAINT_SAMPLERS,
    Constraint,
    check_objectives,
    constraints_dict,
    objective_names,
    parse_constraints,
)
from hpo.config.tracking import TrackingSpec, parse_tracking
from hpo.data import DataSpec
from hpo.samplers import PRUNERS, SAMPLERS
from hpo.space import SearchSpace, parse_space, resolve_space_path

# --------------------------------------------------------------------------- sections


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
    """tpe (multivariate, grouped for the conditional space), random, gp, qmc, nsga2 (NSGA-II,
    for multi-objective studies)."""
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
    compare: str = "value"
    """Whom a trial is compared with at a pruning check: ``value``, every trial of the study;
    ``strategy``, only the trials of its own strategy (so the best few of each strategy reach
    the next rung however slowly the strategy starts). Multi-objective studies and
    ``strategy`` use hpo's view of the study (:mod:`hpo.study_view`)."""
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
    checkpoints: bool = True
    """Checkpoint each trial at its scheduled evaluations, so that a retried trial resumes."""
    checkpoint_dir: str | None = None
    """Where trial checkpoints go (default: the cache's ``checkpoints``; relative: to this
    file's folder); a path every machine reads lets a retry on another machine resume."""
    db_patience: int = 300
    """Seconds a worker waits for an unreachable database at a time: a trial's result not
    written by then fails the trial (written when the database is back); a worker that cannot
    start its next trial by then exits 1."""
    artifacts: str | None = None
    """Folder of the study's artifact store (files optuna-dashboard shows: a retrain's metrics and
    chart, the report's plots); relative to this file; default ``artifacts/`` beside the SQLite file."""


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
    task_options: dict[str, Any] = field(default_factory=dict)
    """The task options the study file sets (``task: {name: ..., option: value}``)."""
    description: str = ""
    """Shown in the dashboard; generated from model, data and space when empty."""
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    constraints: list[Constraint] = field(default_factory=list)
    """Bounds on what a trial records (``trainable_percent: "<= 1.0"``): a trial that breaks
    one is infeasible; the sampler steers away from it and it is never best or on the front."""
    training: dict[str, Any] = field(default_factory=dict)
    """Fixed training arguments (same names as the space's shared parameters) plus eval_batch_size."""
    storage: str | None = None
    """Storage URL from the file (flag and HPO_STORAGE take precedence)."""
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    """Experiment tracking (MLflow, TensorBoard) of the trials; ``--tracking`` replaces it."""
    seed: int = 0
    """Seed for data subsampling, model initialisation, training and the sampler."""
    space_ref: str = "default"
    """The `space:` entry as written."""
    path: str = ""
    """The study file."""
    model_path: str = ""
    """The resolved model reference (a folder for aliases and local paths)."""
    warm_start: Any = None
    """``hpo run --warm-start``: a ``hpo.warmstart.WarmStart`` (not a file key); the run that
    creates or resumes the study enqueues it once."""
    revision: str | None = None
    """The model's hub revision (commit hash, branch or tag); None: the default branch."""
    trust_remote_code: bool = False
    """Run Python code from the model's repository (needs ``revision`` pinned to a commit)."""

    @property
    def direction(self) -> str:
        """maximize or minimize: ``objective.direction``, else the metric's natural one."""
        return self.objective.resolved_direction(self.task)

    @property
    def objectives(self) -> list[str]:
        """Every objective's name, the primary metric first (one name: single-objective)."""
        return objective_names(self.objective)

    @property
    def directions(self) -> list[str]:
        """One direction per objective, the primary metric's first."""
        if self.objective.metrics and self.objective.directions:
            return list(self.objective.directions)
        return [self.direction]

    def summary(self) -> str:
        """One line for the dashboard and `hpo studies`."""
        if self.description:
            return self.description
        from hpo.data import describe_source

        return (
            f"{self.task}: {self.model} on {describe_source(self.data)}; space {self.space_ref} "
            f"({', '.join(self.space.strategies)}); "
            + ", ".join(f"{d} {m}" for m, d in zip(self.objectives, self.directions, strict=True))
        )


TOP_KEYS = {f.name for f in dataclasses.fields(StudySpec)} - {"space_ref", "path", "model_path", "warm_start"}


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


def parse_study(raw: dict[str, Any], path: Path, *, read_data: bool = False) -> StudySpec:
    """Validate a study mapping read from ``path`` (``read_data``: see :func:`load_study`)."""
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
    task, task_options = parse_task(raw, err)
    description = raw.get("description", "")
    if not isinstance(description, str):
        err(f"description: expected a string, got {description!r}")
        description = ""
    seed = parse_seed(raw, err)
    revision, trust_remote_code = parse_model_trust(raw, err)
    storage = raw.get("storage")
    if storage is not None and not isinstance(storage, str):
        err(f"storage: expected a URL string, got {storage!r}")
        storage = None

    model_path, model_config = resolve_model_ref([("model", model)], base_dir, err) if model else ("", None)
    data = parse_data(raw.get("data"), base_dir, seed, err, read=read_data, task=task)

    objective = parse_section(ObjectiveSpec, raw.get("objective"), "objective", err)
    if not isinstance(raw.get("objective"), dict) or "metric" not in raw["objective"]:
        objective.metric = default_metric(task)
    budget = parse_section(BudgetSpec, raw.get("budget"), "budget", err)
    sampler = parse_section(SamplerSpec, raw.get("sampler"), "sampler", err)
    pruner = parse_section(PrunerSpec, raw.get("pruner"), "pruner", err)
    execution = parse_section(ExecutionSpec, raw.get("execution"), "execution", err)
    evaluation = parse_section(EvaluationSpec, raw.get("evaluation"), "evaluation", err)
    from hpo.tasks import TASKS

    known_task = TASKS.get(task)
    task_metrics = known_task.metric_names if known_task else ()
    natural = {m: known_task.direction(m) for m in task_metrics} if known_task else {}
    check_objectives(objective, raw.get("objective"), task_metrics, natural, err)
    if objective.metrics is None or objective.metric == objective.metrics[0]:
        check_objective(objective, task, err, multi=True)
    constraints = parse_constraints(raw.get("constraints"), task_metrics, err)
    if constraints and sampler.name not in CONSTRAINT_SAMPLERS:
        err(
            f"constraints: sampler {sampler.name!r} cannot steer away from infeasible trials "
            f"(use sampler.name {', '.join(CONSTRAINT_SAMPLERS)})"
        )
    check_evaluation(evaluation, objective, err, task)
    check_task(task, task_options, objective.metric, model_config, err, data.max_length)
    _check_budget(budget, err)
    _check_sampler(sampler, err)
    _check_pruner(pruner, err)
    _check_execution(execution, err)
    training = parse_training(raw.get("training"), err, complete=False)
    tracking = parse_tracking(raw.get("tracking"), err, base_dir)

    space_ref = raw.get("space", "default")
    space: SearchSpace | None = None
    if isinstance(space_ref, dict):
        space = parse_space(space_ref, fname, model_config, problems, prefix="space.", task=task)
        space_ref = "inline"
    elif not isinstance(space_ref, str):
        err(f"space: expected a shipped space name, a file path or a mapping, got {space_ref!r}")
    else:
        space = _space_file(space_ref, base_dir, fname, model_config, task, problems)

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
        task_options=task_options,
        description=description,
        objective=objective,
        evaluation=evaluation,
        budget=budget,
        sampler=sampler,
        pruner=pruner,
        execution=execution,
        constraints=constraints,
        training=training,
        storage=storage,
        tracking=tracking,
        seed=seed,
        space_ref=str(space_ref),
        path=fname,
        model_path=model_path,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )


def _check_budget(budget: BudgetSpec, err: Err) -> None:
    if budget.n_trials < 1:
        err(f"budget.n_trials: must be >= 1, got {budget.n_trials}")
    if budget.timeout is not None and budget.timeout <= 0:
        err(f"budget.timeout: must be > 0 seconds, got {budget.timeout}")
    check_schedule(budget, err)


def _check_sampler(sampler: SamplerSpec, err: Err) -> None:
    if sampler.name not in SAMPLERS:
        err(f"sampler.name: unknown sampler {sampler.name!r} (known: {', '.join(SAMPLERS)})")
    if sampler.n_startup_trials is not None and sampler.n_startup_trials < 0:
        err(f"sampler.n_startup_trials: must be >= 0, got {sampler.n_startup_trials}")
    if sampler.skip_repeats is not None and not 0 <= sampler.skip_repeats < 1:
        err(f"sampler.skip_repeats: must be in [0, 1) or null, got {sampler.skip_repeats}")


def _check_pruner(pruner: PrunerSpec, err: Err) -> None:
    """The pruner's name, and only the options that pruner takes, each in its range."""
    if pruner.name not in PRUNERS:
        err(f"pruner.name: unknown pruner {pruner.name!r} (known: {', '.join(PRUNERS)})")
        return
    allowed = PRUNERS[pruner.name].options
    if pruner.compare not in ("value", "strategy"):
        err(f"pruner.compare: expected value or strategy, got {pruner.compare!r}")
    elif pruner.compare == "strategy" and pruner.name in ("none", "patient"):
        err(f"pruner.compare: strategy needs a pruner that compares trials, not {pruner.name!r}")
    for f in dataclasses.fields(PrunerSpec):
        v = getattr(pruner, f.name)
        if f.name not in ("name", "compare") and v is not None:
            if f.name not in allowed:
                err(
                    f"pruner.{f.name}: not an option of pruner {pruner.name!r} (its options: {', '.join(allowed) or 'none'})"
                )
            elif v < (0 if f.name in ("n_startup_trials", "n_warmup_steps") else 1):
                err(f"pruner.{f.name}: must be positive, got {v}")
    if pruner.percentile is not None and not 0 < pruner.percentile < 100:
        err(f"pruner.percentile: must be in (0, 100), got {pruner.percentile}")


def _check_execution(execution: ExecutionSpec, err: Err) -> None:
    if isinstance(execution.workers, str) and execution.workers != "auto":
        err(f"execution.workers: expected a positive integer or 'auto', got {execution.workers!r}")
    elif isinstance(execution.workers, int) and execution.workers < 1:
        err(f"execution.workers: must be >= 1, got {execution.workers}")
    if execution.trials_per_gpu < 1:
        err(f"execution.trials_per_gpu: must be >= 1, got {execution.trials_per_gpu}")
    if execution.min_micro_batch < 1:
        err(f"execution.min_micro_batch: must be >= 1, got {execution.min_micro_batch}")
    if execution.db_patience < 1:
        err(f"execution.db_patience: must be >= 1 (seconds), got {execution.db_patience}")
    if execution.max_retries < 0:
        err(f"execution.max_retries: must be >= 0, got {execution.max_retries}")
    if execution.device not in DEVICES:
        err(f"execution.device: expected auto, cpu or cuda, got {execution.device!r}")


def _space_file(
    ref: str,
    base_dir: Path,
    fname: str,
    model_config: dict[str, Any] | None,
    task: str,
    problems: list[str],
) -> SearchSpace | None:
    """The search space a study's ``space:`` names (shipped name or file); problems appended."""
    space_path = resolve_space_path(ref, base_dir)
    try:
        raw_space = load_yaml(space_path)
    except YamlError as e:
        if space_path.exists():
            problems.append(str(e))
        else:
            known = ", ".join(sorted(p.stem for p in resolve_space_path("x", base_dir).parent.glob("*.yaml")))
            problems.append(f"{fname}: space: {ref!r} not found ({space_path}; shipped: {known})")
        return None
    return parse_space(raw_space, str(space_path), model_config, problems, task=task)


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
    out: dict[str, Any] = {
        "name": spec.name,
        "task": spec.task,
        "model": spec.model,
        "data": spec.data.as_dict(),
        "space": spec.space.to_dict(),
        "objective": objective_dict(spec.objective.metric, spec.direction, spec.objective.select),
        "budget": {"max_epochs": spec.budget.max_epochs, "evals_per_epoch": spec.budget.evals_per_epoch},
        "training": dict(spec.training),
        "seed": spec.seed,
    }
    if evaluation_dict(spec.evaluation):  # only when set, like task options
        out["evaluation"] = evaluation_dict(spec.evaluation)
    if spec.task_options:  # only when set, so studies stored before task options still match
        out["task_options"] = dict(spec.task_options)
    if spec.objective.metrics:  # the same rule: single-objective studies keep their stored form
        out["objective"] = {**out["objective"], "metrics": spec.objectives, "directions": spec.directions}
    if spec.constraints:
        out["constraints"] = constraints_dict(spec.constraints)
    if spec.revision is not None:  # only when set, like task options
        out["revision"] = spec.revision
    if spec.trust_remote_code:
        out["trust_remote_code"] = True
    return out
