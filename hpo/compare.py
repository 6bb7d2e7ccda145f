"""``hpo compare`` and ``hpo studies``: studies side by side, strategies within a study.

The counting rules (stopped-early trials, the best trial, trial time) are
:mod:`hpo.results`'s; this module only gathers rows and renders them.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from hpo.errors import UserError
from hpo.results import front_rows, objective_labels, objective_names, strategy_rows, study_row
from hpo.storage import open_existing_storage
from hpo.study import load_studies, study_names

STUDY_COLUMNS = (
    "study",
    "metric",
    "direction",
    "trials",
    "complete",
    "infeasible",
    "pruned",
    "stopped",
    "fail",
    "running",
    "pareto_front",
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
    "infeasible",
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
    "infeasible": "    infeasible",
    "pareto_front": "Pareto front (trials)",
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


# --------------------------------------------------------------------------- trial rules


# --------------------------------------------------------------------------- rows


def compare_rows(storage_url: str, names: list[str], by: str = "study") -> list[dict[str, Any]]:
    """Rows of ``hpo compare``: one per study (``by="study"``), per study and strategy, or per
    trial on the Pareto front of each study (``by="pareto"``).

    Raises:
        UserError: unknown study name or ``by`` value.
    """
    if by not in ("study", "strategy", "pareto"):
        raise UserError(f"--by: expected study, strategy or pareto, got {by!r}")
    studies = load_studies(storage_url, names)
    if by == "study":
        return [study_row(s) for s in studies]
    if by == "pareto":
        return [row for s in studies for row in front_rows(s)]
    return [row for s in studies for row in strategy_rows(s)]


def pareto_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Keys of ``--by pareto`` rows: study, trial, strategy, each objective (as the studies name
    them), trainable share, parameters."""
    objectives = [k for r in rows for k in r if k not in PARETO_FIXED]
    return ["study", "trial", "strategy", *dict.fromkeys(objectives), "trainable_percent", "params"]


PARETO_FIXED = ("study", "trial", "strategy", "trainable_percent", "params")


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
    if isinstance(v, float):  # counts and sizes (trainable_params) stored as floats: no decimals
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _study_table(rows: list[dict[str, Any]]) -> str:
    """Studies as columns, fields as rows: long parameter strings stay readable."""
    keys = [k for k in STUDY_COLUMNS if k != "study"]
    for optional in ("stopped", "infeasible", "pareto_front"):  # shown where a study has them
        if not any(r.get(optional) for r in rows):
            keys.remove(optional)
    grid = [["", *(str(r["study"]) for r in rows)]]
    grid += [[_LABELS.get(k, k), *(_cell(k, r.get(k)) for r in rows)] for k in keys]
    widths = [max(len(line[i]) for line in grid) for i in range(len(grid[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in grid
    )


def _strategy_table(
    rows: list[dict[str, Any]], columns: tuple[str, ...] | list[str] = STRATEGY_COLUMNS
) -> str:
    keys = list(columns)
    for optional in ("stopped", "infeasible"):
        if optional in keys and not any(r.get(optional) for r in rows):
            keys.remove(optional)
    grid = [[k for k in keys]]
    grid += [[_cell(k, r.get(k)) for k in keys] for r in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(keys))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in grid
    )


def render(rows: list[dict[str, Any]], by: str = "study", fmt: str = "table") -> str:
    """Rows as a table (people), JSON or CSV (machines: raw numbers, seconds, shares in 0..1)."""
    columns: tuple[str, ...] = STUDY_COLUMNS if by == "study" else STRATEGY_COLUMNS
    if by == "pareto":
        columns = tuple(pareto_columns(rows))
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
        return (
            "(no trials)"
            if by != "pareto"
            else "(no Pareto front: no complete, feasible trial of a multi-objective study)"
        )
    if by == "pareto":
        return _strategy_table(rows, columns)
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
    out = render(compare_rows(storage_url, names, by), by, fmt)
    if by == "study" and fmt == "table":
        # A multi-objective study has no single best: its Pareto front follows the table.
        for study in load_studies(storage_url, names):
            if len(objective_names(study)) > 1:
                front = front_rows(study)
                title = f"\nPareto front of {study.study_name} ({', '.join(objective_labels(study))}):"
                out += f"{title}\n" + (render(front, "pareto") if front else "(none yet)")
    return out


LIST_COLUMNS = tuple(
    c for c in STUDY_COLUMNS if c not in ("best_trial", "best_params") and not c.endswith(("_s", "_share"))
)
"""Keys of one ``hpo studies`` row: a short ``--by study`` row of every study in the storage."""


def list_studies(storage_url: str) -> list[dict[str, Any]]:
    """One row per study in the storage: trials by state, best value and best strategy.

    The same rules as ``hpo compare`` (:mod:`hpo.results`): a trial that Ray's ASHA stopped
    early is counted as stopped, never as complete, and is never the best.

    Raises:
        UserError: no database at a SQLite path (a listing never creates one), a malformed
            URL, or an unreachable database.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_existing_storage(storage_url)
    rows = []
    for name in study_names(storage):
        row = study_row(optuna.load_study(study_name=name, storage=storage))
        rows.append({k: row[k] for k in LIST_COLUMNS})
    return rows
