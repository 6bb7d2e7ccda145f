"""Loading a study's data: :func:`load_data` and what it returns, :class:`LoadedData`.

One linear path: resolve the source (:mod:`~hpo.data.sources`), read its splits
(:mod:`~hpo.data.loaders`), map labels to ids with the task's vocabulary, carve what is missing
and subsample (:mod:`~hpo.data.splits`), and :func:`fingerprint` the rows.

The test split is carved before validation and before subsampling, whatever ``need_test``
says, so train and validation never change between the search and the retrain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pandas as pd

from hpo.data.loaders import RawSplit, load_builtin, load_hub, load_local
from hpo.data.sources import resolve_source
from hpo.data.spec import DataError, DataSpec
from hpo.data.splits import carve, n_carve, pct, subsample
from hpo.tasks import Task, get_task


@dataclass
class LoadedData:
    """The splits of one study, ready to tokenize."""

    train: pd.DataFrame
    """The task's role columns (classification: ``text``, [``text_pair``], ``label`` 0..k-1)."""
    validation: pd.DataFrame
    """Same columns as ``train``."""
    test: pd.DataFrame | None
    """Same columns as ``train``; only loaded with ``need_test=True`` (retraining)."""
    label_names: list[str]
    """The task's label set (class names, NER tags; empty for QA and generation); index = id."""
    fingerprint: str
    """Hex digest of the train and validation rows and label names."""
    sources: dict[str, str] = field(default_factory=dict)
    """Split -> where its rows came from, for people."""


def load_data(spec: DataSpec, need_test: bool = False) -> LoadedData:
    """Loads, checks, carves and subsamples the data of a study.

    Carving order: the test split (when there is no labelled one) is carved from train first,
    then validation (when there is none), then ``train_limit`` and ``validation_limit``
    subsample. All of it is seeded by ``spec.seed`` and stratified by label, so the same spec
    always gives the same rows, and the carved test split does not depend on the limits.

    Args:
        spec: The data spec.
        need_test: Also load the test split (retraining only).

    Returns:
        The splits with labels mapped to 0..k-1 in sorted order of the original values.

    Raises:
        DataError: For any problem with the source, a file, a column or the labels.
    """
    src = resolve_source(spec)
    if src.kind in ("file", "folder"):
        splits = load_local(src, spec, need_test)
    elif src.kind == "builtin":
        splits = load_builtin(src, spec, need_test)
    else:
        splits = load_hub(src, spec, need_test)

    # The label set is the whole train split's (before carving), in the task's order.
    task = get_task(spec.task)
    columns = spec.role_columns()
    train_raw = splits.train
    vocab = task.vocabulary(train_raw.frame, columns, train_raw.shown, train_raw.class_names)
    label_names = vocab.names

    def mapped(raw: RawSplit) -> pd.DataFrame:
        return task.apply_vocabulary(raw.frame, vocab, columns, raw.shown)

    train = mapped(train_raw)
    n_train_file = len(train)
    sources: dict[str, str] = {}
    train_origin = train_raw.origin
    carved: list[str] = []

    test: pd.DataFrame | None = None
    if splits.test_exists:
        sources["test"] = splits.test_origin
        if splits.test is not None:
            test = mapped(splits.test)
    else:
        n_test = n_carve(spec.test_size, n_train_file, "test_size")
        if n_test >= n_train_file - 1:
            raise DataError(
                f"{train_raw.shown}: {n_train_file} rows are too few to carve a "
                f"{pct(spec.test_size)} test split"
            )
        train, carved_test = carve(train, n_test, spec.seed, "data.test_size", task)
        why = f"; {splits.notes['test']}" if "test" in splits.notes else ""
        sources["test"] = f"carved from {train_origin} ({pct(spec.test_size)}){why}"
        carved.append(f"test {pct(spec.test_size)}")
        if need_test:
            test = carved_test

    if splits.validation is not None:
        validation = mapped(splits.validation)
        sources["validation"] = splits.validation.origin
    else:
        n_val = n_carve(spec.validation_size, n_train_file, "validation_size")
        if n_val >= len(train):
            raise DataError(
                f"{train_raw.shown}: {n_train_file} rows are too few to carve a "
                f"{pct(spec.validation_size)} validation split"
            )
        train, validation = carve(train, n_val, spec.seed, "data.validation_size", task)
        why = f"; {splits.notes['validation']}" if "validation" in splits.notes else ""
        sources["validation"] = f"carved from {train_origin} ({pct(spec.validation_size)}){why}"
        carved.append(f"validation {pct(spec.validation_size)}")

    n_before = len(train)
    train = subsample(train, spec.train_limit, spec.seed, "data.train_limit", task)
    n_val_before = len(validation)
    validation = subsample(validation, spec.validation_limit, spec.seed, "data.validation_limit", task)

    parts = [train_origin]
    if carved:
        parts.append(f"minus carved {' and '.join(carved)}")
    if len(train) < n_before:
        parts.append(f"stratified sample of {len(train):,} of {n_before:,} rows")
    sources["train"] = ", ".join(parts)
    if len(validation) < n_val_before:
        sources["validation"] += f", stratified sample of {len(validation):,} of {n_val_before:,} rows"

    task.check_train(train, columns, train_raw.shown)

    train = train.reset_index(drop=True)
    validation = validation.reset_index(drop=True)
    if test is not None:
        test = test.reset_index(drop=True)
    digest = fingerprint({"train": train, "validation": validation}, label_names, task)
    return LoadedData(
        train=train,
        validation=validation,
        test=test,
        label_names=label_names,
        fingerprint=digest,
        sources={k: sources[k] for k in ("train", "validation", "test") if k in sources},
    )


def fingerprint(frames: dict[str, pd.DataFrame], label_names: list[str], task: Task) -> str:
    """sha256 (16 hex chars) of the rows (the task's role columns, in its role order) and the
    label names.

    Studies store it and refuse to resume on other data: any change to what it hashes, or
    how, makes every existing study unresumable.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"label_names": label_names}).encode())
    roles = [r.name for r in task.roles]
    for name, df in frames.items():
        payload = {col: _plain(df[col].tolist()) for col in roles if col in df}
        h.update(name.encode())
        h.update(json.dumps(payload, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def _plain(values: list[object]) -> list[object]:
    """JSON-able values: numpy arrays (parquet list columns) as lists."""
    return [v.tolist() if hasattr(v, "tolist") and not isinstance(v, (str, bytes)) else v for v in values]
