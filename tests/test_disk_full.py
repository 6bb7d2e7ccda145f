"""Full disks: ENOSPC in the checkpoint folder, the tokenized cache or a retrain's output fails
that trial (or that retrain, or that run) with one line, and leaves the study and earlier
results intact. On a small tmpfs the test mounts (skipped where mounting is not allowed) and,
so that it is tested everywhere, by an injected ENOSPC."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import write_study

from hpo.cli import main

TS = optuna.trial.TrialState
REASON = "DiskFullError: no space left on device writing the checkpoint of trial"


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e}); the injected-ENOSPC tests cover this")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here ({done.stderr.strip()}); the injected-ENOSPC tests cover this")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a LoRA checkpoint of the tiny model fits, a full one (about 12 MiB with
    its optimizer state) does not."""
    path = tmp_path / "small"
    _mount_tmpfs(path, "2m")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk: Path) -> None:
    """Take every free byte of ``disk``."""
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC


def _study(tmp_path: Path, model_dir: Path, **over: Any) -> Path:
    over.setdefault(
        "space",
        {
            "strategy": ["full", "lora"],
            "learning_rate": [5.0e-4],
            "per_device_train_batch_size": [16],
            "strategies": {"lora": {"r": [4]}},
        },
    )
    # Seed 1 samples full, lora, full, ... (checked below).
    over.setdefault("sampler", {"name": "random", "seed": 1, "skip_repeats": None})
    over.setdefault("budget", {"n_trials": 3, "max_epochs": 1, "evals_per_epoch": 2})
    return write_study(tmp_path, model_dir, **over)


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    from hpo.storage import open_storage

    return optuna.load_study(study_name="tiny", storage=open_storage(url, heartbeat=False)).get_trials()


def _check_only_full_trials_failed(trials: list[optuna.trial.FrozenTrial], where: Path) -> None:
    strategies = {t.params["strategy"] for t in trials}
    assert strategies == {"full", "lora"}, "the seed no longer samples both strategies"
    for t in trials:
        if t.params["strategy"] == "full":
            reason = t.user_attrs["fail_reason"]
            assert t.state == TS.FAIL and reason.startswith(f"{REASON} {t.number} in {where}"), reason
            assert "\n" not in reason
        else:
            assert t.state == TS.COMPLETE, t.user_attrs.get("fail_reason")


def test_checkpoint_on_a_full_tmpfs_fails_only_that_trial(
    tmp_path: Path, tiny_model_dir: Path, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = _study(tmp_path, tiny_model_dir, execution={"checkpoint_dir": str(small_disk)})
    assert main(["run", str(path), "--storage", url]) == 0  # the LoRA trial completed
    trials = _trials(url)
    _check_only_full_trials_failed(trials, small_disk / "tiny")
    out = capsys.readouterr().out
    assert REASON in out, out
    # Nothing left behind: finished trials' checkpoints and the failed ones' partial files.
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []


def test_injected_enospc_fails_only_that_trial(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no file system can be mounted: the weights file of a checkpoint over 1 MiB raises
    ENOSPC, as a small disk would (a write error the disk's own tests above show for real)."""
    import safetensors.torch

    real = safetensors.torch.save_file

    def small_disk_save_file(tensors: dict[str, Any], filename: str, *a: Any, **k: Any) -> None:
        if sum(t.numel() * t.element_size() for t in tensors.values()) > 2**20:
            with open(filename, "wb") as f:
                f.write(b"\0" * 4096)  # a partial file, as a disk that fills up leaves
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        real(tensors, filename, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", small_disk_save_file)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    ckpt = tmp_path / "ckpt"
    path = _study(tmp_path, tiny_model_dir, execution={"checkpoint_dir": str(ckpt)})
    assert main(["run", str(path), "--storage", url]) == 0
    _check_only_full_trials_failed(_trials(url), ckpt / "tiny")
    assert [p for p in ckpt.rglob("*") if p.is_file()] == []


def test_full_cache_and_output_disks_fail_with_one_line_and_keep_earlier_results(
    tmp_path: Path,
    tiny_model_dir: Path,
    small_disk: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A retrain whose output folder fills up exits 1 with one line and the earlier retrain's
    files as they were; a run whose tokenized cache cannot be written exits 1 with one line and
    the study as it was."""
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = _study(
        tmp_path,
        tiny_model_dir,
        space={"strategy": ["full"], "learning_rate": [5.0e-4], "per_device_train_batch_size": [16]},
        budget={"n_trials": 1, "max_epochs": 1, "evals_per_epoch": 1},
        data={"source": "builtin:reviews", "train_limit": 64, "validation_limit": 32, "max_length": 32},
    )
    assert main(["run", str(path), "--storage", url]) == 0
    spec_file = tmp_path / "best.yaml"
    assert main(["export", "tiny", "--storage", url, "-o", str(spec_file)]) == 0

    # An earlier retrain's results in the output folder; --overwrite would replace them.
    out_dir = small_disk / "run"
    (out_dir / "model").mkdir(parents=True)
    (out_dir / "model" / "hpo_model.json").write_text('{"earlier": true}\n')
    (out_dir / "metrics.json").write_text('{"earlier": true}\n')
    capsys.readouterr()
    assert main(["retrain", str(spec_file), "-o", str(out_dir), "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no space left on device writing the retrained model" in err, err
    assert (out_dir / "metrics.json").read_text() == '{"earlier": true}\n'
    assert (out_dir / "model" / "hpo_model.json").read_text() == '{"earlier": true}\n'
    assert sorted(p.name for p in out_dir.iterdir()) == ["metrics.json", "model"]  # no partial files

    # The tokenized cache on a full disk: this run stops before any trial; the study is intact.
    import hpo.context
    from hpo.data import clear_tokenize_cache

    clear_tokenize_cache()  # tokenized splits this process holds would hide the cache write
    cache = small_disk / "cache"
    monkeypatch.setattr(hpo.context, "CACHE_DIR", cache)
    _fill(small_disk)
    assert main(["run", str(path), "--storage", url, "--n-trials", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no space left on device writing the tokenized data cache" in err, err
    assert "HPO_CACHE_DIR" in err
    (trial,) = _trials(url)
    assert trial.state == TS.COMPLETE
    assert not [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else True
