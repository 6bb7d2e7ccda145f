"""Retraining specs: export a trial from a study, and load and validate one.

A retraining spec (``kind: retrain``) is self-contained: it names the model (as written and
resolved), the data (local sources as absolute paths, every split setting, the seed and the
fingerprint of the rows the trial saw), the strategy with every parameter, every training
argument, the evaluation budget and seed, and where it came from (study, trial, value, every
validation metric, package versions, storage without password). ``hpo retrain`` trains it
with the same code path as the trial (see :mod:`hpo.retrain`).

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
    seed: 0
    device: auto
    provenance: {study: ..., trial: ..., value: ..., ...}   # free-form record, not read back

Unknown keys are errors everywhere except under ``provenance``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.config import (
    EXTRA_TRAINING_KEYS,
    BudgetSpec,
    ConfigError,
    ExecutionSpec,
    ObjectiveSpec,
    StudySpec,
    check_max_length,
    check_objective,
    check_schedule,
    default_direction,
    load_mapping,
    objective_dict,
    parse_data,
)
from hpo.data import DataSpec
from hpo.errors import UserError
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
    "seed",
    "device",
    "provenance",
)
DATA_KEYS = tuple(f.name for f in dataclasses.fields(DataSpec) if f.name != "base_dir") + ("fingerprint",)
TRAINING_KEYS = (*TRAINING_DEFAULTS, *EXTRA_TRAINING_KEYS)
DEVICES = ("auto", "cpu", "cuda")


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
        data = {k: v for k, v in dataclasses.asdict(self.data).items() if k != "base_dir"}
        data["source"] = _resolved_source(self.data.source, Path(self.data.base_dir))
        data["fingerprint"] = fingerprint if fingerprint is not None else self.data_fingerprint
        return {
            "kind": KIND,
            "task": self.task,
            "model": {"name": self.model, "path": self.model_path},
            "data": data,
            "strategy": {"name": self.strategy, "params": dict(self.strategy_params)},
            "training": dict(self.training),
            "budget": _budget_dict(self.max_epochs, self.evals_per_epoch, self.stop_after_step),
            "objective": objective_dict(self.metric, self.direction, self.select),
            "seed": self.seed,
            "device": self.device,
            "provenance": dict(self.provenance if provenance is None else provenance),
        }

    def trial_config(self) -> TrialConfig:
        """The TrialConfig a search trial would have built."""
        training = {k: self.training[k] for k in TRAINING_DEFAULTS}
        return TrialConfig(self.strategy, dict(self.strategy_params), training)

    def to_study_spec(self) -> StudySpec:
        """A one-strategy StudySpec that ``hpo.context.prepare`` and ``hpo.training.train_and_evaluate`` take."""
        space = SearchSpace(source=self.path, strategy=Param("fixed", value=self.strategy))
        return StudySpec(
            name=self.study,
            model=self.model,
            data=self.data,
            space=space,
            task=self.task,
            description=f"retrain of {self.summary()}",
            objective=ObjectiveSpec(metric=self.metric, direction=self.direction, select=self.select),
            budget=BudgetSpec(n_trials=1, max_epochs=self.max_epochs, evals_per_epoch=self.evals_per_epoch),
            execution=ExecutionSpec(device=self.device),
            training=dict(self.training),
            seed=self.seed,
            space_ref="retrain",
            path=self.path,
            model_path=self.model_path,
        )


@dataclass
class _RetrainBudget:
    max_epochs: float = 1.0
    """Epochs when training.num_train_epochs is null."""
    evals_per_epoch: int = 2
    """Validation evaluations per epoch."""
    stop_after_step: int | None = None
    """End training after this optimizer step; the learning-rate schedule is the full run's."""


