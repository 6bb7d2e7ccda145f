"""Experiment tracking: trials and retrains in MLflow and TensorBoard (``tracking:``).

MLflow. A study is one run (tags ``hpo.study``, ``hpo.role: study``) that every worker finds by
those tags in the experiment, so workers on several machines nest their trials under the same
run; when two workers create it at once, the earliest one wins and the other is deleted. Each
trial is a nested run ``trial-<N>``: transformers' own ``MLflowCallback`` logs the training
arguments (and the model config) as parameters and every evaluation (and the training loss at
it) as a metric step; hpo adds the strategy and its parameters, the final validation metrics,
the cost figures (trainable parameters, train seconds, peak memory) and tags for study, trial
number, worker and state (COMPLETE, PRUNED or FAIL with ``hpo.fail_reason``). The study run
gets the objective of every finished trial as a metric step (step = trial number). A retrain is
a run of its own (``hpo.role: retrain``) with the model or adapter and the metrics as artifacts.

TensorBoard. transformers' ``TensorBoardCallback`` writes each trial's curves into
``DIR/<study>/trial-<N>`` (so ``tensorboard --logdir DIR/<study>`` overlays the trials); hpo
adds the trial's parameters and final metrics (the HParams tab) and its state as text.

optuna-integration's callbacks do not fit: its MLflowCallback logs a trial once it has ended,
from ``study.optimize`` callbacks (no evaluation steps, no parent run found by tag, never called
by the Ray driver), and its TensorBoardCallback needs TensorFlow.

Tracking never fails a trial: a logging error is a warning on stderr. A tracking server that
cannot be reached when a worker starts is a user error, before any trial (:meth:`Tracker.check`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpo.config import StudySpec, TrackingSpec
from hpo.errors import UserError

STUDY_TAG = "hpo.study"
"""Tag: the study a run belongs to."""
ROLE_TAG = "hpo.role"
"""Tag: ``study`` (the parent run), ``trial`` or ``retrain``."""
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
"""Trial state -> MLflow run status (the state itself is the tag ``hpo.state``)."""
ATTACHED = ("metrics.json", "metrics.png", "samples.jsonl")
"""Of what a retrain wrote, the files attached to its trial (with the spec) for the dashboard;
``samples.jsonl`` only exists for a generative task."""


def _warn(what: str, e: BaseException) -> None:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    print(f"warning: tracking: {what} ({type(e).__name__}: {first})", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _environ(values: dict[str, str | None]) -> Iterator[None]:
    """Set (None: unset) environment variables for the block, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _param_value(v: Any) -> Any:
    """A value TensorBoard's HParams take (numbers, strings, booleans)."""
    return v if isinstance(v, (int, float, str, bool)) else str(v)


def mlflow_run_callback(uri: str | None, run_id: str) -> Any:
    """transformers' ``MLflowCallback``, logging into the existing run ``run_id``.

    The callback reads its settings from the environment when training begins; they are set
    for that moment only, so runs of successive trials in one process never mix.
    """
    from transformers.integrations import MLflowCallback

    class RunCallback(MLflowCallback):  # type: ignore[misc]
        def setup(self, args: Any, state: Any, model: Any) -> None:
            import mlflow

            if uri:
                mlflow.set_tracking_uri(uri)
            env = {"MLFLOW_RUN_ID": run_id, "MLFLOW_NESTED_RUN": None, "MLFLOW_EXPERIMENT_NAME": None}
            with _environ(env):
                super().setup(args, state, model)

    return RunCallback()


