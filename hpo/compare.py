"""Compare studies side by side, and strategies within a study.

Counting rules, shared by ``hpo compare``, ``hpo studies``'s per-strategy summary, ``hpo
report`` and ``hpo export``:

- a trial is *stopped early* when it is COMPLETE but carries the user attribute
  ``stopped_early: true``. Ray Tune's ASHA scheduler stops trials without telling Optuna,
  so they are stored as COMPLETE with the value of their last evaluation (NOTES.md); the Ray
  backend marks them. They count with pruned trials in the compute figures and are never
  the best trial, because their value comes from a shorter training run;
- the *best* trial is the best finite value among the other COMPLETE trials;
- trial time is the wall-clock duration Optuna recorded (start to finish) of finished
  trials (COMPLETE, PRUNED, FAIL); compute spent on pruning is the summed duration of
  PRUNED and stopped-early trials, and its share of the total.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from hpo.errors import UserError

STUDY_COLUMNS = (
    "study",
    "metric",
    "direction",
    "trials",
    "complete",
    "pruned",
    "stopped",
    "fail",
    "running",
    "best_value",
    "best_trial",
    "best_strategy",
    "best_params",
    "total_time_s",
    "median_time_s",
    "pruned_time_s",
    "pruned_share",
)
"""Keys of one ``--by study`` row (json and csv keep them; the table labels them)."""

STRATEGY_COLUMNS = (
    "study",
    "strategy",
    "trials",
    "complete",
    "pruned",
    "stopped",
    "fail",
    "best_value",
    "best_trial",
    "best_params",
    "median_time_s",
)
"""Keys of one ``--by strategy`` row."""

_LABELS = {
    "trials": "trials",
    "complete": "  complete",
    "pruned": "  pruned",
    "stopped": "  stopped early",
    "fail": "  failed",
    "running": "  running",
    "best_value": "best value",
    "best_trial": "best trial",
    "best_strategy": "best strategy",
    "best_params": "best parameters",
    "total_time_s": "trial time, total",
    "median_time_s": "trial time, median",
    "pruned_time_s": "time in pruned trials",
    "pruned_share": "  share of total",
}


# --------------------------------------------------------------------------- storage and studies


def open_existing_storage(url: str) -> Any:
    """Open a storage that must already exist (reading commands never create a database).

    Raises:
        UserError: a SQLite file that does not exist, or an unreachable database.
    """
    import warnings

    from optuna.exceptions import ExperimentalWarning

    from hpo.storage import is_sqlite, open_storage, redact, sqlite_path

    if is_sqlite(url):
        db = sqlite_path(url)  # a malformed URL is an error here, before anything is created
        if db != ":memory:" and not Path(db).is_file():
            raise UserError(
                f"storage {redact(url)}: no database at {db} (run a study first, or pass --storage)"
            )
    # Heartbeats are an experimental Optuna feature; a reader never uses them, so say nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return open_storage(url, heartbeat=False)


def study_names(storage: Any) -> list[str]:
    """Names of every study in the storage, sorted."""
    return sorted(s.study_name for s in storage.get_all_studies())


def load_studies(storage_url: str, names: list[str]) -> list[Any]:
    """Load studies by name, in the order given.

    Raises:
        UserError: a name that is not in the storage; the message lists the known ones.
    """
    import optuna

    from hpo.storage import redact

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_existing_storage(storage_url)
    known = study_names(storage)
    unknown = [n for n in names if n not in known]
    if unknown:
        plural = "studies" if len(unknown) > 1 else "study"
        raise UserError(
            f"unknown {plural} {', '.join(map(repr, unknown))} in {redact(storage_url)} "
            f"(known: {', '.join(known) or 'none'})"
        )
    return [optuna.load_study(study_name=n, storage=storage) for n in dict.fromkeys(names)]


def load_one(storage_url: str, name: str) -> Any:
    """Load one study by name (see :func:`load_studies`)."""
    return load_studies(storage_url, [name])[0]


# --------------------------------------------------------------------------- trial rules


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


def _counts(trials: list[Any]) -> dict[str, int]:
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


def _times(trials: list[Any]) -> dict[str, float | None]:
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


# --------------------------------------------------------------------------- rows


def study_row(study: Any) -> dict[str, Any]:
    """One study: trials by state, best trial, trial time and compute spent on pruned trials."""
    from hpo.study import fmt_params

    trials = study.get_trials(deepcopy=False)
    best = best_of(trials, maximizes(study))
    row: dict[str, Any] = {
        "study": study.study_name,
        "metric": study.user_attrs.get("metric", "value"),
        "direction": study.direction.name.lower(),
    }
    row.update(_counts(trials))
    row.update(
        {
            "best_value": best.value if best else None,
            "best_trial": best.number if best else None,
            "best_strategy": trial_strategy(best) if best else None,
            "best_params": fmt_params(best) if best else None,
        }
    )
    row.update(_times(trials))
    return row


def strategy_rows(study: Any) -> list[dict[str, Any]]:
    """Per strategy of one study: trials by state, the best trial and its parameters.

    Rows are sorted best first; strategies without a complete trial come last.
    """
    from hpo.study import fmt_params

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
        counts = _counts(trials)
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


def compare_rows(storage_url: str, names: list[str], by: str = "study") -> list[dict[str, Any]]:
    """Rows of ``hpo compare``: one per study (``by="study"``) or per study and strategy.

    Raises:
        UserError: unknown study name or ``by`` value.
    """
    if by not in ("study", "strategy"):
        raise UserError(f"--by: expected study or strategy, got {by!r}")
    studies = load_studies(storage_url, names)
    if by == "study":
        return [study_row(s) for s in studies]
    return [row for s in studies for row in strategy_rows(s)]


# --------------------------------------------------------------------------- output


def _seconds(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 60:
        return f"{v:.1f}s"
    m, s = divmod(int(round(v)), 60)
    return f"{m}m {s:02d}s" if m < 60 else f"{m // 60}h {m % 60:02d}m"


def _cell(key: str, v: Any) -> str:
    if v is None or v == "":
        return "-"
    if key.endswith("_time_s"):
        return _seconds(v)
    if key == "pruned_share":
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _study_table(rows: list[dict[str, Any]]) -> str:
    """Studies as columns, fields as rows: long parameter strings stay readable."""
    keys = [k for k in STUDY_COLUMNS if k != "study"]
    if not any(r["stopped"] for r in rows):
        keys.remove("stopped")
    grid = [["", *(str(r["study"]) for r in rows)]]
    grid += [[_LABELS.get(k, k), *(_cell(k, r.get(k)) for r in rows)] for k in keys]
    widths = [max(len(line[i]) for line in grid) for i in range(len(grid[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in grid
    )


def _strategy_table(rows: list[dict[str, Any]]) -> str:
    keys = list(STRATEGY_COLUMNS)
    if not any(r["stopped"] for r in rows):
        keys.remove("stopped")
    grid = [[k for k in keys]]
    grid += [[_cell(k, r.get(k)) for k in keys] for r in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(keys))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in grid
    )


def render(rows: list[dict[str, Any]], by: str = "study", fmt: str = "table") -> str:
    """Rows as a table (people), JSON or CSV (machines: raw numbers, seconds, shares in 0..1)."""
    columns = STUDY_COLUMNS if by == "study" else STRATEGY_COLUMNS
    if fmt == "json":
        return json.dumps([{k: r.get(k) for k in columns} for r in rows], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise UserError(f"--format: expected table, json or csv, got {fmt!r}")
    if not rows:
        return "(no trials)"
    return _study_table(rows) if by == "study" else _strategy_table(rows)


def compare(storage_url: str, names: list[str], by: str = "study", fmt: str = "table") -> str:
    """What ``hpo compare`` prints.

    Args:
        storage_url: Storage holding the studies.
        names: Study names, shown in this order.
        by: ``study`` (one column per study) or ``strategy`` (best trial of every strategy
            within each study).
        fmt: ``table``, ``json`` or ``csv``.

    Returns:
        The rendered comparison.

    Raises:
        UserError: unknown study name, format or ``by`` value.
    """
    return render(compare_rows(storage_url, names, by), by, fmt)