def _budget_dict(max_epochs: Any, evals_per_epoch: Any, stop_after_step: int | None) -> dict[str, Any]:
    """The budget section; stop_after_step only when the retrain stops early."""
    out: dict[str, Any] = {"max_epochs": max_epochs, "evals_per_epoch": evals_per_epoch}
    if stop_after_step is not None:
        out["stop_after_step"] = stop_after_step
    return out


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
    from hpo.config import _section
    from hpo.models import read_model_config, resolve_model
    from hpo.space import _check_values, _parse_param
    from hpo.strategies import STRATEGIES
    from hpo.tasks import TASKS

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

    task = raw.get("task", "sequence-classification")
    if not isinstance(task, str) or task not in TASKS:
        err(f"task: unknown task {task!r} (known: {', '.join(sorted(TASKS))})")
        task = "sequence-classification"

    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        err(f"seed: expected a non-negative integer, got {seed!r}")
        seed = 0
    device = raw.get("device", "auto")
    if device not in DEVICES:
        err(f"device: expected one of {', '.join(DEVICES)}, got {device!r}")
        device = "auto"
    provenance = raw.get("provenance") or {}
    if not isinstance(provenance, dict):
        err(f"provenance: expected a mapping, got {type(provenance).__name__}")
        provenance = {}

    # model: {name, path}; the resolved path wins when it is still there, else the name resolves
    model, model_path = "", ""
    model_config: dict[str, Any] | None = None
    raw_model = raw.get("model")
    if isinstance(raw_model, str):
        raw_model = {"name": raw_model}
    if isinstance(raw_model, dict):
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
        else:
            model = name
            candidates = [c for c in (where, name) if isinstance(c, str) and c.strip()]
            for c in candidates:
                try:
                    resolved = resolve_model(c, base_dir)
                except ValueError as e:
                    err(f"model.{'path' if c == where else 'name'}: {e}")
                    break
                model_config = read_model_config(resolved)
                if model_config is not None:
                    model_path = resolved
                    break
            else:
                looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
                if looks_local:
                    err(f"model: local model folder {where or name!r} not found or has no config.json")
                else:
                    model_path = name  # a hub id; from_pretrained fetches it where a network exists
    elif raw_model is not None:
        err(f"model: expected a mapping with name and path, got {type(raw_model).__name__}")

    # data: DataSpec keys + fingerprint
    raw_data = raw.get("data")
    data = parse_data(raw_data, base_dir, seed, err, extra_keys=("fingerprint",), read=read_data)
    fingerprint: str | None = None
    if isinstance(raw_data, dict):
        value = raw_data.get("fingerprint")
        if value is not None and not isinstance(value, str):
            err(f"data.fingerprint: expected a string, got {value!r}")
        else:
            fingerprint = value

    # strategy: {name, params}
    strategy, strategy_params = "", {}
    raw_strategy = raw.get("strategy")
    if isinstance(raw_strategy, dict):
        for key in raw_strategy:
            if key not in ("name", "params"):
                err(f"strategy.{key}: unknown key (known: name, params)")
        sname = raw_strategy.get("name")
        params = raw_strategy.get("params") or {}
        if sname not in STRATEGIES:
            err(f"strategy.name: unknown strategy {sname!r} (known: {', '.join(sorted(STRATEGIES))})")
        elif not isinstance(params, dict):
            err(f"strategy.params: expected a mapping, got {type(params).__name__}")
        else:
            st = STRATEGIES[sname]
            strategy = sname
            strategy_params = dict(st.params)
            for key, value in params.items():
                if key not in st.params:
                    known = ", ".join(st.params) or "none"
                    err(
                        f"strategy.params.{key}: unknown parameter for strategy {sname!r} (its parameters: {known})"
                    )
                else:
                    strategy_params[key] = value
            for msg in st.check(model_config, strategy_params, task=task):
                err(f"strategy.params: {msg}")
            check_max_length(data.max_length, model_config, {sname: st.extra_positions(strategy_params)}, err)
    elif raw_strategy is not None:
        err(f"strategy: expected a mapping with name and params, got {type(raw_strategy).__name__}")

    # training: every argument, defaults for the ones left out
    training: dict[str, Any] = {**TRAINING_DEFAULTS, **EXTRA_TRAINING_KEYS}
    raw_training = raw.get("training") or {}
    if not isinstance(raw_training, dict):
        err(f"training: expected a mapping, got {type(raw_training).__name__}")
        raw_training = {}
    for key, value in raw_training.items():
        if key not in TRAINING_KEYS:
            err(f"training.{key}: unknown training argument (known: {', '.join(TRAINING_KEYS)})")
            continue
        if key in EXTRA_TRAINING_KEYS:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                err(f"training.{key}: expected a positive integer, got {value!r}")
                continue
        elif isinstance(value, (list, dict)):
            err(f"training.{key}: expected a single value, got {value!r}")
            continue
        elif value is None and key != "num_train_epochs":
            err(f"training.{key}: expected a value, got null")
            continue
        elif value is not None:
            local: list[str] = []
            param = _parse_param(value, f"training.{key}", local)
            if param is not None:
                _check_values(key, param, f"training.{key}", local)
            if local:
                for m in local:
                    err(m)
                continue
        training[key] = value
    if training.get("eval_batch_size") is None:
        training["eval_batch_size"] = EXTRA_TRAINING_KEYS["eval_batch_size"]

    budget = _section(_RetrainBudget, raw.get("budget"), "budget", err)
    check_schedule(budget, err)
    if budget.stop_after_step is not None and budget.stop_after_step < 1:
        err(f"budget.stop_after_step: must be a positive step number, got {budget.stop_after_step}")
    objective = _section(ObjectiveSpec, raw.get("objective"), "objective", err)
    check_objective(objective, task, err)

    if problems:
        raise ConfigError(problems)
    direction = objective.direction or default_direction(task, objective.metric)
    return RetrainSpec(
        path=fname,
        task=task,
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
        direction=direction,
        seed=seed,
        device=str(device),
        provenance=provenance,
        raw=raw,
    )


