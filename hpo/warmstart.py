"""Warm starts (``hpo run STUDY --warm-start NAME[@STORAGE] [--top K]``): the best K complete
trials of an earlier study become the first trials of this one.

An earlier study (a smaller model, a subset of the data, last month's run) already knows which
configurations work. Its best K fully completed trials are mapped onto the new search space and
enqueued (``study.enqueue_trial``) before any sampled trial, so the new study trains them first
and its sampler starts from their results:

- a parameter the new space does not have is dropped;
- a parameter the new space has but the old one did not search takes the value the old trial
  trained with (its stored config), else the new study's sampler draws it;
- a numeric value outside the new range is clipped to it (and put on the range's step);
- a categorical value that is not among the new choices is dropped (the sampler draws it); a
  trial whose *strategy* the new space does not offer is skipped, and said so.

Each enqueued trial carries the user attribute ``warm_start_of`` (``{study, trial, value}``) and,
when its parameters changed, ``warm_start_changes``. The study records ``warm_start`` (source,
the trials enqueued), so a resumed run never enqueues them again; workers that join
(``hpo worker``, the local driver's processes) never enqueue.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpo.errors import UserError
from hpo.space import Param, SearchSpace

STUDY_ATTR = "warm_start"
"""Study user attribute: where the study was warm-started from and which trials were enqueued."""
TRIAL_ATTR = "warm_start_of"
"""Trial user attribute: ``{study, trial, value}`` of the earlier trial it repeats."""


@dataclass(frozen=True)
class WarmStart:
    """Where to warm-start from (``--warm-start NAME[@STORAGE] --top K``)."""

    study: str
    """The earlier study's name."""
    storage: str | None = None
    """Its storage URL; None: the storage of the study being run."""
    top: int = 3
    """How many of its best complete trials to enqueue."""


def parse_warm_start(text: str, top: int = 3) -> WarmStart:
    """``NAME`` or ``NAME@STORAGE`` (the first ``@`` separates them: URLs may hold more).

    Raises:
        UserError: an empty name, an empty storage after ``@``, or ``top`` below 1.
    """
    name, sep, storage = text.partition("@")
    if not name.strip():
        raise UserError(f"--warm-start: expected NAME or NAME@STORAGE, got {text!r}")
    if sep and not storage.strip():
        raise UserError(f"--warm-start: no storage URL after '@' in {text!r}")
    if top < 1:
        raise UserError(f"--top: must be >= 1, got {top}")
    return WarmStart(name.strip(), storage.strip() or None, top)


@dataclass
class Mapped:
    """One earlier trial mapped onto the new space."""

    number: int
    value: float
    params: dict[str, Any] | None
    """The parameters to enqueue; None: skipped (its strategy is not in the new space)."""
    changes: list[str] = field(default_factory=list)
    """What was clipped or dropped, or why the trial was skipped, for people."""


