"""Studies in the storage: samplers and pruners by name, create/resume, one worker's loop."""

from __future__ import annotations

import hashlib
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from hpo.config import StudySpec, study_as_dict
from hpo.errors import UserError
from hpo.samplers import PRUNERS, SAMPLERS, PrunerSettings, SamplerSettings
from hpo.samplers import hyperband_brackets as brackets_for

# Keys of the stored study config that must agree before a worker may add trials.
_MUST_MATCH = (
    "task",
    "task_options",
    "model",
    "revision",
    "trust_remote_code",
    "data",
    "space",
    "objective",
    "evaluation",
    "budget",
    "training",
    "seed",
    "constraints",
)


class StudyMismatchError(UserError):
    """The study in the storage was created from a different study file."""


def max_evaluations(spec: StudySpec) -> int:
    """The pruner's max resource: evaluations in a full-length trial (cross-validation: the
    folds, one report after each)."""
    if spec.evaluation.folds:
        return spec.evaluation.folds
    return max(1, round(spec.budget.max_epochs * spec.budget.evals_per_epoch))


def pruner_settings(spec: StudySpec) -> PrunerSettings:
    """The study file's ``pruner:`` options and the budget they apply to."""
    p = spec.pruner
    return PrunerSettings(
        max_resource=max_evaluations(spec),
        n_trials=spec.budget.n_trials,
        min_resource=p.min_resource,
        reduction_factor=p.reduction_factor,
        n_startup_trials=p.n_startup_trials,
        n_warmup_steps=p.n_warmup_steps,
        percentile=p.percentile,
        patience=p.patience,
    )


def hyperband_brackets(spec: StudySpec) -> int:
    """Brackets ``pruner: hyperband`` uses for this study (see :func:`hpo.samplers.hyperband_brackets`)."""
    return brackets_for(pruner_settings(spec))