# --------------------------------------------------------------------------- export


def _study_dir(study: Any) -> Path:
    """Folder of the study file the study was created from (relative sources resolve against it)."""
    sf = study.user_attrs.get("study_file")
    return Path(sf).resolve().parent if sf else Path.cwd()


def _resolved_source(source: str, base_dir: Path) -> str:
    """A local source as an absolute path; builtin and hub sources unchanged."""
    from hpo.data import DataError, resolve_source

    try:
        src = resolve_source(DataSpec(source=source, base_dir=str(base_dir)))
    except DataError:
        # Not found from here: keep the best absolute guess; validation names the problem.
        p = Path(source).expanduser()
        if source.startswith("builtin:") or not (source.startswith((".", "/", "~")) or source.count("/") > 1):
            return source
        return str(p if p.is_absolute() else (base_dir / p).resolve())
    if src.kind in ("file", "folder") and src.path is not None:
        return str(src.path.resolve())
    return source


def trial_training_config(study: Any, trial: Any) -> dict[str, Any]:
    """The trial's TrialConfig as a dict: its ``config`` user attr, else rebuilt from its params."""
    stored = trial.user_attrs.get("config")
    if isinstance(stored, str):
        try:
            cfg = json.loads(stored)
        except ValueError:
            cfg = None
        if isinstance(cfg, dict) and {"strategy", "strategy_params", "training"} <= set(cfg):
            return cfg
    from hpo.space import parse_space

    hpo_config = study.user_attrs.get("hpo_config") or {}
    problems: list[str] = []
    space = parse_space(hpo_config.get("space"), f"study {study.study_name}", None, problems)
    strategy = trial.params.get("strategy", trial.user_attrs.get("strategy"))
    if space is None or strategy is None:
        raise UserError(
            f"trial {trial.number} of study {study.study_name!r} has no stored config and its "
            "parameters cannot be mapped back onto the study's space"
        )
    return space.fixed(str(strategy), trial.params, hpo_config.get("training")).to_dict()