def ranked(study: Any) -> list[Any]:
    """The study's fully completed, trained trials, best first (its first objective; ties:
    the earliest); a repeat (``repeat_of``) or a configuration seen before is left out."""
    from hpo.results import is_full_complete

    sign = -1.0 if study.directions[0].name == "MAXIMIZE" else 1.0
    trials = [
        t for t in study.get_trials(deepcopy=False) if is_full_complete(t) and "repeat_of" not in t.user_attrs
    ]
    out, seen = [], set()
    for t in sorted(trials, key=lambda t: (sign * t.values[0], t.number)):
        key = json.dumps(t.params, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _fit(p: Param, value: Any, name: str, changes: list[str]) -> Any:
    """``value`` on the new parameter ``p``: clipped to a range, None if not a choice."""
    if p.kind == "categorical":
        if value in p.choices:
            return value
        changes.append(f"dropped {name}={value!r} (not among {', '.join(map(str, p.choices))})")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        changes.append(f"dropped {name}={value!r} (not a number)")
        return None
    fitted = min(max(float(value), p.low), p.high)
    if p.step:
        fitted = min(p.low + round((fitted - p.low) / p.step) * p.step, p.high)
    if p.kind == "int":
        fitted = int(round(fitted))
    if fitted != value:
        changes.append(f"clipped {name} {value:g} -> {fitted:g}")
    return fitted


def map_trial(trial: Any, space: SearchSpace) -> Mapped:
    """One earlier trial's parameters as the new space names and bounds them."""
    stored: dict[str, Any] = {}
    try:
        cfg = json.loads(trial.user_attrs.get("config") or "{}")
        stored = {**cfg.get("training", {}), **cfg.get("strategy_params", {})}
    except (TypeError, ValueError, AttributeError):
        pass
    value = float(trial.values[0])
    strategy = trial.params.get("strategy", trial.user_attrs.get("strategy"))
    if strategy not in space.strategies:
        why = f"skipped: strategy {strategy!r} is not in the new space ({', '.join(space.strategies)})"
        return Mapped(trial.number, value, None, [why])
    params: dict[str, Any] = {}
    changes: list[str] = []
    used = {"strategy"}
    if space.strategy.kind == "categorical":
        params["strategy"] = strategy
    for name, (opt_name, p) in space.params_for(str(strategy)).items():
        if p.kind == "fixed":
            continue
        for key in (opt_name, name, f"{strategy}.{name}"):
            if key in trial.params:
                old = trial.params[key]
                used.add(key)
                break
        else:
            if stored.get(name) is None:
                continue  # the new study's sampler draws it
            old = stored[name]
        fitted = _fit(p, old, opt_name, changes)
        if fitted is not None:
            params[opt_name] = fitted
    dropped = sorted(set(trial.params) - used)
    if dropped:
        changes.append(f"dropped {', '.join(dropped)} (not in the new space)")
    return Mapped(trial.number, value, params, changes)


def source_trials(ws: WarmStart, url: str, name: str) -> list[Any]:
    """The earlier study's trials, best first (:func:`ranked`); ``hpo run`` calls it before it
    creates anything, so a bad source costs nothing.

    Raises:
        UserError: the study being run, an unknown study or storage, no complete trial.
    """
    from hpo.study import load_one

    if ws.study == name and ws.storage in (None, url):
        raise UserError(f"--warm-start: {ws.study!r} is the study being run; name an earlier study")
    best = ranked(load_one(ws.storage or url, ws.study))
    if not best:
        raise UserError(f"--warm-start: study {ws.study!r} has no complete trial to start from")
    return best


def enqueue_warm_start(
    study: Any, space: SearchSpace, ws: WarmStart, url: str, say: Callable[[str], None] | None = None
) -> list[int]:
    """Enqueue the best ``ws.top`` trials of ``ws.study`` as the next trials of ``study``.

    Once per study: a study that records a warm start (:data:`STUDY_ATTR`) is left as it is.

    Returns:
        The numbers of the trials enqueued.

    Raises:
        UserError: the earlier study or its storage cannot be opened, or it has no complete trial.
    """
    import optuna

    from hpo.storage import redact

    def tell(line: str) -> None:
        if say is not None:
            say(line)

    where = ws.storage or url
    source = f"{ws.study}@{redact(where)}" if ws.storage else ws.study
    done = study.user_attrs.get(STUDY_ATTR)
    if done:
        tell(
            f"warm start: already done from {done.get('source')} (trials {done.get('trials')}); not enqueued again"
        )
        return []
    best = source_trials(ws, url, study.study_name)
    numbers: list[int] = []
    for m in (map_trial(t, space) for t in best[: ws.top]):
        head = f"warm start: {ws.study} trial {m.number} ({m.value:.4g})"
        if m.params is None:
            tell(f"{head} {m.changes[0]}")
            continue
        attrs: dict[str, Any] = {TRIAL_ATTR: {"study": source, "trial": m.number, "value": m.value}}
        if m.changes:
            attrs["warm_start_changes"] = "; ".join(m.changes)
        study.enqueue_trial(m.params, user_attrs=attrs)
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        numbers.append(waiting[-1].number)
        tell(f"{head} enqueued as trial {numbers[-1]}" + (f": {'; '.join(m.changes)}" if m.changes else ""))
    study.set_user_attr(
        STUDY_ATTR,
        {
            "source": source,
            "top": ws.top,
            "trials": numbers,
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return numbers
