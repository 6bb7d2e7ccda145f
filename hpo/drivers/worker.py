"""One worker process: prepare the data once, open the study, run the trial loop.

``hpo run`` (one worker), ``hpo worker`` and every process of ``hpo run --workers`` call
:func:`run_worker`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from hpo.config import StudySpec
from hpo.display import ProgressPrinter, quiet_libraries


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
    requeue: bool = False,
) -> Any:
    """Load data once, open the study and optimize; returns the study.

    ``n_trials`` and ``timeout`` come resolved (:mod:`hpo.options`); None: no limit (a
    ``budget`` counts the trials instead).

    Data and storage problems raise before any trial starts; a trial that raises is stored
    as FAIL with its reason and the loop goes on. Trials of dead workers (stale heartbeat, or
    a process on this host that is gone) are failed first and their retries run (see
    ``hpo.drivers.loop.optimize_loop``); ``budget`` is the trial budget shared by local worker
    processes (``hpo.drivers.local.Budget``). ``sampler_salt`` tells this worker's sampler apart from
    others that start on the same study (``sampler_seed``). ``threads``: torch threads, set
    before every trial; ``"auto"`` decides each time (``hpo.drivers.slots.joining_worker_threads``);
    None leaves torch as it is. ``requeue``: queue again the trials an interrupted run left
    (``hpo run``, not a worker that joins: ``hpo.drivers.setup.open_run``).
    """
    import optuna

    from hpo.context import prepare
    from hpo.drivers.loop import optimize_loop
    from hpo.drivers.setup import open_run
    from hpo.objective import make_objective

    # Failed trials are reported by ProgressPrinter with their reason; Optuna's own warning
    # would repeat it with a traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    quiet_libraries()
    ctx = ctx if ctx is not None else prepare(spec)  # data errors before the database is touched
    printer = ProgressPrinter(
        spec, worker=ctx.worker if worker_index else "", stream=sys.stderr if quiet else None
    )
    run = open_run(
        spec,
        storage_url,
        create=create,
        ctx=ctx,
        worker_index=worker_index,
        n_before=getattr(budget, "first_number", None),
        salt=sampler_salt,
        say=None if quiet else printer.say,
        requeue=requeue,
    )
    # Base weights load once per worker, now: a bad model fails here, not in every trial.
    run.ctx.base_model()
    objective = make_objective(run.ctx, on_trial_start=None if quiet else printer.eval_hook)
    if threads is not None:
        objective = _with_threads(objective, threads, None if quiet else printer.say)
    optimize_loop(
        run.study,
        objective,
        n_trials=n_trials,
        timeout=timeout,
        callbacks=[] if quiet else [printer],
        budget=budget,
        first_number=run.first_number,
        say=None if quiet else printer.say,
        patience=spec.execution.db_patience,
    )
    return run.study


def _with_threads(
    objective: Callable[[Any], float | list[float]], threads: int | str, say: Callable[[str], None] | None
) -> Callable[[Any], float | list[float]]:
    """``objective`` that first sets torch's intra-op threads (``"auto"``: decided per trial)."""
    import torch

    from hpo.drivers.slots import joining_worker_threads

    explicit = None if threads == "auto" else int(threads)
    shown: list[tuple[int, str]] = []

    def run(trial: Any) -> float | list[float]:
        n, why = joining_worker_threads(explicit)
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
        if say is not None and (not shown or shown[-1][0] != n):
            say(f"{n} torch thread{'s' if n > 1 else ''} ({why})")
        shown[:] = [(n, why)]
        return objective(trial)

    return run
