"""What a study's trials amount to: the rules every reader shares.

One rule each, called by ``hpo studies``, ``hpo compare``, ``hpo report``, ``hpo export``,
the end-of-run summary and the live display:

- a trial is *stopped early* when it is COMPLETE but carries the user attribute
  ``stopped_early: true``. Ray Tune's ASHA scheduler stops trials without telling Optuna,
  so they are stored as COMPLETE with the value of their last evaluation (NOTES.md); the Ray
  backend marks them. They count with pruned trials in the compute figures and are never
  the best trial, because their value comes from a shorter training run;
- the *best* trial is the best finite value among the other COMPLETE trials that are feasible
  (no ``constraints:`` broken; user attribute ``feasible``), ties: the earliest. In a
  multi-objective study, values are compared on the primary metric (the first objective), ties
  broken by the other objectives in order, then the earliest: so the best trial is always on
  the Pareto front;
- the *Pareto front* of a multi-objective study: the feasible, fully completed trials that no
  other one dominates (at least as good on every objective, better on one); a repeat
  (``repeat_of``) stands for the trial it repeats and is left out;
- trial time is the wall-clock duration Optuna recorded (start to finish) of finished
  trials (COMPLETE, PRUNED, FAIL); compute spent on pruning is the summed duration of
  PRUNED and stopped-early trials, and its share of the total.
"""

from __future__ import annotations

import math
import statistics
from typing import Any


def is_stopped_early(trial: Any) -> bool:
    """COMPLETE, but stopped by a scheduler before the full budget (Ray Tune's ASHA)."""
    import optuna

    return trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs.get("stopped_early") is True


def primary_value(trial: Any) -> float | None:
    """The trial's value on the primary (first) objective, or None."""
    values = trial.values
    return None if not values else float(values[0])


def is_full_complete(trial: Any) -> bool:
    """COMPLETE with finite values and trained for the full budget."""
    import optuna

    return (
        trial.state == optuna.trial.TrialState.COMPLETE
        and not is_stopped_early(trial)
        and bool(trial.values)
        and all(math.isfinite(v) for v in trial.values)
    )


def is_feasible(trial: Any) -> bool:
    """No ``constraints:`` broken (trials of studies without constraints are all feasible)."""
    return trial.user_attrs.get("feasible") is not False


def directions(study: Any) -> list[str]:
    """``maximize``/``minimize`` per objective, the primary first."""
    return [d.name.lower() for d in study.directions]


def objective_names(study: Any) -> list[str]:
    """The objectives' names, the primary first (``value`` where the study named none)."""
    names = list(study.metric_names or [])
    n = len(study.directions)
    if len(names) != n:
        names = [str(study.user_attrs.get("metric", "value"))] + [f"value{i}" for i in range(1, n)]
    return names


def objective_labels(study: Any) -> list[str]:
    """``f1 max``, ``trainable_params min``: each objective with its direction."""
    return [f"{n} {d[:3]}" for n, d in zip(objective_names(study), directions(study), strict=True)]


def maximizes(study: Any) -> bool:
    """True when the study's primary objective is maximized."""
    return directions(study)[0] == "maximize"


def _sort_key(trial: Any, dirs: list[str]) -> tuple[float | int, ...]:
    """Smaller is better: each objective in order (signed by its direction), then the number."""
    signed = [-v if d == "maximize" else v for v, d in zip(trial.values, dirs, strict=False)]
    return (*signed, trial.number)


def best_of(trials: list[Any], dirs: list[str] | bool) -> Any | None:
    """The best feasible, fully completed trial, or None.

    ``dirs``: the study's directions (:func:`directions`); True/False stands for one maximized
    or minimized objective. Ties: the other objectives in order, then the earliest.
    """
    if isinstance(dirs, bool):
        dirs = ["maximize" if dirs else "minimize"]
    candidates = [t for t in trials if is_full_complete(t) and is_feasible(t)]
    return min(candidates, key=lambda t: _sort_key(t, dirs), default=None)


def best_trial(study: Any) -> Any | None:
    """The study's best feasible, fully completed trial (stopped-early trials excluded), or None."""
    return best_of(study.get_trials(deepcopy=False), directions(study))


def dominates(a: Any, b: Any, dirs: list[str]) -> bool:
    """``a`` is at least as good as ``b`` on every objective and better on one."""
    signed_a = [-v if d == "maximize" else v for v, d in zip(a.values, dirs, strict=True)]
    signed_b = [-v if d == "maximize" else v for v, d in zip(b.values, dirs, strict=True)]
    return all(x <= y for x, y in zip(signed_a, signed_b, strict=True)) and signed_a != signed_b


def pareto_front(study: Any) -> list[Any]:
    """The Pareto front: feasible, fully completed trials (repeats left out) that no other one
    dominates, best on the primary objective first. A single-objective study's front is its
    best trial."""
    dirs = directions(study)
    pool = [
        t
        for t in study.get_trials(deepcopy=False)
        if is_full_complete(t) and is_feasible(t) and "repeat_of" not in t.user_attrs
    ]
    if len(dirs) == 1:
        best = best_of(pool, dirs)
        return [] if best is None else [best]
    front = [t for t in pool if not any(dominates(o, t, dirs) for o in pool if o is not t)]
    return sorted(front, key=lambda t: _sort_key(t, dirs))


def trial_strategy(trial: Any) -> str | None:
    """The trial's strategy: its ``strategy`` parameter, else its user attribute."""
    s = trial.params.get("strategy", trial.user_attrs.get("strategy"))
    return None if s is None else str(s)


