"""Ray Tune driver over the same search space and the same Optuna storage.

``hpo run STUDY --backend ray [--address HOST:PORT]`` runs the study's trials as Ray Tune
trials: Ray's ``OptunaSearch`` asks the study (in the study's storage, under the study's name)
for each configuration with the search space's own define-by-run function, the study's
pruner picks Ray's scheduler (``ray_scheduler``: ASHA, the median stopping rule, or none), and
each trial runs the same training path as the Optuna driver (``hpo.objective.run_trial``, with
the same out-of-memory retry and repeat rule). It writes the same user attributes and
intermediate values to the Optuna trial as the Optuna driver does, so ``hpo studies``,
``compare``, ``export`` and the dashboard read Ray's trials like any other.

Runs end like the Optuna driver's: ``--timeout`` starts no trial after the deadline and lets the
trials in flight finish (the searcher stops suggesting); SIGINT/SIGTERM stop Ray's trials, store
those in flight as FAIL ``interrupted (SIGINT)`` and raise KeyboardInterrupt (exit 130); at most
``--workers`` trials run at once (default: as many as the cluster's resources fit).

Differences that remain (NOTES.md): a trial that the scheduler stopped is stored COMPLETE with
its last value (Ray's searcher has no "pruned" outcome for it); it carries ``stopped_early:
true`` and the attributes of its last evaluation, but not ``train_seconds`` and the parameter
counts, which only a finished run knows.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpo.config import StudySpec
from hpo.drivers.ray_schedulers import RAY_SCHEDULERS, ray_scheduler
from hpo.drivers.ray_trial import (
    EVAL_KEY,
    FINAL_KEY,
    STRATEGY_KEY,
    TRIAL_ID_KEY,
    TRIAL_NUMBER_KEY,
    trainable,
)

RAY_STORAGE_ENV = "HPO_RAY_STORAGE"


class _RunControl:
    """When a Ray run stops asking for trials: its deadline (``--timeout``) or a signal.

    Read by the searcher (no suggestion after either) and the stopper (a signal ends the run).
    """

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self.deadline: float | None = None
        self.signum: int | None = None

    def start(self) -> None:
        """The clock of ``--timeout`` starts (when Tune starts, as the Optuna driver's loop)."""
        self.deadline = None if self.timeout is None else time.monotonic() + self.timeout

    @property
    def signal_name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def stop_suggesting(self) -> bool:
        return self.signum is not None or (self.deadline is not None and time.monotonic() >= self.deadline)


class _Signals:
    """SIGINT/SIGTERM while Tune runs: the first is recorded (the stopper ends the run at Tune's
    next step, in the main thread); a second raises KeyboardInterrupt at once.

    Replaces Tune's SIGINT handler (which ends the run as if it were done, exit 0) and Ray's
    SIGTERM handlers (exit 1 and a stack dump of Ray's core worker) until the run is over.
    Signal handlers can only be installed from the main thread; elsewhere this does nothing.
    """

    _ENV = "TUNE_DISABLE_SIGINT_HANDLER"

    def __init__(self, control: _RunControl) -> None:
        self.control = control
        self._old: dict[int, Any] = {}
        self._old_env: str | None = None

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self._old_env = os.environ.get(self._ENV)
            os.environ[self._ENV] = "1"
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            # None: a handler not installed from Python (Ray's C++ one); the default then.
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        if self._old:
            if self._old_env is None:
                os.environ.pop(self._ENV, None)
            else:
                os.environ[self._ENV] = self._old_env
        self._old.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.control.signum is None:
            self.control.signum = signum
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)


def _signal_stopper(control: _RunControl, on_signal: Any) -> Any:
    from ray.tune.stopper import Stopper

    class StopOnSignal(Stopper):  # type: ignore[misc]
        """Ends the whole run once a signal arrived; first calls ``on_signal`` (once)."""

        def __init__(self, control: _RunControl, on_signal: Any) -> None:
            self.control = control
            self.on_signal = on_signal

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            if self.control is None or self.control.signum is None:
                return False
            if self.on_signal is not None:
                on_signal, self.on_signal = self.on_signal, None
                on_signal()
            return True

        def __getstate__(self) -> dict[str, Any]:
            # Tune pickles its stopper into the experiment folder; on_signal holds the storage.
            return {"control": None, "on_signal": None}

    return StopOnSignal(control, on_signal)


def max_trials_at_once(resources: dict[str, float], cluster: dict[str, float]) -> int:
    """How many trials needing ``resources`` each the cluster fits at once (at least 1)."""
    # 1e-9: 1 GPU / (1/3) is 2.9999999999999996 in floating point
    fits = [
        math.floor(cluster.get(k.upper(), 0.0) / need + 1e-9) for k, need in resources.items() if need > 0
    ]
    return max(1, min(fits)) if fits else 1