def tensorboard_callback(folder: str) -> Any:
    """transformers' ``TensorBoardCallback`` writing into ``folder``."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=folder))


class Tracker:
    """A worker's connection to the study's tracking (see the module docstring).

    Args:
        spec: The study (its ``tracking:`` says where; its name names the runs).
    """

    def __init__(self, spec: StudySpec):
        # MLflow prints a "View run ... at URL" line whenever a run ends (several per trial);
        # hpo prints its own progress lines.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.spec = spec
        self.tracking: TrackingSpec = spec.tracking
        self._client: Any = None
        self._experiment_id: str | None = None
        self._parent: str | None = None

    # ------------------------------------------------------------------ MLflow

    @property
    def uri(self) -> str | None:
        return self.tracking.mlflow.uri if self.tracking.mlflow else None

    def client(self) -> Any:
        """The MLflow client on the tracking URI."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment_id(self) -> str:
        """The experiment's id, created when missing (a concurrent creation is found again)."""
        if self._experiment_id is None:
            from mlflow.exceptions import MlflowException

            assert self.tracking.mlflow is not None
            name = self.tracking.mlflow.experiment or self.spec.name
            client = self.client()
            exp = client.get_experiment_by_name(name)
            if exp is None:
                try:
                    self._experiment_id = str(client.create_experiment(name))
                except MlflowException:
                    exp = client.get_experiment_by_name(name)  # another worker made it first
            if self._experiment_id is None:
                if exp is None:
                    raise UserError(f"tracking.mlflow.experiment: cannot create experiment {name!r}")
                if exp.lifecycle_stage == "deleted":
                    raise UserError(
                        f"tracking.mlflow.experiment: experiment {name!r} is deleted in {self.uri}; "
                        "restore it (mlflow experiments restore) or choose another name"
                    )
                self._experiment_id = str(exp.experiment_id)
        return self._experiment_id

    def _study_runs(self) -> list[Any]:
        quoted = self.spec.name.replace("\\", "\\\\").replace("'", "\\'")
        return list(
            self.client().search_runs(
                [self.experiment_id()],
                filter_string=f"tags.`{STUDY_TAG}` = '{quoted}' and tags.`{ROLE_TAG}` = 'study'",
                order_by=["attributes.start_time ASC"],
                max_results=10,
            )
        )

    def study_run(self) -> str:
        """The id of the study's run: found by its tags, else created.

        Two workers that start together may both create one; each then searches again and
        keeps the earliest, and the worker whose run lost deletes it.
        """
        if self._parent is not None:
            return self._parent
        runs = self._study_runs()
        if not runs:
            spec = self.spec
            created = self.client().create_run(
                self.experiment_id(),
                run_name=spec.name,
                tags={STUDY_TAG: spec.name, ROLE_TAG: "study", "mlflow.note.content": spec.summary()},
            )
            mine = created.info.run_id
            self.client().log_batch(mine, params=_params(study_params(spec)))
            runs = self._study_runs()
            if runs and runs[0].info.run_id != mine:
                self.client().delete_run(mine)
        self._parent = str(runs[0].info.run_id)
        return self._parent

    def check(self, study_run: bool = True) -> None:
        """Reach the tracking server and find (or create) the experiment and, with
        ``study_run``, the study's run now.

        Raises:
            UserError: the server cannot be reached or refuses (named with the URI).
        """
        if self.tracking.mlflow is None:
            return
        try:
            self.study_run() if study_run else self.experiment_id()
        except UserError:
            raise
        except Exception as e:
            from hpo.storage import redact

            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise UserError(
                f"tracking.mlflow.uri: cannot log to {redact(str(self.uri))} ({type(e).__name__}: {redact(first)})"
            ) from None

    # ------------------------------------------------------------------ trials

    def start_trial(self, number: int, cfg: Any, worker: str) -> TrialLog:
        """A trial's logs: its nested MLflow run is created now (a failure is a warning)."""
        return self._start(f"trial-{number}", number, cfg, {"hpo.worker": worker}, nested=True)

    def start_retrain(self, trial: int | None, cfg: Any) -> TrialLog:
        """A retrain's logs: an MLflow run of its own (tag ``hpo.trial``: the source trial) and
        the TensorBoard folder ``DIR/<study>/retrain-trial<N>``.

        Raises:
            UserError: the tracking server cannot be reached.
        """
        self.check(study_run=False)
        name = f"retrain-trial{trial}" if trial is not None else "retrain"
        log = self._start(name, trial, cfg, {}, nested=False)
        if self.tracking.mlflow is not None and log.run_id is None:
            raise UserError(f"tracking.mlflow.uri: cannot create the retrain's run in {self.uri}")
        return log

    def _start(self, name: str, number: int | None, cfg: Any, tags: dict[str, str], nested: bool) -> TrialLog:
        log = TrialLog(self, name, cfg, nested)
        if self.tracking.tensorboard:
            log.tb_dir = str(Path(self.tracking.tensorboard) / _safe(self.spec.name) / name)
        if self.tracking.mlflow is not None:
            try:
                run_tags = {
                    STUDY_TAG: self.spec.name,
                    ROLE_TAG: "trial" if nested else "retrain",
                    "hpo.strategy": cfg.strategy,
                    "hpo.state": "RUNNING",
                    **tags,
                }
                if number is not None:
                    run_tags["hpo.trial"] = str(number)
                if nested:
                    run_tags["mlflow.parentRunId"] = self.study_run()
                run = self.client().create_run(self.experiment_id(), run_name=name, tags=run_tags)
                log.run_id = run.info.run_id
                self.client().log_batch(log.run_id, params=_params(log.params))
            except Exception as e:
                _warn(f"{name} is not logged to MLflow", e)
                log.run_id = None
        return log


