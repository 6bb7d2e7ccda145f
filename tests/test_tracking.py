"""Experiment tracking against a real MLflow tracking server (started here on a loopback port,
SQLite backend store) and TensorBoard event files read back."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REQUIRE_SERVICES, ROOT, write_study

import hpo
from hpo.cli import main
from hpo.config import load_study
from hpo.drivers.worker import run_worker

ARTIFACTS = ROOT / "test-artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on a free loopback port, SQLite backend store, artifacts proxied
    (one per module: it takes 10-60 s to start here)."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    exe = Path(sys.executable).parent / "mlflow"
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(exe),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def tracked(
    mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> dict[str, object]:
    """A study of 3 trials logged to MLflow and TensorBoard: 2 by ``hpo run``, 1 by a second
    worker that joins later (as from another machine)."""
    root = tmp_path_factory.mktemp("tracked")
    url = f"sqlite:///{root / 'hpo.db'}"
    tb = root / "tb"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPO_CACHE_DIR", str(root / "cache"))
        mp.setattr("hpo.context.CACHE_DIR", root / "cache")
        path = write_study(
            root,
            tiny_model_dir,
            name="tracked",
            tracking={"mlflow": {"uri": mlflow_uri, "experiment": "hpo-tests"}, "tensorboard": "tb"},
            sampler={"name": "random", "seed": 3},
        )
        assert main(["run", str(path), "--storage", url, "--n-trials", "2"]) == 0
        spec = load_study(path)
        run_worker(
            spec,
            url,
            n_trials=1,
            timeout=None,
            create=False,
            worker_index=1,
            sampler_salt="other",
            quiet=True,
        )
    return {"url": url, "tb": tb, "root": root, "study_file": path}


def _runs(uri: str, role: str, study: str = "tracked") -> object:
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(
        experiment_names=["hpo-tests"],
        filter_string=f"tags.`hpo.role` = '{role}' and tags.`hpo.study` = '{study}'",
        order_by=["attributes.start_time ASC"],
    )


def test_each_trial_is_a_nested_run_of_the_study_run(mlflow_uri: str, tracked: dict[str, object]) -> None:
    import optuna
    from mlflow import MlflowClient

    parents = _runs(mlflow_uri, "study")
    assert len(parents) == 1  # both workers found the same study run by its tags
    parent = parents.iloc[0]
    assert parent["params.metric"] == "accuracy" and parent["status"] == "FINISHED"

    trials = _runs(mlflow_uri, "trial")
    study = optuna.load_study(study_name="tracked", storage=str(tracked["url"]))
    assert sorted(trials["tags.hpo.trial"].astype(int)) == [t.number for t in study.trials] == [0, 1, 2]
    assert set(trials["tags.mlflow.parentRunId"]) == {parent["run_id"]}
    # the joining worker (a fresh tracker, as on another machine) found the study run by its tags
    assert trials["tags.hpo.worker"].str.contains(":").all()
    client = MlflowClient(mlflow_uri)
    for _, run in trials.iterrows():
        t = study.trials[int(run["tags.hpo.trial"])]
        assert run["tags.hpo.state"] == t.state.name == "COMPLETE" and run["status"] == "FINISHED"
        assert run["params.strategy"] == t.params["strategy"]
        assert ("params.lora.r" in run and run["params.lora.r"] == str(t.params.get("lora.r"))) or t.params[
            "strategy"
        ] != "lora"
        # training arguments from transformers' MLflow callback
        assert float(run["params.learning_rate"]) == pytest.approx(t.params["learning_rate"])
        # final metrics and cost figures
        assert run["metrics.val_accuracy"] == pytest.approx(t.user_attrs["val_accuracy"])
        assert run["metrics.trainable_params"] == t.user_attrs["trainable_params"]
        assert run["metrics.peak_memory_mb"] > 0 and run["metrics.train_seconds"] > 0
        # every evaluation as a metric step (2 per trial: evals_per_epoch 2, one epoch)
        history = client.get_metric_history(run["run_id"], "eval_accuracy")
        assert len(history) == len(t.intermediate_values) == 2
        assert [h.value for h in history] == pytest.approx([t.intermediate_values[i] for i in (1, 2)])
    # the study run holds every trial's objective, one step per trial number
    values = client.get_metric_history(parent["run_id"], "accuracy")
    assert sorted(v.step for v in values) == [0, 1, 2]


def test_a_failed_trial_is_a_failed_run_with_its_reason(mlflow_uri: str, tracked: dict[str, object]) -> None:
    import dataclasses

    from hpo.config import TrackingSpec
    from hpo.space import TrialConfig
    from hpo.tracking import Tracker

    spec = load_study(Path(str(tracked["study_file"])))
    spec = dataclasses.replace(spec, tracking=TrackingSpec(mlflow=spec.tracking.mlflow))  # MLflow only
    tracker = Tracker(spec)
    log = tracker.start_trial(99, TrialConfig("full", {}, {}), "host:1")
    log.finish("FAIL", reason="FloatingPointError: training loss became nan at step 3")
    run = _runs(mlflow_uri, "trial").set_index("tags.hpo.trial").loc["99"]
    assert run["status"] == "FAILED" and run["tags.hpo.state"] == "FAIL"
    assert run["tags.hpo.fail_reason"].startswith("FloatingPointError: training loss became nan")


def test_tensorboard_has_one_folder_per_trial_with_its_curves(tracked: dict[str, object]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(str(tracked["tb"])) / "tracked"
    assert sorted(p.name for p in folder.iterdir()) == ["trial-0", "trial-1", "trial-2"]
    for trial in folder.iterdir():
        acc = EventAccumulator(str(trial))
        acc.Reload()
        scalars = acc.Tags()["scalars"]
        assert "eval/accuracy" in scalars and "train/loss" in scalars
        steps = [e.step for e in acc.Scalars("eval/accuracy")]
        assert len(steps) == 2 and steps == sorted(steps)
        assert "hparam/value" in scalars  # the HParams record: parameters and final metrics
        assert "hpo/state/text_summary" in acc.Tags()["tensors"]


def test_retrain_is_a_run_with_the_model_and_metrics_as_artifacts(
    mlflow_uri: str, tracked: dict[str, object], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    url = str(tracked["url"])
    spec = hpo.export("tracked", tmp_path / "best.yaml", storage=url)
    result = hpo.retrain(
        spec,
        tmp_path / "run",
        tracking={"mlflow": {"uri": mlflow_uri, "experiment": "hpo-tests"}},
        quiet=True,
    )
    runs = _runs(mlflow_uri, "retrain")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.hpo.state"] == "COMPLETE"
    assert "tags.mlflow.parentRunId" not in runs.columns  # a run of its own, not a trial
    assert run["tags.hpo.trial"] == str(hpo.best("tracked", url).number)
    assert run["metrics.test_accuracy"] == pytest.approx(result.test["accuracy"])
    names = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(run["run_id"])}
    assert {"metrics.json", "metrics.png", "config.yaml", "model"} <= names
    model_files = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(run["run_id"], "model")}
    assert "model/hpo_model.json" in model_files


def test_bad_tracking_settings_are_user_errors(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_study(tmp_path, tiny_model_dir, tracking={"mlflow": {"url": "x"}, "wandb": {}})
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "tracking.mlflow.url: unknown key (known: experiment, uri)" in err
    assert "tracking.wandb: unknown key (known: mlflow, tensorboard)" in err
    good = write_study(tmp_path, tiny_model_dir)
    assert (
        main(["run", str(good), "--tracking", "wandb=x", "--storage", f"sqlite:///{tmp_path / 'a.db'}"]) == 1
    )
    assert "--tracking: unknown tracking 'wandb'" in capsys.readouterr().err
    # an unreachable server stops the run before its first trial, in one line
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    dead = f"http://127.0.0.1:{_free_port()}"
    code = main(
        ["run", str(good), "--tracking", f"mlflow={dead}", "--storage", f"sqlite:///{tmp_path / 'b.db'}"]
    )
    err = capsys.readouterr().err
    assert code == 1 and f"tracking.mlflow.uri: cannot log to {dead}" in err
    assert "trial 0" not in err


EXPAND_RUNS = """(() => {
  const rows = document.querySelectorAll('button[data-component-id*="runnamecellrenderer"]');
  rows.forEach(b => b.click());  // the expander of each parent run
  Array.from(document.querySelectorAll('button'))
    .filter(b => (b.getAttribute('aria-label') || '').toLowerCase().includes('close'))
    .forEach(b => b.click());  // the assistant side panel
  return String(rows.length);
})()"""


def test_mlflow_ui_shows_the_nested_trial_runs(mlflow_uri: str, tracked: dict[str, object]) -> None:
    """The MLflow UI in headless Chromium: the study run expanded, its trial runs below it
    (screenshot kept in test-artifacts/)."""
    import mlflow
    from headless import screenshot

    if shutil.which("chromium") is None:
        msg = "chromium not installed (make browser, or apt-get install chromium)"
        if REQUIRE_SERVICES:
            pytest.fail(msg + " (HPO_REQUIRE_SERVICES=1)")
        pytest.skip(msg)
    mlflow.set_tracking_uri(mlflow_uri)
    exp = mlflow.get_experiment_by_name("hpo-tests")
    assert exp is not None
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "mlflow-trials.png"
    shot.unlink(missing_ok=True)
    expanded, text = screenshot(
        f"{mlflow_uri}/#/experiments/{exp.experiment_id}/runs",
        shot,
        script=EXPAND_RUNS,
        check="document.body.innerText",
        wait=15.0,
    )
    assert int(expanded) >= 1  # the study run has children to expand
    assert "tracked" in text and all(f"trial-{n}" in text for n in (0, 1, 2))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
