"""What a ``data.source`` names: a local file or folder, a builtin dataset or a hub dataset id.

:func:`resolve_source` turns a spec into a :class:`Source`; :func:`find_split_file` finds the
train / validation / test files of a folder source by name; :func:`describe_source` names the
data for people. Only names and folder listings are read here, never file contents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hpo.data.spec import DataError, DataSpec

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".conll")
"""File types a local source may have (any file, with ``data.format``)."""

BUILTINS = ("builtin:reviews",)
"""Builtin dataset names."""

SPLIT_STEMS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("dev", "validation", "valid", "val"),
    "test": ("test",),
}
"""Split -> file stems (folder sources) or split names (hub datasets) that mean it, in order."""


@dataclass
class Source:
    """What ``data.source`` names, as :func:`resolve_source` found it."""

    kind: str
    """``"builtin"``, ``"file"``, ``"folder"`` or ``"hub"``."""
    path: Path | None = None
    """The resolved local path (hub: the path that was looked for and not found)."""
    name: str = ""
    """Builtin name or hub id."""


def _looks_like_path(source: str) -> bool:
    """True when ``source`` can only be meant as a local path (so not a hub id)."""
    return (
        source.startswith((".", "/", "~", "\\"))
        or source.lower().endswith(SUFFIXES)
        or source.count("/") > 1
        or "\\" in source
    )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


def resolve_source(spec: DataSpec) -> Source:
    """What ``spec.source`` names; a relative path resolves against ``spec.base_dir``.

    Raises:
        DataError: For an empty source, an unknown builtin, an unsupported file type, or a
            path that does not exist and cannot be a hub dataset id.
    """
    source = spec.source.strip()
    if not source:
        raise DataError("data.source: must not be empty")
    if source.startswith("builtin:"):
        if source not in BUILTINS:
            raise DataError(f"data.source: unknown builtin dataset {source!r} (known: {', '.join(BUILTINS)})")
        return Source("builtin", name=source)
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = Path(spec.base_dir).expanduser() / path
    if path.is_dir():
        return Source("folder", path=path)
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES and spec.format is None:
            raise DataError(
                f"data.source: {source}: unsupported file type {path.suffix!r} "
                f"(expected {', '.join(SUFFIXES)}, or name the format with data.format)"
            )
        return Source("file", path=path)
    if _looks_like_path(source) or not _HUB_ID.match(source):
        raise DataError(f"data.source: path not found: {source} (resolved to {path})")
    return Source("hub", path=path, name=source)


def find_split_file(
    folder: Path, split: str, named: str | None, shown: str, fmt: str | None = None
) -> str | None:
    """The file name of ``split`` in ``folder``: the named one, or the one found by stem.

    A named file may have any suffix when ``fmt`` (``data.format``) says how to read it
    (WNUT-17's test file is ``emerging.test.annotated``).
    """
    if named is not None:
        if not (folder / named).is_file():
            raise DataError(
                f"data.{split}: file {named!r} not found in {shown} (files: {list_files(folder)})"
            )
        if Path(named).suffix.lower() not in SUFFIXES and fmt is None:
            raise DataError(
                f"data.{split}: {named}: unsupported file type (expected {', '.join(SUFFIXES)}, "
                "or name the format with data.format)"
            )
        return named
    found = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in SUFFIXES and p.stem.lower() in SPLIT_STEMS[split]
    )
    if len(found) > 1:
        raise DataError(
            f"data.{split}: several {split} files in {shown} ({', '.join(found)}); name one with data.{split}"
        )
    return found[0] if found else None


def list_files(folder: Path) -> str:
    """The first 8 visible file names of ``folder``, for messages."""
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    if len(names) > 8:
        names = names[:8] + ["..."]
    return ", ".join(names) or "none"


def describe_source(spec: DataSpec) -> str:
    """Short text naming the data for people, e.g. ``"sst2 (train.tsv, dev.tsv)"``.

    Never raises and reads no file contents (only folder listings).
    """
    limit = f", train_limit {spec.train_limit:,}" if spec.train_limit else ""
    try:
        src = resolve_source(spec)
    except DataError:
        return f"{spec.source} (not found){limit}"
    if src.kind == "builtin":
        from hpo.data.reviews import SPLIT_SIZES

        sizes = "/".join(f"{n:,}" for n in SPLIT_SIZES.values())
        return f"{src.name} (generated, train/validation/test {sizes}){limit}"
    if src.kind == "hub":
        return f"hub:{src.name}{limit}"
    assert src.path is not None
    if src.kind == "file":
        return f"{src.path.name} (validation and test carved){limit}"
    try:
        train = find_split_file(src.path, "train", spec.train, spec.source, spec.format) or "train?"
        val = find_split_file(src.path, "validation", spec.validation, spec.source, spec.format)
    except DataError:
        train, val = spec.train or "train?", spec.validation
    name = src.path.resolve().name
    return f"{name} ({train}, {val or 'validation carved'}){limit}"


def is_hub_source(spec: DataSpec) -> bool:
    """True when ``data.source`` names a hub dataset (no local path or builtin by that name)."""
    try:
        return resolve_source(spec).kind == "hub"
    except DataError:
        return False
