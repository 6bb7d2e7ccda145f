"""What a study's ``data:`` mapping says (:class:`DataSpec`) and the error of every data problem
(:class:`DataError`).

Plain records, no checks: :func:`hpo.data.check_spec` checks a spec, :func:`hpo.data.load_data`
reads what it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpo.errors import DataError

__all__ = ["DataError", "DataSpec", "GENERIC_KEYS", "FORMATS"]

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "conll", "squad")
"""File formats a local source may be read as (``data.format``; default: from the suffix)."""


@dataclass
class DataSpec:
    """Where the data comes from and how to cut it (the study file's ``data:`` mapping)."""

    source: str
    """A local folder or file (csv/tsv/json/jsonl/parquet/conll), a hub dataset id (optionally
    ``id:config``), or ``builtin:reviews``."""
    task: str = "sequence-classification"
    """Whose columns these are: the task decides the roles (set from the study's ``task:``)."""
    columns: dict[str, str | None] = field(default_factory=dict)
    """Role -> source column, as the study file gives them: each role of the task is a ``data:``
    key (``text: sentence``); a role left out reads the task's default column."""
    format: str | None = None
    """How to read local files (:data:`FORMATS`); default: from each file's suffix, and SQuAD
    JSON recognised by its layout."""
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

    def role_columns(self) -> dict[str, str]:
        """Role -> source column for every role the task reads (defaults filled in)."""
        from hpo.tasks import get_task

        return get_task(self.task).columns(self.columns)

    def as_dict(self) -> dict[str, Any]:
        """The ``data:`` mapping as stored on a study and written into exported specs: the
        generic keys and one key per role of the task (None for an optional role not given).
        ``format`` only when set, so studies stored before it existed still match."""
        from hpo.tasks import get_task

        out: dict[str, Any] = {"source": self.source}
        out.update({r.name: self.columns.get(r.name, r.default) for r in get_task(self.task).roles})
        out.update({key: getattr(self, key) for key in GENERIC_KEYS if key != "source"})
        if self.format is not None:
            out["format"] = self.format
        return out


GENERIC_KEYS = (
    "source",
    "train",
    "validation",
    "test",
    "train_limit",
    "validation_limit",
    "validation_size",
    "test_size",
    "max_length",
    "seed",
)
"""``data:`` keys every task has (besides its roles and ``format``)."""