def _searcher_class() -> Any:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class HpoOptunaSearch(OptunaSearch):  # type: ignore[misc]
        """OptunaSearch that stores what hpo needs on close, and never pickles the storage.

        - A trial whose last result is not its final evaluation was stopped by the scheduler:
          it gets ``stopped_early: true`` (Ray's searcher stores it COMPLETE with that value).
        - A trial that raised is stored FAIL (Ray's searcher would store COMPLETE if it had
          reported a value before).
        - Tune pickles its searcher into the experiment folder; the storage (whose URL may hold
          a password) and the study are left out.
        - No suggestion after the run's deadline or a signal (``control``): Tune then starts no
          new trial and lets those in flight finish.
        """

        def __init__(self, *args: Any, control: _RunControl | None = None, **kwargs: Any) -> None:
            self._control = control
            super().__init__(*args, **kwargs)

        def suggest(self, trial_id: str) -> dict[str, Any] | None | str:  # type: ignore[override]
            if self._control is not None and self._control.stop_suggesting():
                return str(self.FINISHED)
            return super().suggest(trial_id)  # type: ignore[no-any-return]

        def on_trial_complete(
            self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
        ) -> None:
            if trial_id in self._completed_trials:
                return None  # failed by fail_open (an interrupt) before Tune closed it
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is None:
                return super().on_trial_complete(trial_id, result, error)
            try:
                if result and EVAL_KEY in result and self.metric in result:
                    # The last result may not have reached on_trial_result (Tune closes the
                    # trial with it instead); store its intermediate value here.
                    step = int(result[EVAL_KEY])
                    if step not in ot_trial._cached_frozen_trial.intermediate_values:
                        ot_trial.report(float(result[self.metric]), step)
                if error:
                    study: Any = self._ot_study
                    if "fail_reason" not in study._storage.get_trial_user_attrs(ot_trial._trial_id):
                        ot_trial.set_user_attr("fail_reason", "the Ray trial raised (see Ray's trial log)")
                    study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                    self._completed_trials.add(trial_id)
                    return None
                if result and not result.get(FINAL_KEY):
                    ot_trial.set_user_attr("stopped_early", True)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
            return super().on_trial_complete(trial_id, result, error)

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            # Tune's training_iteration counts reports; the evaluation index is the resource the
            # Optuna driver uses, so intermediate values line up across drivers.
            if EVAL_KEY in result and self.metric in result and trial_id in self._ot_trials:
                ot_trial = self._ot_trials[trial_id]
                step = int(result[EVAL_KEY])
                if step not in ot_trial._cached_frozen_trial.intermediate_values:
                    ot_trial.report(float(result[self.metric]), step)
                return None
            return super().on_trial_result(trial_id, result)

        def __getstate__(self) -> dict[str, Any]:
            state = self.__dict__.copy()
            for key in ("_storage", "_ot_study", "_ot_trials", "_sampler", "_space"):
                state[key] = None
            return state

        def save(self, checkpoint_path: str) -> None:
            import pickle

            with open(checkpoint_path, "wb") as f:
                pickle.dump(self.__getstate__(), f)

        def open_trials(self) -> list[Any]:
            """Optuna trials this searcher asked for and has not closed."""
            return [t for tid, t in self._ot_trials.items() if tid not in self._completed_trials]

        def fail_open(self, reason: str, not_started: str) -> list[int]:
            """Store every open trial FAIL with ``reason``, or ``not_started`` for one whose
            trainable never ran (it records its worker first); returns their numbers."""
            study: Any = self._ot_study
            numbers = []
            for trial_id, t in list(self._ot_trials.items()):
                if trial_id in self._completed_trials:
                    continue
                self._completed_trials.add(trial_id)
                try:
                    started = "worker" in study._storage.get_trial_user_attrs(t._trial_id)
                    t.set_user_attr("fail_reason", reason if started else not_started)
                    study.tell(t, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                    numbers.append(t.number)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # Tune closed it meanwhile
            return numbers

    return HpoOptunaSearch


def _progress_callback(spec: StudySpec, study: Any, stream: Any) -> Any:
    from ray import tune

    from hpo.results import fmt_params

    class Progress(tune.Callback):  # type: ignore[misc]
        """One line per finished Ray trial, with its parameters (read from the storage)."""

        def __init__(self, metric: str, study: Any, stream: Any) -> None:
            self.metric = metric
            self.study = study
            self.stream = stream

        def __getstate__(self) -> dict[str, Any]:
            # Tune pickles its callbacks into the experiment folder: no storage (its URL may
            # hold a password), no stream.
            return {"metric": self.metric, "study": None, "stream": None}

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._line(trial, "done")

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._line(trial, "error")

        def _line(self, trial: Any, what: str) -> None:
            number = trial.config.get(TRIAL_NUMBER_KEY, "?")
            last = trial.last_result or {}
            metric = self.metric
            value = f" {metric}={last[metric]:.4f}" if metric in last else ""
            stopped = " (stopped early)" if what == "done" and last and not last.get(FINAL_KEY) else ""
            try:
                t = self.study._storage.get_trial(int(trial.config[TRIAL_ID_KEY]))
                params = fmt_params(t)
            except Exception:
                params = ""
            print(
                f"trial {number:>4} {what}{value} eval {last.get(EVAL_KEY, 0)}{stopped}  {params}",
                file=self.stream or sys.stdout,
                flush=True,
            )

    return Progress(spec.objective.metric, study, stream)


def trial_resources(
    spec: StudySpec, gpus: list[int] | None, trials_per_gpu: int, cluster: dict[str, float]
) -> dict[str, float]:
    """Resources per Ray trial: a 1/K share of a GPU when GPUs are used, else CPUs.

    GPUs are used when ``--gpus`` is given or the cluster has GPUs and the study's device is not
    cpu. ``trials_per_gpu`` K packs K trials on one GPU (fractional GPU resource).
    """
    k = max(1, trials_per_gpu)
    use_gpu = spec.execution.device != "cpu" and (bool(gpus) or cluster.get("GPU", 0) > 0)
    if use_gpu:
        return {"cpu": 1.0, "gpu": 1.0 / k}
    return {"cpu": 1.0}


def run_ray(
    spec: StudySpec,
    url: str,
    *,
    address: str | None = None,
    n_trials: int,
    timeout: float | None,
    workers: int | str | None = None,
    gpus: list[int] | None,
    trials_per_gpu: int,
    stream: Any = None,
) -> Any:
    """Run the study's trials on Ray Tune (ASHA) into the study's Optuna storage; returns the study.

    The run options come resolved (flag > env > study file > default: :mod:`hpo.options`).

    Args:
        spec: the study.
        url: the Optuna storage every Ray worker can reach (a server database on a cluster).
        address: Ray cluster address (HOST:PORT, ``auto``); None starts or joins a local Ray.
        n_trials: Ray trials to run.
        timeout: seconds after which no new trial starts (None: no limit); trials in flight finish.
        workers: most trials at once; None or ``auto``: as many as the cluster's resources fit
            when the run starts (never more: a trial asked for waits for no resources).
        gpus: use GPUs (Ray picks which; the list only says that GPUs are wanted).
        trials_per_gpu: trials packed on one GPU (fractional GPU per trial).
        stream: where progress lines go (default stdout).

    Raises:
        UserError: data, storage or settings problems (before Ray starts any trial).
        KeyboardInterrupt: SIGINT/SIGTERM; the trials in flight are stored FAIL
            ``interrupted (SIGINT)`` (``... before it started`` if Ray had not started them).
    """
    import optuna

    from hpo.display import quiet_libraries
    from hpo.drivers.setup import open_run
    from hpo.errors import UserError
    from hpo.storage import redact
    from hpo.study import max_evaluations

    if len(spec.directions) > 1 or spec.pruner.compare == "strategy":
        # ASHA ranks one metric over every trial; hpo's pruning view (hpo.study_view) runs in
        # the Optuna driver only.
        what = "a multi-objective study" if len(spec.directions) > 1 else "pruner.compare: strategy"
        raise UserError(f"{spec.path}: --backend ray cannot run {what}; use --backend optuna")
    if spec.pruner.name not in RAY_SCHEDULERS:
        raise UserError(
            f"{spec.path}: pruner.name: {spec.pruner.name} has no Ray Tune scheduler; "
            f"use {', '.join(RAY_SCHEDULERS)} or --backend optuna"
        )
    try:
        import ray
        from ray import tune
    except ImportError:
        raise UserError("--backend ray needs Ray Tune: pip install 'hpo[ray]'") from None

    stream = stream or sys.stdout
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    quiet_libraries()
    # Data errors before Ray starts; the tokenized cache is warmed on this node. A resumed
    # study seeds its sampler from its trial count (hpo.study.sampler_seed).
    run = open_run(spec, url, create=True, say=lambda line: print(line, file=stream, flush=True))
    storage, study = run.storage, run.study
    del run

    started_ray = False
    if not ray.is_initialized():
        env = {
            k: os.environ[k]
            for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HPO_CACHE_DIR")
            if k in os.environ
        }
        env["TOKENIZERS_PARALLELISM"] = "false"
        try:
            with _redacted_entrypoint():
                ray.init(
                    address=address,
                    runtime_env={"env_vars": env},
                    include_dashboard=False,
                    log_to_driver=True,
                    logging_level=logging.ERROR,
                )
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise UserError(f"--address {address}: cannot connect to Ray ({redact(str(e))})") from None
        started_ray = True

    cluster = ray.cluster_resources()
    resources = trial_resources(spec, gpus, trials_per_gpu, cluster)
    fits = max_trials_at_once(resources, cluster)
    at_once = fits if workers in (None, "auto") else min(int(workers), fits)
    control = _RunControl(timeout)
    searcher = _searcher_class()(
        space=_define_by_run(spec),
        metric=spec.objective.metric,
        mode="max" if spec.direction == "maximize" else "min",
        storage=storage,
        study_name=spec.name,
        sampler=study.sampler,
        control=control,
    )
    max_t = max_evaluations(spec)
    scheduler, stopping = ray_scheduler(spec, max_t)

    def on_signal() -> None:
        name = control.signal_name
        failed = searcher.fail_open(f"interrupted ({name})", f"interrupted ({name}) before it started")
        print(
            f"{name}: stopping the Ray run; trial(s) in flight stored FAIL (interrupted): {failed}",
            file=stream,
            flush=True,
        )

    storage_path = os.environ.get(RAY_STORAGE_ENV) or str(Path(".hpo-cache", "ray").resolve())
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, spec=spec, url=url), resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=n_trials,
            # Also keeps the searcher from asking for a trial before Ray has room to start it
            # (at most what the cluster fits): a trial is asked for when it can start.
            max_concurrent_trials=at_once,
            # Reusing an actor waits 2 s for the previous trial's thread; a trial that ASHA
            # stopped trains on until its next evaluation, so reuse failed and Tune errored
            # the next trial (seen here). A fresh actor per trial costs its imports (~4 s).
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage_path,
            verbose=0,
            stop=_signal_stopper(control, on_signal),
            callbacks=[_progress_callback(spec, study, stream)],
            # A trial whose worker process or node died runs again (from its start: hpo
            # writes no checkpoints there), as the Optuna driver retries a dead worker's trial.
            failure_config=tune.FailureConfig(max_failures=spec.execution.max_retries),
        ),
    )
    capped = (
        f" (--workers {workers}; the cluster fits {fits})"
        if workers not in (None, "auto") and int(workers) > fits
        else ""
    )
    print(
        f"ray: {n_trials} trials, at most {at_once} trial{'s' if at_once != 1 else ''} at a time{capped}, "
        f"{resources} per trial, {stopping}, "
        f"cluster {cluster.get('CPU', 0):g} CPU / {cluster.get('GPU', 0):g} GPU"
        + (f", no new trial after {timeout:g} s" if timeout is not None else ""),
        file=stream,
        flush=True,
    )
    try:
        with _Signals(control):
            control.start()
            tuner.fit()
    finally:
        # Trials Ray never closed (a second signal, a driver error) must not stay RUNNING.
        name = control.signal_name
        if name is not None:
            searcher.fail_open(f"interrupted ({name})", f"interrupted ({name}) before it started")
        else:
            searcher.fail_open(
                "the Ray run ended before the trial finished",
                "not started: the Ray run ended before Ray started the trial",
            )
        if started_ray:
            ray.shutdown()  # disconnects from a cluster; stops a Ray this call started
    storage.remove_session()
    if control.signal_name is not None:
        raise KeyboardInterrupt(control.signal_name)
    return optuna.load_study(study_name=spec.name, storage=storage)


@contextlib.contextmanager
def _redacted_entrypoint() -> Iterator[None]:
    """Ray records the driver's command line as the job's entry point (``ray list jobs``, the
    dashboard); a password given with ``--storage`` is replaced by ``***`` there too."""
    from hpo.storage import redact

    try:
        import ray._private.utils as ray_utils
    except ImportError:
        yield
        return
    original = getattr(ray_utils, "get_entrypoint_name", None)
    if original is None:
        yield
        return
    ray_utils.get_entrypoint_name = lambda: redact(original())
    try:
        yield
    finally:
        ray_utils.get_entrypoint_name = original


def _define_by_run(spec: StudySpec) -> Any:
    """The search space's define-by-run function, plus which Optuna trial each Ray trial is."""
    space, training = spec.space, spec.training

    def define(trial: Any) -> dict[str, Any]:
        cfg = space.sample(trial, training)
        return {TRIAL_ID_KEY: trial._trial_id, TRIAL_NUMBER_KEY: trial.number, STRATEGY_KEY: cfg.strategy}

    return define
