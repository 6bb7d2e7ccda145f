"""The trial loop every Optuna-driven worker runs (``hpo run``, ``hpo worker``, each process of
``hpo run --workers``): one trial at a time (``hpo.drivers.one_trial``, which outlives database
outages), so that a shared budget, clean interrupts, stale-trial sweeps and queued retries fit
around it.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hpo.periodic import Periodic

# Why this process was told to stop when the signal alone does not say it: set by the watch on
# a worker's parent (``hpo.drivers.local``) before it sends the worker SIGTERM.
_stop_reason: str | None = None


def set_stop_reason(reason: str) -> None:
    """Name the next stop's cause in fail reasons (``interrupted (parent process died)``)."""
    global _stop_reason
    _stop_reason = reason


class SignalScope:
    """Installs ``_handle`` for SIGINT and SIGTERM while the ``with`` block runs.

    Handlers can only be installed from the main thread (a Ray actor runs elsewhere); there
    the scope does nothing.
    """

    default_name = "SIGINT"

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else self.default_name

    def __enter__(self) -> Any:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        raise NotImplementedError


class _Interrupts(SignalScope):
    """SIGINT/SIGTERM: inside a trial, interrupt it (it is stored FAIL, reason "interrupted");
    between trials, stop before the next one. Later signals only wait for that to finish.
    """

    default_name = "KeyboardInterrupt"

    def __init__(self) -> None:
        super().__init__()
        self.in_objective = False
        self.raised = False

    @property
    def name(self) -> str:
        return _stop_reason or super().name

    @property
    def stopping(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        if self.in_objective and not self.raised:
            self.raised = True
            raise KeyboardInterrupt(self.name)

    def note_keyboard_interrupt(self) -> None:
        """A KeyboardInterrupt not raised by our handler (no handler in this thread)."""
        if self.signum is None:
            self.signum = signal.SIGINT
        self.raised = True


@dataclass
class _Current:
    trial_id: int | None = None
    number: int | None = None
    retry: bool = False
    replaces: bool = False
    """A retry of a trial that this run started (it takes that trial's place in the count)."""


def waiting_retries(study: Any) -> int:
    """Sweep stale trials, then count queued retries (WAITING trials that repeat a failed one)."""
    import optuna

    from hpo.storage import sweep_stale_trials

    sweep_stale_trials(study)
    waiting = study._storage.get_all_trials(
        study._study_id, deepcopy=False, states=(optuna.trial.TrialState.WAITING,)
    )
    return sum(1 for t in waiting if "failed_trial" in t.system_attrs)


# Held by a background sweep while it fails stale trials and queues their retries, so a worker
# deciding whether a retry is left never looks between the FAIL and the enqueued retry.
_SWEEP_LOCK = threading.Lock()


def _retries_to_run(
    study: Any, stopping: Callable[[], bool], say: Callable[[str], None] | None = None
) -> bool:
    """Whether a worker whose budget is spent should run one more trial: a queued retry.

    While other trials of the study are RUNNING, wait until each has either sent a heartbeat
    since (its worker is alive: leave) or gone stale (its worker died: it is failed, its retry
    queued, and this worker runs it). So the last worker standing finishes a dead worker's
    trial instead of leaving it RUNNING until the study is run again. Costs at most one
    heartbeat interval (+2 s) when the other workers are alive. ``say`` gets one line per
    trial waited for (its worker, heartbeat age, and when it is failed without one).
    """
    from hpo.storage import heartbeat_interval_of, running_trial_lines

    if waiting_retries(study):
        return True
    interval = heartbeat_interval_of(study._storage)
    backend = getattr(study._storage, "_backend", study._storage)
    ages_of = getattr(backend, "heartbeat_ages", None)
    if interval is None or ages_of is None:
        return False
    # Heartbeat timestamps have 1 s resolution on SQLite and MySQL; 1 s more for a busy host.
    slack = 2.0
    grace = getattr(backend, "grace_period", None) or 2 * interval
    t0 = time.monotonic()
    announced = say is None
    while not stopping():
        ages = ages_of(study._study_id)
        waited = time.monotonic() - t0
        if not ages:
            # Nothing RUNNING: a trial failed by this process's sweep has its retry queued by
            # the time the sweep lets go of the lock.
            with _SWEEP_LOCK:
                return bool(waiting_retries(study))
        if not announced and say is not None:
            announced = True
            for line in running_trial_lines(study):
                say(f"waiting for other workers: {line}")
        if waited > grace + 2 * interval + slack:
            return False
        # A trial's worker is alive when it beat since we began waiting (its heartbeat is younger
        # than the wait, less 1 s of timestamp resolution), not merely recently: a heartbeat
        # recorded just before this worker finished its own trial says nothing about now.
        if waited > interval + slack and all(age < waited - 1.0 for age in ages.values()):
            return False  # every running trial beat while we waited
        time.sleep(min(1.0, float(interval)))
        if waiting_retries(study):
            return True
    return False


def optimize_loop(
    study: Any,
    objective: Callable[[Any], float | list[float]],
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    callbacks: Iterable[Callable[[Any, Any], None]] = (),
    budget: Any = None,
    first_number: int | None = None,
    say: Callable[[str], None] | None = None,
    patience: float | None = None,
) -> int:
    """Run trials until the budget, the count or the time is spent; then run queued retries.

    A queued retry of a trial whose worker died is taken first (Optuna's ``ask`` pops WAITING
    trials). It counts toward ``n_trials``/``budget`` like any trial, unless the trial it
    repeats was started by this run (number >= ``first_number``): then it replaces that trial,
    which was counted already. SIGINT/SIGTERM during a trial stores it as FAIL with
    ``fail_reason`` "interrupted (SIGINT)" (the signal's name); no trial is left RUNNING.

    Args:
        study: the Optuna study.
        objective: the trial function.
        n_trials: trials for this worker (None: no limit); ignored when ``budget`` is given.
        timeout: seconds after which no new trial starts.
        callbacks: Optuna callbacks, called after each trial.
        budget: shared budget with ``claim() -> bool``, ``refund()`` and ``first_number``
            (local workers).
        first_number: trials the study had when this run began (default: the budget's, else
            the count now).
        say: where to say what a worker with nothing left to run waits for, and when the
            database goes away and comes back (None: silent).
        patience: seconds to wait for an unreachable database at a time (default
            ``hpo.outage.DEFAULT_PATIENCE``); see ``hpo.drivers.one_trial``.

    Returns:
        The number of new (not retried) trials this worker ran.

    Raises:
        KeyboardInterrupt: stopped by SIGINT/SIGTERM (after the trial in flight is stored).
        DatabaseUnavailable: the database stayed away for ``patience`` seconds between trials.
    """
    from hpo.drivers.one_trial import run_one_trial
    from hpo.outage import DEFAULT_PATIENCE, call_with_retry

    patience = DEFAULT_PATIENCE if patience is None else patience
    deadline = None if timeout is None else time.monotonic() + timeout
    if first_number is None:
        first_number = getattr(budget, "first_number", None)
    if first_number is None:
        first_number = study._storage.get_n_trials(study._study_id)
    guard = _Interrupts()
    current = _Current()

    def wrapped(trial: Any) -> float | list[float]:
        current.trial_id, current.number = trial._trial_id, trial.number
        attrs = call_with_retry(
            lambda: trial.storage.get_trial_system_attrs(trial._trial_id),
            "read the trial",
            patience,
            storage=trial.storage,
        )
        current.retry = "failed_trial" in attrs
        history = attrs.get("retry_history") or []
        current.replaces = current.retry and bool(history) and history[-1] >= first_number
        if guard.stopping:
            trial.set_user_attr("fail_reason", f"interrupted ({guard.name}) before it started")
            raise KeyboardInterrupt(guard.name)
        guard.in_objective = True
        try:
            return objective(trial)
        except KeyboardInterrupt:
            guard.note_keyboard_interrupt()
            trial.set_user_attr("fail_reason", f"interrupted ({guard.name})")
            raise
        finally:
            guard.in_objective = False

    fresh = counted = 0
    _freeze_long_lived_objects()  # what the worker loaded (modules, data, base weights)
    frozen = False  # and again after the first trial (what the first trial imported)
    with guard, _StaleSweeper(study):
        try:
            while not guard.stopping:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if budget is not None:
                    claimed = bool(budget.claim())
                else:
                    claimed = n_trials is None or counted < n_trials
                if not claimed and not call_with_retry(
                    lambda: _retries_to_run(study, lambda: guard.stopping, say),
                    "look for queued retries",
                    patience,
                    storage=study._storage,
                    say=say,
                ):
                    break
                current.trial_id = current.number = None
                current.retry = current.replaces = False
                run_one_trial(study, wrapped, callbacks=callbacks, patience=patience, say=say)
                if not frozen:
                    _freeze_long_lived_objects()
                    frozen = True
                if current.replaces:
                    if claimed and budget is not None:
                        budget.refund()
                elif current.trial_id is not None:
                    counted += 1
                    fresh += 0 if current.retry else 1
        except KeyboardInterrupt:
            guard.note_keyboard_interrupt()
            _fail_if_running(study, current.trial_id, f"interrupted ({guard.name})")
            raise
        finally:
            # In a process that goes on (a notebook, tests) what was frozen and is dropped
            # later must be collectable again.
            gc.unfreeze()
    if guard.stopping:
        raise KeyboardInterrupt(guard.name)
    return fresh


def _freeze_long_lived_objects() -> None:
    """Move what outlives every trial out of the garbage collector's view.

    A worker holds modules, tokenizer, datasets and base weights (millions of objects with
    transformers loaded); each full collection walked them all: 0.23 s per ``gc.collect()``
    here, and a trial runs two (the Trainer's, then the one that frees its model), 16% of a
    2.7 s trial. Collected first, so no garbage is kept; later garbage is collected as before.
    """
    gc.collect()
    gc.freeze()


class _StaleSweeper(Periodic):
    """Background sweep, once per heartbeat interval, of trials whose worker died.

    Optuna sweeps only when a worker starts a trial, so a dead worker's trial would wait for
    the next trial start anywhere; this fails it within grace period + one interval and queues
    its retry at once.
    """

    def __init__(self, study: Any):
        from hpo.storage import heartbeat_interval_of

        super().__init__(heartbeat_interval_of(study._storage), "hpo-stale-sweep")
        self.study = study

    def _run(self) -> None:
        from hpo.storage import sweep_stale_trials

        while not self._stop.wait(self.interval):
            try:
                with _SWEEP_LOCK:
                    sweep_stale_trials(self.study)
            except Exception:
                pass  # a transient database error; the next sweep (or Optuna's own) retries


def _fail_if_running(study: Any, trial_id: int | None, reason: str) -> None:
    """The interrupt hit between Optuna's ask and tell: store the trial as FAIL ourselves."""
    if trial_id is None:
        return
    import optuna

    from hpo.storage import fail_trial

    storage = study._storage
    try:
        storage.remove_session()  # the interrupted session may be mid-transaction
        if storage.get_trial(trial_id).state == optuna.trial.TrialState.RUNNING:
            fail_trial(study, trial_id, reason, retry=False)
    except Exception:
        pass  # the parent (or the next worker's heartbeat sweep) fails it
