"""One trial, recorded the same way whichever driver asked for it.

:func:`run_trial` takes a configuration and a :class:`TrialRecorder` (how this driver writes to
its Optuna trial and reports evaluations) and does the rest, top to bottom: record what the
trial is, skip it when it repeats a trained configuration (``sampler.skip_repeats``), train
with the out-of-memory retry, report every evaluation, record the outcome. The Optuna driver's
recorder wraps an ``optuna.Trial`` (:func:`make_objective`); the Ray driver's writes through
the storage by trial id (``hpo.drivers.ray``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from hpo.config.objectives import feasibility_attrs, objective_values
from hpo.context import WorkerContext
from hpo.crossval import train_folds
from hpo.space import TrialConfig
from hpo.training import Outcome, plan_steps, train_and_evaluate, trial_seed


class TrialRecorder(Protocol):
    """What :func:`run_trial` needs of the Optuna trial it runs."""

    def record(self, attrs: dict[str, Any], system_attrs: dict[str, Any] | None = None) -> None:
        """Write user (and system) attributes in one transaction."""

    def report(self, index: int, last: bool, metrics: dict[str, float]) -> bool:
        """Report evaluation ``index`` (``last``: the final one planned); True stops training."""

    def frozen(self) -> Any:
        """The trial as stored (parameters, distributions, system attributes)."""

    def complete_trials(self) -> list[Any]:
        """The study's COMPLETE trials (the candidates a sampled configuration may repeat)."""


@dataclass
class TrialResult:
    """How one trial ended."""

    value: float | None
    """The objective value (None when pruned)."""
    outcome: Outcome | None = None
    """What training produced (None for a repeat, which does not train)."""
    repeat_of: int | None = None
    """The trained trial this one repeats (``sampler.skip_repeats``), if any."""
    pruned: bool = False
    """The pruner (or Ray's scheduler) stopped it early."""
    values: list[float] | None = None
    """Every objective's value, the primary first (None when pruned)."""


def run_trial(
    ctx: WorkerContext,
    cfg: TrialConfig,
    recorder: TrialRecorder,
    show: Callable[[int, dict[str, float]], None] | None = None,
) -> TrialResult:
    """Train one configuration and record it on its trial.

    Args:
        ctx: the worker's loaded data, tokenizer and base model.
        cfg: the configuration (sampled by the driver).
        recorder: how this driver writes to the trial and reports evaluations.
        show: called with every evaluation (progress display).

    Raises:
        Exception: whatever training raised; its text is the trial's ``fail_reason`` first.
    """
    import torch

    from hpo.oom import memory_baseline, train_with_oom_retry
    from hpo.storage import HOST_ID_ATTR, local_host_id

    spec = ctx.spec
    seed = trial_seed(spec)
    # "worker" tells a launcher which trial a worker that died was running; the host id tells
    # a sweep on this host that it may check whether that process still runs.
    recorder.record(
        {
            "worker": ctx.worker,
            "strategy": cfg.strategy,
            "config": json.dumps(cfg.to_dict(), sort_keys=True),
            "seed": seed,
            "device": ctx.device,
            "torch_threads": torch.get_num_threads(),
        },
        {HOST_ID_ATTR: local_host_id()},
    )
    frozen = recorder.frozen()
    tracker = ctx.tracker()
    log = tracker.start_trial(frozen.number, cfg, ctx.worker) if tracker is not None else None
    repeat = find_repeat(frozen, recorder.complete_trials(), spec.sampler.skip_repeats)
    if repeat is not None:
        # Within sampler.skip_repeats of a trained trial, same seed: training it again would
        # measure noise, not the configuration.
        # It stands for the trained trial: the same feasibility, and the quantities the
        # sampler's constraints_func reads (only those: a repeat records no training).
        keys = [c.attr() for c in spec.constraints] + (["feasible", "infeasible"] if spec.constraints else [])
        copied = {k: repeat.user_attrs[k] for k in keys if k in repeat.user_attrs}
        recorder.record({"repeat_of": repeat.number, **copied})
        values = [float(v) for v in repeat.values]
        if log is not None:
            log.finish("COMPLETE", values[0], tags={"repeat_of": repeat.number})
        return TrialResult(values[0], repeat_of=repeat.number, values=values)
    ckpt = trial_checkpoint(spec, frozen, recorder)
    planned = {"evaluations": 0}

    def on_eval(index: int, metrics: dict[str, float]) -> bool:
        if show is not None:
            show(index, metrics)
        return recorder.report(index, index >= planned["evaluations"], metrics)

    def attempt(c: TrialConfig) -> Outcome:
        if ctx.folds:  # evaluation.folds: one report per fold, the running mean (hpo.crossval)
            planned["evaluations"] = len(ctx.folds)
            return train_folds(ctx, c, seed, on_eval)
        # Evaluations of this attempt (a retry at half the micro-batch plans more steps).
        planned["evaluations"] = len(plan_steps(len(ctx.datasets["train"]), c, spec)[1])
        return train_and_evaluate(
            ctx,
            c,
            seed,
            on_eval=on_eval,
            select=spec.objective.select,
            checkpoint=ckpt,
            callbacks=log.callbacks() if log is not None else None,
        )

    try:
        # Out of accelerator memory: the same config again at half the micro-batch (hpo.oom).
        out = train_with_oom_retry(
            attempt,
            cfg,
            device=ctx.device,
            floor=spec.execution.min_micro_batch,
            record=lambda key, value: recorder.record({key: value}),
            baseline_bytes=memory_baseline(ctx.device),
        )
    except BaseException as e:
        reason = f"{type(e).__name__}: {e}"[:1000]
        if isinstance(e, Exception):
            # A failed trial is not retried: its checkpoint is of no use. (An interrupted one,
            # KeyboardInterrupt, keeps it: it is queued again when the study is resumed.)
            if ckpt is not None:
                ckpt.discard()
            recorder.record({"fail_reason": reason})
        if log is not None:
            log.finish("FAIL", reason=reason if isinstance(e, Exception) else f"interrupted ({reason})")
        raise
    if ckpt is not None:
        ckpt.discard()
    attrs = outcome_attrs(out)
    attrs.update(feasibility_attrs(spec.constraints, attrs))
    recorder.record(attrs)
    if out.pruned:
        if log is not None:
            log.finish("PRUNED", None, attrs)
        return TrialResult(None, outcome=out, pruned=True)
    values = objective_values(spec.objectives, out.metrics, attrs)
    if log is not None:
        log.finish("COMPLETE", values[0], attrs)
    return TrialResult(values[0], outcome=out, values=values)


