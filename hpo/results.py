"""What a study's trials amount to: the rules every reader shares.

One rule each, called by ``hpo studies``, ``hpo compare``, ``hpo report``, ``hpo export``,
the end-of-run summary and the live display:

- a trial is *stopped early* when it is COMPLETE but carries the user attribute
  ``stopped_early: true``. Ray Tune's ASHA scheduler stops trials without telling Optuna,
  so they are stored as COMPLETE with the value of their last evaluation (NOTES.md); the Ray
  backend marks them. They count with pruned trials in the compute figures and are never
  the best trial, because their value comes from a shorter training run;
- the *best* trial is the best finite value among the other COMPLETE trials (ties: the
  earliest);
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


def is_full_complete(trial: Any) -> bool:
    """COMPLETE with a finite value and trained for the full budget."""
    import optuna

    return (
        trial.state == optuna.trial.TrialState.COMPLETE
        and not is_stopped_early(trial)
        and trial.value is not None
        and math.isfinite(trial.value)
    )


def maximizes(study: Any) -> bool:
    """True when the study's (single) objective is maximized."""
    import optuna

    return bool(study.direction == optuna.study.StudyDirection.MAXIMIZE)


def best_of(trials: list[Any], maximize: bool) -> Any | None:
    """The best fully completed trial (ties: the earliest), or None."""
    best = None
    for t in trials:
        if not is_full_complete(t):
            continue
        if best is None or (t.value > best.value if maximize else t.value < best.value):
            best = t
    return best


def best_trial(study: Any) -> Any | None:
    """The study's best fully completed trial (stopped-early trials excluded), or None."""
    return best_of(study.get_trials(deepcopy=False), maximizes(study))


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
    """Trials by state: complete, pruned, stopped (early), fail, running (incl. waiting)."""
    import optuna

    TS = optuna.trial.TrialState
    out = {"trials": len(trials), "complete": 0, "pruned": 0, "stopped": 0, "fail": 0, "running": 0}
    for t in trials:
        if is_stopped_early(t):
            out["stopped"] += 1
        elif t.state == TS.COMPLETE:
            out["complete"] += 1
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
    best = best_of(trials, maximizes(study))
    row: dict[str, Any] = {
        "study": study.study_name,
        "metric": study.user_attrs.get("metric", "value"),
        "direction": study.direction.name.lower(),
    }
    row.update(state_counts(trials))
    row.update(
        {
            "best_value": best.value if best else None,
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

    maximize = maximizes(study)
    groups: dict[str, list[Any]] = {}
    for t in study.get_trials(deepcopy=False):
        s = trial_strategy(t)
        if s is not None:
            groups.setdefault(s, []).append(t)
    rows = []
    for s, trials in groups.items():
        best = best_of(trials, maximize)
        full = [d for t in trials if is_full_complete(t) and (d := duration_s(t)) is not None]
        row: dict[str, Any] = {"study": study.study_name, "strategy": s}
        counts = state_counts(trials)
        row.update({k: counts[k] for k in ("trials", "complete", "pruned", "stopped", "fail")})
        row.update(
            {
                "best_value": best.value if best else None,
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
