"""One trial of the Optuna driver's loop, start to record, written to survive database outages.

Optuna's ``study.optimize`` records a trial's end once: when the database is away at that
moment it fails with an internal error (``UnboundLocalError: ... 'updated_state'``, seen here
when PostgreSQL restarted under ``hpo run --workers 2``), and its heartbeat thread dies at the
first failed beat. Here the trial is asked for, beaten for, and told with retries
(:func:`hpo.outage.call_with_retry`); what the trial could not write while it trained is written
before its end (:data:`hpo.outage.PENDING`); a result that cannot be written within
``execution.db_patience`` becomes a failure with that reason, written when the database is back.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

from hpo.connectivity import is_transient
from hpo.outage import PENDING, DatabaseUnavailable, Heartbeat, call_with_retry

# (trial id, number, reason): results this process gave up on; failed once the database answers.
_DEFERRED: list[tuple[int, int, str]] = []


def run_one_trial(
    study: Any,
    func: Callable[[Any], Any],
    *,
    callbacks: Iterable[Callable[[Any, Any], None]] = (),
    patience: float,
    say: Callable[[str], None] | None = None,
) -> int:
    """Ask for a trial, run ``func`` on it and record how it ended; returns the trial id.

    ``func`` raising ``optuna.TrialPruned`` stores PRUNED; any other exception stores FAIL (its
    ``fail_reason`` written by ``func``); KeyboardInterrupt propagates with the trial RUNNING
    (the caller fails it). Failures that reach the database are never raised.

    Raises:
        DatabaseUnavailable: no trial could be started within ``patience`` seconds.
        KeyboardInterrupt: from ``func``.
    """
    import optuna

    from hpo.storage import sweep_stale_trials

    storage = study._storage
    _write_deferred(study, patience, say)
    try:
        sweep_stale_trials(study)  # what Optuna's loop does before each trial
    except Exception as e:
        if not is_transient(e):
            raise
    trial = call_with_retry(lambda: _ask(study), "start a trial", patience, storage=storage, say=say)
    state = optuna.trial.TrialState.COMPLETE
    values: list[float] | None = None
    reason = ""
    with Heartbeat(storage, trial._trial_id):
        try:
            result = func(trial)  # one value, or one per objective (multi-objective studies)
            values = [float(v) for v in result] if isinstance(result, (list, tuple)) else [float(result)]
            if any(math.isnan(v) for v in values):
                state, values, reason = optuna.trial.TrialState.FAIL, None, "the objective value is NaN"
        except optuna.TrialPruned:
            state = optuna.trial.TrialState.PRUNED
        except Exception as e:
            state = optuna.trial.TrialState.FAIL
            reason = f"{type(e).__name__}: {e}"[:1000]
        _record_end(study, trial, state, values, reason, patience, say)
    PENDING.pop(trial._trial_id, None)
    for callback in callbacks:
        try:
            callback(study, storage.get_trial(trial._trial_id))
        except Exception as e:
            if not is_transient(e):
                raise
    return int(trial._trial_id)


def _ask(study: Any) -> Any:
    import warnings

    with warnings.catch_warnings():
        # "Heartbeat of storage is supposed to be used with Study.optimize": this loop beats.
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        return study.ask()


def _record_end(
    study: Any,
    trial: Any,
    state: Any,
    values: list[float] | None,
    reason: str,
    patience: float,
    say: Callable[[str], None] | None,
) -> None:
    """Write what the trial kept while the database was away, then its state and value."""
    import optuna

    storage = study._storage
    trial_id = trial._trial_id
    FAIL = optuna.trial.TrialState.FAIL

    def write() -> None:
        frozen = storage.get_trial(trial_id)
        if frozen.state.is_finished():
            if _already_recorded(frozen, state, values):
                return  # an earlier attempt wrote it; its answer was lost with the connection
            raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial.number} is {frozen.state.name}")
        pending = PENDING.get(trial_id)
        has_reason = "fail_reason" in frozen.user_attrs or (pending and "fail_reason" in pending.attrs)
        if pending:
            pending.write(storage, trial_id)
        if state == FAIL and reason and not has_reason:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        study.tell(trial, values if state == optuna.trial.TrialState.COMPLETE else None, state=state)

    try:
        call_with_retry(write, f"record trial {trial.number}'s result", patience, storage=storage, say=say)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another worker failed it while the database looked away to it (no heartbeat reached
        # the database); its retry, if any, is queued. Nothing of this run can be added to it.
        if say is not None:
            outcome = f"value {values[0]:.4g}" if values else state.name
            say(
                f"trial {trial.number}: finished ({outcome}) after another worker had failed it "
                "(its heartbeats did not reach the database); the result is not recorded"
            )
    except DatabaseUnavailable as e:
        why = f"result not recorded: {e}"
        _DEFERRED.append((trial_id, trial.number, why))
        if say is not None:
            say(f"trial {trial.number}: {why}; it is stored FAIL when the database answers")


def _already_recorded(frozen: Any, state: Any, values: list[float] | None) -> bool:
    """Whether ``frozen`` holds this very end (written by an attempt whose answer was lost)."""
    return bool(frozen.state == state and (values is None or frozen.values == values))


def _write_deferred(study: Any, patience: float, say: Callable[[str], None] | None) -> None:
    """Fail the trials whose result this process gave up on (their retry is queued)."""
    from hpo.storage import fail_trial

    while _DEFERRED:
        trial_id, number, reason = _DEFERRED[0]
        done = call_with_retry(
            functools.partial(fail_trial, study, trial_id, reason, retry=True),
            f"store trial {number} as FAIL",
            patience,
            storage=study._storage,
            say=say,
        )
        _DEFERRED.pop(0)
        if say is not None and done:
            say(f"trial {number} stored FAIL ({reason})")