def trial_checkpoint(spec: Any, frozen: Any, recorder: TrialRecorder) -> Any:
    """The trial's checkpoint (``hpo.checkpoints``), or None when ``execution.checkpoints`` is off.

    A retry inherits its first trial's key (a system attribute), so it finds that trial's
    checkpoint; a new trial gets a new key, recorded before it trains.
    """
    from hpo.checkpoints import CHECKPOINT_ATTR, for_trial, new_key

    if not spec.execution.checkpoints:
        return None
    key = frozen.system_attrs.get(CHECKPOINT_ATTR)
    if not key:
        key = new_key(frozen.number)
        recorder.record({}, {CHECKPOINT_ATTR: key})
    return for_trial(spec, str(key), frozen.number)


def outcome_attrs(out: Outcome) -> dict[str, Any]:
    """What a person comparing trials needs, as trial user attributes."""
    attrs: dict[str, Any] = {
        "trainable_params": out.trainable_params,
        "total_params": out.total_params,
        "trainable_percent": round(100.0 * out.trainable_params / max(1, out.total_params), 4),
    }
    attrs.update({f"val_{k}": v for k, v in out.metrics.items()})
    attrs.update(
        {
            "train_seconds": round(out.train_seconds, 3),
            "samples_per_second": round(out.samples_per_second, 2),
            "peak_memory_mb": round(out.peak_memory_mb, 1),
            "steps": out.steps,
            "steps_trained": out.steps_trained,
            "resumed_from_step": out.resumed_from_step,
            "evaluations": len(out.history),
            "selected_evaluation": out.selected,
            "selected_step": out.selected_step,
        }
    )
    attrs.update(out.attrs)
    return attrs


# --------------------------------------------------------------------------- repeats


def _distance(a: Any, b: Any, dist: Any) -> float:
    """|a - b| as a fraction of the distribution's range on its sampling scale; categorical: 0 or inf."""
    low, high = getattr(dist, "low", None), getattr(dist, "high", None)
    if low is None or high is None or isinstance(a, bool) or not isinstance(a, (int, float)):
        return 0.0 if a == b else math.inf
    if a == b:
        return 0.0
    if getattr(dist, "log", False):
        a, b, low, high = math.log(a), math.log(b), math.log(low), math.log(high)
    span = float(high - low)
    return abs(float(a) - float(b)) / span if span > 0 else math.inf


