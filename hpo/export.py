"""``hpo export``: write the retraining spec of a study's best (or given) trial.

What a spec holds, and how it is read back and validated: :mod:`hpo.config.retrain`.
``hpo retrain`` trains it with the same code path as the trial (:mod:`hpo.retrain`).
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

from hpo.config import EXTRA_TRAINING_KEYS, KIND, ConfigError, load_retrain_spec, objective_dict
from hpo.config.retrain import budget_dict, data_keys, resolved_source, task_entry
from hpo.errors import UserError
from hpo.space import TRAINING_DEFAULTS


def _study_dir(study: Any) -> Path:
    """Folder of the study file the study was created from (relative sources resolve against it)."""
    sf = study.user_attrs.get("study_file")
    return Path(sf).resolve().parent if sf else Path.cwd()


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
    from hpo.results import directions, is_stopped_early, objective_names, primary_value
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

    task = hpo_config.get("task", "sequence-classification")
    keys = data_keys(task) if task in TASKS else ()
    data = {k: v for k, v in (hpo_config.get("data") or {}).items() if k in keys}
    data["source"] = resolved_source(str(data.get("source", "")), base_dir)
    data["fingerprint"] = study.user_attrs.get("data_fingerprint")

    model = str(hpo_config.get("model", ""))
    try:
        model_path = resolve_model(model, base_dir)
    except ValueError:
        model_path = model
    metric = study.user_attrs.get("metric") or hpo_config.get("objective", {}).get("metric", "accuracy")
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
    direction = directions(study)[0]
    provenance: dict[str, Any] = {
        "study": study.study_name,
        "trial": trial.number,
        "value": primary_value(trial),
        "metric": metric,
        "direction": direction,
        "validation": validation,
    }
    names = objective_names(study)
    if len(names) > 1:  # a multi-objective study: every objective of the chosen point
        provenance["objectives"] = dict(zip(names, trial.values, strict=False))
        for key in ("feasible", "infeasible", "trainable_percent"):
            if key in trial.user_attrs:
                provenance[key] = trial.user_attrs[key]
    for key in (
        "trainable_params",
        "total_params",
        "train_seconds",
        "steps",
        "evaluations",
        "selected_evaluation",
        "folds",
        "fold_values",
        "fold_std",
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
    out = {
        "kind": KIND,
        "task": task_entry(task, hpo_config.get("task_options") or {}),
        "model": {"name": model, "path": model_path},
        "data": data,
        "strategy": {"name": cfg["strategy"], "params": dict(cfg["strategy_params"])},
        "training": training,
        "budget": budget_dict(max_epochs, budget.get("evals_per_epoch", 2), stop_after_step),
        "objective": objective_dict(metric, direction, select),
        "seed": int(trial.user_attrs.get("seed", hpo_config.get("seed", 0))),
        "device": "auto",
        "provenance": provenance,
    }
    if hpo_config.get("evaluation"):  # cross-validated: the retrain trains on the pooled rows
        out["evaluation"] = dict(hpo_config["evaluation"])
    return out


def pick_trial(study: Any, trial_number: int | None, pick: str | None = None) -> Any:
    """The given trial, the one ``pick`` chooses (:mod:`hpo.pick`), or the best fully completed one
    (in a multi-objective study: the front's best on the primary metric).

    Raises:
        UserError: no such trial, the trial is not COMPLETE, nothing is complete yet, a pick
            that does not parse or that no candidate passes.
    """
    import optuna

    from hpo.results import (
        best_of,
        best_trial,
        directions,
        is_feasible,
        is_full_complete,
        objective_names,
        pareto_front,
    )

    trials = study.get_trials(deepcopy=False)
    complete = [t.number for t in trials if is_full_complete(t)]
    shown = ", ".join(map(str, complete[:20])) + (" ..." if len(complete) > 20 else "")
    if pick is not None:
        from hpo.pick import apply_pick, parse_pick

        if trial_number is not None:
            raise UserError("--pick and --trial: give one of them")
        parsed = parse_pick(pick)
        names = objective_names(study)
        if len(names) > 1:
            candidates = pareto_front(study)
        else:
            dirs = directions(study)
            pool = [
                t
                for t in trials
                if is_full_complete(t) and is_feasible(t) and "repeat_of" not in t.user_attrs
            ]
            candidates = []
            while pool:  # best first, like the front
                best = best_of(pool, dirs)
                candidates.append(best)
                pool.remove(best)
        return apply_pick(parsed, candidates, names, study.study_name)
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


def export_trial(
    storage_url: str, name: str, out_path: Path, trial_number: int | None = None, pick: str | None = None
) -> Path:
    """Write the retraining spec of the best (or given) trial of a study.

    Args:
        storage_url: Storage holding the study.
        name: Study name.
        out_path: YAML file to write (folders are created).
        trial_number: A COMPLETE trial's number; default the best fully completed trial.
        pick: A ``--pick`` expression (:mod:`hpo.pick`) choosing a point on the Pareto front.

    Returns:
        The path written.

    Raises:
        UserError: unknown study or trial, a trial that is not COMPLETE, or a spec that does
            not validate on this machine (the file is written all the same, to be fixed by hand).
    """
    from hpo._yaml import dump_yaml
    from hpo.display import values_text
    from hpo.results import is_stopped_early, objective_names
    from hpo.study import load_one

    study = load_one(storage_url, name)
    trial = pick_trial(study, trial_number, pick)
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
        f"({values_text(trial, objective_names(study))}){repeat}"
        + (f"; chosen by --pick {pick!r}" if pick else "")
        + ".\n"
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
