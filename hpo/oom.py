"""Out-of-memory handling: free the memory, retry with half the micro-batch, else fail clearly.

An accelerator out-of-memory error in a trial says nothing about the configuration's quality,
only that its micro-batch did not fit next to the model. ``train_with_oom_retry`` frees what
the failed attempt held (the exception's frames, ``gc``, the CUDA caching allocator) and runs
the same configuration again with half the per-device batch and twice the gradient
accumulation, so the effective batch (micro-batch x accumulation) and therefore the
optimisation are unchanged. Below the floor it gives up with ``TrialOutOfMemory`` and the
reason is recorded on the trial.

Testing on a machine without a GPU: ``HPO_INJECT_OOM_ABOVE=N`` raises ``torch.OutOfMemoryError``
at the start of any attempt whose micro-batch is above N (0: every attempt).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

from hpo.space import TrialConfig

INJECT_ENV = "HPO_INJECT_OOM_ABOVE"
T = TypeVar("T")

_OOM_MARKERS = (
    "out of memory",  # CUDA, ROCm (HIP), MPS
    "can't allocate memory",  # CPU allocator
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
)


class TrialOutOfMemory(RuntimeError):
    """The configuration ran out of memory even at the smallest micro-batch allowed."""


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory error of torch's allocators."""
    try:
        import torch

        if isinstance(error, torch.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if isinstance(error, (RuntimeError, MemoryError)):
        text = str(error).lower()
        return isinstance(error, MemoryError) or any(m in text for m in _OOM_MARKERS)
    return False


def free_memory(device: str) -> int:
    """Collect garbage and return cached accelerator memory; returns bytes still allocated."""
    gc.collect()
    if device != "cuda":
        return 0
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return int(torch.cuda.memory_allocated())


def halve_micro_batch(cfg: TrialConfig) -> TrialConfig:
    """The same configuration with half the micro-batch and twice the accumulation.

    An odd micro-batch rounds down (7 -> 3 x 2 = 6 per step): the closest effective batch
    that keeps whole samples per step.
    """
    training = dict(cfg.training)
    training["per_device_train_batch_size"] = max(1, int(training["per_device_train_batch_size"]) // 2)
    training["gradient_accumulation_steps"] = int(training["gradient_accumulation_steps"]) * 2
    return dataclasses.replace(cfg, training=training)


def _maybe_inject(cfg: TrialConfig) -> None:
    raw = os.environ.get(INJECT_ENV)
    if raw is None or raw == "":
        return
    micro = int(cfg.training["per_device_train_batch_size"])
    if micro > int(raw):
        import torch

        raise torch.OutOfMemoryError(
            f"CUDA out of memory (injected by {INJECT_ENV}={raw} at micro-batch {micro})"
        )


def train_with_oom_retry(
    train: Callable[[TrialConfig], T],
    cfg: TrialConfig,
    *,
    device: str,
    floor: int = 1,
    record: Callable[[str, Any], None] | None = None,
    baseline_bytes: int | None = None,
) -> T:
    """Call ``train(cfg)``; on out-of-memory retry with half the micro-batch down to ``floor``.

    Args:
        train: one training attempt.
        cfg: the trial's configuration.
        device: ``cuda`` or ``cpu`` (which allocator to free).
        floor: smallest micro-batch to try.
        record: ``(key, value)`` sink for trial user attributes (``trial.set_user_attr``);
            after an out-of-memory error writes ``oom_retries``, ``micro_batch``,
            ``gradient_accumulation_steps``, ``config`` (what actually trained) and ``oom_errors``.
        baseline_bytes: accelerator memory allocated before the trial; after freeing, more
            than this (plus 64 MiB) is recorded as ``oom_leftover_mb``.

    Raises:
        TrialOutOfMemory: still out of memory at the floor (the message says at which sizes).
    """
    floor = max(1, floor)
    retries = 0
    errors: list[str] = []
    while True:
        micro = int(cfg.training["per_device_train_batch_size"])
        message = None
        try:
            _maybe_inject(cfg)
            result = train(cfg)
        except Exception as e:
            if not is_oom(e):
                raise
            message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        else:
            if record is not None and retries:
                # Only after an out-of-memory retry: otherwise "config" already says it all
                # and a trial spends no storage round trips on this.
                record("oom_retries", retries)
                record("micro_batch", micro)
                record("gradient_accumulation_steps", int(cfg.training["gradient_accumulation_steps"]))
                record("config", json.dumps(cfg.to_dict(), sort_keys=True))
                record("oom_errors", errors)
            return result
        # Outside the except block: the exception and its frames (which hold the model, the
        # optimizer state and the batch) are gone, so collecting now actually frees them.
        errors.append(f"micro-batch {micro}: {message}")
        left = free_memory(device)
        if record is not None and baseline_bytes is not None and left > baseline_bytes + 64 * 2**20:
            record("oom_leftover_mb", round((left - baseline_bytes) / 2**20, 1))
        if micro // 2 < floor:
            if record is not None:
                record("oom_retries", retries)
                record("micro_batch", micro)
                record("oom_errors", errors)
            raise TrialOutOfMemory(
                f"out of memory at micro-batch {micro} (floor {floor}) after {retries} "
                f"retr{'y' if retries == 1 else 'ies'} halving the micro-batch; last error: {message}"
            )
        cfg = halve_micro_batch(cfg)
        retries += 1


def memory_baseline(device: str) -> int | None:
    """Accelerator bytes allocated now (None on CPU): what every trial should return to."""
    if device != "cuda":
        return None
    import torch

    return int(torch.cuda.memory_allocated())
