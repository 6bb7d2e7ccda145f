"""Inside a Ray worker: one Ray Tune trial (:func:`trainable`) and how it records itself.

Each trial runs :func:`hpo.objective.run_trial`, the Optuna driver's trial, through a
:class:`RayRecorder` that writes to the Optuna trial the driver's searcher asked for (by id)
and reports evaluations to Tune for ASHA. The keys below are how the driver's define-by-run
function tells the trainable which Optuna trial it is.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from hpo.config import StudySpec

# Keys the define-by-run function adds to a Ray trial's config: which Optuna trial it is, and
# its strategy (a space with one strategy has no ``strategy`` parameter to read it from).
TRIAL_ID_KEY = "_hpo_trial_id"


TRIAL_NUMBER_KEY = "_hpo_trial_number"


STRATEGY_KEY = "_hpo_strategy"


# Result keys: the evaluation index, and the marker of a run that trained to its end.
EVAL_KEY = "evaluation"


FINAL_KEY = "hpo_final"


# Per Ray worker process: data, tokenizer and base weights load once, the storage connects
# once (this pays off when a process runs several trials; see reuse_actors below).
_CACHE: dict[str, Any] = {}


class RayRecorder:
    """A :class:`~hpo.objective.TrialRecorder` for a Ray trial: writes to its Optuna trial by
    id (the driver's searcher asked for it) and reports evaluations to Tune for ASHA.

    Every evaluation but the last is reported to Tune as it comes; the last is kept for after
    the outcome is stored, so a trial that ends normally is complete in the storage before the
    searcher closes it. Writes after the driver finished the trial (a stopped trial) are dropped.
    """

    def __init__(self, storage: Any, trial_id: int, study_name: str, metric: str):
        self.storage = storage
        self.trial_id = trial_id
        self.study_name = study_name
        self.metric = metric
        self.last: dict[str, Any] | None = None
        self.stopped = False

    def record(self, attrs: dict[str, Any], system_attrs: dict[str, Any] | None = None) -> None:
        import optuna

        from hpo.storage import write_trial_attrs

        try:
            write_trial_attrs(self.storage, self.trial_id, attrs, system_attrs)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def report(self, index: int, last: bool, metrics: dict[str, float]) -> bool:
        import optuna
        from ray import tune

        try:
            self.storage.set_trial_intermediate_value(self.trial_id, index, float(metrics[self.metric]))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        result = {k: v for k, v in metrics.items() if k != "epoch"}
        result[EVAL_KEY] = index
        if last:
            self.last = result  # reported after the outcome is stored
            return False
        # What a trial that ASHA stops keeps: the metrics of its last evaluation.
        attrs = {f"val_{k}": v for k, v in metrics.items() if k not in ("step", "epoch")}
        self.record({**attrs, "evaluations": index})
        try:
            tune.report(result)
        except SystemExit:
            # Tune stopped this trial (ASHA): end the run cleanly and keep what it did.
            self.stopped = True
            return True
        return False

    def frozen(self) -> Any:
        return self.storage.get_trial(self.trial_id)

    def complete_trials(self) -> list[Any]:
        import optuna

        study_id = self.storage.get_study_id_from_name(self.study_name)
        states = (optuna.trial.TrialState.COMPLETE,)
        return list(self.storage.get_all_trials(study_id, deepcopy=False, states=states))


def _worker_storage(url: str) -> Any:
    from hpo.storage import open_storage

    if _CACHE.get("url") != url:
        # No heartbeat: the driver's searcher owns the trial's state, Ray restarts actors.
        _CACHE["storage"] = open_storage(url, heartbeat=False)
        _CACHE["url"] = url
    return _CACHE["storage"]


def _worker_context(spec: StudySpec) -> Any:
    from hpo.context import prepare
    from hpo.display import quiet_libraries

    key = f"{spec.path}|{spec.name}"
    if _CACHE.get("key") != key:
        from transformers.utils import logging as hf_logging

        _CACHE.pop("ctx", None)
        quiet_libraries()
        hf_logging.disable_progress_bar()
        _CACHE["ctx"] = prepare(spec, worker=f"{socket.gethostname()}:{os.getpid()}")
        _CACHE["key"] = key
    return _CACHE["ctx"]


def _threads_from_ray() -> int:
    import ray

    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:
        cpus = 1.0
    return max(1, int(cpus))


class TrialAlreadyFailed(RuntimeError):
    """A retried Ray trial whose previous attempt raised (its fail_reason is already stored)."""


def trainable(config: dict[str, Any], spec: StudySpec | None = None, url: str | None = None) -> None:
    """One Ray Tune trial: rebuild the config from the sampled parameters and run it.

    The same :func:`hpo.objective.run_trial` as the Optuna driver's, so the trial records the
    same attributes and honours ``sampler.skip_repeats``; a repeat reports the value of the trial
    it repeats as its final result. Whatever raises (data, model, training) is stored as the
    trial's ``fail_reason`` before the searcher stores it FAIL.
    """
    import torch
    from ray import tune

    from hpo.objective import run_trial

    assert spec is not None and url is not None
    metric = spec.objective.metric
    rec = RayRecorder(_worker_storage(url), int(config[TRIAL_ID_KEY]), spec.name, metric)
    # Tune runs a trial again when its worker or node died (FailureConfig, execution.max_retries);
    # an attempt that raised in Python recorded why, and would only raise again.
    earlier = rec.frozen().user_attrs
    if "fail_reason" in earlier:
        raise TrialAlreadyFailed(str(earlier["fail_reason"]))
    attempt = int(earlier.get("ray_attempts", 0)) + 1
    rec.record({"ray_attempts": attempt})
    if attempt > 1:
        rec.record({"retried_after": "its Ray worker or node was lost during the previous attempt"})
    try:
        torch.set_num_threads(_threads_from_ray())
        ctx = _worker_context(spec)
        params = {k: v for k, v in config.items() if not k.startswith("_hpo_")}
        cfg = spec.space.fixed(str(config[STRATEGY_KEY]), params, spec.training)
        rec.record({"backend": "ray"})
        result = run_trial(ctx, cfg, rec)
    except Exception as e:
        rec.record({"fail_reason": f"{type(e).__name__}: {e}"[:1000]})
        raise
    if rec.stopped:
        rec.record({"stopped_early": True})
        return
    out = result.outcome
    final = dict(rec.last or {EVAL_KEY: len(out.history) if out else 1})
    if out is not None:
        final.update(out.metrics)  # the selected evaluation's (objective.select)
    final[metric] = result.value
    final[FINAL_KEY] = True
    tune.report(final)
