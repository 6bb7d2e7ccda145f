"""Optuna's RDB storage as hpo opens it (:func:`hpo.storage.open_storage`).

Three changes to Optuna's ``RDBStorage``: a stale trial gets its ``fail_reason`` before Optuna
fails it; ``heartbeat_ages`` says how old each running trial's heartbeat is (what a worker that
waits for the others reports); and a trial's state changes only from the state it was read in,
so that of two processes that both read a trial, one wins, on SQLite too (no row locks there).
"""

from __future__ import annotations

from typing import Any


def storage_class() -> Any:
    """The RDB storage class hpo opens (Optuna's, subclassed; built here so that Optuna is
    imported only when a storage is opened)."""
    import optuna

    class HpoRDBStorage(optuna.storages.RDBStorage):  # type: ignore[misc]
        """RDBStorage that writes why a stale trial failed before Optuna fails it, and changes
        a trial's state only from the state it read (one winner on SQLite too)."""

        def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
            """Optuna's, with the change of state an ``UPDATE ... WHERE state = <state read>``.

            SQLite has no ``SELECT ... FOR UPDATE``: two sweeps (threads or processes) both read
            a stale trial RUNNING and both failed it, so its retry was queued twice; two workers
            could both start one WAITING trial. Now the second finds no row to change: False
            for RUNNING (Optuna's ask takes another trial), UpdateFinishedTrialError otherwise.
            """
            from datetime import datetime

            import sqlalchemy.exc
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session

            ts = optuna.trial.TrialState
            try:
                with _create_scoped_session(self.scoped_session) as session:
                    trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
                    read: Any = trial.state
                    self.check_trial_is_updatable(trial_id, read)
                    if state == ts.RUNNING and read != ts.WAITING:
                        return False
                    for objective, v in enumerate(values or ()):
                        self._set_trial_value_without_commit(session, trial, objective, v)
                    change: dict[Any, Any] = {"state": state}
                    if state == ts.RUNNING:
                        change["datetime_start"] = datetime.now()
                    if state.is_finished():
                        change["datetime_complete"] = datetime.now()
                    changed = (
                        session.query(models.TrialModel)
                        .filter(models.TrialModel.trial_id == trial_id)
                        .filter(models.TrialModel.state == read)
                        .update(change, synchronize_session=False)
                    )
                    if changed != 1:  # another process changed it first
                        if state == ts.RUNNING:
                            return False
                        raise optuna.exceptions.UpdateFinishedTrialError(
                            f"trial {trial.number} was finished by another process"
                        )
            except sqlalchemy.exc.IntegrityError:
                return False
            return True

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            from hpo.connectivity import stale_trial_ids  # none right after an outage

            ids = stale_trial_ids(self, study_id, super()._get_stale_trial_ids)
            for trial_id in ids:
                try:
                    self.set_trial_user_attr(
                        trial_id,
                        "fail_reason",
                        f"worker lost: no heartbeat for more than {self.grace_period} s",
                    )
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # another worker failed it first
            return ids

        def heartbeat_ages(self, study_id: int) -> dict[int, float]:
            """Seconds since the last heartbeat of each RUNNING trial of the study that has one."""
            import sqlalchemy
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session

            with _create_scoped_session(self.scoped_session, True) as session:
                now: Any = session.execute(sqlalchemy.func.now()).scalar()
                now = now.replace(tzinfo=None)  # PostgreSQL answers tz-aware, heartbeats are naive
                rows = (
                    session.query(models.TrialHeartbeatModel.trial_id, models.TrialHeartbeatModel.heartbeat)
                    .join(
                        models.TrialModel, models.TrialModel.trial_id == models.TrialHeartbeatModel.trial_id
                    )
                    .filter(models.TrialModel.study_id == study_id)
                    .filter(models.TrialModel.state == optuna.trial.TrialState.RUNNING)
                    .all()
                )
            return {trial_id: (now - beat).total_seconds() for trial_id, beat in rows}

    return HpoRDBStorage
