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

    Raises:
        DataError: bad data, before the database is touched.
        UserError: unreachable storage, a study created from another study file, or (with
            ``create`` False) no such study.
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
    # Trials an earlier run left RUNNING: failed now if their worker stopped (stale heartbeat,
    # or a process on this host that is gone), else said, with when they will be failed.
    lines = failed_trial_lines(study, sweep_stale_trials(study)) + running_trial_lines(study)
    if say is not None:
        for line in lines:
            say(line)
    return OpenRun(ctx, storage, study, first_number)
