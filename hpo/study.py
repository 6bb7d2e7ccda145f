"""Studies in the storage: samplers and pruners by name, create/resume, one worker's loop."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from hpo.config import StudySpec, study_as_dict
from hpo.errors import UserError

# Keys of the stored study config that must agree before a worker may add trials.
_MUST_MATCH = ("task", "model", "data", "space", "objective", "budget", "training", "seed")


class StudyMismatchError(UserError):
    """The study in the storage was created from a different study file."""


def max_evaluations(spec: StudySpec) -> int:
    """The pruner's max resource: evaluations in a full-length trial."""
    return max(1, round(spec.budget.max_epochs * spec.budget.evals_per_epoch))


def hyperband_brackets(spec: StudySpec) -> int:
    """Brackets the hyperband pruner uses: as many as the resources allow, but at least
    reduction_factor**2 trials of the budget per bracket (so one bracket below ~2 x 9 trials)."""
    p = spec.pruner
    min_resource, rf = p.min_resource or 1, p.reduction_factor or 3
    natural = math.floor(math.log(max(1, max_evaluations(spec) / min_resource), rf) + 1e-9) + 1
    return max(1, min(natural, spec.budget.n_trials // (2 * rf**2)))


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
    """The study's sampler for one worker; the seed comes from ``sampler_seed``.

    QMC keeps ``sampler.seed + worker_index`` whatever the study holds: its position in the
    sequence is a counter stored in the study, so a resumed run continues the sequence.
    """
    import optuna

    s = spec.sampler
    seed = sampler_seed(spec, worker_index, n_before, salt)
    startup = s.n_startup_trials
    if startup is None:
        # A third of the budget explores at random before the model takes over (3..10).
        startup = max(3, min(10, spec.budget.n_trials // 3))
    if s.name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup, multivariate=True, group=True, constant_liar=True
        )
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if s.name == "qmc":
        base = s.seed if s.seed is not None else spec.seed
        return optuna.samplers.QMCSampler(seed=base + worker_index, scramble=True)
    raise UserError(f"sampler.name: unknown sampler {s.name!r}")


def make_pruner(spec: StudySpec) -> Any:
    """The study's pruner; resources are evaluation indices (see hpo.pruning)."""
    import optuna

    p = spec.pruner
    if p.name == "hyperband":
        min_resource, rf = p.min_resource or 1, p.reduction_factor or 3
        if hyperband_brackets(spec) == 1:
            # Hyperband with one bracket is successive halving. Optuna's Hyperband splits the
            # trials over floor(log_rf(max/min)) + 1 brackets, each pruning only against its
            # own trials; with rf**2 trials or fewer per bracket, trials in the later
            # brackets run to their first rung unopposed (benchmarks/RESULTS.md).
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=rf)
        return optuna.pruners.HyperbandPruner(
            min_resource=min_resource, max_resource=max_evaluations(spec), reduction_factor=rf
        )
    if p.name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource or 1, reduction_factor=p.reduction_factor or 3
        )
    if p.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=2 if p.n_startup_trials is None else p.n_startup_trials,
            n_warmup_steps=1 if p.n_warmup_steps is None else p.n_warmup_steps,
        )
    if p.name == "percentile":
        return optuna.pruners.PercentilePruner(
            p.percentile or 25.0,
            n_startup_trials=2 if p.n_startup_trials is None else p.n_startup_trials,
            n_warmup_steps=1 if p.n_warmup_steps is None else p.n_warmup_steps,
        )
    if p.name == "patient":
        return optuna.pruners.PatientPruner(None, patience=p.patience or 2)
    if p.name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"pruner.name: unknown pruner {p.name!r}")


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
    names = {s.study_name for s in storage.get_all_studies()}
    if spec.name not in names and not create:
        raise UserError(
            f"study {spec.name!r} not found in the storage (known: {', '.join(sorted(names)) or 'none'})"
        )
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction=spec.direction,  # type: ignore[arg-type]
        sampler=optuna.samplers.RandomSampler(),  # replaced below, once the trials are known
        pruner=make_pruner(spec),
        load_if_exists=True,
    )
    if n_before is None:
        n_before = storage.get_n_trials(study._study_id)
    study.sampler = make_sampler(spec, worker_index, n_before, salt)
    attrs = study.user_attrs
    stored = attrs.get("hpo_config")
    if stored is None:
        study.set_metric_names([spec.objective.metric])
        study.set_user_attr("hpo_config", current)
        study.set_user_attr("description", spec.summary())
        study.set_user_attr("metric", spec.objective.metric)
        # absolute: `hpo export` resolves the study's relative data paths against its folder
        study.set_user_attr("study_file", str(Path(spec.path).resolve()) if spec.path else "")
        study.set_user_attr("versions", package_versions())
        study.set_user_attr("space_text", spec.space.describe())
        if fingerprint:
            study.set_user_attr("data_fingerprint", fingerprint)
    else:
        # Advice that works for the command: `hpo run` may start a new study under another
        # name; `hpo worker` only joins, so another --study-name just finds no study.
        origin = attrs.get("study_file")
        where = f" ({origin})" if origin else ""
        diffs = _differences(stored, current)
        if study.direction.name.lower() != spec.direction:
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