def sampler_seed(spec: StudySpec, worker_index: int = 0, n_before: int = 0, salt: str = "") -> int:
    """The seed of one worker's sampler.

    On a study with no trials yet, worker k of a run gets ``sampler.seed + k`` (the study's
    seed when the sampler names none), so the same study file on a fresh database proposes
    the same trials. A sampler that starts on a study that already has ``n_before`` trials (a
    resumed run, a respawned worker, a worker that joins later) mixes that count, the worker
    index and ``salt`` (who the worker is) into its seed: a seeded sampler restarted with the
    first run's seed would propose the first run's configurations again, and
    ``sampler.skip_repeats`` would store them as repeats without training. The same database
    resumed the same way still gives the same seeds.
    """
    s = spec.sampler
    base = s.seed if s.seed is not None else spec.seed
    if n_before == 0 and not salt:
        return base + worker_index
    key = f"{base}/{worker_index}/{n_before}/{salt}".encode()
    # 32 bits: numpy's RandomState (inside Optuna's samplers) takes seeds below 2**32.
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def make_sampler(spec: StudySpec, worker_index: int = 0, n_before: int = 0, salt: str = "") -> Any:
    """The study's sampler for one worker (:data:`hpo.samplers.SAMPLERS`); the seed comes from
    ``sampler_seed``.

    QMC keeps ``sampler.seed + worker_index`` whatever the study holds: its position in the
    sequence is a counter stored in the study, so a resumed run continues the sequence.
    """
    s = spec.sampler
    seed = sampler_seed(spec, worker_index, n_before, salt)
    if s.name == "qmc":
        seed = (s.seed if s.seed is not None else spec.seed) + worker_index
    startup = s.n_startup_trials
    if startup is None:
        # A third of the budget explores at random before the model takes over (3..10).
        startup = max(3, min(10, spec.budget.n_trials // 3))
    if s.name not in SAMPLERS:
        raise UserError(f"sampler.name: unknown sampler {s.name!r} (known: {', '.join(SAMPLERS)})")
    constraints = None
    if spec.constraints:
        from hpo.config.objectives import ConstraintsFunc

        constraints = ConstraintsFunc(spec.constraints)
    sampler = SAMPLERS[s.name](SamplerSettings(seed=seed, startup=startup, constraints=constraints))
    if len(spec.directions) > 1:
        from hpo.study_view import PrimaryDirectionSampler

        return PrimaryDirectionSampler(sampler, spec.direction)
    return sampler


def make_pruner(spec: StudySpec) -> Any:
    """The study's pruner (:data:`hpo.samplers.PRUNERS`); resources are evaluation indices.

    A multi-objective study, or ``pruner.compare: strategy``, gets it behind
    :class:`hpo.study_view.ViewPruner` (the primary metric's direction; one strategy's trials).
    """
    name = spec.pruner.name
    if name not in PRUNERS:
        raise UserError(f"pruner.name: unknown pruner {name!r} (known: {', '.join(PRUNERS)})")
    settings = pruner_settings(spec)
    pruner = PRUNERS[name].build(settings)
    if len(spec.directions) > 1 or spec.pruner.compare == "strategy":
        from hpo.study_view import ViewPruner

        return ViewPruner(
            pruner,
            spec.direction,
            by_strategy=spec.pruner.compare == "strategy",
            min_resource=settings.min_resource or 1,
            reduction_factor=settings.reduction_factor or 3,
        )
    return pruner


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a trial's result."""
    out = {"python": sys.version.split()[0]}
    for name in ("hpo", "optuna", "transformers", "peft", "torch", "datasets", "scikit-learn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    diffs: list[str] = []
    for key in _MUST_MATCH:
        a, b = stored.get(key), current.get(key)
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            if isinstance(a, dict) and isinstance(b, dict):
                sub = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                diffs.extend(f"{key}.{k}" for k in sub)
            else:
                diffs.append(key)
    return diffs


def open_study(
    spec: StudySpec,
    storage: Any,
    *,
    create: bool = True,
    fingerprint: str = "",
    worker_index: int = 0,
    n_before: int | None = None,
    salt: str = "",
) -> Any:
    """Create the study or load it; refuse to mix trials from a different study file.

    The study's sampler is made once the study is loaded, from how many trials it holds
    (``n_before``, default: the count now), ``worker_index`` and ``salt`` (``sampler_seed``).

    Raises:
        StudyMismatchError: the stored study's settings differ from ``spec``.
        UserError: ``create`` is False and the study does not exist.
    """
    import optuna

    current = study_as_dict(spec)
    if not create:
        names = {s.study_name for s in storage.get_all_studies()}
        if spec.name not in names:
            raise UserError(
                f"study {spec.name!r} not found in the storage (known: {', '.join(sorted(names)) or 'none'})"
            )

    def make(load_if_exists: bool) -> Any:
        return optuna.create_study(
            study_name=spec.name,
            storage=storage,
            directions=spec.directions,  # type: ignore[arg-type]
            sampler=optuna.samplers.RandomSampler(),  # replaced below, once the trials are known
            pruner=make_pruner(spec),
            load_if_exists=load_if_exists,
        )

    # Many workers of an array job start at once on a study that does not exist yet: the
    # database's unique study name lets exactly one of them create it (the others get
    # DuplicatedStudyError and load it); only that one writes the study's settings, and the
    # others wait for them (written_by_creator) before they compare their own.
    try:
        study, created = make(load_if_exists=False), True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = make(load_if_exists=True), False
    if n_before is None:
        n_before = storage.get_n_trials(study._study_id)
    study.sampler = make_sampler(spec, worker_index, n_before, salt)
    attrs = study.user_attrs if created else written_by_creator(study, n_before)
    stored = attrs.get("hpo_config")
    if stored is None:
        study.set_metric_names(spec.objectives)
        study.set_user_attr("description", spec.summary())
        study.set_user_attr("metric", spec.objective.metric)
        # absolute: `hpo export` resolves the study's relative data paths against its folder
        study.set_user_attr("study_file", str(Path(spec.path).resolve()) if spec.path else "")
        study.set_user_attr("versions", package_versions())
        study.set_user_attr("space_text", spec.space.describe())
        if fingerprint:
            study.set_user_attr("data_fingerprint", fingerprint)
        # Last: a worker that sees hpo_config sees every other setting (written_by_creator).
        study.set_user_attr("hpo_config", current)
    else:
        # Advice that works for the command: `hpo run` may start a new study under another
        # name; `hpo worker` only joins, so another --study-name just finds no study.
        origin = attrs.get("study_file")
        where = f" ({origin})" if origin else ""
        diffs = _differences(stored, current)
        if [d.name.lower() for d in study.directions] != spec.directions:
            diffs.append("objective.direction")
        if diffs:
            advice = (
                f"use another name (--study-name) or the study file it was created from{where}"
                if create
                else f"a worker joins with the study file the study was created from{where}"
            )
            raise StudyMismatchError(
                f"{spec.path}: study {spec.name!r} already exists with different settings ({', '.join(diffs)}); "
                + advice
            )
        old_fp = attrs.get("data_fingerprint")
        if fingerprint and old_fp and old_fp != fingerprint:
            advice = (
                "use another name (--study-name) or the data the study was run on"
                if create
                else "a worker must read the same data as the study's other workers"
            )
            raise StudyMismatchError(
                f"{spec.path}: study {spec.name!r} was run on different data (fingerprint {old_fp}, "
                f"now {fingerprint}); {advice}"
            )
    return study


# Seconds a worker that did not create the study waits for its creator to write the study's
# settings (a few milliseconds after creating it); after that it writes them itself.
CREATOR_WAIT_SECONDS = 15.0


def written_by_creator(study: Any, n_trials: int, wait: float | None = None) -> dict[str, Any]:
    """The study's user attributes once its creator has written ``hpo_config``.

    A study with trials but no ``hpo_config`` was not made by hpo: it is not waited for. Gives
    up after ``wait`` seconds (default :data:`CREATOR_WAIT_SECONDS`: the creator died between
    creating the study and writing its settings) and returns what is there.
    """
    import time

    attrs: dict[str, Any] = study.user_attrs
    deadline = time.monotonic() + (CREATOR_WAIT_SECONDS if wait is None else wait)
    while "hpo_config" not in attrs and n_trials == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        attrs = study._storage.get_study_user_attrs(study._study_id)
    return attrs


def study_names(storage: Any) -> list[str]:
    """Names of every study in the storage, sorted."""
    return sorted(s.study_name for s in storage.get_all_studies())


def load_studies(storage_url: str, names: list[str]) -> list[Any]:
    """Load studies by name, in the order given.

    Raises:
        UserError: a name that is not in the storage; the message lists the known ones.
    """
    import optuna

    from hpo.storage import open_existing_storage, redact

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_existing_storage(storage_url)
    known = study_names(storage)
    unknown = [n for n in names if n not in known]
    if unknown:
        plural = "studies" if len(unknown) > 1 else "study"
        raise UserError(
            f"unknown {plural} {', '.join(map(repr, unknown))} in {redact(storage_url)} "
            f"(known: {', '.join(known) or 'none'})"
        )
    return [optuna.load_study(study_name=n, storage=storage) for n in dict.fromkeys(names)]


def load_one(storage_url: str, name: str) -> Any:
    """Load one study by name (see :func:`load_studies`)."""
    return load_studies(storage_url, [name])[0]
