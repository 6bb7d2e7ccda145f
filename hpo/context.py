"""What a worker loads once and reuses for every trial: data, tokenizer, tokenized splits,
base weights (:class:`WorkerContext`, built by :func:`prepare`)."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.config import StudySpec
from hpo.data import LoadedData, load_data, pool_folds, tokenize
from hpo.models import ensure_local_model, pretrained_options
from hpo.tasks import get_task

CACHE_DIR = Path(os.environ.get("HPO_CACHE_DIR", ".hpo-cache"))


@dataclass
class WorkerContext:
    """What a worker loads once and reuses for every trial."""

    # spec: the study; data: the loaded splits (frames, label names, fingerprint); tokenizer;
    # datasets: split -> tokenized dataset; device: cpu or cuda; worker: host:pid.
    spec: StudySpec
    data: LoadedData
    tokenizer: Any
    datasets: dict[str, Any]
    device: str
    worker: str
    _base: Any = None
    load_seconds: float = 0.0
    _tracker: Any = None

    def tracker(self) -> Any:
        """The study's experiment tracking in this worker (``hpo.tracking.Tracker``), or None."""
        if self._tracker is None and self.spec.tracking.enabled:
            from hpo.tracking import Tracker

            self._tracker = Tracker(self.spec)
        return self._tracker

    folds: list[tuple[list[int], list[int]]] | None = None
    """``evaluation.folds``: (train, validation) positions in ``datasets["pool"]`` (the train
    rows, then the validation rows) per fold; None: the single validation split."""

    def base_model(self) -> Any:
        """The pretrained model with its task head, loaded once per worker (never trained)."""
        if self._base is None:
            task = get_task(self.spec.task)
            t0 = time.perf_counter()
            options = pretrained_options(self.spec)  # revision, trust_remote_code: only when set
            self._base = task.load_model(self.spec.model_path, self.data.label_names, **options)
            self.load_seconds += time.perf_counter() - t0
        return self._base


def pick_device(requested: str = "auto") -> str:
    """cuda when asked for or visible (auto), else cpu."""
    import torch

    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def prepare(spec: StudySpec, need_test: bool = False, worker: str | None = None) -> WorkerContext:
    """Load data and tokenizer and tokenize (cached on disk by data fingerprint).

    Raises:
        DataError: bad data, before any database is touched.
    """
    import datasets
    from transformers import AutoTokenizer

    # Progress bars for a few hundred cached rows are noise in a trial log.
    datasets.disable_progress_bars()
    data = load_data(spec.data, need_test=need_test)
    ensure_local_model(spec.model_path)  # a GGUF alias (smollm2) is converted into the cache once
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path, **pretrained_options(spec))
    splits = (
        ("train", "validation", "test") if need_test and data.test is not None else ("train", "validation")
    )
    datasets = tokenize(
        data,
        tokenizer,
        spec.data.max_length,
        CACHE_DIR / "tokenized",
        splits=splits,
        task=spec.task,
        options=task_options(spec),
    )
    folds = None
    if spec.evaluation.folds:
        folds = pool_folds(data, datasets, spec.evaluation.folds, spec.seed, get_task(spec.task))
    # Metrics do not depend on the evaluation order, padding does: batches of similar length
    # pad least (SST-2 dev, 64 per batch: about half the padded tokens of file order).
    datasets["validation"] = sorted_by_length(datasets["validation"])
    return WorkerContext(
        spec=spec,
        data=data,
        tokenizer=tokenizer,
        datasets=datasets,
        device=pick_device(spec.execution.device),
        worker=worker or f"{socket.gethostname()}:{os.getpid()}",
        folds=folds,
    )


def task_options(spec: StudySpec) -> dict[str, Any]:
    """The task's options: its defaults, with what the study file sets."""
    return get_task(spec.task).resolved_options(spec.task_options)


def sorted_by_length(ds: Any) -> Any:
    """The dataset reordered by input length (stable), for cheaper batched evaluation."""
    lengths = [len(ids) for ids in ds["input_ids"]]
    return ds.select(sorted(range(len(lengths)), key=lengths.__getitem__))
