"""Drivers: how a study's trials get run. One registry; ``hpo run --backend`` picks one.

- ``optuna`` (the default): Optuna's own loop, in this process (one worker,
  :mod:`hpo.drivers.worker`) or in one process per GPU slot or share of the cores
  (:mod:`hpo.drivers.local`); ``hpo worker`` joins any study from anywhere with the same loop.
- ``ray``: Ray Tune with ASHA, on this machine or a cluster (:mod:`hpo.drivers.ray`).

Every driver sets up the same way (:func:`hpo.drivers.setup.open_run`), records each trial with
:func:`hpo.objective.run_trial`, and writes into the same Optuna study, so every command reads
the results the same way whichever driver ran them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpo.config import StudySpec
from hpo.options import RunOptions


def run_optuna(spec: StudySpec, opts: RunOptions, address: str | None = None, stream: Any = None) -> Any:
    """Optuna's loop: in this process with one worker, else one process per slot."""
    if address is not None:
        from hpo.errors import UserError

        raise UserError("--address: only with --backend ray (the Ray cluster to join)")
    if opts.workers == 1 and not opts.gpus:
        from hpo.drivers.worker import run_worker

        return run_worker(spec, opts.storage, n_trials=opts.n_trials, timeout=opts.timeout, requeue=True)
    from hpo.drivers.local import launch

    return launch(
        spec,
        opts.storage,
        workers=opts.workers,
        gpus=opts.gpus,
        trials_per_gpu=opts.trials_per_gpu,
        n_trials=opts.n_trials,
        timeout=opts.timeout,
        stream=stream,
    )


def run_ray_tune(spec: StudySpec, opts: RunOptions, address: str | None = None, stream: Any = None) -> Any:
    """Ray Tune (ASHA) into the same study; ``opts.workers`` caps the trials at once."""
    from hpo.drivers.ray import run_ray

    return run_ray(
        spec,
        opts.storage,
        address=address,
        n_trials=opts.n_trials,
        timeout=opts.timeout,
        workers=opts.workers,
        gpus=opts.gpus,
        trials_per_gpu=opts.trials_per_gpu,
        stream=stream,
    )


Driver = Callable[..., Any]
DRIVERS: dict[str, Driver] = {"optuna": run_optuna, "ray": run_ray_tune}
"""``--backend`` name -> ``(spec, resolved options, address, stream) -> the study``."""


def get_driver(name: str) -> Driver:
    """The driver registered as ``name``.

    Raises:
        UserError: unknown name; the message lists the known ones.
    """
    from hpo.errors import UserError

    try:
        return DRIVERS[name]
    except KeyError:
        raise UserError(f"--backend: unknown backend {name!r} (known: {', '.join(DRIVERS)})") from None