def find_repeat(trial: Any, complete: list[Any], tolerance: float | None) -> Any:
    """The COMPLETE, trained trial that ``trial``'s sampled configuration repeats, or None.

    A repeat has the same parameters, the same categorical values and every numeric value within
    ``tolerance`` of its range (``sampler.skip_repeats``); the closest one wins. Enqueued trials
    (a user's own configurations: system attribute ``fixed_params``) and retries of dead
    workers' trials (``failed_trial``, queued with their parameters by ``RetryWithLink``) are
    never repeats: their point was chosen, not sampled.

    Args:
        trial: the trial as stored (``FrozenTrial``: params, distributions, system attributes).
        complete: the study's COMPLETE trials.
        tolerance: ``sampler.skip_repeats`` (None: never a repeat).
    """
    if tolerance is None:
        return None
    if "fixed_params" in trial.system_attrs or "failed_trial" in trial.system_attrs:
        return None
    params, dists = trial.params, trial.distributions
    best, best_d = None, math.inf
    for t in complete:
        if t.number == trial.number or "repeat_of" in t.user_attrs or set(t.params) != set(params):
            continue
        if any(t.distributions[k] != dists[k] for k in params):
            continue
        d = max((_distance(params[k], t.params[k], dists[k]) for k in params), default=0.0)
        if d <= tolerance and d < best_d:
            best, best_d = t, d
    return best


# --------------------------------------------------------------------------- the Optuna driver


class OptunaRecorder:
    """A :class:`TrialRecorder` on an ``optuna.Trial`` asked by the Optuna driver's loop.

    While the database is away the trial trains on: attributes and evaluations it could not
    write are kept (:data:`hpo.outage.PENDING`) and written with its result
    (``hpo.drivers.one_trial``); the pruner is not asked meanwhile. Reads it cannot do without
    (before training) wait for the database up to ``patience`` seconds.
    """

    def __init__(self, trial: Any, metric: str, multi_objective: bool = False, patience: float = 300.0):
        self.trial = trial
        self.metric = metric
        self.multi_objective = multi_objective
        self.patience = patience

    def _keep(self, e: Exception) -> bool:
        from hpo.connectivity import CONNECTIVITY, is_transient

        if not is_transient(e):
            return False
        CONNECTIVITY.failed()
        try:
            self.trial.storage.remove_session()
        except Exception:
            pass
        return True

    def record(self, attrs: dict[str, Any], system_attrs: dict[str, Any] | None = None) -> None:
        from hpo.outage import PENDING, pending_for
        from hpo.storage import write_user_attrs

        pending = PENDING.get(self.trial._trial_id)
        try:
            if pending:  # what an outage kept goes first, so later values win
                pending.write(self.trial.storage, self.trial._trial_id)
            write_user_attrs(self.trial, attrs, system_attrs)
        except Exception as e:
            if not self._keep(e):
                raise
            kept = pending_for(self.trial._trial_id)
            kept.attrs.update(attrs)
            kept.system_attrs.update(system_attrs or {})

    def report(self, index: int, last: bool, metrics: dict[str, float]) -> bool:
        from hpo.outage import pending_for

        try:
            if self.multi_objective:  # Optuna's report/should_prune refuse these (hpo.study_view)
                from hpo.study_view import prune_multi_objective

                return prune_multi_objective(self.trial, index, metrics[self.metric])
            self.trial.report(metrics[self.metric], step=index)
            return bool(self.trial.should_prune())
        except Exception as e:
            if not self._keep(e):
                raise
            pending_for(self.trial._trial_id).values[index] = float(metrics[self.metric])
            return False  # no pruner without the other trials' values

    def frozen(self) -> Any:
        from hpo.outage import call_with_retry

        storage = self.trial.study._storage
        return call_with_retry(
            lambda: storage.get_trial(self.trial._trial_id), "read the trial", self.patience, storage=storage
        )

    def complete_trials(self) -> list[Any]:
        import optuna

        from hpo.outage import call_with_retry

        study = self.trial.study
        return call_with_retry(
            lambda: list(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))),
            "read the study's trials",
            self.patience,
            storage=study._storage,
        )


def make_objective(
    ctx: WorkerContext,
    on_trial_start: Callable[[Any], Callable[[int, dict[str, float]], None]] | None = None,
) -> Callable[[Any], float | list[float]]:
    """The Optuna objective: sample a configuration, :func:`run_trial`, prune or return the value.

    ``on_trial_start(trial)`` may return a hook that sees every evaluation (progress display).
    """
    import optuna

    spec = ctx.spec

    multi = len(spec.directions) > 1

    def objective(trial: Any) -> float | list[float]:
        from hpo.outage import call_with_retry

        patience = spec.execution.db_patience
        # A parameter is stored as it is sampled; sampling again after a failed write is safe.
        cfg = call_with_retry(
            lambda: spec.space.sample(trial, spec.training), "sample the trial", patience, storage=trial.storage
        )
        show = on_trial_start(trial) if on_trial_start else None
        recorder = OptunaRecorder(trial, spec.objective.metric, multi, patience)
        result = run_trial(ctx, cfg, recorder, show)
        if result.pruned:
            evaluations = len(result.outcome.history) if result.outcome else 0
            raise optuna.TrialPruned(f"pruned after evaluation {evaluations}")
        assert result.values is not None
        return result.values if multi else result.values[0]

    return objective
