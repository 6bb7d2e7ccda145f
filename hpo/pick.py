"""``hpo export --pick "f1 >= 0.85, min trainable_params"``: choose a point on the Pareto front.

A pick is clauses separated by commas: filters (``NAME >= NUMBER``, also ``<=``, ``>``, ``<``)
that every candidate must pass, and at most one goal (``min NAME`` or ``max NAME``) that
chooses among those left; without a goal the best on the primary metric is chosen (ties: the
other objectives, then the earliest trial). NAME is an objective of the study, a metric of its
task (the trial's validation value) or anything a trial records as a number
(``trainable_percent``, ``peak_memory_mb``, ...). Candidates: the Pareto front of a
multi-objective study; every feasible, fully completed trial of a single-objective one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from hpo.errors import UserError

_CLAUSE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")
_GOAL = re.compile(r"^\s*(min|max)\s+([A-Za-z_][\w.]*)\s*$")
_SYNTAX = "expected clauses like 'f1 >= 0.85' or 'min trainable_params' separated by commas"


@dataclass(frozen=True)
class Pick:
    """A parsed ``--pick``: filters (name, operator, bound) and an optional goal (min/max, name)."""

    filters: tuple[tuple[str, str, float], ...]
    goal: tuple[str, str] | None
    text: str


def parse_pick(text: str) -> Pick:
    """Parse a ``--pick`` expression.

    Raises:
        UserError: one line naming the clause that does not parse.
    """
    filters: list[tuple[str, str, float]] = []
    goal: tuple[str, str] | None = None
    clauses = [c for c in text.split(",")]
    if not text.strip():
        raise UserError(f"--pick: empty; {_SYNTAX}")
    for clause in clauses:
        m = _CLAUSE.match(clause)
        g = _GOAL.match(clause)
        if m:
            try:
                bound = float(m.group(3))
            except ValueError:
                raise UserError(f"--pick: {clause.strip()!r}: {m.group(3)!r} is not a number") from None
            if not math.isfinite(bound):
                raise UserError(f"--pick: {clause.strip()!r}: the bound must be finite")
            filters.append((m.group(1), m.group(2), bound))
        elif g:
            if goal is not None:
                raise UserError(f"--pick: {clause.strip()!r}: only one min/max goal is allowed")
            goal = (g.group(1), g.group(2))
        else:
            raise UserError(f"--pick: cannot read {clause.strip()!r}; {_SYNTAX}")
    return Pick(tuple(filters), goal, text.strip())


def quantity(trial: Any, name: str, names: list[str]) -> float | None:
    """``name`` of ``trial``: an objective's value, else a recorded number (``val_NAME`` for a
    task metric), else None."""
    if name in names and trial.values and len(trial.values) == len(names):
        return float(trial.values[names.index(name)])
    for key in (name, f"val_{name}"):
        v = trial.user_attrs.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def _passes(value: float, op: str, bound: float) -> bool:
    return {">=": value >= bound, "<=": value <= bound, ">": value > bound, "<": value < bound}[op]


def apply_pick(pick: Pick, candidates: list[Any], names: list[str], study_name: str) -> Any:
    """The candidate ``pick`` chooses (``candidates`` come best on the primary metric first).

    Raises:
        UserError: a name no candidate records, or no candidate passes the filters (the message
            gives the range each filtered quantity has on the candidates).
    """
    if not candidates:
        raise UserError(f"study {study_name!r} has no complete, feasible trial to pick from")
    used = [f[0] for f in pick.filters] + ([pick.goal[1]] if pick.goal else [])
    for name in used:
        if all(quantity(t, name, names) is None for t in candidates):
            known = sorted(
                {
                    *names,
                    *(
                        k.removeprefix("val_")
                        for t in candidates
                        for k, v in t.user_attrs.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                    ),
                }
            )
            raise UserError(f"--pick: unknown quantity {name!r} (known: {', '.join(known)})")
    left = []
    for t in candidates:
        vals = [quantity(t, n, names) for n, _, _ in pick.filters]
        if all(v is not None and _passes(v, op, b) for v, (_, op, b) in zip(vals, pick.filters, strict=True)):
            left.append(t)
    if not left:
        ranges = []
        for name in dict.fromkeys(n for n, _, _ in pick.filters):
            got = [v for t in candidates if (v := quantity(t, name, names)) is not None]
            ranges.append(f"{name} {min(got):.4g}..{max(got):.4g}")
        raise UserError(
            f"--pick {pick.text!r}: none of the {len(candidates)} candidate trial(s) of study {study_name!r} "
            f"passes ({'; '.join(ranges)})"
        )
    if pick.goal is None:
        return left[0]
    sign = -1.0 if pick.goal[0] == "max" else 1.0
    goal_name = pick.goal[1]
    scored = [
        (sign * v, i, t) for i, t in enumerate(left) if (v := quantity(t, goal_name, names)) is not None
    ]
    return min(scored, key=lambda s: (s[0], s[1]))[2] if scored else left[0]