def _safe(name: str) -> str:
    """A study name as one folder name."""
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name).strip(".") or "study"


def _params(values: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in values.items()]


def study_params(spec: StudySpec) -> dict[str, Any]:
    """What the study run records as parameters."""
    return {
        "task": spec.task,
        "model": spec.model,
        "metric": spec.objective.metric,
        "direction": spec.direction,
        "space": spec.space_ref,
        "strategies": ",".join(spec.space.strategies),
        "sampler": spec.sampler.name,
        "pruner": spec.pruner.name,
        "seed": spec.seed,
    }


class TrialLog:
    """One trial's (or retrain's) MLflow run and TensorBoard folder (either may be absent)."""

    def __init__(self, tracker: Tracker, name: str, cfg: Any, nested: bool):
        self.tracker = tracker
        self.name = name
        self.nested = nested
        self.run_id: str | None = None
        self.tb_dir: str | None = None
        self.params: dict[str, Any] = {"strategy": cfg.strategy}
        self.params.update({f"{cfg.strategy}.{k}": v for k, v in cfg.strategy_params.items()})

    def callbacks(self) -> list[Any]:
        """transformers callbacks that log this trial's training (new ones per training run)."""
        out = []
        try:
            if self.run_id is not None:
                out.append(mlflow_run_callback(self.tracker.uri, self.run_id))
            if self.tb_dir is not None:
                out.append(tensorboard_callback(self.tb_dir))
        except Exception as e:
            _warn(f"{self.name}'s training is not logged", e)
        return out

    def finish(
        self,
        state: str,
        value: float | None = None,
        attrs: dict[str, Any] | None = None,
        reason: str | None = None,
        tags: dict[str, Any] | None = None,
        artifacts: list[Path] | None = None,
    ) -> None:
        """Record how the trial ended: metrics, state, reason, artifacts; never raises.

        Args:
            state: COMPLETE, PRUNED or FAIL.
            value: The objective value (COMPLETE).
            attrs: The numeric figures the trial recorded (``val_*`` metrics, costs).
            reason: Why it failed.
            tags: More tags (``repeat_of``).
            artifacts: Files and folders to attach to the MLflow run (a folder under its name).
        """
        numbers = {
            k: float(v)
            for k, v in (attrs or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self.run_id is not None:
            try:
                self._finish_mlflow(state, value, numbers, reason, tags or {}, artifacts or [])
            except Exception as e:
                _warn(f"{self.name}'s end is not logged to MLflow", e)
        if self.tb_dir is not None:
            try:
                self._finish_tensorboard(state, value, numbers, reason)
            except Exception as e:
                _warn(f"{self.name}'s end is not written to TensorBoard", e)

    def finish_retrain(self, metrics: dict[str, Any], paths: list[Path]) -> None:
        """Record a finished retrain: ``metrics`` as ``metrics.json`` holds them (figures,
        ``validation`` and ``test`` metrics), ``paths`` (model folder, files) as artifacts."""
        numbers = {k: v for k, v in metrics.items() if k not in ("trial", "seed", "epochs")}
        numbers.update({f"val_{k}": v for k, v in metrics["validation"].items()})
        numbers.update({f"test_{k}": v for k, v in metrics["test"].items()})
        self.finish("COMPLETE", metrics["validation"].get(metrics["metric"]), numbers, artifacts=paths)

    def _finish_mlflow(
        self,
        state: str,
        value: float | None,
        numbers: dict[str, float],
        reason: str | None,
        tags: dict[str, Any],
        artifacts: list[Path],
    ) -> None:
        import mlflow
        from mlflow.entities import Metric, RunTag

        status = STATUS.get(state, "FINISHED")
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            mlflow.end_run(status)  # training raised before the callback ended the run
        mlflow.flush_async_logging()
        client = self.tracker.client()
        now = int(time.time() * 1000)
        run_tags = [RunTag("hpo.state", state), *(RunTag(f"hpo.{k}", str(v)) for k, v in tags.items())]
        if reason:
            run_tags.append(RunTag("hpo.fail_reason", reason[:5000]))
        metrics = [Metric(k, v, now, 0) for k, v in numbers.items()]
        if value is not None:
            metrics.append(Metric("value", float(value), now, 0))
        client.log_batch(self.run_id, metrics=metrics, tags=run_tags)
        for path in artifacts:
            if path.is_dir():
                client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                client.log_artifact(self.run_id, str(path))
        client.set_terminated(self.run_id, status)
        if self.nested:
            parent = self.tracker.study_run()
            number = int(self.name.rpartition("-")[2])
            if value is not None:
                client.log_metric(parent, self.tracker.spec.objective.metric, float(value), step=number)
            client.set_terminated(parent, "FINISHED")  # its end time: the latest trial's end

    def _finish_tensorboard(
        self, state: str, value: float | None, numbers: dict[str, float], reason: str | None
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        assert self.tb_dir is not None
        metric_dict = {f"hparam/{k}": v for k, v in numbers.items() if k.startswith("val_")}
        if value is not None:
            metric_dict["hparam/value"] = float(value)
        with SummaryWriter(log_dir=self.tb_dir) as writer:
            writer.add_text("hpo/state", f"{state}{': ' + reason if reason else ''}")
            if metric_dict:
                # run_name ".": the HParams record goes into the trial's own folder
                writer.add_hparams(
                    {k: _param_value(v) for k, v in self.params.items()}, metric_dict, run_name="."
                )


class RetrainLogs:
    """What a retrain leaves outside its folder: its files attached to the source trial
    (:func:`hpo.artifacts.retrain_target`) and, with ``tracking:``, its own MLflow run and
    TensorBoard folder. Both are checked when this is made, before training.

    Raises:
        UserError: ``storage`` was given and the trial is not there; the tracking server
            cannot be reached.
    """

    def __init__(self, rspec: Any, storage: str | None):
        from hpo.artifacts import retrain_target

        self.rspec = rspec
        self.target = retrain_target(rspec, storage)
        self.tracker = Tracker(rspec.to_study_spec()) if rspec.tracking.enabled else None
        if self.tracker is not None:
            self.tracker.check(study_run=False)
        self.log: TrialLog | None = None

    @contextlib.contextmanager
    def recording(self, cfg: Any) -> Iterator[list[Any] | None]:
        """Start the MLflow run; yield the Trainer callbacks; a raise inside is a FAILED run."""
        if self.tracker is not None:
            self.log = self.tracker.start_retrain(self.rspec.trial, cfg)
        try:
            yield self.log.callbacks() if self.log is not None else None
        except BaseException as e:
            if self.log is not None:
                self.log.finish("FAIL", reason=f"{type(e).__name__}: {e}"[:1000])
            raise

    def done(self, out_dir: Path, paths: list[Path], say: Any) -> None:
        """Attach ``metrics.json``, ``metrics.png``, the sample generations of a generative task
        (``samples.jsonl``) and the spec to the trial; finish the run with the metrics and
        ``paths`` (model folder and files) as artifacts."""
        if self.target is not None:
            files = [p for p in paths if p.name in ATTACHED]
            self.target.attach([*files, Path(self.rspec.path)], say)
        if self.log is not None:
            import json

            self.log.finish_retrain(json.loads((out_dir / "metrics.json").read_text(encoding="utf-8")), paths)
