"""Cross-validation (``evaluation: {folds: K}``): a trial trains K models, one per fold of the
pooled train and validation rows, and its value is the mean over the folds.

The folds are cut once per worker (:func:`hpo.data.pool_folds`, stratified and grouped the
task's way) and every trial uses the same ones, so trials differ by configuration only. After
each fold the running mean is reported to the pruner (step = fold number), so a configuration
that is bad on its first fold or two stops there instead of training all K. The test split is
never pooled: ``hpo retrain`` trains the chosen configuration on every pooled row and
evaluates on test.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from typing import Any

from hpo.space import TrialConfig
from hpo.training import Outcome, train_and_evaluate


def fold_context(ctx: Any, index: int) -> Any:
    """The worker context of fold ``index`` (0-based): its train rows as ``train``, its held-out
    rows as ``validation`` (frames and tokenized datasets); the base model is shared."""
    from hpo.context import sorted_by_length
    from hpo.data import pooled_frame

    train_pos, val_pos = ctx.folds[index]
    ctx.base_model()  # loaded once, before the copies share it
    frame = pooled_frame(ctx.data)
    pool = ctx.datasets["pool"]
    data = dataclasses.replace(
        ctx.data,
        train=frame.iloc[train_pos].reset_index(drop=True),
        validation=frame.iloc[val_pos].reset_index(drop=True),
    )
    datasets = {
        "train": pool.select(train_pos),
        "validation": sorted_by_length(pool.select(val_pos)),
        "pool": pool,
    }
    return dataclasses.replace(ctx, data=data, datasets=datasets)


def fold_summary(values: list[float]) -> dict[str, Any]:
    """The user attributes of a cross-validated trial: each fold's value, their mean and
    (sample) standard deviation."""
    return {
        "fold_values": [round(v, 6) for v in values],
        "fold_mean": round(statistics.fmean(values), 6) if values else None,
        "fold_std": round(statistics.stdev(values), 6) if len(values) > 1 else None,
    }


def train_folds(
    ctx: Any,
    cfg: TrialConfig,
    seed: int,
    on_eval: Callable[[int, dict[str, float]], bool] | None = None,
) -> Outcome:
    """Train ``cfg`` on every fold; report the running mean after each; stop when told to.

    Each fold trains and evaluates exactly as a single-split trial does (same seed, same
    schedule on its own rows). ``on_eval(fold, running_means)`` is called after fold 1, 2, ...
    K with the mean of every metric over the folds done so far; True stops (pruned).

    Returns:
        An :class:`Outcome` whose metrics are the means over the folds trained, whose history
        has one entry per fold (the running means), whose compute figures are the folds' sums
        (peak memory: the largest), and whose ``attrs`` hold the per-fold values.
    """
    metric = ctx.spec.objective.metric
    outs: list[Outcome] = []
    history: list[dict[str, float]] = []
    pruned = False
    for index in range(len(ctx.folds)):
        out = train_and_evaluate(fold_context(ctx, index), cfg, seed, select=ctx.spec.objective.select)
        outs.append(out)
        names = [k for k in out.metrics if all(k in o.metrics for o in outs)]
        means = {k: statistics.fmean(o.metrics[k] for o in outs) for k in names}
        history.append({**means, "fold": float(index + 1), "step": float(sum(o.steps for o in outs))})
        if on_eval is not None and on_eval(index + 1, means):
            pruned = True
            break
    seconds = sum(o.train_seconds for o in outs)
    samples = sum(o.samples_per_second * o.train_seconds for o in outs)
    summary = fold_summary([o.metrics[metric] for o in outs if metric in o.metrics])
    return Outcome(
        metrics={k: v for k, v in history[-1].items() if k not in ("fold", "step")},
        history=history,
        pruned=pruned,
        train_seconds=seconds,
        samples_per_second=samples / seconds if seconds > 0 else 0.0,
        peak_memory_mb=max(o.peak_memory_mb for o in outs),
        trainable_params=outs[0].trainable_params,
        total_params=outs[0].total_params,
        steps=sum(o.steps for o in outs),
        selected=len(history),
        attrs={"folds": len(ctx.folds), "folds_trained": len(outs), **summary},
    )
