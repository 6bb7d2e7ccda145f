"""`hpo export` and `hpo retrain`: a tiny study trained for real, exported, retrained and reloaded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import write_study

from hpo._yaml import dump_yaml, load_yaml
from hpo.cli import main
from hpo.config import ConfigError, load_retrain_spec, load_study
from hpo.drivers.worker import run_worker
from hpo.export import retrain_dict
from hpo.retrain import load_trained, retrain
from hpo.space import TRAINING_DEFAULTS

TS = optuna.trial.TrialState
PNG = b"\x89PNG\r\n\x1a\n"
# One trial of each saving format: PEFT adapter, custom bottleneck adapters, whole model.
ENQUEUED = [
    {"strategy": "lora", "learning_rate": 5e-3, "lora.r": 4},
    {"strategy": "adapter", "learning_rate": 3e-3, "adapter.reduction_factor": 4},
    {"strategy": "full", "learning_rate": 1e-3},
]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    root = tmp_path_factory.mktemp("export")
    url = f"sqlite:///{root / 'hpo.db'}"
    path = write_study(
        root,
        tiny_model_dir,
        name="exp",
        space={
            "strategy": ["full", "lora", "adapter"],
            "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
            "per_device_train_batch_size": [16],
            "strategies": {"lora": {"r": [2, 4]}, "adapter": {"reduction_factor": [4, 8]}},
        },
        budget={"n_trials": 3, "max_epochs": 2, "evals_per_epoch": 2},
    )
    with pytest.MonkeyPatch.context() as mp:
        # The module fixture runs before the autouse cache fixture: keep the cache out of the repo.
        mp.setenv("HPO_CACHE_DIR", str(root / "cache"))
        mp.setattr("hpo.context.CACHE_DIR", root / "cache")
        study = optuna.create_study(study_name="exp", storage=url, direction="maximize")
        for params in ENQUEUED:
            study.enqueue_trial(params)
        run_worker(load_study(path), url, n_trials=3, timeout=None, quiet=True)
    failed = optuna.trial.create_trial(state=TS.FAIL, params={}, distributions={})
    study.add_trial(failed)
    yield url


def _study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="exp", storage=url)


def _export(db: str, tmp_path: Path, trial: int | None = None) -> Path:
    out = tmp_path / "best.yaml"
    argv = ["export", "exp", "-o", str(out), "--storage", db]
    if trial is not None:
        argv += ["--trial", str(trial)]
    assert main(argv) == 0
    return out


def _logits(model: Any, tokenizer: Any) -> Any:
    import torch

    batch = tokenizer(
        ["a quietly wonderful film", "not good at all, sadly", "the plot drags but the cast shines"],
        padding=True,
        return_tensors="pt",
    )
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_export_writes_a_self_contained_spec(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = _study(db)
    assert [t.state for t in study.trials[:3]] == [TS.COMPLETE] * 3
    path = _export(db, tmp_path)
    spec = load_yaml(path)
    assert next(iter(spec)) == "kind" and spec["kind"] == "retrain"
    best = study.best_trial
    cfg = json.loads(best.user_attrs["config"])
    assert spec["provenance"]["trial"] == best.number and spec["provenance"]["value"] == best.value
    assert spec["provenance"]["study"] == "exp" and spec["provenance"]["metric"] == "accuracy"
    assert spec["provenance"]["validation"] == {
        m: best.user_attrs[f"val_{m}"] for m in ("accuracy", "precision", "recall", "f1", "loss")
    }
    assert spec["provenance"]["versions"]["optuna"] == optuna.__version__
    assert spec["strategy"] == {"name": cfg["strategy"], "params": cfg["strategy_params"]}
    assert set(spec["training"]) == {*TRAINING_DEFAULTS, "eval_batch_size", "max_train_steps"}
    assert spec["training"]["learning_rate"] == best.params["learning_rate"]  # exact, through YAML
    assert spec["training"]["num_train_epochs"] == 2  # null in the study: the budget's epochs
    assert spec["budget"] == {"max_epochs": 2, "evals_per_epoch": 2}
    assert spec["data"]["fingerprint"] == study.user_attrs["data_fingerprint"]
    assert spec["data"]["source"] == "builtin:reviews" and spec["data"]["train_limit"] == 64
    assert Path(spec["model"]["path"]).is_absolute() and spec["seed"] == 0

    capsys.readouterr()
    assert main(["validate", str(path)]) == 0
    assert "ok (retraining spec:" in capsys.readouterr().out


def test_export_errors(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x.yaml")
    assert main(["export", "exp", "--trial", "3", "-o", out, "--storage", db]) == 1
    assert "trial 3 of study 'exp' is FAIL, not COMPLETE" in capsys.readouterr().err
    assert main(["export", "exp", "--trial", "99", "-o", out, "--storage", db]) == 1
    assert "has no trial 99" in capsys.readouterr().err
    assert main(["export", "nope", "-o", out, "--storage", db]) == 1
    assert "known: exp" in capsys.readouterr().err
    assert not Path(out).exists()


def test_export_redacts_the_storage_password(db: str) -> None:
    study = _study(db)
    spec = retrain_dict(study, study.trials[0], "postgresql://hpo:s3cret@db.example:5432/hpo")
    text = dump_yaml(spec)
    assert "s3cret" not in text and "postgresql://hpo:***@db.example:5432/hpo" in text


def test_export_resolves_a_relative_local_source(tmp_path: Path) -> None:
    from hpo.config.retrain import resolved_source

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reviews.csv").write_text("text,label\na,0\nb,1\n")
    assert resolved_source("data/reviews.csv", tmp_path) == str((tmp_path / "data" / "reviews.csv").resolve())
    assert resolved_source("builtin:reviews", tmp_path) == "builtin:reviews"


def test_invalid_spec_lists_every_problem(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _export(db, tmp_path)
    spec = load_yaml(path)
    spec["extra"] = 1
    spec["data"]["bogus"] = True
    spec["training"]["learning_rate"] = 2.0
    spec["training"]["lr"] = 0.1
    spec["strategy"]["params"]["zz"] = 1
    spec["budget"]["evals_per_epoch"] = 0
    spec["device"] = "tpu"
    path.write_text(dump_yaml(spec))
    capsys.readouterr()
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    for key in (
        "extra: unknown key",
        "data.bogus: unknown key",
        "training.learning_rate: must be in (0, 1)",
        "training.lr: unknown training argument",
        "strategy.params.zz: unknown parameter",
        "budget.evals_per_epoch: must be >= 1",
        "device: expected one of auto, cpu, cuda",
    ):
        assert f"{path}: {key}" in err, key
    assert "7 problem(s)" in err


def test_overrides_apply_before_validation(db: str, tmp_path: Path) -> None:
    path = _export(db, tmp_path)
    spec = load_retrain_spec(path, {"data.train_limit": None, "training.num_train_epochs": 3})
    assert spec.data.train_limit is None and spec.epochs == 3
    with pytest.raises(ConfigError, match=r"training\.lr: unknown training argument"):
        load_retrain_spec(path, {"training.lr": 0.1})


def test_retrain_lora_reproduces_the_trial_and_reloads(db: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from hpo.tasks import get_task

    trial = _study(db).trials[0]
    assert trial.params["strategy"] == "lora"
    out = tmp_path / "run"
    result = retrain(_export(db, tmp_path, trial=0), out, quiet=True)

    metrics = json.loads((out / "metrics.json").read_text())
    # Same data, epochs and seed, same code path: exactly the trial's numbers on CPU.
    assert metrics["validation"]["accuracy"] == trial.value == metrics["trial_value"]
    assert metrics["validation"]["loss"] == trial.user_attrs["val_loss"]
    assert metrics["difference_from_trial"] == 0.0 and metrics["same_data_as_trial"] is True
    assert set(metrics["test"]) >= {"accuracy", "precision", "recall", "f1", "loss"}
    assert all(0.0 <= metrics["test"][m] <= 1.0 for m in ("accuracy", "precision", "recall", "f1"))
    assert metrics["data"]["test"] == 600 and metrics["data"]["train"] == 64
    assert len(metrics["validation_history"]) == 4  # 2 epochs x 2 evaluations

    model_dir = out / "model"
    assert (model_dir / "adapter_config.json").is_file() and (model_dir / "tokenizer.json").is_file()
    assert (out / "metrics.png").read_bytes()[:8] == PNG
    config = load_retrain_spec(out / "config.yaml")  # the resolved config is a valid spec
    assert config.strategy == "lora" and config.data_fingerprint == metrics["data"]["fingerprint"]

    # The adapter reloads with plain PEFT onto a freshly loaded base and predicts the same logits.
    info = json.loads((model_dir / "hpo_model.json").read_text())
    base = get_task("sequence-classification").load_model(str(tiny_model_dir), info["label_names"])
    reloaded = PeftModel.from_pretrained(base, str(model_dir))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    assert torch.allclose(_logits(reloaded, tok), _logits(result.model, tok), atol=1e-6)


def test_retrain_adapter_from_the_cli_default_folder(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trial = _study(db).trials[1]
    assert trial.params["strategy"] == "adapter"
    spec = _export(db, tmp_path, trial=1)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["retrain", str(spec)]) == 0
    printed = capsys.readouterr().out
    assert "reproduced exactly" in printed and "test accuracy" in printed
    out = tmp_path / "runs" / "exp-trial1"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"]["accuracy"] == trial.value
    assert metrics["validation"]["loss"] == trial.user_attrs["val_loss"]
    # bottleneck adapters: full state dict + how to reload, which load_trained follows
    model_dir = out / "model"
    assert (model_dir / "model_with_adapters.safetensors").is_file()
    assert "load_model" in json.loads((model_dir / "hpo_model.json").read_text())["how_to_load"]
    model, tok = load_trained(model_dir)
    logits = _logits(model, tok)
    assert logits.shape == (3, 2)
    again, _ = load_trained(model_dir)
    assert (_logits(again, tok) == logits).all()


def test_retrain_full_with_overrides(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    spec = _export(db, tmp_path, trial=2)
    out = tmp_path / "full"
    result = retrain(spec, out, {"training.num_train_epochs": 1, "data.train_limit": 32}, quiet=True)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["data"]["train"] == 32
    assert metrics["overrides"] == {"training.num_train_epochs": 1, "data.train_limit": 32}
    assert metrics["same_data_as_trial"] is False and len(metrics["validation_history"]) == 2
    config = load_yaml(out / "config.yaml")
    assert config["training"]["num_train_epochs"] == 1 and config["data"]["train_limit"] == 32
    assert config["data"]["fingerprint"] == metrics["data"]["fingerprint"]
    model_dir = out / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "config.json").is_file()
    model, tok = load_trained(model_dir)
    assert torch.allclose(_logits(model, tok), _logits(result.model, tok), atol=1e-6)

    capsys.readouterr()
    assert main(["retrain", str(spec), "-o", str(out), "--set", "training.lr=1"]) == 1
    assert "training.lr: unknown training argument" in capsys.readouterr().err


def test_select_best_takes_the_best_evaluation_and_retrain_stops_there(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """objective.select best: the value is the best evaluation; the export stops the retrain at its step."""
    url = f"sqlite:///{tmp_path / 'sel.db'}"
    path = write_study(
        tmp_path,
        tiny_model_dir,
        name="sel",
        space={
            "strategy": ["full"],
            "learning_rate": {"low": 1e-3, "high": 3e-2, "log": True},
            "per_device_train_batch_size": [16],
        },
        objective={"metric": "accuracy", "select": "best"},
        budget={"n_trials": 4, "max_epochs": 2, "evals_per_epoch": 4},
        sampler={"name": "random", "skip_repeats": None},  # every trial trains
    )
    study = run_worker(load_study(path), url, n_trials=4, timeout=None, quiet=True)
    trials = [t for t in study.trials if t.state == TS.COMPLETE]
    assert len(trials) == 4
    for t in trials:
        curve = [t.intermediate_values[i] for i in sorted(t.intermediate_values)]
        assert len(curve) == 8 and t.value == max(curve)
        first_best = 1 + curve.index(max(curve))
        assert t.user_attrs["selected_evaluation"] == first_best
        assert t.user_attrs["selected_step"] == first_best  # 4 steps per epoch, one evaluation per step
        assert t.user_attrs["steps"] == 8
    early = [t for t in trials if t.user_attrs["selected_step"] < 8]
    assert early, "no trial peaked before the end of training"
    trial = early[0]

    out = tmp_path / "best.yaml"
    assert main(["export", "sel", "--trial", str(trial.number), "-o", str(out), "--storage", url]) == 0
    spec = load_yaml(out)
    assert spec["budget"] == {
        "max_epochs": 2,
        "evals_per_epoch": 4,
        "stop_after_step": trial.user_attrs["selected_step"],
    }
    assert spec["objective"] == {"metric": "accuracy", "direction": "maximize", "select": "best"}
    assert spec["provenance"]["selected_evaluation"] == trial.user_attrs["selected_evaluation"]

    capsys.readouterr()
    run = tmp_path / "run"
    retrain(out, run)
    assert f"stopping after step {trial.user_attrs['selected_step']}" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    # Same schedule, stopped at the selected step: exactly the trial's value and loss.
    assert metrics["validation"]["accuracy"] == trial.value
    assert metrics["validation"]["loss"] == trial.user_attrs["val_loss"]
    assert len(metrics["validation_history"]) == trial.user_attrs["selected_evaluation"]

    spec["budget"]["stop_after_step"] = 0
    out.write_text(dump_yaml(spec))
    with pytest.raises(ConfigError, match=r"budget\.stop_after_step: must be a positive step number"):
        load_retrain_spec(out)


def test_retrain_checks_the_output_path_before_training(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _export(db, tmp_path, trial=0)
    capsys.readouterr()

    def refused(out: Path, message: str) -> None:
        assert main(["retrain", str(spec), "-o", str(out)]) == 1
        printed, err = capsys.readouterr()
        assert err.strip().splitlines() == [f"hpo retrain: error: -o {out}: {message}"]
        assert "retraining" not in printed  # refused before any training

    # an existing file is neither replaced nor trained for
    f = tmp_path / "out.txt"
    f.write_text("keep me")
    refused(f, "exists and is not a folder")
    refused(f / "sub", f"{f} is a file, not a folder")
    assert f.read_text() == "keep me"
    # a folder with files in it: refused, nothing deleted
    d = tmp_path / "d"
    (d / "model").mkdir(parents=True)
    (d / "model" / "mine.bin").write_text("x")
    (d / "notes.txt").write_text("n")
    refused(
        d, "folder is not empty (model, notes.txt); pass --overwrite to replace what retrain writes there"
    )
    assert (d / "model" / "mine.bin").read_text() == "x" and (d / "notes.txt").read_text() == "n"
    # a folder whose model is a file: refused too, and --overwrite replaces it but keeps other files
    e = tmp_path / "e"
    e.mkdir()
    (e / "model").write_text("not a folder")
    (e / "notes.txt").write_text("n")
    refused(
        e, "folder is not empty (model, notes.txt); pass --overwrite to replace what retrain writes there"
    )
    assert main(["retrain", str(spec), "-o", str(e), "--overwrite"]) == 0
    assert (e / "model" / "adapter_config.json").is_file() and (e / "metrics.json").is_file()
    assert (e / "notes.txt").read_text() == "n"


def test_retrain_on_other_data_never_claims_exact_reproduction(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _export(db, tmp_path, trial=0)
    raw = load_yaml(spec)
    raw["data"]["fingerprint"] = "0123456789abcdef"  # the trial saw other rows (same rows here: same value)
    spec.write_text(dump_yaml(raw))
    capsys.readouterr()
    assert main(["retrain", str(spec), "-o", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    assert "warning: the data differs from the trial's" in err
    assert "reproduced exactly" not in out
    assert "equal by coincidence; the data differs from the trial's, a match is not expected" in out
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["difference_from_trial"] == 0.0


def test_export_of_a_stopped_early_trial_warns(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    copy = tmp_path / "copy.db"
    shutil.copy(db.removeprefix("sqlite:///"), copy)
    url = f"sqlite:///{copy}"
    study = _study(url)
    src = study.trials[0]
    # What the Ray backend stores for a trial that ASHA stopped: COMPLETE, marked stopped_early.
    study.add_trial(
        optuna.trial.create_trial(
            state=TS.COMPLETE,
            value=src.value,
            params=src.params,
            distributions=src.distributions,
            user_attrs={**src.user_attrs, "stopped_early": True},
        )
    )
    number = len(study.trials) - 1
    out = tmp_path / "stopped.yaml"
    capsys.readouterr()
    assert main(["export", "exp", "--trial", str(number), "-o", str(out), "--storage", url]) == 0
    err = capsys.readouterr().err
    assert f"warning: trial {number} was stopped early (Ray ASHA)" in err
    assert "its value comes from a shorter run" in err
    assert load_yaml(out)["provenance"]["stopped_early"] is True
    assert "stopped early" in out.read_text().splitlines()[0]
    # the best trial is never a stopped-early one, so a plain export says nothing
    assert main(["export", "exp", "-o", str(tmp_path / "best.yaml"), "--storage", url]) == 0
    assert "stopped early" not in capsys.readouterr().err
