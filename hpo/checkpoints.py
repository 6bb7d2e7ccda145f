"""Trial checkpoints: what a retried trial resumes from instead of starting over.

At each scheduled evaluation but the last, a trial writes its trainable weights (for LoRA and
prompt tuning the adapter only, for full and partial fine-tuning the weights that train),
optimizer, scheduler and RNG states, the Trainer's state and the evaluations so far, in the
layout ``Trainer(resume_from_checkpoint=...)`` reads, under
``<execution.checkpoint_dir>/<study>/<trial key>/step-<N>``. The trial key is a system attribute
of the trial that its retries inherit (``hpo.storage.RetryWithLink`` copies system
attributes), so a retry on any machine that reads the same folder finds it. One checkpoint is
kept per trial: a new one replaces the last (written beside it, then switched to by renaming
``LATEST``), and a finished trial's is deleted. Weights load as safetensors, the rest with
``torch.load(weights_only=True)``: no unrestricted pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.config import StudySpec
from hpo.errors import disk_full

# System attribute of a trial (and, copied, of its retries): its checkpoint folder's name.
CHECKPOINT_ATTR = "hpo:checkpoint"
# Files of one checkpoint, in the names the Trainer's resume reads.
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
RNG = "rng_state.pth"
TRAINER_STATE = "trainer_state.json"
# Written last: a folder without it is incomplete and never resumed from.
HPO_STATE = "hpo_state.json"
LATEST = "LATEST"


def checkpoint_root(spec: StudySpec) -> Path:
    """``execution.checkpoint_dir`` (relative: to the study file's folder), else the cache's."""
    from hpo import context

    folder = spec.execution.checkpoint_dir
    if not folder:
        return Path(context.CACHE_DIR) / "checkpoints"
    path = Path(folder).expanduser()
    if not path.is_absolute() and spec.path:
        path = Path(spec.path).parent / path
    return path


def study_folder(spec: StudySpec) -> Path:
    """Where the checkpoints of this study's trials live."""
    return checkpoint_root(spec) / re.sub(r"[^\w.-]", "_", spec.name)


def new_key(number: int) -> str:
    """A checkpoint key for trial ``number``: unique across studies that share a folder."""
    return f"trial-{number}-{uuid.uuid4().hex[:8]}"


def run_fingerprint(cfg: Any, seed: int, max_steps: int, schedule: list[int], n_train: int) -> str:
    """What a checkpoint must agree on to be resumed: the configuration as trained (an
    out-of-memory retry halves the micro-batch), the seed, the plan and the training rows."""
    key = json.dumps(
        {"config": cfg.to_dict(), "seed": seed, "steps": max_steps, "schedule": schedule, "rows": n_train},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class Resume:
    """A checkpoint found for this run."""

    path: Path
    step: int
    history: list[dict[str, float]]


class TrialCheckpoint:
    """The checkpoint folder of one trial (shared by its retries)."""

    def __init__(self, folder: Path, label: str = "this trial"):
        self.folder = folder
        self.label = label

    def latest(self, fingerprint: str) -> Resume | None:
        """The last complete checkpoint of a run with this fingerprint, or None."""
        try:
            name = (self.folder / LATEST).read_text().strip()
            path = self.folder / name
            state = json.loads((path / HPO_STATE).read_text())
        except (OSError, ValueError):
            return None
        if state.get("fingerprint") != fingerprint or not all(
            (path / f).is_file() for f in (WEIGHTS, OPTIMIZER, SCHEDULER, RNG, TRAINER_STATE)
        ):
            return None
        return Resume(path, int(state["step"]), list(state["history"]))

    def check_weights(self, resume: Resume, model: Any) -> bool:
        """The saved weights are exactly the model's trainable parameters (names and shapes)."""
        from safetensors import safe_open

        trainable = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
        try:
            with safe_open(str(resume.path / WEIGHTS), framework="pt") as f:
                saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except Exception:  # a damaged file: start over
            return False
        return saved == trainable

    def save(
        self,
        *,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        state: Any,
        history: list[dict[str, float]],
        fingerprint: str,
    ) -> Path:
        """Write the checkpoint of optimizer step ``state.global_step`` and make it the latest.

        Raises:
            DiskFullError: no space left (the trial's checkpoints are removed to free it).
            Exception: any other write error, as raised.
        """
        import random

        import numpy as np
        import torch
        from safetensors.torch import save_file

        step = int(state.global_step)
        name = f"step-{step}"
        tmp = self.folder / f".{name}.tmp-{os.getpid()}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            weights = {
                n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad
            }
            save_file(weights, str(tmp / WEIGHTS))
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
            torch.save(scheduler.state_dict(), tmp / SCHEDULER)
            rng: dict[str, Any] = {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "cpu": torch.random.get_rng_state(),
            }
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.random.get_rng_state()
            torch.save(rng, tmp / RNG)
            state.save_to_json(str(tmp / TRAINER_STATE))
            (tmp / HPO_STATE).write_text(
                json.dumps({"step": step, "history": history, "fingerprint": fingerprint}) + "\n"
            )
            final = self.folder / name
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer = self.folder / f".{LATEST}.tmp-{os.getpid()}"
            pointer.write_text(name + "\n")
            os.replace(pointer, self.folder / LATEST)
        except Exception as e:
            full = disk_full(e, f"the checkpoint of {self.label}", self.folder)  # before freeing
            shutil.rmtree(tmp, ignore_errors=True)
            if full is not None:
                self.discard()
                raise full from None
            raise
        # One checkpoint per trial: the one just written.
        for other in self.folder.iterdir():
            if other.name not in (name, LATEST):
                shutil.rmtree(other, ignore_errors=True) if other.is_dir() else other.unlink(missing_ok=True)
        return final

    def discard(self) -> None:
        """Delete this trial's checkpoints (it finished, or cannot use them)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def for_trial(spec: StudySpec, key: str, number: int) -> TrialCheckpoint:
    """The checkpoint of the trial series ``key``; ``number``: the trial running now."""
    return TrialCheckpoint(study_folder(spec) / key, f"trial {number}")


def prune_orphans(spec: StudySpec, unused: set[str]) -> list[str]:
    """Delete the study's checkpoint folders that no trial will resume.

    Args:
        spec: the study.
        unused: keys of the study's trial series none of whose trials is RUNNING or WAITING.

    Returns:
        The keys deleted.
    """
    folder = study_folder(spec)
    gone = []
    for key in sorted(unused):
        if (folder / key).is_dir():
            shutil.rmtree(folder / key, ignore_errors=True)
            gone.append(key)
    return gone


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 when it does not exist)."""
    if not folder.is_dir():
        return 0
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
