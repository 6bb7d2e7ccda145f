"""The Python API: the functions the ``hpo`` commands call, for notebooks and scripts.

``import hpo`` gives :func:`load_study`, :func:`run`, :func:`results`, :func:`best`,
:func:`export`, :func:`retrain` and :func:`report`. They validate their input as the command
line does and raise its errors (:class:`hpo.ConfigError` with every problem of a study file,
:class:`hpo.UserError` with one line) where the command would exit 1. Importing this module
imports no torch, transformers or ray: each function loads what it needs when called.

    import hpo
    spec = hpo.load_study("studies/quickstart.yaml", {"budget.n_trials": 4})
    hpo.run(spec, storage="sqlite:///studies/hpo.db")
    hpo.results("quickstart", "sqlite:///studies/hpo.db")   # a pandas DataFrame
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpo.config import ConfigError, StudySpec
from hpo.errors import UserError

MAPPING_NAME = "<study mapping>"
"""How problems in a study given as a mapping name their source (relative paths in it resolve
against the current folder)."""


def load_study(
    path_or_mapping: str | Path | Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> StudySpec:
    """Load and validate a study, from a file or from a mapping with the file's keys.

    Args:
        path_or_mapping: A study file (``studies/quickstart.yaml``), or a mapping with the
            same keys (relative data paths in it resolve against the current folder).
        overrides: The keys ``hpo run --set`` takes, e.g. ``{"budget.n_trials": 5}``; applied
            before validation.

    Returns:
        The validated study.

    Raises:
        ConfigError: every problem found, one ``SOURCE: key.path: problem`` line each.
    """
    from hpo.config import apply_override, parse_study
    from hpo.config import load_study as load_file

    if isinstance(path_or_mapping, (str, Path)):
        return load_file(path_or_mapping, dict(overrides or {}))
    if not isinstance(path_or_mapping, Mapping):
        raise ConfigError(
            [f"{MAPPING_NAME}: expected a study file path or a mapping, got {type(path_or_mapping).__name__}"]
        )
    raw = copy.deepcopy(dict(path_or_mapping))
    for key, value in (overrides or {}).items():
        apply_override(raw, key, value)
    return parse_study(raw, Path(MAPPING_NAME))


def _positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"{name}: expected a positive integer, got {value!r}")


def run(
    spec: StudySpec | str | Path | Mapping[str, Any],
    storage: str | None = None,
    n_trials: int | None = None,
    workers: int | str | None = None,
    *,
    timeout: float | None = None,
    backend: str = "optuna",
    gpus: list[int] | None = None,
    trials_per_gpu: int | None = None,
    address: str | None = None,
    warm_start: str | None = None,
    top: int | None = None,
    tracking: Mapping[str, Any] | None = None,
) -> Any:
    """Create or resume the study and optimize: what ``hpo run`` does.

    Options follow the command's precedence: an argument given here, else the environment
    (``HPO_STORAGE``), else the study's own setting, else the default.

    Args:
        spec: A study from :func:`load_study`, or what it takes (a file or a mapping).
        storage: Storage URL (default ``$HPO_STORAGE``, the study's ``storage:``, else
            ``sqlite:///studies/hpo.db``).
        n_trials: Trials to add (default ``budget.n_trials``).
        workers: Local worker processes, a number or ``"auto"`` (default ``execution.workers``).
        timeout: Seconds after which no new trial starts.
        backend: ``optuna`` or ``ray``.
        gpus: GPU indices to use.
        trials_per_gpu: Trials packed on one GPU.
        address: Ray cluster address (``backend="ray"``).
        warm_start: ``NAME[@STORAGE]`` of an earlier study whose best trials run first
            (:mod:`hpo.warmstart`; once per study).
        top: How many of its best trials (default 3).
        tracking: Experiment tracking as the study file's ``tracking:`` takes it
            (``{"mlflow": {"uri": "http://127.0.0.1:5000"}, "tensorboard": "runs/tb"}``); the
            kinds it names replace the file's (``hpo run --tracking``).

    Returns:
        The Optuna study.

    Raises:
        ConfigError: an invalid study.
        UserError: a bad option, an unreachable storage, a study created from another file,
            or no trial of this run completed (the reasons of the failed ones are given).
    """
    import dataclasses
    from datetime import datetime

    from hpo.config import apply_tracking
    from hpo.display import print_summary
    from hpo.drivers import get_driver
    from hpo.options import resolve_options
    from hpo.results import run_failure
    from hpo.storage import backend_name, redact

    loaded: StudySpec = spec if isinstance(spec, StudySpec) else load_study(spec)
    loaded = apply_tracking(loaded, None if tracking is None else dict(tracking))
    _positive("n_trials", n_trials)
    _positive("trials_per_gpu", trials_per_gpu)
    if workers is not None and workers != "auto":
        _positive("workers", workers)
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise UserError(f"timeout: must be > 0 seconds, got {timeout!r}")
    if gpus is not None and (
        not gpus or any(isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in gpus)
    ):
        raise UserError(f"gpus: expected a non-empty list of GPU indices >= 0, got {gpus!r}")
    flags = {
        "storage": storage,
        "n_trials": n_trials,
        "workers": workers,
        "timeout": timeout,
        "gpus": gpus,
        "trials_per_gpu": trials_per_gpu,
    }
    _positive("top", top)
    if warm_start:
        from hpo.warmstart import parse_warm_start

        loaded = dataclasses.replace(loaded, warm_start=parse_warm_start(warm_start, top or 3))
    elif top is not None:
        raise UserError("--top: only with --warm-start")
    opts = resolve_options(flags, loaded)  # argument > env > study file > default, every option
    url = opts.storage
    if loaded.warm_start is not None:  # a bad source is refused before anything is created
        from hpo.warmstart import source_trials

        source_trials(loaded.warm_start, url, loaded.name)
    print(
        f"study {loaded.name!r} in {redact(url)}: {opts.n_trials} trials, space {loaded.space_ref} "
        f"({', '.join(loaded.space.strategies)}), "
        + ", ".join(f"{m} ({d})" for m, d in zip(loaded.objectives, loaded.directions, strict=True))
        + (f"; constraints: {', '.join(c.text for c in loaded.constraints)}" if loaded.constraints else ""),
        flush=True,
    )
    # This run's trials are those started from now on (the study may hold earlier runs'); MySQL
    # stores trial times truncated to the second (measured), so there whole seconds are compared.
    started = datetime.now()
    if backend_name(url) == "mysql":
        started = started.replace(microsecond=0)
    # Ray reads the workers argument only: the file's execution.workers is about local processes.
    if backend == "ray":
        opts = dataclasses.replace(opts, workers=workers or "auto")
    study = get_driver(backend)(loaded, opts, address=address)
    print_summary(study)
    ours = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_start >= started]
    failure = run_failure(ours)
    if failure:
        raise UserError(failure)
    return study


def _storage(storage: str | None) -> str:
    from hpo.options import resolve_storage

    return resolve_storage(storage)


def results(study_name: str, storage: str | None = None) -> Any:
    """The study's trials as a pandas DataFrame, one row per trial.

    Columns: ``number``, ``state`` (COMPLETE, PRUNED, FAIL, RUNNING, WAITING; STOPPED for a
    trial Ray's ASHA stopped early), ``value``, ``strategy``, one column per parameter (a
    parameter of one strategy, such as ``lora.r``, is empty in the other strategies' rows),
    the validation metrics (``val_accuracy``, ...), cost figures (``trainable_params``,
    ``train_seconds``, ``peak_memory_mb``), ``duration_s``, ``worker`` and ``fail_reason``.

    Args:
        study_name: The study.
        storage: Its storage URL (default ``$HPO_STORAGE``, else ``sqlite:///studies/hpo.db``).

    Raises:
        UserError: unknown study or unreachable storage.
    """
    import pandas as pd

    from hpo.results import duration_s, is_stopped_early, primary_value, trial_strategy
    from hpo.study import load_one

    study = load_one(_storage(storage), study_name)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    params = list(dict.fromkeys(k for t in trials for k in t.params if k != "strategy"))
    metrics = list(dict.fromkeys(k for t in trials for k in t.user_attrs if k.startswith("val_")))
    figures = ("trainable_params", "total_params", "train_seconds", "peak_memory_mb", "steps")
    rows = []
    for t in trials:
        row: dict[str, Any] = {
            "number": t.number,
            "state": "STOPPED" if is_stopped_early(t) else t.state.name,
            "value": primary_value(t) if t.values else None,  # the primary metric's
            "strategy": trial_strategy(t),
        }
        row.update({k: t.params.get(k) for k in params})
        row.update({k: t.user_attrs.get(k) for k in (*metrics, *figures)})
        row["duration_s"] = duration_s(t)
        row["worker"] = t.user_attrs.get("worker")
        row["fail_reason"] = t.user_attrs.get("fail_reason")
        rows.append(row)
    columns = [
        "number",
        "state",
        "value",
        "strategy",
        *params,
        *metrics,
        *figures,
        "duration_s",
        "worker",
        "fail_reason",
    ]
    return pd.DataFrame(rows, columns=columns).set_index("number", drop=False)


def by_strategy(study_name: str, storage: str | None = None) -> Any:
    """The per-strategy table of ``hpo compare --by strategy`` as a pandas DataFrame.

    Raises:
        UserError: unknown study or unreachable storage.
    """
    import pandas as pd

    from hpo.compare import STRATEGY_COLUMNS, compare_rows

    rows = compare_rows(_storage(storage), [study_name], by="strategy")
    return pd.DataFrame(rows, columns=list(STRATEGY_COLUMNS))


def best(study_name: str, storage: str | None = None) -> Any:
    """The study's best trial (an Optuna ``FrozenTrial``): the rule ``hpo compare`` and
    ``hpo export`` use (trials stopped early by Ray's ASHA never count).

    Raises:
        UserError: unknown study, or no complete trial yet.
    """
    from hpo.results import best_trial
    from hpo.study import load_one

    study = load_one(_storage(storage), study_name)
    found = best_trial(study)
    if found is None:
        raise UserError(f"study {study_name!r} has no complete trial yet")
    return found


def export(
    study_name: str,
    output: str | Path,
    storage: str | None = None,
    trial: int | None = None,
    pick: str | None = None,
) -> Path:
    """Write the retraining spec of the best (or given) trial: what ``hpo export`` does.

    Args:
        study_name: The study.
        output: The YAML file to write.
        storage: Its storage URL (default ``$HPO_STORAGE``, else ``sqlite:///studies/hpo.db``).
        trial: A COMPLETE trial's number (default: the best trial).
        pick: Choose a point on the Pareto front instead (``"f1 >= 0.85, min trainable_params"``,
            :mod:`hpo.pick`).

    Returns:
        The path written.

    Raises:
        UserError: unknown study or trial, a trial that is not COMPLETE.
    """
    from hpo.export import export_trial

    if trial is not None and (isinstance(trial, bool) or not isinstance(trial, int) or trial < 0):
        raise UserError(f"trial: expected a trial number >= 0, got {trial!r}")
    return export_trial(_storage(storage), study_name, Path(output), trial_number=trial, pick=pick)


def retrain(
    spec_file: str | Path,
    output: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
    tracking: Mapping[str, Any] | None = None,
    storage: str | None = None,
    quiet: bool = False,
) -> Any:
    """Train an exported configuration, evaluate it on the test split, save it: ``hpo retrain``.

    Args:
        spec_file: A retraining spec (``export``'s output).
        output: Output folder (default ``runs/<study>-trial<N>``); must be missing or empty
            unless ``overwrite``.
        overrides: The keys ``hpo retrain --set`` takes, e.g. ``{"training.num_train_epochs": 3}``.
        overwrite: Replace what an earlier retrain wrote in ``output``.
        tracking: Experiment tracking of this run (``{"mlflow": {"uri": ...}}``; the kinds it
            names replace the spec's ``tracking:``): with MLflow, a run of its own with the
            model and metrics as artifacts.
        storage: The study's storage, for attaching ``metrics.json``, ``metrics.png`` and the
            spec to the trial in optuna-dashboard (default ``$HPO_STORAGE``, else the spec's
            ``provenance.storage``); given here, a trial that cannot be found is an error.
        quiet: Print nothing.

    Returns:
        ``hpo.retrain.RetrainResult``: validation and test metrics, the paths written, the model.

    Raises:
        ConfigError: an invalid spec (after overrides).
        UserError: an output folder that cannot be used, no test split, data or model problems.
    """
    from hpo.retrain import retrain as run_retrain

    return run_retrain(
        spec_file,
        None if output is None else Path(output),
        dict(overrides or {}),
        quiet=quiet,
        overwrite=overwrite,
        tracking=None if tracking is None else dict(tracking),
        storage=storage,
    )


def report(study_name: str, output: str | Path, storage: str | None = None, note: bool = True) -> Any:
    """Write the study's plots (PNG and HTML) and an index page: what ``hpo report`` does.

    With ``note``, the per-strategy table and the plots also go into the study's note, which
    optuna-dashboard shows on the study page (the plots through the study's artifact store).

    Returns:
        ``hpo.report.Report``: the files written and the plots skipped with their reasons.

    Raises:
        UserError: unknown study, or the folder cannot be written.
    """
    from hpo.report import write_report

    return write_report(_storage(storage), study_name, Path(output), note=note)
