"""Ray Tune's scheduler for a study's pruner (the Ray driver's counterpart of
:mod:`hpo.samplers`' ``PRUNERS``)."""

from __future__ import annotations

import math
from typing import Any

from hpo.config import StudySpec

RAY_SCHEDULERS = ("hyperband", "successive-halving", "median", "none")
"""The ``pruner.name`` values the Ray driver runs (``ray_scheduler``)."""


def ray_scheduler(spec: StudySpec, max_t: int) -> tuple[Any, str]:
    """The Ray Tune scheduler for the study's pruner, and the words the first line says of it.

    Rungs count evaluations (``training_iteration``), as the Optuna pruners count steps.
    ``hyperband`` and ``successive-halving`` are ASHA (``min_resource``, ``reduction_factor``);
    ``median`` is Ray's median stopping rule (a trial whose best value by evaluation t is
    worse than the median of the other trials' running means up to t stops; from evaluation
    ``n_warmup_steps + 1``, once ``n_startup_trials`` other trials got there); ``none`` runs
    every trial to its end. Percentile and patient pruners have no Ray counterpart.
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    p = spec.pruner
    metric = spec.objective.metric
    mode = "max" if spec.direction == "maximize" else "min"
    if p.name == "none":
        return FIFOScheduler(), f"no early stopping (pruner: none), {max_t} evaluations"
    if p.name == "median":
        startup = 2 if p.n_startup_trials is None else p.n_startup_trials
        warmup = 1 if p.n_warmup_steps is None else p.n_warmup_steps
        rule = MedianStoppingRule(
            time_attr="training_iteration",
            metric=metric,
            mode=mode,
            grace_period=warmup + 1,
            min_samples_required=startup,
            # Never pause a trial while too few others have reached its evaluation: hpo's
            # trainable keeps no checkpoint, so a paused trial would start again from step 0.
            # Infinite, not a large int: Ray compares it with the time since a pause at -inf.
            min_time_slice=math.inf,  # type: ignore[arg-type]
        )
        return rule, f"median stopping rule from evaluation {warmup + 1} of {max_t}"
    asha = ASHAScheduler(
        time_attr="training_iteration",
        metric=metric,
        mode=mode,
        max_t=max_t,
        grace_period=max(1, p.min_resource or 1),
        reduction_factor=max(2, p.reduction_factor or 3),
    )
    return asha, f"ASHA up to {max_t} evaluations"
