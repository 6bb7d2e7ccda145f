"""Retraining specs (``kind: retrain``): the file format, loaded and validated once.

A retraining spec (``kind: retrain``) is self-contained: it names the model (as written and
resolved), the data (local sources as absolute paths, every split setting, the seed and the
fingerprint of the rows the trial saw), the strategy with every parameter, every training
argument, the evaluation budget and seed, and where it came from (study, trial, value, every
validation metric, package versions, storage without password). ``hpo retrain`` trains it
with the same code path as the trial (see :mod:`hpo.retrain`); ``hpo export`` writes it
(:mod:`hpo.export`).

File layout::

    kind: retrain
    task: sequence-classification
    model: {name: minilm, path: /abs/path/to/model}
    data: {source: ..., text: ..., label: ..., train_limit: ..., max_length: ..., seed: ...,
           fingerprint: ...}
    strategy: {name: lora, params: {r: 8, alpha_over_r: 2, dropout: 0.05, target_modules: null}}
    training: {learning_rate: ..., per_device_train_batch_size: ..., ..., eval_batch_size: 64}
    budget: {max_epochs: 1, evals_per_epoch: 4, stop_after_step: 150}   # stop: objective.select best
    objective: {metric: accuracy, direction: maximize, select: best}
    evaluation: {folds: 5}      # the study cross-validated: train on train + validation pooled
    seed: 0
    device: auto
    provenance: {study: ..., trial: ..., value: ..., ...}   # free-form record, not read back

Unknown keys are errors everywhere except under ``provenance``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    evaluation_dict,
    load_mapping,
    looks_local,
    objective_dict,
    parse_data,
    parse_section,
    parse_seed,
    parse_task,
    parse_training,
    resolve_model_ref,
)
from hpo.config.study import BudgetSpec, ExecutionSpec, StudySpec
from hpo.config.tracking import TrackingSpec, parse_tracking, tracking_dict
from hpo.data import DataSpec
from hpo.data.spec import GENERIC_KEYS
from hpo.space import TRAINING_DEFAULTS, Param, SearchSpace, TrialConfig

KIND = "retrain"
TOP_KEYS = (
    "kind",
    "task",
    "model",
    "data",
    "strategy",
    "training",
    "budget",
    "objective",
    "evaluation",
    "seed",
    "device",
    "tracking",
    "provenance",
)


def data_keys(task: str) -> tuple[str, ...]:
    """The keys of a spec's ``data:`` mapping: the generic ones, the task's roles, ``format``,
    and the fingerprint of the rows."""
    from hpo.tasks import get_task

    return (*GENERIC_KEYS, *(r.name for r in get_task(task).roles), "format", "fingerprint")


def task_entry(task: str, options: dict[str, Any]) -> Any:
    """``task:`` as a file writes it: the name, or ``{name, options...}`` when options are set."""
    return {"name": task, **options} if options else task


@dataclass
class RetrainSpec:
    """A validated retraining spec."""

    path: str
    """The file it was read from."""
    task: str
    """Task from the task registry."""
    model: str
    """The model as the study wrote it (alias, path or hub id)."""
    model_path: str
    """What ``from_pretrained`` loads: a local folder or a hub id."""
    data: DataSpec
    """The data, split and subsampled exactly as in the study (unless overridden)."""
    data_fingerprint: str | None
    """Fingerprint of the train and validation rows the trial saw (None: unknown)."""
    strategy: str
    """Fine-tuning strategy name."""
    strategy_params: dict[str, Any]
    """Every parameter of the strategy (defaults filled in)."""
    training: dict[str, Any]
    """Every training argument (TrainingArguments names) plus eval_batch_size and max_train_steps."""
    max_epochs: float
    """Epochs when training.num_train_epochs is null."""
    evals_per_epoch: int
    """Validation evaluations per epoch (the curve in the metrics chart)."""
    stop_after_step: int | None
    """End training after this optimizer step (the trial's selected evaluation); None: train it all."""
    metric: str
    """The study's objective metric."""
    direction: str
    """maximize or minimize."""
    select: str
    """The study's rule for a trial's value (last or best evaluation); informational here."""
    seed: int
    """Training seed (model head initialisation, dropout, data order)."""
    device: str = "auto"
    """auto, cpu or cuda."""
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    """The study's ``evaluation:``; with ``folds`` the retrain trains on the train and
    validation rows pooled (the rows the folds were cut from) and evaluates on test."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """The task's options as the study set them (``task: {name: ..., option: value}``)."""
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    """Experiment tracking of the retrain (``tracking:``; ``--tracking`` replaces it)."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Where the config came from; informational."""
    raw: dict[str, Any] = field(default_factory=dict)
    """The mapping as read (after overrides), for writing the resolved config back."""

    @property
    def study(self) -> str:
        """The source study's name, or the file's stem."""
        return str(self.provenance.get("study") or Path(self.path).stem)

    @property
    def trial(self) -> int | None:
        """The source trial's number, if known."""
        t = self.provenance.get("trial")
        return t if isinstance(t, int) and not isinstance(t, bool) else None

    @property
    def epochs(self) -> float:
        """Epochs this spec trains."""
        return float(self.training.get("num_train_epochs") or self.max_epochs)

    def summary(self) -> str:
        """One line: strategy, parameters, epochs, data and where it came from."""
        params = " ".join(f"{k}={v}" for k, v in self.strategy_params.items() if v is not None)
        origin = f"study {self.study!r}"
        if self.trial is not None:
            origin += f" trial {self.trial}"
        value = self.provenance.get("value")
        if isinstance(value, (int, float)):
            origin += f", {self.metric}={value:.4f}"
        return (
            f"{self.strategy}{' ' + params if params else ''} lr={self.training['learning_rate']:g} "
            f"bs={self.training['per_device_train_batch_size']} epochs={self.epochs:g} seed={self.seed} "
            f"on {self.data.source} (train_limit {self.data.train_limit}); from {origin}"
        )

    def to_dict(
        self, fingerprint: str | None = None, provenance: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The spec as a resolved retraining file (what ``hpo retrain`` writes as config.yaml).

        Args:
            fingerprint: Fingerprint of the data actually used (default: the spec's).
            provenance: Replaces the provenance record (default: the spec's).
        """
        data = self.data.as_dict()
        data["source"] = resolved_source(self.data.source, Path(self.data.base_dir))
        data["fingerprint"] = fingerprint if fingerprint is not None else self.data_fingerprint
        out = {
            "kind": KIND,
            "task": task_entry(self.task, self.task_options),
            "model": {"name": self.model, "path": self.model_path},
            "data": data,
            "strategy": {"name": self.strategy, "params": dict(self.strategy_params)},
            "training": dict(self.training),
            "budget": budget_dict(self.max_epochs, self.evals_per_epoch, self.stop_after_step),
            "objective": objective_dict(self.metric, self.direction, self.select),
            "seed": self.seed,
            "device": self.device,
            "provenance": dict(self.provenance if provenance is None else provenance),
        }
        if self.tracking.enabled:
            out["tracking"] = tracking_dict(self.tracking)
        if evaluation_dict(self.evaluation):
            out["evaluation"] = evaluation_dict(self.evaluation)
        return out

    def trial_config(self) -> TrialConfig:
        """The TrialConfig a search trial would have built."""
        training = {k: self.training[k] for k in TRAINING_DEFAULTS}
        return TrialConfig(self.strategy, dict(self.strategy_params), training)

    def to_study_spec(self) -> StudySpec:
        """A one-strategy StudySpec that ``hpo.objective.prepare`` and ``train_and_evaluate`` take."""
        space = SearchSpace(source=self.path, strategy=Param("fixed", value=self.strategy))
        return StudySpec(
            name=self.study,
            model=self.model,
            data=self.data,
            space=space,
            task=self.task,
            task_options=dict(self.task_options),
            description=f"retrain of {self.summary()}",
            objective=ObjectiveSpec(metric=self.metric, direction=self.direction, select=self.select),
            evaluation=self.evaluation,
            budget=BudgetSpec(n_trials=1, max_epochs=self.max_epochs, evals_per_epoch=self.evals_per_epoch),
            execution=ExecutionSpec(device=self.device),
            tracking=self.tracking,
            training=dict(self.training),
            seed=self.seed,
            space_ref="retrain",
            path=self.path,
            model_path=self.model_path,
        )


@dataclass
class RetrainBudget:
    """The ``budget:`` section of a retraining spec."""

    max_epochs: float = 1.0
    """Epochs when training.num_train_epochs is null."""
    evals_per_epoch: int = 2
    """Validation evaluations per epoch."""
    stop_after_step: int | None = None
    """End training after this optimizer step; the learning-rate schedule is the full run's."""


def budget_dict(max_epochs: Any, evals_per_epoch: Any, stop_after_step: int | None) -> dict[str, Any]:
    """The budget section; stop_after_step only when the retrain stops early."""
    out: dict[str, Any] = {"max_epochs": max_epochs, "evals_per_epoch": evals_per_epoch}
    if stop_after_step is not None:
        out["stop_after_step"] = stop_after_step
    return out


def resolved_source(source: str, base_dir: Path) -> str:
    """A local data source as an absolute path (a spec must not depend on where it is read
    from); builtin and hub sources unchanged."""
    from hpo.data import DataError, resolve_source

    try:
        src = resolve_source(DataSpec(source=source, base_dir=str(base_dir)))
    except DataError:
        # Not found from here: keep the best absolute guess; validation names the problem.
        p = Path(source).expanduser()
        if source.startswith("builtin:") or not looks_local(source):
            return source
        return str(p if p.is_absolute() else (base_dir / p).resolve())
    if src.kind in ("file", "folder") and src.path is not None:
        return str(src.path.resolve())
    return source


# --------------------------------------------------------------------------- loading


def load_retrain_spec(
    path: str | Path, overrides: dict[str, Any] | None = None, *, read_data: bool = False
) -> RetrainSpec:
    """Read and validate a retraining spec; ``overrides`` are ``--set key.path=value`` pairs.

    ``read_data`` also reads the data (test split included) and reports what is wrong with it
    (``hpo validate``).

    Raises:
        ConfigError: every problem, each as ``file: key.path: problem``.
    """
    p = Path(path)
    return parse_retrain(load_mapping(p, overrides, "a mapping (kind: retrain ...)"), p, read_data=read_data)


def parse_retrain(raw: dict[str, Any], path: Path, *, read_data: bool = False) -> RetrainSpec:
    """Validate a retraining mapping read from ``path`` (relative paths resolve against its folder).

    Raises:
        ConfigError: every problem at once.
    """
    problems: list[str] = []
    fname = str(path)
    base_dir = path.resolve().parent

    def err(msg: str) -> None:
        problems.append(f"{fname}: {msg}")

    if raw.get("kind") != KIND:
        err(f"kind: expected {KIND!r} (a retraining spec from `hpo export`), got {raw.get('kind')!r}")
    for key in raw:
        if key not in TOP_KEYS:
            err(f"{key}: unknown key (known: {', '.join(TOP_KEYS)})")
    for key in ("model", "data", "strategy"):
        if key not in raw:
            err(f"{key}: missing")

    task, task_options = parse_task(raw, err)
    seed = parse_seed(raw, err)
    device = raw.get("device", "auto")
    if device not in DEVICES:
        err(f"device: expected one of {', '.join(DEVICES)}, got {device!r}")
        device = "auto"
    provenance = raw.get("provenance") or {}
    if not isinstance(provenance, dict):
        err(f"provenance: expected a mapping, got {type(provenance).__name__}")
        provenance = {}

    model, model_path, model_config = _parse_model(raw.get("model"), base_dir, err)

    # data: DataSpec keys + fingerprint
    raw_data = raw.get("data")
    data = parse_data(raw_data, base_dir, seed, err, extra_keys=("fingerprint",), read=read_data, task=task)
    fingerprint: str | None = None
    if isinstance(raw_data, dict):
        value = raw_data.get("fingerprint")
        if value is not None and not isinstance(value, str):
            err(f"data.fingerprint: expected a string, got {value!r}")
        else:
            fingerprint = value

    strategy, strategy_params = _parse_strategy(raw.get("strategy"), model_config, task, err)
    if strategy:
        from hpo.strategies import STRATEGIES

        extra = STRATEGIES[strategy].extra_positions(strategy_params)
        check_max_length(data.max_length, model_config, {strategy: extra}, err)

    training = parse_training(raw.get("training"), err, complete=True)

    budget = parse_section(RetrainBudget, raw.get("budget"), "budget", err)
    check_schedule(budget, err)
    if budget.stop_after_step is not None and budget.stop_after_step < 1:
        err(f"budget.stop_after_step: must be a positive step number, got {budget.stop_after_step}")
    objective = parse_section(ObjectiveSpec, raw.get("objective"), "objective", err)
    check_objective(objective, task, err)
    evaluation = parse_section(EvaluationSpec, raw.get("evaluation"), "evaluation", err)
    check_evaluation(evaluation, objective, err, task)
    check_task(task, task_options, objective.metric, model_config, err, data.max_length)
    tracking = parse_tracking(raw.get("tracking"), err, base_dir)

    if problems:
        raise ConfigError(problems)
    return RetrainSpec(
        path=fname,
        task=task,
        task_options=task_options,
        model=model,
        model_path=model_path,
        data=data,
        data_fingerprint=fingerprint,
        strategy=strategy,
        strategy_params=strategy_params,
        training=training,
        max_epochs=float(budget.max_epochs),
        evals_per_epoch=int(budget.evals_per_epoch),
        stop_after_step=budget.stop_after_step,
        metric=objective.metric,
        select=objective.select,
        direction=objective.resolved_direction(task),
        seed=seed,
        device=str(device),
        evaluation=evaluation,
        tracking=tracking,
        provenance=provenance,
        raw=raw,
    )


def _parse_model(raw_model: Any, base_dir: Path, err: Err) -> tuple[str, str, dict[str, Any] | None]:
    """``model: {name, path}`` (or just the name): the name as written, what loads, its config."""
    if isinstance(raw_model, str):
        raw_model = {"name": raw_model}
    if not isinstance(raw_model, dict):
        if raw_model is not None:
            err(f"model: expected a mapping with name and path, got {type(raw_model).__name__}")
        return "", "", None
    for key in raw_model:
        if key not in ("name", "path"):
            err(f"model.{key}: unknown key (known: name, path)")
    name, where = raw_model.get("name"), raw_model.get("path")
    for key, v in (("name", name), ("path", where)):
        if v is not None and (not isinstance(v, str) or not v.strip()):
            err(f"model.{key}: expected a non-empty string, got {v!r}")
    if not isinstance(name, str) or not name.strip():
        if name is None:
            err("model.name: missing (the model as the study wrote it: alias, path or hub id)")
        return "", "", None
    refs = [
        (key, v)
        for key, v in (("model.path", where), ("model.name", name))
        if isinstance(v, str) and v.strip()
    ]
    model_path, model_config = resolve_model_ref(refs, base_dir, err, shown=where or name)
    return name, model_path, model_config


def _parse_strategy(
    raw_strategy: Any, model_config: dict[str, Any] | None, task: str, err: Err
) -> tuple[str, dict[str, Any]]:
    """``strategy: {name, params}``: the name and every parameter (defaults filled in)."""
    from hpo.strategies import STRATEGIES

    if not isinstance(raw_strategy, dict):
        if raw_strategy is not None:
            err(f"strategy: expected a mapping with name and params, got {type(raw_strategy).__name__}")
        return "", {}
    for key in raw_strategy:
        if key not in ("name", "params"):
            err(f"strategy.{key}: unknown key (known: name, params)")
    sname = raw_strategy.get("name")
    params = raw_strategy.get("params") or {}
    if sname not in STRATEGIES:
        err(f"strategy.name: unknown strategy {sname!r} (known: {', '.join(sorted(STRATEGIES))})")
        return "", {}
    if not isinstance(params, dict):
        err(f"strategy.params: expected a mapping, got {type(params).__name__}")
        return "", {}
    st = STRATEGIES[sname]
    strategy_params = dict(st.params)
    for key, value in params.items():
        if key not in st.params:
            known = ", ".join(st.params) or "none"
            err(f"strategy.params.{key}: unknown parameter for strategy {sname!r} (its parameters: {known})")
        else:
            strategy_params[key] = value
    for msg in st.check(model_config, strategy_params, task=task):
        err(f"strategy.params: {msg}")
    return sname, strategy_params
