"""The set-up every driver starts with, written once: data, storage, study, sweep.

Data problems surface before the database is touched; the study is created or loaded (and
refused when it was created from a different study file); trials an earlier run left RUNNING
are failed when their worker is gone (their retries queued) or reported with what the run
waits for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpo.config import StudySpec


@dataclass
class OpenRun:
    """What a driver works with once it is set up."""

    ctx: Any
    """The worker context (data, tokenizer, tokenized splits): ``hpo.context.WorkerContext``."""
    storage: Any
    """The Optuna RDB storage, with heartbeats and the retry callback."""
    study: Any
    """The Optuna study, its sampler seeded for this worker (``hpo.study.sampler_seed``)."""
    first_number: int
    """Trials the study held when this run began (its trial numbers start here)."""


def open_run(
    spec: StudySpec,
    url: str,
    *,
    create: bool = True,
    ctx: Any = None,
    worker_index: int = 0,
    n_before: int | None = None,
    salt: str = "",
    say: Callable[[str], None] | None = None,
    requeue: bool = False,
) -> OpenRun:
    """Prepare the data, open the storage and the study, and sweep what an earlier run left.

    Args:
        spec: the study.
        url: storage URL.
        create: create the study if it does not exist (``hpo worker`` only joins).
        ctx: an already prepared worker context (default: prepared here).
        worker_index: which worker of a run this is (seeds its sampler).
        n_before: trials the study held when the run began (default: counted now).
        salt: tells this worker's sampler apart from others on the same study.
        say: where the sweep's lines go (None: nowhere).
        requeue: queue again the trials an earlier run's Ctrl-C (or SIGTERM) interrupted
            (:func:`requeue_interrupted`), and delete checkpoints no trial will resume. Only
            ``hpo run`` does (once per run): workers that join would queue them once each.

    Raises:
        DataError: bad data, before the database is touched.
        UserError: unreachable storage or tracking server, a study created from another study
            file, or (with ``create`` False) no such study.
    """
    from hpo.context import prepare
    from hpo.storage import failed_trial_lines, open_storage, running_trial_lines, sweep_stale_trials
    from hpo.study import open_study

    if ctx is None:
        ctx = prepare(spec)
    ex = spec.execution
    storage = open_storage(
        url,
        heartbeat_interval=ex.heartbeat_interval,
        grace_period=ex.grace_period,
        max_retries=ex.max_retries,
    )
    study = open_study(
        spec,
        storage,
        create=create,
        fingerprint=ctx.data.fingerprint,
        worker_index=worker_index,
        n_before=n_before,
        salt=salt,
    )
    first_number = storage.get_n_trials(study._study_id) if n_before is None else n_before
    if create and spec.warm_start is not None:  # once, by the run that creates or resumes it
        from hpo.warmstart import enqueue_warm_start

        enqueue_warm_start(study, spec.space, spec.warm_start, url, say)
    from hpo.artifacts import record_dir

    record_dir(study, spec, url)  # where retrain and report attach the files the dashboard shows
    # Trials an earlier run left RUNNING: failed now if their worker stopped (stale heartbeat,
    # or a process on this host that is gone), else said, with when they will be failed.
    lines = failed_trial_lines(study, sweep_stale_trials(study)) + running_trial_lines(study)
    if requeue:
        lines += requeue_interrupted(study)
        drop_unused_checkpoints(spec, study)
    if say is not None:
        for line in lines:
            say(line)
    tracker = ctx.tracker()
    if tracker is not None:
        tracker.check()  # an unreachable tracking server stops the run before its first trial
    return OpenRun(ctx, storage, study, first_number)


def requeue_interrupted(study: Any) -> list[str]:
    """Queue again each trial stored as interrupted (``fail_reason: interrupted (...)``) that
    has no retry yet, with its parameters and checkpoint key (``hpo.storage.enqueue_retry``), so
    it resumes from its last checkpoint. Returns one line per trial queued.
    """
    import optuna

    from hpo.storage import enqueue_retry

    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    lines = []
    for t in trials:
        reason = str(t.user_attrs.get("fail_reason", ""))
        if t.state == optuna.trial.TrialState.FAIL and reason.startswith("interrupted") and t.number not in retried:
            enqueue_retry(study, t)
            lines.append(f"trial {t.number} was {reason}; queued again (retry_of: {t.number})")
    return lines


def drop_unused_checkpoints(spec: StudySpec, study: Any) -> None:
    """Delete the study's checkpoints that no RUNNING or WAITING trial can resume (a series whose
    retries ran out, a trial finished while its folder could not be deleted)."""
    import optuna

    from hpo.checkpoints import CHECKPOINT_ATTR, prune_orphans

    alive = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    keys: dict[str, bool] = {}  # this study's checkpoint keys -> may a trial still resume it
    for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
        key = t.system_attrs.get(CHECKPOINT_ATTR)
        if key:
            keys[str(key)] = keys.get(str(key), False) or t.state in alive
    # Only this study's own folders: another storage may hold a study of the same name whose
    # checkpoints share the folder (the default one is per user, not per database).
    prune_orphans(spec, {k for k, resumable in keys.items() if not resumable})
