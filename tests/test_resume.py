"""Resumable trials: checkpoints at each evaluation; a retried or re-queued trial resumes from its
last one, reports what it had reached, trains only the remaining steps and ends where an
uninterrupted trial ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import ROOT, write_study

from hpo.checkpoints import CHECKPOINT_ATTR, HPO_STATE, LATEST, WEIGHTS, TrialCheckpoint, study_folder
from hpo.cli import main
from hpo.config import load_study
from hpo.context import prepare
from hpo.training import plan_steps, train_and_evaluate

TS = optuna.trial.TrialState
STEPS = 12  # optimizer steps per trial; evaluations at 3, 6, 9, 12
PER_STRATEGY = {"lora": {"r": [4]}, "partial": {"trainable_top_layers": [1]}}


def _study(tmp_path: Path, model_dir: Path, strategy: str = "lora", **over: Any) -> Path:
    """One fixed configuration (nothing sampled differs between runs), 4 evaluations."""
    over.setdefault(
        "data", {"source": "builtin:reviews", "train_limit": 200, "validation_limit": 16, "max_length": 32}
    )
    over.setdefault(
        "space",
        {
            "strategy": [strategy],
            "learning_rate": [5.0e-4],
            "per_device_train_batch_size": [8],
            "strategies": {s: v for s, v in PER_STRATEGY.items() if s == strategy},
        },
    )
    over.setdefault("budget", {"n_trials": 1, "max_epochs": 1, "evals_per_epoch": 4})
    over.setdefault("training", {"max_train_steps": STEPS})
    over.setdefault("execution", {"checkpoint_dir": str(tmp_path / "ckpt"), "heartbeat_interval": 1})
    return write_study(tmp_path, model_dir, **over)


def _trials(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    from hpo.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False)).get_trials()


# --------------------------------------------------------------------------- the training path


@pytest.mark.parametrize(
    "strategy", ["full", "lora", pytest.param("partial", marks=pytest.mark.slow), pytest.param("prompt", marks=pytest.mark.slow)]
)
def test_a_run_stopped_after_its_second_evaluation_resumes_to_the_same_end(
    strategy: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Stopped (KeyboardInterrupt, as Ctrl-C) after evaluation 2, run again: the same history
    and weights as a run never stopped; only the trainable weights were saved."""
    import torch

    spec = load_study(_study(tmp_path, tiny_model_dir, strategy, execution={}))
    ctx = prepare(spec)
    cfg = spec.space.fixed(strategy, {}, spec.training)
    assert plan_steps(len(ctx.datasets["train"]), cfg, spec) == (STEPS, [3, 6, 9, 12])

    straight = train_and_evaluate(ctx, cfg, 0, keep_model=True)
    ckpt = TrialCheckpoint(tmp_path / "ckpt" / "t")

    def stop_after_two(index: int, metrics: dict[str, float]) -> bool:
        if index == 3:
            raise KeyboardInterrupt("SIGINT")
        return False

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(ctx, cfg, 0, on_eval=stop_after_two, checkpoint=ckpt)
    assert (ckpt.folder / LATEST).read_text().strip() == "step-6"
    assert sorted(p.name for p in ckpt.folder.iterdir()) == [LATEST, "step-6"]  # one kept
    from safetensors import safe_open

    model = straight.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with safe_open(str(ckpt.folder / "step-6" / WEIGHTS), framework="pt") as f:
        assert set(f.keys()) == trainable
    n_all = len(list(model.named_parameters()))
    if strategy in ("lora", "prompt", "partial"):
        assert len(trainable) < n_all  # the adapter (or the top layers), not the model

    replayed: list[int] = []
    resumed = train_and_evaluate(
        ctx, cfg, 0, on_eval=lambda i, m: bool(replayed.append(i)), checkpoint=ckpt, keep_model=True
    )
    assert replayed == [1, 2, 3, 4]  # the two it had reached are reported again
    assert resumed.resumed_from_step == 6 and resumed.steps_trained == STEPS - 6
    assert straight.steps_trained == STEPS and resumed.steps == STEPS
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a["step"] == b["step"]
        assert abs(a["loss"] - b["loss"]) < 1e-5, (straight.history, resumed.history)
    for (name, a), b in zip(model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


# --------------------------------------------------------------------------- killed and interrupted runs

KILL_STEPS = 40  # evaluations at 10, 20, 30, 40: time to catch the second one from outside
KILL_STUDY: dict[str, Any] = {
    "training": {"max_train_steps": KILL_STEPS},
    "data": {"source": "builtin:reviews", "train_limit": 320, "validation_limit": 16, "max_length": 32},
    # The validation loss tells two runs apart where 16 rows' accuracy would not.
    "objective": {"metric": "loss", "direction": "minimize"},
}


def _hpo(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-m", "hpo", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _latest_step(folder: Path) -> int | None:
    for pointer in folder.rglob(LATEST):
        try:
            return int(pointer.read_text().strip().removeprefix("step-"))
        except (OSError, ValueError):
            return None
    return None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> optuna.trial.FrozenTrial:
    """The trial as it ends when nothing stops it (its checkpoints deleted at the end)."""
    tmp = tmp_path_factory.mktemp("straight")
    url = f"sqlite:///{tmp / 'hpo.db'}"
    path = _study(tmp, tiny_model_dir, **KILL_STUDY)
    assert main(["run", str(path), "--storage", url]) == 0
    (trial,) = _trials(url)
    assert trial.state == TS.COMPLETE and trial.user_attrs["steps_trained"] == KILL_STEPS
    assert not any((tmp / "ckpt").rglob("*.safetensors"))  # a finished trial keeps none
    return trial


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_killed_or_interrupted_trial_resumes_from_its_checkpoint(
    sig: signal.Signals,
    tmp_path: Path,
    tiny_model_dir: Path,
    uninterrupted: optuna.trial.FrozenTrial,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGKILL after the second evaluation: the next run fails the trial (its worker is gone),
    queues its retry, and the retry resumes. Ctrl-C (SIGINT): the trial is stored as
    interrupted and queued again when the study is resumed, then resumes the same way. Either
    way the retry reports the evaluations already reached, trains only the remaining steps
    and ends with the uninterrupted trial's value."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = _study(tmp_path, tiny_model_dir, **KILL_STUDY)
    ckpt_root = tmp_path / "ckpt"
    proc = _hpo("run", str(path), "--storage", url)
    try:
        end = time.monotonic() + 240
        while (_latest_step(ckpt_root) or 0) < 2 * KILL_STEPS // 4 and proc.poll() is None:
            assert time.monotonic() < end, "no second checkpoint within 240 s"
            time.sleep(0.02)
        os.kill(proc.pid, sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    saved = _latest_step(ckpt_root)
    assert saved is not None and saved >= 20, (saved, out)
    (victim,) = _trials(url)
    if sig == signal.SIGKILL:
        assert victim.state == TS.RUNNING
    else:
        assert proc.returncode == 130, out
        assert victim.state == TS.FAIL and victim.user_attrs["fail_reason"] == "interrupted (SIGINT)"
    key = victim.system_attrs[CHECKPOINT_ATTR]
    assert (study_folder(load_study(path)) / key / f"step-{saved}" / HPO_STATE).is_file()

    capsys.readouterr()
    assert main(["run", str(path), "--storage", url, "--n-trials", "1"]) == 0
    out = capsys.readouterr().out
    if sig == signal.SIGINT:
        assert "trial 0 was interrupted (SIGINT); queued again (retry_of: 0)" in out, out
    victim, retry = _trials(url)
    assert victim.state == TS.FAIL and retry.state == TS.COMPLETE
    assert retry.user_attrs["retry_of"] == 0 and retry.system_attrs[CHECKPOINT_ATTR] == key
    assert retry.user_attrs["resumed_from_step"] == saved
    assert retry.user_attrs["steps_trained"] == KILL_STEPS - saved
    assert retry.user_attrs["steps"] == KILL_STEPS
    # The evaluations it had reached, reported again, then the rest: as if never stopped.
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]
    for step, value in uninterrupted.intermediate_values.items():
        assert abs(retry.intermediate_values[step] - value) < 1e-6, (step, retry.intermediate_values)
    assert retry.value == uninterrupted.value
    assert abs(retry.user_attrs["val_loss"] - uninterrupted.user_attrs["val_loss"]) < 1e-5
    assert not (ckpt_root / "tiny" / key).exists()  # deleted once the trial finished


def test_hpo_run_deletes_only_this_studys_checkpoints_that_no_trial_resumes(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from hpo.drivers.setup import drop_unused_checkpoints
    from hpo.storage import open_storage
    from hpo.study import open_study

    spec = load_study(_study(tmp_path, tiny_model_dir))
    study = open_study(spec, open_storage(f"sqlite:///{tmp_path / 'hpo.db'}"))
    dist = {"strategy": optuna.distributions.CategoricalDistribution(["lora"])}
    for key, state in (("done", TS.COMPLETE), ("queued", TS.WAITING), ("failed", TS.FAIL)):
        study.add_trial(
            optuna.create_trial(
                state=state,
                params={"strategy": "lora"},
                distributions=dist,
                value=0.5 if state == TS.COMPLETE else None,
                system_attrs={CHECKPOINT_ATTR: key},
            )
        )
    folder = study_folder(spec)
    for key in ("done", "queued", "failed", "another-databases-trial"):
        (folder / key / "step-3").mkdir(parents=True)
    drop_unused_checkpoints(spec, study)
    assert sorted(p.name for p in folder.iterdir()) == ["another-databases-trial", "queued"]