def run_failure(trials: list[Any]) -> str | None:
    """Why a run whose new trials are ``trials`` failed, or None when it did its job.

    A run fails when none of its trials ended COMPLETE or PRUNED: every one FAILED (the
    reasons are grouped, most frequent first) or none ran. A pruned trial is a normal outcome
    (it ran and the pruner judged it), so a run of pruned trials is no error.
    """
    import optuna

    TS = optuna.trial.TrialState
    if any(t.state in (TS.COMPLETE, TS.PRUNED) for t in trials):
        return None
    failed = [t for t in trials if t.state == TS.FAIL]
    if not failed:
        return "no trial of this run completed: none ran"
    reasons: dict[str, int] = {}
    for t in failed:
        # one line: a reason may hold a multi-line exception message (up to 1000 characters)
        reason = " ".join(str(t.user_attrs.get("fail_reason") or "no reason recorded").split())
        reason = reason if len(reason) <= 200 else reason[:199] + "…"
        reasons[reason] = reasons.get(reason, 0) + 1
    groups = "; ".join(f"{n}x {r}" for r, n in sorted(reasons.items(), key=lambda rn: (-rn[1], rn[0])))
    return f"no trial of this run completed: {len(failed)} failed ({groups})"


def duration_s(trial: Any) -> float | None:
    """Wall-clock seconds from start to finish, or None while running / never started."""
    d = trial.duration
    return None if d is None else d.total_seconds()


def state_counts(trials: list[Any]) -> dict[str, int]:
    """Trials by state: complete (of which infeasible), pruned, stopped (early), fail, running
    (incl. waiting)."""
    import optuna

    TS = optuna.trial.TrialState
    out = {"trials": len(trials), "complete": 0, "pruned": 0, "stopped": 0, "fail": 0, "running": 0}
    out["infeasible"] = 0
    for t in trials:
        if is_stopped_early(t):
            out["stopped"] += 1
        elif t.state == TS.COMPLETE:
            out["complete"] += 1
            out["infeasible"] += not is_feasible(t)
        elif t.state == TS.PRUNED:
            out["pruned"] += 1
        elif t.state == TS.FAIL:
            out["fail"] += 1
        elif t.state in (TS.RUNNING, TS.WAITING):
            out["running"] += 1
    return out


def time_figures(trials: list[Any]) -> dict[str, float | None]:
    """Total and median trial time, time in pruned and stopped trials and its share (seconds)."""
    import optuna

    TS = optuna.trial.TrialState
    finished = [(t, duration_s(t)) for t in trials if t.state.is_finished()]
    secs = [s for _, s in finished if s is not None]
    pruned = sum(s for t, s in finished if s is not None and (t.state == TS.PRUNED or is_stopped_early(t)))
    total = sum(secs)
    return {
        "total_time_s": round(total, 3) if secs else None,
        "median_time_s": round(statistics.median(secs), 3) if secs else None,
        "pruned_time_s": round(pruned, 3) if secs else None,
        "pruned_share": round(pruned / total, 4) if total > 0 else None,
    }


def study_row(study: Any) -> dict[str, Any]:
    """One study: trials by state, best trial, trial time and compute spent on pruned trials."""

    trials = study.get_trials(deepcopy=False)
    dirs = directions(study)
    best = best_of(trials, dirs)
    row: dict[str, Any] = {
        "study": study.study_name,
        "metric": ", ".join(objective_names(study)),
        "direction": ", ".join(dirs),
    }
    row.update(state_counts(trials))
    row.update(
        {
            "pareto_front": len(pareto_front(study)) if len(dirs) > 1 else None,
            "best_value": primary_value(best) if best else None,
            "best_trial": best.number if best else None,
            "best_strategy": trial_strategy(best) if best else None,
            "best_params": fmt_params(best) if best else None,
        }
    )
    row.update(time_figures(trials))
    return row


def strategy_rows(study: Any) -> list[dict[str, Any]]:
    """Per strategy of one study: trials by state, the best trial and its parameters.

    Rows are sorted best first; strategies without a complete trial come last.
    """

    dirs = directions(study)
    maximize = dirs[0] == "maximize"
    groups: dict[str, list[Any]] = {}
    for t in study.get_trials(deepcopy=False):
        s = trial_strategy(t)
        if s is not None:
            groups.setdefault(s, []).append(t)
    rows = []
    for s, trials in groups.items():
        best = best_of(trials, dirs)
        full = [d for t in trials if is_full_complete(t) and (d := duration_s(t)) is not None]
        row: dict[str, Any] = {"study": study.study_name, "strategy": s}
        counts = state_counts(trials)
        row.update({k: counts[k] for k in ("trials", "complete", "infeasible", "pruned", "stopped", "fail")})
        row.update(
            {
                "best_value": primary_value(best) if best else None,
                "best_trial": best.number if best else None,
                "best_params": fmt_params(best) if best else "",
                # median of full-length trials: what one more trial of this strategy costs
                "median_time_s": round(statistics.median(full), 3) if full else None,
            }
        )
        rows.append(row)
    return sorted(
        rows,
        key=lambda r: (
            r["best_value"] is None,
            -(r["best_value"] or 0.0) if maximize else (r["best_value"] or 0.0),
            r["strategy"],
        ),
    )


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


def front_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial on the study's Pareto front (best on the primary metric first): its
    objectives' values under their names, strategy, trainable share and parameters."""
    names = objective_names(study)
    rows = []
    for t in pareto_front(study):
        row: dict[str, Any] = {"study": study.study_name, "trial": t.number, "strategy": trial_strategy(t)}
        # counts stay whole numbers (Optuna stores every value as a float)
        row.update(
            {n: int(v) if n == "trainable_params" else v for n, v in zip(names, t.values, strict=False)}
        )
        row["trainable_percent"] = t.user_attrs.get("trainable_percent")
        row["params"] = fmt_params(t)
        rows.append(row)
    return rows
