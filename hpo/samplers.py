"""Samplers and pruners by name: one registry each (``sampler.name``, ``pruner.name``).

The study file is validated against these registries (a pruner option the named pruner does
not take is an error) and :mod:`hpo.study` builds from them, so a name and its settings live in
one place. Importing this module imports no Optuna; each builder imports it when called.
Pruner resources are evaluation indices (``hpo.pruning``), so ``max_resource`` is the number
of evaluations in a full-length trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamplerSettings:
    """What a sampler is built from: its seed and random start-up trials (resolved)."""

    seed: int
    startup: int
    constraints: Callable[[Any], Any] | None = None
    """Optuna's ``constraints_func`` (tpe, gp, nsga2 take it; None: unconstrained)."""


@dataclass(frozen=True)
class PrunerSettings:
    """What a pruner is built from: the study file's ``pruner:`` options (None: not set) and
    the budget they apply to."""

    max_resource: int
    """Evaluations in a full-length trial."""
    n_trials: int
    """``budget.n_trials`` (hyperband sizes its brackets by it)."""
    min_resource: int | None = None
    reduction_factor: int | None = None
    n_startup_trials: int | None = None
    n_warmup_steps: int | None = None
    percentile: float | None = None
    patience: int | None = None


def _tpe(s: SamplerSettings) -> Any:
    import optuna

    # Multivariate and grouped: each strategy's conditional sub-space is modelled on its own;
    # constant liar keeps parallel workers from proposing the same point.
    return optuna.samplers.TPESampler(
        seed=s.seed,
        n_startup_trials=s.startup,
        multivariate=True,
        group=True,
        constant_liar=True,
        constraints_func=s.constraints,
    )


def _random(s: SamplerSettings) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=s.seed)


def _gp(s: SamplerSettings) -> Any:
    import optuna

    return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=s.startup, constraints_func=s.constraints)


def _nsga2(s: SamplerSettings) -> Any:
    import optuna

    # A generation as large as the random start-up (at least 4): Optuna's default of 50 would
    # leave a study of 20 trials entirely random.
    return optuna.samplers.NSGAIISampler(
        seed=s.seed, population_size=max(4, s.startup), constraints_func=s.constraints
    )


def _qmc(s: SamplerSettings) -> Any:
    import optuna

    return optuna.samplers.QMCSampler(seed=s.seed, scramble=True)


SAMPLERS: dict[str, Callable[[SamplerSettings], Any]] = {
    "tpe": _tpe,
    "random": _random,
    "gp": _gp,
    "qmc": _qmc,
    "nsga2": _nsga2,
}
"""``sampler.name`` -> builder."""


@dataclass(frozen=True)
class Pruner:
    """One pruner kind: which ``pruner:`` options it takes, and how it is built."""

    options: tuple[str, ...]
    build: Callable[[PrunerSettings], Any]


def hyperband_brackets(p: PrunerSettings) -> int:
    """Brackets the hyperband pruner uses: as many as the resources allow, but at least
    2 x reduction_factor**2 trials of the budget per bracket (so one bracket below ~2 x 9 trials)."""
    min_resource, rf = p.min_resource or 1, p.reduction_factor or 3
    natural = math.floor(math.log(max(1, p.max_resource / min_resource), rf) + 1e-9) + 1
    return max(1, min(natural, p.n_trials // (2 * rf**2)))


def _hyperband(p: PrunerSettings) -> Any:
    import optuna

    min_resource, rf = p.min_resource or 1, p.reduction_factor or 3
    if hyperband_brackets(p) == 1:
        # Hyperband with one bracket is successive halving. Optuna's Hyperband splits the
        # trials over floor(log_rf(max/min)) + 1 brackets, each pruning only against its own
        # trials; with rf**2 trials or fewer per bracket, trials in the later brackets run to
        # their first rung unopposed (benchmarks/RESULTS.md).
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=rf)
    return optuna.pruners.HyperbandPruner(
        min_resource=min_resource, max_resource=p.max_resource, reduction_factor=rf
    )


def _successive_halving(p: PrunerSettings) -> Any:
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=p.min_resource or 1, reduction_factor=p.reduction_factor or 3
    )


def _startup(p: PrunerSettings) -> tuple[int, int]:
    """(n_startup_trials, n_warmup_steps) of median/percentile: defaults 2 and 1."""
    return (
        2 if p.n_startup_trials is None else p.n_startup_trials,
        1 if p.n_warmup_steps is None else p.n_warmup_steps,
    )


def _median(p: PrunerSettings) -> Any:
    import optuna

    startup, warmup = _startup(p)
    return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)


def _percentile(p: PrunerSettings) -> Any:
    import optuna

    startup, warmup = _startup(p)
    return optuna.pruners.PercentilePruner(
        p.percentile or 25.0, n_startup_trials=startup, n_warmup_steps=warmup
    )


def _patient(p: PrunerSettings) -> Any:
    import optuna

    return optuna.pruners.PatientPruner(None, patience=p.patience or 2)


def _none(p: PrunerSettings) -> Any:
    import optuna

    return optuna.pruners.NopPruner()


PRUNERS: dict[str, Pruner] = {
    "hyperband": Pruner(("min_resource", "reduction_factor"), _hyperband),
    "successive-halving": Pruner(("min_resource", "reduction_factor"), _successive_halving),
    "median": Pruner(("n_startup_trials", "n_warmup_steps"), _median),
    "percentile": Pruner(("percentile", "n_startup_trials", "n_warmup_steps"), _percentile),
    "patient": Pruner(("patience",), _patient),
    "none": Pruner((), _none),
}
"""``pruner.name`` -> the options it takes and its builder."""
