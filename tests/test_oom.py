"""Out-of-memory: retry at half the micro-batch (same effective batch), else fail clearly."""

from __future__ import annotations

import json
import weakref
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from conftest import write_study

from hpo.config import load_study
from hpo.context import prepare
from hpo.drivers.worker import run_worker
from hpo.oom import INJECT_ENV, TrialOutOfMemory, halve_micro_batch, is_oom, train_with_oom_retry
from hpo.space import TrialConfig

TS = optuna.trial.TrialState


def _cfg(micro: int, accumulation: int = 1) -> TrialConfig:
    return TrialConfig(
        "lora",
        {"r": 4},
        {
            "per_device_train_batch_size": micro,
            "gradient_accumulation_steps": accumulation,
            "learning_rate": 1e-4,
        },
    )


class _Big:
    """Stands for the model and activations a failed attempt held."""


def test_retry_halves_the_micro_batch_keeps_the_effective_batch_and_frees_the_attempt() -> None:
    calls: list[tuple[int, int]] = []
    held: list[weakref.ref[_Big]] = []

    def train(cfg: TrialConfig) -> str:
        # What the previous attempt allocated is gone before this one starts.
        assert all(ref() is None for ref in held)
        micro, acc = cfg.training["per_device_train_batch_size"], cfg.training["gradient_accumulation_steps"]
        calls.append((micro, acc))
        big = _Big()
        held.append(weakref.ref(big))
        if micro > 4:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB ({id(big)})")
        return "trained"

    attrs: dict[str, Any] = {}
    assert train_with_oom_retry(train, _cfg(16), device="cpu", record=attrs.__setitem__) == "trained"
    assert calls == [(16, 1), (8, 2), (4, 4)]
    assert {m * a for m, a in calls} == {16}
    assert attrs["oom_retries"] == 2 and attrs["micro_batch"] == 4
    assert attrs["gradient_accumulation_steps"] == 4
    assert json.loads(attrs["config"])["training"]["per_device_train_batch_size"] == 4
    assert len(attrs["oom_errors"]) == 2 and "micro-batch 16" in attrs["oom_errors"][0]


def test_no_out_of_memory_records_nothing_and_other_errors_pass_through() -> None:
    attrs: dict[str, Any] = {}
    assert train_with_oom_retry(lambda c: 1, _cfg(8), device="cpu", record=attrs.__setitem__) == 1
    assert attrs == {}

    def broken(cfg: TrialConfig) -> None:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError):
        train_with_oom_retry(broken, _cfg(8), device="cpu")


def test_floor_reached_fails_with_the_reason() -> None:
    def never_fits(cfg: TrialConfig) -> None:
        raise RuntimeError("CUDA error: out of memory")

    attrs: dict[str, Any] = {}
    with pytest.raises(TrialOutOfMemory, match=r"out of memory at micro-batch 4 \(floor 4\) after 2 retries"):
        train_with_oom_retry(never_fits, _cfg(16), device="cpu", floor=4, record=attrs.__setitem__)
    assert attrs["oom_retries"] == 2 and attrs["micro_batch"] == 4


def test_what_counts_as_out_of_memory() -> None:
    assert is_oom(torch.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"))
    assert is_oom(
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    )
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))
    odd = halve_micro_batch(_cfg(7, 3))
    assert (
        odd.training["per_device_train_batch_size"] == 3 and odd.training["gradient_accumulation_steps"] == 6
    )


def test_trials_retry_at_half_the_micro_batch_and_the_study_goes_on(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    spec = load_study(
        write_study(
            tmp_path,
            tiny_model_dir,
            training={"max_train_steps": 3},
            sampler={"name": "random", "skip_repeats": None},  # every trial trains
        )
    )
    ctx = prepare(spec)
    # Micro-batch 16 "does not fit"; 8 neither; 4 does.
    monkeypatch.setenv(INJECT_ENV, "4")
    run_worker(spec, url, n_trials=1, timeout=None, quiet=True, ctx=ctx)
    # Now nothing fits: trials fail with the reason, and the next trial still runs.
    monkeypatch.setenv(INJECT_ENV, "0")
    study = run_worker(spec, url, n_trials=2, timeout=None, quiet=True, ctx=ctx)

    trials = study.get_trials()
    assert [t.state for t in trials] == [TS.COMPLETE, TS.FAIL, TS.FAIL]
    for t in trials[:1]:
        a = t.user_attrs
        assert a["oom_retries"] == 2 and a["micro_batch"] == 4 and a["gradient_accumulation_steps"] == 4
        trained = json.loads(a["config"])["training"]
        assert trained["per_device_train_batch_size"] * trained["gradient_accumulation_steps"] == 16
        assert set(t.intermediate_values) == {1, 2} and a["steps"] == 3
    for t in trials[1:]:
        reason = t.user_attrs["fail_reason"]
        assert reason.startswith("TrialOutOfMemory: out of memory at micro-batch 1 (floor 1) after 4 retries")
        assert t.user_attrs["oom_retries"] == 4
