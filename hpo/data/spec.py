"""What a study's ``data:`` mapping says (:class:`DataSpec`) and the error of every data problem
(:class:`DataError`).

Plain records, no checks: :func:`hpo.data.check_spec` checks a spec, :func:`hpo.data.load_data`
reads what it names.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpo.errors import UserError


@dataclass
class DataSpec:
    """Where the data comes from and how to cut it (the study file's ``data:`` mapping)."""

    source: str
    """A local folder or file (csv/tsv/json/jsonl/parquet), a hub dataset id (optionally
    ``id:config``), or ``builtin:reviews``."""
    text: str = "text"
    """Column holding the input text."""
    text_pair: str | None = None
    """Optional column holding a second text (sentence-pair tasks)."""
    label: str = "label"
    """Column holding the class label (ints or strings)."""
    train: str | None = None
    """Train file inside a folder source (hub: split name); default ``train.*``."""
    validation: str | None = None
    """Validation file inside a folder source (hub: split name); default
    ``dev.*``/``validation.*``/``valid.*``/``val.*``, else carved from train."""
    test: str | None = None
    """Test file inside a folder source (hub: split name); default ``test.*`` when it has a
    label column, else carved from train."""
    train_limit: int | None = None
    """Keep at most this many training rows (seeded, stratified), after carving."""
    validation_limit: int | None = None
    """Keep at most this many validation rows (seeded, stratified)."""
    validation_size: float = 0.1
    """Fraction of the train rows carved out as validation when there is no validation
    split."""
    test_size: float = 0.1
    """Fraction of the train rows carved out as test when there is no labelled test split."""
    max_length: int = 128
    """Tokens per example after truncation."""
    seed: int = 0
    """Seed of carving and subsampling."""
    base_dir: str = "."
    """Folder of the study file; a relative ``source`` resolves against it (not a YAML key)."""


class DataError(UserError, ValueError):
    """A data problem the user can fix; the message is one line naming file, column and
    problem. A :class:`~hpo.errors.UserError`, so the CLI prints it without a traceback."""
