"""Single-objective views of a study for Optuna's pruners and samplers.

Two things Optuna does not do, done by showing its pruner (and sampler) a view of the study:

- *Pruning a multi-objective study.* ``Trial.report`` and ``Trial.should_prune`` refuse
  multi-objective studies. hpo stores each evaluation of the primary metric as the trial's
  intermediate value itself (the dashboard draws the curves) and asks the study's pruner with a
  view whose ``direction`` is the primary metric's. hpo's default pruner (hyperband, which is
  successive halving at small budgets) thus prunes a multi-objective study by successive
  halving on the primary metric's intermediate values: at evaluation ``min_resource *
  reduction_factor**k`` a trial goes on only when its value is in the best
  ``1/reduction_factor`` of the values the study's trials had at that rung (always, when it is
  the best so far). The same view is what Optuna's TPE sampler needs to rank pruned trials in a
  multi-objective study (it reads ``study.direction`` for them), so the sampler gets it too.
- *Pruning fair across strategies* (``pruner.compare: strategy``): the view lists only the
  trials of the judged trial's strategy, so a LoRA trial is compared with LoRA trials, and the
  best few of every strategy (successive halving keeps 1/reduction_factor of them, at least
  the best one) reach the next rung, however slowly the strategy starts.

Hyperband with several brackets builds bracket studies from the storage and cannot be given a
view; where a view is needed it runs as successive halving with the same ``min_resource`` and
``reduction_factor`` (which is what hpo's hyperband is below ~2 x 9 trials anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.pruners import BasePruner, HyperbandPruner, SuccessiveHalvingPruner
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection

from hpo.results import trial_strategy


class StudyView:
    """The study as one objective (the primary metric's direction), optionally one strategy's
    trials only; everything else is the study's own."""

    def __init__(self, study: Any, direction: StudyDirection, strategy: str | None = None):
        self._study = study
        self._direction = direction
        self._strategy = strategy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    @property
    def direction(self) -> StudyDirection:
        return self._direction

    def get_trials(self, deepcopy: bool = True, states: Sequence[Any] | None = None) -> list[Any]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        if self._strategy is None:
            return list(trials)
        return [t for t in trials if trial_strategy(t) == self._strategy]

    @property
    def trials(self) -> list[Any]:
        return self.get_trials()


class ViewPruner(BasePruner):  # type: ignore[misc]
    """The study's pruner, asked with a :class:`StudyView` (primary direction; by strategy)."""

    def __init__(
        self, inner: BasePruner, direction: str, by_strategy: bool, min_resource: int, reduction_factor: int
    ):
        if isinstance(inner, HyperbandPruner):
            inner = SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=reduction_factor)
        self.inner = inner
        self.direction = StudyDirection.MAXIMIZE if direction == "maximize" else StudyDirection.MINIMIZE
        self.by_strategy = by_strategy

    def prune(self, study: Any, trial: Any) -> bool:
        strategy = trial_strategy(trial) if self.by_strategy else None
        view: Any = StudyView(study, self.direction, strategy)  # Any: Optuna's signature asks for a Study
        return bool(self.inner.prune(view, trial))


class PrimaryDirectionSampler(BaseSampler):  # type: ignore[misc]
    """A sampler of a multi-objective study that sees ``study.direction`` as the primary
    metric's (TPE ranks pruned trials by their last intermediate value in that direction)."""

    def __init__(self, inner: BaseSampler, direction: str):
        self.inner = inner
        self.direction = StudyDirection.MAXIMIZE if direction == "maximize" else StudyDirection.MINIMIZE

    def _view(self, study: Any) -> Any:  # Any: Optuna's signatures ask for a Study
        return StudyView(study, self.direction)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return dict(self.inner.infer_relative_search_space(self._view(study), trial))

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        return dict(self.inner.sample_relative(self._view(study), trial, search_space))

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        return self.inner.sample_independent(self._view(study), trial, param_name, param_distribution)

    def before_trial(self, study: Any, trial: Any) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Sequence[float] | None) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def prune_multi_objective(trial: Any, step: int, value: float) -> bool:
    """Store ``value`` as the trial's intermediate value at ``step`` and ask the study's pruner
    (a :class:`ViewPruner`); what ``report`` + ``should_prune`` do for one objective."""
    storage = trial.storage
    frozen = storage.get_trial(trial._trial_id)
    if step not in frozen.intermediate_values:
        storage.set_trial_intermediate_value(trial._trial_id, step, value)
        frozen = storage.get_trial(trial._trial_id)
    return bool(trial.study.pruner.prune(trial.study, frozen))


__all__ = [
    "PrimaryDirectionSampler",
    "StudyView",
    "ViewPruner",
    "prune_multi_objective",
]