def retrain_dict(study: Any, trial: Any, storage_url: str) -> dict[str, Any]:
    """The retraining spec of one trial, as plain data in file order."""
    from hpo import __version__
    from hpo.models import resolve_model
    from hpo.results import is_stopped_early
    from hpo.storage import redact
    from hpo.tasks import TASKS

    hpo_config = study.user_attrs.get("hpo_config")
    if not isinstance(hpo_config, dict):
        raise UserError(
            f"study {study.study_name!r} was not created by hpo (no hpo_config); nothing to export"
        )
    base_dir = _study_dir(study)
    cfg = trial_training_config(study, trial)
    budget = hpo_config.get("budget") or {}
    max_epochs = budget.get("max_epochs", 1.0)
    study_training = hpo_config.get("training") or {}

    training: dict[str, Any] = {}
    for key, default in TRAINING_DEFAULTS.items():
        training[key] = cfg["training"].get(key, default)
    # null means "the budget's max_epochs": write the number the trial trained for
    if training["num_train_epochs"] is None:
        training["num_train_epochs"] = max_epochs
    for key, default in EXTRA_TRAINING_KEYS.items():
        training[key] = cfg["training"].get(key, study_training.get(key, default))

    data = {k: v for k, v in (hpo_config.get("data") or {}).items() if k in DATA_KEYS}
    data["source"] = _resolved_source(str(data.get("source", "")), base_dir)
    data["fingerprint"] = study.user_attrs.get("data_fingerprint")

    model = str(hpo_config.get("model", ""))
    try:
        model_path = resolve_model(model, base_dir)
    except ValueError:
        model_path = model
    metric = study.user_attrs.get("metric") or hpo_config.get("objective", {}).get("metric", "accuracy")
    task = hpo_config.get("task", "sequence-classification")
    known = TASKS[task].metric_names if task in TASKS else ()
    # val_runtime and friends are Trainer timings, not metrics
    validation = {m: trial.user_attrs[f"val_{m}"] for m in known if f"val_{m}" in trial.user_attrs}
    # objective.select best: the trial's value is an evaluation before the end of training;
    # the retrain stops at that step (same schedule, so the same weights).
    select = (hpo_config.get("objective") or {}).get("select", "last")
    stop_after_step = None
    sel_step, steps = trial.user_attrs.get("selected_step"), trial.user_attrs.get("steps")
    if isinstance(sel_step, int) and isinstance(steps, int) and sel_step < steps:
        stop_after_step = sel_step
    provenance: dict[str, Any] = {
        "study": study.study_name,
        "trial": trial.number,
        "value": trial.value,
        "metric": metric,
        "direction": study.direction.name.lower(),
        "validation": validation,
    }
    for key in (
        "trainable_params",
        "total_params",
        "train_seconds",
        "steps",
        "evaluations",
        "selected_evaluation",
        "device",
        "worker",
    ):
        if key in trial.user_attrs:
            provenance[key] = trial.user_attrs[key]
    if is_stopped_early(trial):
        provenance["stopped_early"] = True
    provenance.update(
        {
            "study_file": study.user_attrs.get("study_file"),
            "storage": redact(storage_url),
            "versions": study.user_attrs.get("versions", {}),
            "exported_by": f"hpo {__version__}",
            "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    return {
        "kind": KIND,
        "task": task,
        "model": {"name": model, "path": model_path},
        "data": data,
        "strategy": {"name": cfg["strategy"], "params": dict(cfg["strategy_params"])},
        "training": training,
        "budget": _budget_dict(max_epochs, budget.get("evals_per_epoch", 2), stop_after_step),
        "objective": objective_dict(metric, study.direction.name.lower(), select),
        "seed": int(trial.user_attrs.get("seed", hpo_config.get("seed", 0))),
        "device": "auto",
        "provenance": provenance,
    }


def pick_trial(study: Any, trial_number: int | None) -> Any:
    """The given trial, or the best fully completed one.

    Raises:
        UserError: no such trial, the trial is not COMPLETE, or nothing is complete yet.
    """
    import optuna

    from hpo.results import best_trial, is_full_complete

    trials = study.get_trials(deepcopy=False)
    complete = [t.number for t in trials if is_full_complete(t)]
    shown = ", ".join(map(str, complete[:20])) + (" ..." if len(complete) > 20 else "")
    if trial_number is None:
        best = best_trial(study)
        if best is None:
            raise UserError(f"study {study.study_name!r} has no complete trial to export yet")
        return best
    found = next((t for t in trials if t.number == trial_number), None)
    if found is None:
        raise UserError(
            f"study {study.study_name!r} has no trial {trial_number} "
            f"(trials 0..{len(trials) - 1}; complete: {shown or 'none'})"
        )
    if found.state != optuna.trial.TrialState.COMPLETE:
        raise UserError(
            f"trial {trial_number} of study {study.study_name!r} is {found.state.name}, not COMPLETE; "
            f"only complete trials can be exported (complete: {shown or 'none'})"
        )
    if "repeat_of" in found.user_attrs:  # not trained: its value is the trial it repeats
        return next(t for t in trials if t.number == found.user_attrs["repeat_of"])
    return found


def export_trial(storage_url: str, name: str, out_path: Path, trial_number: int | None = None) -> Path:
    """Write the retraining spec of the best (or given) trial of a study.

    Args:
        storage_url: Storage holding the study.
        name: Study name.
        out_path: YAML file to write (folders are created).
        trial_number: A COMPLETE trial's number; default the best fully completed trial.

    Returns:
        The path written.

    Raises:
        UserError: unknown study or trial, a trial that is not COMPLETE, or a spec that does
            not validate on this machine (the file is written all the same, to be fixed by hand).
    """
    from hpo._yaml import dump_yaml
    from hpo.results import is_stopped_early
    from hpo.study import load_one

    study = load_one(storage_url, name)
    trial = pick_trial(study, trial_number)
    spec = retrain_dict(study, trial, storage_url)
    repeat = (
        f"; trial {trial_number} repeats it (sampler.skip_repeats) and was not trained"
        if trial_number is not None and trial_number != trial.number
        else ""
    )
    if is_stopped_early(trial):  # only by --trial: the best trial is never a stopped-early one
        repeat += "; stopped early (Ray ASHA): its value comes from a shorter run"
        print(
            f"warning: trial {trial.number} was stopped early (Ray ASHA): its value comes from a shorter run "
            "than the study's budget, so a full retrain is not expected to match it "
            "(provenance.stopped_early: true)",
            file=sys.stderr,
        )
    header = (
        f"# Retraining spec of trial {trial.number} of study {study.study_name!r} "
        f"({spec['provenance']['metric']}={trial.value:.4f}){repeat}.\n"
        f"# Train it: hpo retrain {out_path} [-o DIR] [--set training.num_train_epochs=3 ...]\n"
    )
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(header + dump_yaml(spec), encoding="utf-8")
    except OSError as e:
        raise UserError(f"-o {out_path}: cannot write ({e.strerror})") from None
    try:
        load_retrain_spec(out_path)
    except ConfigError as e:
        raise UserError(
            f"wrote {out_path}, but it does not validate on this machine: " + "; ".join(e.problems)
        ) from None
    return out_path
