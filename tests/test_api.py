"""The Python API (``import hpo``) and one storage URL for every tool (psycopg 3)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import ROOT, service_url

import hpo


def tiny_study(model_dir: Path, **over: Any) -> dict[str, Any]:
    """A small study as a mapping: the tiny model on builtin:reviews, full and LoRA."""
    study: dict[str, Any] = {
        "name": "api",
        "model": str(model_dir),
        "data": {"source": "builtin:reviews", "train_limit": 48, "validation_limit": 32, "max_length": 32},
        "space": {
            "strategy": ["full", "lora"],
            "learning_rate": {"low": 1e-4, "high": 1e-3, "log": True},
            "per_device_train_batch_size": [16],
            "strategies": {"lora": {"r": [2, 4]}},
        },
        "budget": {"n_trials": 2, "max_epochs": 1, "evals_per_epoch": 2},
        "sampler": {"name": "random", "seed": 3},  # trials: lora, full, lora
        "pruner": {"name": "none"},
    }
    study.update(over)
    return study


def test_importing_hpo_loads_no_heavy_package() -> None:
    code = (
        "import sys, hpo\n"
        "assert callable(hpo.run) and callable(hpo.results) and callable(hpo.retrain)\n"
        # importing the modules of the same names leaves the functions in place
        "import hpo.results, hpo.export, hpo.retrain, hpo.report\n"
        "from hpo.results import best_trial\n"
        "assert all(callable(f) for f in (hpo.results, hpo.export, hpo.retrain, hpo.report))\n"
        "print(sorted(m for m in ('torch', 'transformers', 'ray', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.stdout.strip() == "[]"


def test_a_mapping_is_validated_like_a_file(tiny_model_dir: Path) -> None:
    spec = hpo.load_study(tiny_study(tiny_model_dir), {"budget.n_trials": 5, "name": "renamed"})
    assert spec.name == "renamed" and spec.budget.n_trials == 5
    assert spec.space.strategies == ["full", "lora"]
    bad = tiny_study(tiny_model_dir, budget={"n_trials": 0}, sampler={"name": "nope"})
    with pytest.raises(hpo.ConfigError) as e:
        hpo.load_study(bad)
    # every problem at once, each naming the source and the key
    assert any(p.startswith("<study mapping>: budget.n_trials: must be >= 1") for p in e.value.problems)
    assert any("sampler.name: unknown sampler 'nope'" in p for p in e.value.problems)
    with pytest.raises(hpo.ConfigError, match="expected a study file path or a mapping"):
        hpo.load_study(42)  # type: ignore[arg-type]


def test_the_api_runs_a_study_and_returns_its_trials(tiny_model_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = hpo.load_study(tiny_study(tiny_model_dir))
    # the command line's validation, as exceptions
    for bad in ({"n_trials": 0}, {"workers": "many"}, {"workers": 0}, {"timeout": -1.0}):
        with pytest.raises(hpo.UserError):
            hpo.run(spec, storage=url, **bad)
    study = hpo.run(spec, storage=url, n_trials=3)
    assert len(study.trials) == 3

    df = hpo.results("api", url)
    assert list(df["number"]) == [0, 1, 2] and set(df["state"]) == {"COMPLETE"}
    assert {"learning_rate", "lora.r", "val_accuracy", "trainable_params", "duration_s"} <= set(df.columns)
    for _, row in df.iterrows():
        # a conditional parameter is a column; rows of the other strategy leave it empty
        assert (row["strategy"] == "lora") == (not math.isnan(row["lora.r"]))
        assert row["value"] == row["val_accuracy"]
    best = hpo.best("api", url)
    assert best.value == df["value"].max()
    table = hpo.by_strategy("api", url)
    assert set(table["strategy"]) == set(df["strategy"])

    out = hpo.export("api", tmp_path / "best.yaml", storage=url)
    assert out.is_file() and f"trial: {best.number}" in out.read_text()
    with pytest.raises(hpo.UserError, match="unknown study 'nope'"):
        hpo.results("nope", url)
    with pytest.raises(hpo.UserError, match="trial: expected a trial number"):
        hpo.export("api", tmp_path / "x.yaml", storage=url, trial=-1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.services
def test_the_postgresql_url_hpo_was_given_opens_in_optuna_and_optuna_dashboard(tiny_model_dir: Path) -> None:
    url = service_url("postgresql")
    assert url.startswith("postgresql://")  # no driver named: SQLAlchemy 2.1 takes psycopg 3
    spec = hpo.load_study(
        tiny_study(
            tiny_model_dir,
            name="pg",
            data={"source": "builtin:reviews", "train_limit": 32, "validation_limit": 16, "max_length": 24},
        )
    )
    hpo.run(spec, storage=url, n_trials=1)

    # plain Optuna, the exact URL
    study = optuna.load_study(study_name="pg", storage=url)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    assert study.user_attrs["metric"] == "accuracy"

    # the optuna-dashboard command, the exact URL
    port = _free_port()
    exe = Path(sys.executable).parent / "optuna-dashboard"
    proc = subprocess.Popen(
        [str(exe), url, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as r:
                    names = [s["study_name"] for s in json.loads(r.read())["study_summaries"]]
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(
                        f"optuna-dashboard did not start: {proc.communicate()[0][-2000:]}"
                    ) from None
                time.sleep(0.3)
        assert names == ["pg"]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
