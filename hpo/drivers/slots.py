"""Where worker processes run: GPU slots, CPU shares and torch threads, without importing torch.

``plan_slots`` turns ``--workers``/``--gpus``/``--trials-per-gpu`` and ``execution.device`` into
one :class:`Slot` per worker process of ``hpo run``; ``joining_worker_threads`` decides the
torch threads of an ``hpo worker`` that shares a host with others.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from hpo.errors import UserError


@dataclass(frozen=True)
class Slot:
    """One worker process: which GPU it sees and how many CPU threads it uses."""

    index: int
    gpu: str | None
    """CUDA_VISIBLE_DEVICES value for the worker (a GPU index or UUID); None on CPU."""
    threads: int
    """torch intra-op threads (cores // workers, at least 1)."""
    hide_gpus: bool = False
    """CPU worker on a machine with GPUs (execution.device: cpu): hide them."""

    @property
    def label(self) -> str:
        return f"gpu{self.gpu}" if self.gpu is not None else "cpu"

    def env(self) -> dict[str, str]:
        """Environment the worker process starts with (read by CUDA and OpenMP at import)."""
        env = {
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
            "TOKENIZERS_PARALLELISM": "false",
        }
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        elif self.hide_gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def detect_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """Visible GPUs, without importing torch (the parent must not initialise CUDA).

    ``CUDA_VISIBLE_DEVICES`` wins when set (its entries, in order); otherwise the GPUs that
    ``nvidia-smi`` lists; otherwise none.
    """
    value = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        ids = [v.strip() for v in value.split(",") if v.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way to hide every GPU.
        out: list[str] = []
        for v in ids:
            if v.startswith("-"):
                break
            out.append(v)
        return out
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        res = subprocess.run(
            [exe, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if res.returncode != 0:
        return []
    return [line.strip() for line in res.stdout.splitlines() if line.strip().isdigit()]


def _is_hpo_worker(cmdline: list[str]) -> bool:
    """``hpo worker ...`` or ``python -m hpo worker ...``."""
    for i, arg in enumerate(cmdline[:-1]):
        if os.path.basename(arg) == "hpo":  # the module (-m hpo) or the console script
            return cmdline[i + 1] == "worker"
    return False


def local_hpo_workers() -> int:
    """``hpo worker`` processes of this user on this host that may run on this process's cores."""
    import psutil

    mine = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    uid = os.getuid()
    n = 0
    for proc in psutil.process_iter(["cmdline", "uids"]):
        try:
            uids = proc.info["uids"]
            if uids is None or uids.real != uid or not _is_hpo_worker(proc.info["cmdline"] or []):
                continue
            if mine is not None and not mine & set(proc.cpu_affinity()):
                continue  # pinned to other cores (a scheduler's CPU binding)
            n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            continue
    return n


def joining_worker_threads(threads: int | None = None) -> tuple[int, str]:
    """torch intra-op threads for ``hpo worker`` and where the number comes from.

    ``--threads`` if given, else ``OMP_NUM_THREADS`` (what a cluster's job script usually sets),
    else this process's cores divided by the ``hpo worker`` processes of this user on this host
    that share them (torch's default, every core in every worker, oversubscribes the cores as
    soon as two workers share a machine).
    """
    if threads:
        return threads, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores, workers = cpu_cores(), max(1, local_hpo_workers())
    return max(1, cores // workers), f"{cores} cores shared by {workers} hpo worker(s) on this host"


def plan_slots(
    workers: int | str | None,
    gpus: list[int] | None,
    trials_per_gpu: int | None,
    device: str = "auto",
    *,
    cores: int | None = None,
    visible: list[str] | None = None,
) -> list[Slot]:
    """Decide the worker processes.

    Args:
        workers: a number, ``"auto"`` (one per GPU slot; on CPU one per 2 cores) or None (1).
        gpus: indices into the visible GPUs (``--gpus 0,2``); None: every visible GPU when the
            device allows CUDA.
        trials_per_gpu: worker processes that share one GPU (K); with an explicit ``workers``
            count the workers are spread round-robin over the GPUs instead.
        device: ``execution.device`` (auto, cpu, cuda).
        cores: CPU cores to share (default: this process's affinity).
        visible: visible GPUs (default: ``detect_gpus()``).

    Raises:
        UserError: ``--gpus`` names a GPU that is not visible, or GPUs with device cpu.
    """
    cores = cores or cpu_cores()
    k = max(1, trials_per_gpu or 1)
    if device == "cpu":
        if gpus:
            raise UserError("--gpus: the study's execution.device is cpu; drop --gpus or set device to auto")
        visible = []
    elif visible is None:
        visible = detect_gpus()
    ids: list[str] = []
    if gpus:
        for g in gpus:
            if g < 0 or (visible and g >= len(visible)):
                shown = f"0..{len(visible) - 1}" if visible else "none"
                raise UserError(f"--gpus: GPU {g} is not visible (visible GPUs: {shown})")
        ids = [visible[g] if visible else str(g) for g in gpus]
    elif visible:
        ids = list(visible)
    if device == "cuda" and not ids:
        raise UserError("execution.device is cuda but no GPU is visible (CUDA_VISIBLE_DEVICES / nvidia-smi)")
    if ids:
        if isinstance(workers, int) and workers > 1:
            n = workers
            assign = [ids[i % len(ids)] for i in range(n)]
        else:
            n = len(ids) * k
            assign = [ids[i // k] for i in range(n)]
        threads = max(1, cores // n)
        return [Slot(i, assign[i], threads) for i in range(n)]
    if workers == "auto":
        # Two intra-op threads per worker: one thread leaves a small model's matmuls slow, all
        # cores in one worker leave trials queueing.
        n = max(1, cores // 2)
    else:
        n = int(workers or 1)
    threads = max(1, cores // n)
    return [Slot(i, None, threads, hide_gpus=device == "cpu") for i in range(n)]
