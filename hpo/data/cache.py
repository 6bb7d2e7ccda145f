"""Tokenizing loaded splits once per data fingerprint, tokenizer and ``max_length``.

:func:`tokenize` keeps its results in this process and, with a cache folder, on disk (one
folder per cache key, written atomically), so a worker running many trials tokenizes once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from hpo.data.load import LoadedData, fingerprint
from hpo.data.spec import DataError
from hpo.errors import DiskFullError, disk_full
from hpo.tasks import Task, get_task

if TYPE_CHECKING:
    import datasets

# Bump when the tokenized layout changes so that old disk caches are not reused.
_TOKENIZE_CACHE_VERSION = 1


TOKENIZE_STATS: dict[str, int] = {"memory_hits": 0, "disk_hits": 0, "tokenized": 0}
"""Counts per split since the process started (tests read them to check the caches)."""

_TOKENIZED: dict[str, datasets.Dataset] = {}


def clear_tokenize_cache() -> None:
    """Forgets the in-process tokenized splits (the disk cache stays)."""
    _TOKENIZED.clear()


def _tokenize_key(
    split_hash: str, tokenizer: Any, max_length: int, split: str, task: Task, options: dict[str, Any]
) -> str:
    cls = type(tokenizer)
    ident: dict[str, Any] = {
        "version": _TOKENIZE_CACHE_VERSION,
        "data": split_hash,
        "tokenizer": str(getattr(tokenizer, "name_or_path", "")),
        "vocab": len(tokenizer),  # includes added tokens, unlike vocab_size
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "max_length": max_length,
        "split": split,
    }
    if task.name != "sequence-classification" or options:
        # Classification's keys are those from before tasks existed (caches stay valid).
        ident.update(task=task.name, options=options)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def tokenize(
    data: LoadedData,
    tokenizer: Any,
    max_length: int,
    cache_dir: str | Path | None,
    splits: tuple[str, ...] = ("train", "validation"),
    task: str = "sequence-classification",
    options: dict[str, Any] | None = None,
) -> dict[str, datasets.Dataset]:
    """Tokenizes splits once per data fingerprint, tokenizer and ``max_length``.

    The task encodes (texts truncated to ``max_length`` tokens, unpadded: a collator pads each
    batch).
    Results are kept in this process and, with ``cache_dir``, on disk under
    ``cache_dir/<key>``; a cache entry is written to a temporary folder and renamed into
    place, so concurrent workers never read half of one.

    Args:
        data: Loaded data.
        tokenizer: A Hugging Face tokenizer.
        max_length: Tokens per example after truncation.
        cache_dir: Folder for the disk cache, or None for the in-process cache only.
        splits: Which splits to tokenize.
        task: Whose encoding (the task's ``encode``).
        options: The task's options (``task:`` in the study file), part of the cache key.

    Returns:
        Split -> dataset with ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the
        tokenizer makes them) and ``labels``.

    Raises:
        DataError: If a split was not loaded (the test split needs ``need_test=True``).
    """
    import datasets

    the_task = get_task(task)
    options = dict(options or {})
    out: dict[str, datasets.Dataset] = {}
    for split in splits:
        frame = getattr(data, split, None)
        if not isinstance(frame, pd.DataFrame):
            hint = " (load_data(..., need_test=True))" if split == "test" else ""
            raise DataError(f"tokenize: split {split!r} is not loaded{hint}")
        # The fingerprint covers train and validation; other splits are hashed here.
        split_hash = (
            data.fingerprint
            if split in ("train", "validation")
            else fingerprint({split: frame}, data.label_names, the_task)
        )
        key = _tokenize_key(split_hash, tokenizer, max_length, split, the_task, options)
        if key in _TOKENIZED:
            TOKENIZE_STATS["memory_hits"] += 1
            out[split] = _TOKENIZED[key]
            continue
        ds = load_cached(cache_dir, key)
        if ds is not None:
            TOKENIZE_STATS["disk_hits"] += 1
        else:
            columns = the_task.encode(frame, tokenizer, max_length, data.label_names, options, split)
            ds = datasets.Dataset.from_dict(columns)
            TOKENIZE_STATS["tokenized"] += 1
            if cache_dir is not None:
                ds = save_cached(ds, Path(cache_dir), key)
        _TOKENIZED[key] = ds
        out[split] = ds
    return out


def load_cached(cache_dir: str | Path | None, key: str) -> datasets.Dataset | None:
    """The dataset cached under ``cache_dir/key``, or None when there is none or it is unreadable."""
    if cache_dir is None:
        return None
    path = Path(cache_dir) / key
    if not path.is_dir():
        return None
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception:
        # A cache written by another datasets version or damaged by hand: retokenize.
        return None


def save_cached(ds: datasets.Dataset, cache_dir: Path, key: str) -> datasets.Dataset:
    """Writes ``ds`` under ``cache_dir/key`` atomically and returns the on-disk copy."""
    import datasets

    final = cache_dir / key
    tmp = cache_dir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        ds.save_to_disk(str(tmp))
        try:
            os.rename(tmp, final)
        except OSError:
            # Another worker renamed its copy first; theirs is complete, use it.
            if not final.is_dir():
                raise
    except Exception as e:
        full = disk_full(e, "the tokenized data cache", cache_dir)  # before the cleanup frees space
        if full is not None:
            raise DiskFullError(f"{full} (set HPO_CACHE_DIR to a folder with room)") from None
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(final))
