"""Several objectives and constraints in a study file: what may be named and how it is checked.

``objective: {metrics: [f1, trainable_params], directions: [maximize, minimize]}`` makes a
multi-objective study: the first name is a metric of the task (the *primary* metric: pruning,
``objective.select`` and the retrain use it), then one or two costs that every trial records.
``constraints: {trainable_percent: "<= 1.0"}`` bounds what a trial recorded; a trial that breaks
one is recorded infeasible (user attributes ``feasible: false`` and ``infeasible``) and the
sampler steers away from it (Optuna's ``constraints_func``). Nothing here imports Optuna.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpo.config.fields import Err, ObjectiveSpec

COSTS: dict[str, str] = {
    "trainable_params": "minimize",
    "train_seconds": "minimize",
    "peak_memory_mb": "minimize",
    "samples_per_second": "maximize",
}
"""Costs a trial records (user attributes of the same name) -> their natural direction."""

CONSTRAINT_KEYS: tuple[str, ...] = (*COSTS, "trainable_percent", "total_params")
"""What a constraint may bound, besides the task's metrics (validation values)."""

CONSTRAINT_SAMPLERS = ("tpe", "gp", "nsga2")
"""Samplers that take Optuna's ``constraints_func`` and so steer away from infeasible trials."""

OPERATORS = ("<=", ">=")


@dataclass(frozen=True)
class Constraint:
    """``name op bound``: a recorded quantity must stay at or below (``<=``) or above the bound."""

    name: str
    op: str
    bound: float

    def violation(self, value: float) -> float:
        """How far ``value`` breaks the constraint (> 0 infeasible, <= 0 feasible: Optuna's sign)."""
        return value - self.bound if self.op == "<=" else self.bound - value

    @property
    def text(self) -> str:
        """``trainable_percent <= 1``."""
        return f"{self.name} {self.op} {self.bound:g}"

    def attr(self) -> str:
        """The trial user attribute the constraint reads (a task metric: ``val_<metric>``)."""
        return self.name if self.name in CONSTRAINT_KEYS else f"val_{self.name}"


def parse_constraint(name: str, raw: Any) -> Constraint:
    """``"<= 1.0"`` (or ``">= 0.8"``) for ``name``.

    Raises:
        ValueError: not an operator followed by a finite number; the message says what was expected.
    """
    text = str(raw).strip() if isinstance(raw, str) else ""
    op = next((o for o in OPERATORS if text.startswith(o)), None)
    if op is None:
        raise ValueError(f"expected '<= NUMBER' or '>= NUMBER' in quotes, got {raw!r}")
    try:
        bound = float(text[len(op) :])
    except ValueError:
        raise ValueError(f"expected a number after {op!r}, got {raw!r}") from None
    if not math.isfinite(bound):
        raise ValueError(f"expected a finite bound, got {raw!r}")
    return Constraint(name, op, bound)


def parse_constraints(raw: Any, task_metrics: Sequence[str], err: Err) -> list[Constraint]:
    """The study file's ``constraints:`` mapping (None: none); problems go to ``err``."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        err(f"constraints: expected a mapping like {{trainable_percent: '<= 1.0'}}, got {type(raw).__name__}")
        return []
    known = (*CONSTRAINT_KEYS, *task_metrics)
    out = []
    for name, value in raw.items():
        if name not in known:
            err(f"constraints.{name}: unknown quantity (known: {', '.join(known)})")
            continue
        try:
            out.append(parse_constraint(str(name), value))
        except ValueError as e:
            err(f"constraints.{name}: {e}")
    return out


def constraints_dict(constraints: Sequence[Constraint]) -> dict[str, str]:
    """The stored form: ``{trainable_percent: '<= 1'}``."""
    return {c.name: f"{c.op} {c.bound:g}" for c in constraints}


def violations(constraints: Sequence[Constraint], attrs: Mapping[str, Any]) -> list[float]:
    """One violation per constraint from a trial's user attributes (0.0 where it recorded none)."""
    out = []
    for c in constraints:
        v = attrs.get(c.attr())
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(c.violation(float(v)))
        else:
            out.append(0.0)
    return out


def feasibility_attrs(constraints: Sequence[Constraint], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``feasible`` and, when it is not, ``infeasible`` (the broken constraints with the values)."""
    if not constraints:
        return {}
    broken = [
        f"{c.text} (got {attrs.get(c.attr())})"
        for c, v in zip(constraints, violations(constraints, attrs), strict=True)
        if v > 0
    ]
    return {"feasible": not broken, **({"infeasible": "; ".join(broken)} if broken else {})}


class ConstraintsFunc:
    """Optuna's ``constraints_func``: the violations of a finished trial, read from its attributes.

    A class, not a closure, so a worker process can be handed the sampler settings.
    """

    def __init__(self, constraints: Sequence[Constraint]):
        self.constraints = tuple(constraints)

    def __call__(self, trial: Any) -> list[float]:
        return violations(self.constraints, trial.user_attrs)


def check_objectives(
    objective: ObjectiveSpec, raw: Any, task_metrics: Sequence[str], natural: Mapping[str, str], err: Err
) -> None:
    """``objective.metrics``/``directions`` of a study file; on success the primary metric and its
    direction become ``objective.metric``/``direction``, so single-objective code reads them.

    Args:
        objective: The parsed section.
        raw: The section as written (to tell ``metric`` given from its default).
        task_metrics: The task's metric names.
        natural: Task metric -> its natural direction.
        err: Receives the problems.
    """
    given = raw if isinstance(raw, dict) else {}
    if objective.metrics is None:
        if objective.directions is not None:
            err("objective.directions: needs objective.metrics (one direction per metric)")
        return
    names = objective.metrics
    for key in ("metric", "direction"):
        if key in given:
            err(f"objective.{key}: not with objective.metrics (write objective.{key}s: [...] only)")
    if not 2 <= len(names) <= 3:
        err(f"objective.metrics: expected 2 or 3 names (a task metric, then costs), got {len(names)}")
        return
    primary, costs = names[0], names[1:]
    ok = True
    if primary not in task_metrics:
        err(
            f"objective.metrics[0]: expected a metric of the task first (known: {', '.join(task_metrics)}), "
            f"got {primary!r}"
        )
        ok = False
    for i, c in enumerate(costs, start=1):
        if c not in COSTS:
            err(f"objective.metrics[{i}]: unknown cost {c!r} (known: {', '.join(COSTS)})")
            ok = False
    if len(set(names)) != len(names):
        err(f"objective.metrics: a name appears twice in {names}")
        ok = False
    directions = objective.directions
    if directions is not None:
        if len(directions) != len(names):
            err(f"objective.directions: expected {len(names)} (one per metric), got {len(directions)}")
            ok = False
        for i, d in enumerate(directions):
            if d not in ("maximize", "minimize"):
                err(f"objective.directions[{i}]: expected maximize or minimize, got {d!r}")
                ok = False
    if not ok:
        return
    resolved = (
        list(directions) if directions else [natural.get(primary, "maximize"), *(COSTS[c] for c in costs)]
    )
    objective.directions = resolved
    objective.metric = primary
    objective.direction = resolved[0]


def objective_names(objective: ObjectiveSpec) -> list[str]:
    """Every objective's name, the primary first."""
    return list(objective.metrics) if objective.metrics else [objective.metric]


def objective_values(
    names: Sequence[str], metrics: Mapping[str, float], attrs: Mapping[str, Any]
) -> list[float]:
    """A trial's values: the primary metric from ``metrics``, each cost from the recorded ``attrs``."""
    return [float(metrics[names[0]]), *(float(attrs[c]) for c in names[1:])]