def repeat_note(trial: Any) -> str:
    """`` [repeat of #N, not trained]`` for a trial that sampler.skip_repeats did not train."""
    n = trial.user_attrs.get("repeat_of")
    return "" if n is None else f" [repeat of #{n}, not trained]"


def fmt_params(trial: Any) -> str:
    """``lora r=8 lr=3.1e-04 bs=16`` for display."""
    params = dict(trial.params)
    strategy = params.pop("strategy", trial.user_attrs.get("strategy", "?"))
    short = {"learning_rate": "lr", "per_device_train_batch_size": "bs"}
    parts = []
    for k, v in params.items():
        name = k.split(".", 1)[1] if "." in k else k
        name = short.get(name, name)
        parts.append(
            f"{name}={v:.2e}"
            if isinstance(v, float) and (abs(v) < 1e-2)
            else f"{name}={v:.3g}"
            if isinstance(v, float)
            else f"{name}={v}"
        )
    return f"{strategy} " + " ".join(parts)


def strategy_summary(study: Any) -> list[dict[str, Any]]:
    """Per strategy: trials by state, best value and the best trial's number and parameters.

    The rules (stopped-early trials, best trial) live in :mod:`hpo.compare`, shared with
    ``hpo compare``.
    """
    from hpo.compare import strategy_rows

    return strategy_rows(study)


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain fixed-width table."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    widths = {c: max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(cell(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


class ProgressPrinter:
    """Prints one line per evaluation and per finished trial, with the study's best so far."""

    def __init__(self, spec: StudySpec, worker: str = "", stream: Any = None):
        self.metric = spec.objective.metric
        self.worker = worker
        self.stream = stream or sys.stdout
        self.n_evals = max_evaluations(spec)
        self.started: dict[int, float] = {}

    def _p(self, text: str) -> None:
        prefix = f"[{self.worker}] " if self.worker else ""
        print(prefix + text, file=self.stream, flush=True)

    def eval_hook(self, trial: Any) -> Callable[[int, dict[str, float]], None]:
        self.started.setdefault(trial.number, time.perf_counter())

        def hook(index: int, metrics: dict[str, float]) -> None:
            bar = "#" * index + "." * max(0, self.n_evals - index)
            self._p(
                f"trial {trial.number:>3} [{bar}] eval {index}/{self.n_evals} {self.metric}={metrics.get(self.metric, float('nan')):.4f}"
            )

        return hook

    def __call__(self, study: Any, trial: Any) -> None:
        import optuna

        from hpo.compare import trial_strategy

        secs = max(0.0, time.perf_counter() - self.started.pop(trial.number, time.perf_counter()))
        state = trial.state.name
        value = f" {self.metric}={trial.value:.4f}" if trial.value is not None else ""
        reason = (
            f" ({trial.user_attrs.get('fail_reason', '')})"
            if trial.state == optuna.trial.TrialState.FAIL
            else ""
        )
        try:
            best = study.best_trial
            best_txt = f"best {best.value:.4f} (#{best.number} {trial_strategy(best) or ''})"
        except ValueError:
            best_txt = "best -"
        retry = f" [retry of #{trial.user_attrs['retry_of']}]" if "retry_of" in trial.user_attrs else ""
        self._p(
            f"trial {trial.number:>3} {state:<8}{value} {secs:6.1f}s  {fmt_params(trial)}"
            f"{retry}{repeat_note(trial)}{reason}  | {best_txt}"
        )


def run_worker(
    spec: StudySpec,
    storage_url: str,
    *,
    n_trials: int | None,
    timeout: float | None,
    worker_index: int = 0,
    create: bool = True,
    quiet: bool = False,
    ctx: Any = None,
    budget: Any = None,
    sampler_salt: str = "",
    threads: int | str | None = None,
) -> Any:
    """Load data once, open the study and optimize; returns the study.

    ``n_trials`` and ``timeout`` come resolved (:mod:`hpo.options`); None: no limit (a
    ``budget`` counts the trials instead).

    Data and storage problems raise before any trial starts; a trial that raises is stored
    as FAIL with its reason and the loop goes on. Trials of dead workers (stale heartbeat, or
    a process on this host that is gone) are failed first and their retries run (see
    ``hpo.launch.optimize_loop``); ``budget`` is the trial budget shared by local worker
    processes (``hpo.launch.Budget``). ``sampler_salt`` tells this worker's sampler apart from
    others that start on the same study (``sampler_seed``). ``threads``: torch threads, set
    before every trial; ``"auto"`` decides each time (``hpo.launch.joining_worker_threads``);
    None leaves torch as it is.
    """
    import optuna

    from hpo.launch import optimize_loop
    from hpo.objective import make_objective, prepare
    from hpo.storage import failed_trial_lines, open_storage, running_trial_lines, sweep_stale_trials

    # Failed trials are reported by ProgressPrinter with their reason; Optuna's own warning
    # would repeat it with a traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    _quiet_transformers()
    if ctx is None:
        ctx = prepare(spec)  # data errors surface here, before the database is touched
    # Base weights load once per worker, now: a bad model fails here, not in every trial.
    ctx.base_model()
    storage = open_storage(
        storage_url,
        heartbeat_interval=spec.execution.heartbeat_interval,
        grace_period=spec.execution.grace_period,
        max_retries=spec.execution.max_retries,
    )
    study = open_study(
        spec,
        storage,
        create=create,
        fingerprint=ctx.data.fingerprint,
        worker_index=worker_index,
        n_before=getattr(budget, "first_number", None),
        salt=sampler_salt,
    )
    first_number = storage.get_n_trials(study._study_id) if budget is None else budget.first_number
    printer = ProgressPrinter(
        spec, worker=ctx.worker if worker_index else "", stream=sys.stderr if quiet else None
    )
    objective = make_objective(ctx, on_trial_start=None if quiet else printer.eval_hook)
    if threads is not None:
        objective = _with_threads(objective, threads, None if quiet else printer._p)
    # Trials an earlier run left RUNNING: failed now if their worker stopped, else said.
    lines = failed_trial_lines(study, sweep_stale_trials(study)) + running_trial_lines(study)
    if not quiet:
        for line in lines:
            printer._p(line)
    optimize_loop(
        study,
        objective,
        n_trials=n_trials,
        timeout=timeout,
        callbacks=[] if quiet else [printer],
        budget=budget,
        first_number=first_number,
        say=None if quiet else printer._p,
    )
    return study


def _with_threads(
    objective: Callable[[Any], float], threads: int | str, say: Callable[[str], None] | None
) -> Callable[[Any], float]:
    """``objective`` that first sets torch's intra-op threads (``"auto"``: decided per trial)."""
    import torch

    from hpo.launch import joining_worker_threads

    explicit = None if threads == "auto" else int(threads)
    shown: list[tuple[int, str]] = []

    def run(trial: Any) -> float:
        n, why = joining_worker_threads(explicit)
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        if say is not None and (not shown or shown[-1][0] != n):
            say(f"{n} torch thread{'s' if n > 1 else ''} ({why})")
        shown[:] = [(n, why)]
        return objective(trial)

    return run


def _quiet_transformers() -> None:
    import logging
    import warnings

    import optuna
    from transformers.utils import logging as hf_logging

    # hpo relies on heartbeats, retry callbacks and metric names on purpose.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("datasets").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def list_studies(storage_url: str) -> list[dict[str, Any]]:
    """One row per study: trials by state, best value and best strategy.

    Raises:
        UserError: no database at a SQLite path (a listing never creates one), a malformed
            URL, or an unreachable database.
    """
    import optuna

    from hpo.compare import open_existing_storage, trial_strategy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_existing_storage(storage_url)
    rows = []
    for frozen in sorted(storage.get_all_studies(), key=lambda s: s.study_name):
        study = optuna.load_study(study_name=frozen.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        by_state = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
        for t in trials:
            by_state[t.state.name] = by_state.get(t.state.name, 0) + 1
        best_value = best_strategy = None
        if by_state["COMPLETE"]:
            try:
                best = study.best_trial
                best_value, best_strategy = best.value, trial_strategy(best)
            except ValueError:
                pass
        rows.append(
            {
                "study": frozen.study_name,
                "metric": frozen.user_attrs.get("metric", "value"),
                "direction": study.direction.name.lower(),
                "trials": len(trials),
                "complete": by_state["COMPLETE"],
                "pruned": by_state["PRUNED"],
                "fail": by_state["FAIL"],
                "running": by_state["RUNNING"],
                "best_value": best_value,
                "best_strategy": best_strategy,
            }
        )
    return rows
