"""Labelled text data: load, split, subsample, check, and tokenize once per fingerprint.

A study's ``data:`` mapping becomes a :class:`DataSpec`. :func:`load_data` turns it into
train / validation (/ test) frames with integer labels and a fingerprint of the exact rows;
:func:`tokenize` turns those into ``datasets.Dataset`` objects, cached on disk and in the
process so that a worker running many trials tokenizes once.

Sources:

- a local file (csv, tsv, json, jsonl, parquet): validation and test are carved from it;
- a local folder: ``train.*``, ``dev.*``/``validation.*``/``valid.*``/``val.*`` and ``test.*``
  are found by name (or named in the spec); missing splits are carved from train;
- ``builtin:reviews``: generated reviews (see :mod:`hpo._reviews`);
- anything else is a Hugging Face hub dataset id, optionally ``id:config``.

The test split is carved before validation and before subsampling, whatever ``need_test``
says, so train and validation never change between the search and the retrain.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from hpo.errors import UserError

if TYPE_CHECKING:
    import datasets

__all__ = [
    "DataError",
    "DataSpec",
    "LoadedData",
    "TOKENIZE_STATS",
    "check_spec",
    "clear_tokenize_cache",
    "is_hub_source",
    "read_problems",
    "describe_source",
    "load_data",
    "tokenize",
]

SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
"""File types a local source may have."""

BUILTINS = ("builtin:reviews",)
"""Builtin dataset names."""

_SPLIT_STEMS: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("dev", "validation", "valid", "val"),
    "test": ("test",),
}

# builtin:reviews: fixed split sizes (rows) and a fixed generator seed, so the rows and the
# fingerprint are the same in every study; spec.seed only drives subsampling.
_REVIEWS_SIZES = {"train": 3000, "validation": 600, "test": 600}
_REVIEWS_SEED = 20240611

# Bump when the tokenized layout changes so that old disk caches are not reused.
_TOKENIZE_CACHE_VERSION = 1


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


@dataclass
class LoadedData:
    """The splits of one study, ready to tokenize."""

    train: pd.DataFrame
    """Columns ``text``, [``text_pair``], ``label`` (int 0..k-1)."""
    validation: pd.DataFrame
    """Same columns as ``train``."""
    test: pd.DataFrame | None
    """Same columns as ``train``; only loaded with ``need_test=True`` (retraining)."""
    label_names: list[str]
    """Original label values as strings; index = integer label."""
    fingerprint: str
    """Hex digest of the train and validation rows and label names."""
    sources: dict[str, str] = field(default_factory=dict)
    """Split -> where its rows came from, for people."""


# ---------------------------------------------------------------------------------------
# Resolving the source


@dataclass
class _Source:
    kind: str  # "builtin", "file", "folder" or "hub"
    path: Path | None = None
    name: str = ""  # builtin name or hub id


def _looks_like_path(source: str) -> bool:
    """True when ``source`` can only be meant as a local path (so not a hub id)."""
    return (
        source.startswith((".", "/", "~", "\\"))
        or source.lower().endswith(SUFFIXES)
        or source.count("/") > 1
        or "\\" in source
    )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?$")


def _resolve(spec: DataSpec) -> _Source:
    source = spec.source.strip()
    if not source:
        raise DataError("data.source: must not be empty")
    if source.startswith("builtin:"):
        if source not in BUILTINS:
            raise DataError(f"data.source: unknown builtin dataset {source!r} (known: {', '.join(BUILTINS)})")
        return _Source("builtin", name=source)
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = Path(spec.base_dir).expanduser() / path
    if path.is_dir():
        return _Source("folder", path=path)
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(
                f"data.source: {source}: unsupported file type {path.suffix!r} "
                f"(expected {', '.join(SUFFIXES)})"
            )
        return _Source("file", path=path)
    if _looks_like_path(source) or not _HUB_ID.match(source):
        raise DataError(f"data.source: path not found: {source} (resolved to {path})")
    return _Source("hub", path=path, name=source)


def _find_split_file(folder: Path, split: str, named: str | None, shown: str) -> str | None:
    """The file name of ``split`` in ``folder``: the named one, or the one found by stem."""
    if named is not None:
        if not (folder / named).is_file():
            raise DataError(
                f"data.{split}: file {named!r} not found in {shown} (files: {_list_files(folder)})"
            )
        if Path(named).suffix.lower() not in SUFFIXES:
            raise DataError(f"data.{split}: {named}: unsupported file type (expected {', '.join(SUFFIXES)})")
        return named
    found = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in SUFFIXES and p.stem.lower() in _SPLIT_STEMS[split]
    )
    if len(found) > 1:
        raise DataError(
            f"data.{split}: several {split} files in {shown} ({', '.join(found)}); name one with data.{split}"
        )
    return found[0] if found else None


def _list_files(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    if len(names) > 8:
        names = names[:8] + ["..."]
    return ", ".join(names) or "none"


# ---------------------------------------------------------------------------------------
# Reading files


def _read_table(path: Path, shown: str, header_only: bool = False) -> pd.DataFrame:
    """Reads one local file; text stays text ("NA", "null" and "" are not missing values)."""
    suffix = path.suffix.lower()
    kind = suffix[1:].upper()
    try:
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(
                path,
                sep="\t" if suffix == ".tsv" else ",",
                # SST-2 style TSV has bare quote characters inside sentences.
                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL,
                keep_default_na=False,
                nrows=0 if header_only else None,
                encoding="utf-8-sig",  # a byte-order mark is not part of the first name
            )
        if suffix == ".parquet":
            if header_only:
                import pyarrow.parquet as pq

                return pd.DataFrame(columns=pq.read_schema(path).names)
            return pd.read_parquet(path)
        if suffix == ".jsonl":
            return _read_json_lines(path, shown, header_only)
        # .json: one array of records or one object of columns; JSON lines also accepted.
        text = path.read_text(encoding="utf-8")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg == "Extra data":
                return _read_json_lines(path, shown, header_only)
            raise
        if isinstance(obj, list) and all(isinstance(r, dict) for r in obj):
            return pd.DataFrame.from_records(obj)
        if isinstance(obj, dict) and all(isinstance(v, list) for v in obj.values()):
            return pd.DataFrame(obj)
        raise DataError(
            f"{shown}: expected a JSON array of records or an object of columns, got {type(obj).__name__}"
        )
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{shown}: file is empty") from None
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{shown}: could not read as {kind}: {reason}") from None
    except Exception as exc:  # pyarrow raises its own error types
        raise DataError(f"{shown}: could not read as {kind}: {exc}") from None


def _read_json_lines(path: Path, shown: str, header_only: bool) -> pd.DataFrame:
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{shown}: line {lineno}: invalid JSON: {exc.msg}") from None
            if not isinstance(rec, dict):
                raise DataError(f"{shown}: line {lineno}: expected a JSON object, got {type(rec).__name__}")
            records.append(rec)
            if header_only:
                break
    return pd.DataFrame.from_records(records)


# ---------------------------------------------------------------------------------------
# Checking and normalizing one raw split


@dataclass
class _Raw:
    """One split as read, before label mapping."""

    frame: pd.DataFrame  # columns text, [text_pair], label (original label values)
    shown: str  # file (or source) name for messages
    origin: str  # for LoadedData.sources
    class_names: list[str] | None = None  # hub ClassLabel names, if any


def _columns(spec: DataSpec) -> dict[str, str]:
    """Role -> column name in the source."""
    cols = {"text": spec.text, "label": spec.label}
    if spec.text_pair is not None:
        cols["text_pair"] = spec.text_pair
    return cols


def _has_label(columns: list[str], spec: DataSpec) -> bool:
    return spec.label in columns


def _select(df: pd.DataFrame, spec: DataSpec, shown: str) -> pd.DataFrame:
    """Checks and keeps the role columns, renamed to text, [text_pair], label."""
    cols = _columns(spec)
    found = [str(c) for c in df.columns]
    for col in cols.values():
        if col not in df.columns:
            raise DataError(f"{shown}: column {col!r} not found (columns: {', '.join(found) or 'none'})")
    if len(df) == 0:
        raise DataError(f"{shown}: no rows")
    order = [role for role in ("text", "text_pair", "label") if role in cols]
    out = pd.DataFrame({role: df[cols[role]].to_numpy() for role in order})
    for role in ("text", "text_pair"):
        if role in out:
            _check_text(out[role], shown, cols[role])
    return out


def _check_text(col: pd.Series, shown: str, name: str) -> None:
    if pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        raise DataError(
            f"{shown}: column {name!r} holds numbers ({col.dtype}), expected text "
            f"(first value: {col.iloc[0]!r})"
        )
    bad = [i for i, v in enumerate(col.tolist()) if not isinstance(v, str) or not v.strip()]
    if bad:
        raise DataError(
            f"{shown}: column {name!r} has {len(bad)} empty or non-text value"
            f"{'s' if len(bad) > 1 else ''} (first at data row {bad[0]}: "
            f"{col.iloc[bad[0]]!r})"
        )


def _label_keys(col: pd.Series, shown: str, name: str) -> list[str]:
    """Label values as canonical strings ("1" for 1, 1.0 and "1"; "pos" for "pos")."""
    keys: list[str] = []
    missing: list[int] = []
    for i, v in enumerate(col.tolist()):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            missing.append(i)
            continue
        if isinstance(v, bool):
            keys.append(str(v))
        elif isinstance(v, int) or (hasattr(v, "dtype") and pd.api.types.is_integer(v)):
            keys.append(str(int(v)))
        elif isinstance(v, float) or pd.api.types.is_float(v):
            if not float(v).is_integer():
                raise DataError(
                    f"{shown}: column {name!r} has non-integer number {v!r} at data row {i}; "
                    "class labels must be integers or strings"
                )
            keys.append(str(int(v)))
        else:
            s = str(v).strip()
            if not s:
                missing.append(i)
                continue
            keys.append(s)
    if missing:
        raise DataError(
            f"{shown}: column {name!r} has {len(missing)} missing label"
            f"{'s' if len(missing) > 1 else ''} (first at data row {missing[0]})"
        )
    return keys


def _sort_keys(keys: set[str]) -> list[str]:
    """Numeric order when every label is an integer, else string order."""
    try:
        return sorted(keys, key=int)
    except ValueError:
        return sorted(keys)


# ---------------------------------------------------------------------------------------
# Splitting


def _split_off(df: pd.DataFrame, n_take: int, seed: int, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, taken): ``n_take`` rows taken at random, stratified by label when possible."""
    from sklearn.model_selection import train_test_split

    if n_take <= 0 or n_take >= len(df):
        raise DataError(f"{what}: cannot take {n_take} of {len(df)} rows")
    try:
        rest, taken = train_test_split(
            df, test_size=n_take, random_state=seed, shuffle=True, stratify=df["label"]
        )
    except ValueError:
        # A class with a single row, or fewer rows taken than classes: fall back to a plain
        # seeded random split rather than fail.
        rest, taken = train_test_split(df, test_size=n_take, random_state=seed, shuffle=True)
    return rest, taken


def _carve(df: pd.DataFrame, n_take: int, seed: int, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Like :func:`_split_off`, but rows with the same text go to the same side.

    Files such as SST-2's train.tsv repeat some texts (371 of 67,349 rows); splitting rows
    would put copies of one text in both train and the carved test. Unique texts are split
    (stratified by the label of their first row) and every copy follows its text, so the
    taken side can be a few rows larger than ``n_take``.
    """
    key = df["text"] if "text_pair" not in df else df["text"] + "\x1f" + df["text_pair"]
    first = ~key.duplicated()
    if bool(first.all()):
        return _split_off(df, n_take, seed, what)
    n_unique = int(first.sum())
    if n_take >= n_unique:
        raise DataError(f"{what}: cannot carve {n_take} rows: only {n_unique} distinct texts")
    _, taken_unique = _split_off(df[first], n_take, seed, what)
    taken = key.isin(set(key.loc[taken_unique.index]))
    return df[~taken], df[taken]


def _limit(df: pd.DataFrame, limit: int | None, seed: int, what: str) -> pd.DataFrame:
    if limit is None or limit >= len(df):
        return df
    if limit < 1:
        raise DataError(f"{what}: must be >= 1, got {limit}")
    _, kept = _split_off(df, limit, seed, what)
    return kept


def _n_carve(fraction: float, n: int, key: str) -> int:
    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.{key}: must be between 0 and 1 (exclusive), got {fraction}")
    return max(1, round(fraction * n))


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


# ---------------------------------------------------------------------------------------
# Loading per source kind: each returns train, validation or None, test or None, and
# whether the test split exists but was not read (need_test=False).


@dataclass
class _Splits:
    train: _Raw
    validation: _Raw | None = None
    test: _Raw | None = None
    test_exists: bool = False  # a labelled test split exists (read or not)
    test_origin: str = ""
    notes: dict[str, str] = field(default_factory=dict)  # split -> why it is carved


def _load_local(src: _Source, spec: DataSpec, need_test: bool) -> _Splits:
    assert src.path is not None
    source = spec.source
    if src.kind == "file":
        for key in ("train", "validation", "test"):
            if getattr(spec, key) is not None:
                raise DataError(f"data.{key}: only valid when data.source is a folder ({source} is a file)")
        frame = _select(_read_table(src.path, source), spec, source)
        return _Splits(train=_Raw(frame, source, src.path.name))

    folder = src.path

    def shown(name: str) -> str:
        return f"{source.rstrip('/')}/{name}"

    train_name = _find_split_file(folder, "train", spec.train, source)
    if train_name is None:
        raise DataError(
            f"data.source: no train file in {source} (expected train"
            f"{'|'.join(SUFFIXES)} or data.train; files: {_list_files(folder)})"
        )
    splits = _Splits(
        train=_Raw(
            _select(_read_table(folder / train_name, shown(train_name)), spec, shown(train_name)),
            shown(train_name),
            train_name,
        )
    )
    for split in ("validation", "test"):
        named = getattr(spec, split)
        name = _find_split_file(folder, split, named, source)
        if name is None:
            continue
        path = folder / name
        header = _read_table(path, shown(name), header_only=True)
        if not _has_label(list(header.columns), spec):
            if named is not None:
                raise DataError(
                    f"{shown(name)}: column {spec.label!r} not found "
                    f"(columns: {', '.join(map(str, header.columns))})"
                )
            splits.notes[split] = f"{name} has no {spec.label!r} column"
            continue
        if split == "test":
            splits.test_exists = True
            splits.test_origin = name
            if not need_test:
                continue
        raw = _Raw(_select(_read_table(path, shown(name)), spec, shown(name)), shown(name), name)
        setattr(splits, split, raw)
    return splits


def _load_builtin(src: _Source, spec: DataSpec, need_test: bool) -> _Splits:
    from hpo._reviews import LABEL_NAMES

    for key in ("train", "validation", "test"):
        if getattr(spec, key) is not None:
            raise DataError(f"data.{key}: not used with {src.name} (its splits are fixed)")
    frames = _reviews_frames()
    raws = {
        split: _Raw(
            _select(frames[split], spec, f"{src.name} ({split})"),
            f"{src.name} ({split})",
            f"{src.name} {split} ({len(frames[split]):,} generated reviews)",
            class_names=list(LABEL_NAMES),
        )
        for split in frames
    }
    return _Splits(
        train=raws["train"],
        validation=raws["validation"],
        test=raws["test"] if need_test else None,
        test_exists=True,
        test_origin=raws["test"].origin,
    )


_REVIEWS_CACHE: dict[str, pd.DataFrame] = {}


def _reviews_frames() -> dict[str, pd.DataFrame]:
    """The fixed builtin:reviews splits, generated once per process."""
    if not _REVIEWS_CACHE:
        from hpo._reviews import generate_reviews  # only builtin users pay for the templates

        sizes = _REVIEWS_SIZES
        df = generate_reviews(sum(sizes.values()), seed=_REVIEWS_SEED)
        # Cut the splits from one call: texts are unique within a call, so splits are
        # disjoint; the label order of generate_reviews is already random and balanced.
        start = 0
        for split, n in sizes.items():
            _REVIEWS_CACHE[split] = df.iloc[start : start + n].reset_index(drop=True)
            start += n
    return {k: v.copy() for k, v in _REVIEWS_CACHE.items()}


def _load_hub(src: _Source, spec: DataSpec, need_test: bool) -> _Splits:
    dataset_id, _, config = src.name.partition(":")
    try:
        import datasets

        dsd = datasets.load_dataset(dataset_id, config or None)
    except Exception as exc:  # offline, unknown id, gated, bad config: all one user error
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if len(reason) > 300:
            reason = reason[:297] + "..."
        raise DataError(
            f"data.source: could not load dataset {src.name!r} from the hub (offline?): "
            f"{reason} (and no local path {src.path} exists)"
        ) from None
    available = list(dsd.keys())

    def pick(split: str) -> str | None:
        named = getattr(spec, split)
        if named is not None:
            if named not in dsd:
                raise DataError(
                    f"data.{split}: split {named!r} not in {src.name} (splits: {', '.join(available)})"
                )
            return str(named)
        for stem in _SPLIT_STEMS[split]:
            if stem in dsd:
                return stem
        return None

    def raw(split_name: str) -> _Raw:
        ds = dsd[split_name]
        shown = f"{src.name} [{split_name}]"
        names = None
        feature = ds.features.get(spec.label)
        if feature is not None and hasattr(feature, "names"):
            names = [str(n) for n in feature.names]
        return _Raw(_select(ds.to_pandas(), spec, shown), shown, f"{src.name} [{split_name}]", names)

    def unlabelled(split_name: str) -> str | None:
        """Why a split cannot serve as an evaluation split, or None."""
        ds = dsd[split_name]
        if spec.label not in ds.column_names:
            return f"{split_name} has no {spec.label!r} column"
        feature = ds.features.get(spec.label)
        # GLUE-style hidden test sets keep the column but set every label to -1.
        if hasattr(feature, "names") and set(ds.unique(spec.label)) <= {-1}:
            return f"{split_name} has no labels (all -1)"
        return None

    train_name = pick("train")
    if train_name is None:
        raise DataError(
            f"data.train: {src.name} has no 'train' split (splits: {', '.join(available)}); "
            "name one with data.train"
        )
    splits = _Splits(train=raw(train_name))
    for split in ("validation", "test"):
        name = pick(split)
        if name is None:
            continue
        why = unlabelled(name)
        if why is not None:
            if getattr(spec, split) is not None:
                raise DataError(f"data.{split}: {src.name}: {why}")
            splits.notes[split] = why
            continue
        if split == "test":
            splits.test_exists = True
            splits.test_origin = f"{src.name} [{name}]"
            if not need_test:
                continue
        setattr(splits, split, raw(name))
    return splits


# ---------------------------------------------------------------------------------------
# Public API


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
    src = _resolve(spec)
    if src.kind in ("file", "folder"):
        splits = _load_local(src, spec, need_test)
    elif src.kind == "builtin":
        splits = _load_builtin(src, spec, need_test)
    else:
        splits = _load_hub(src, spec, need_test)

    # Labels: the classes are the ones in the whole train split, sorted.
    train_raw = splits.train
    train_keys = _label_keys(train_raw.frame["label"], train_raw.shown, spec.label)
    classes = _sort_keys(set(train_keys))
    if len(classes) < 2:
        raise DataError(
            f"{train_raw.shown}: column {spec.label!r} has a single class ({classes[0]!r}); need at least 2"
        )
    index = {k: i for i, k in enumerate(classes)}
    label_names = list(classes)
    if train_raw.class_names is not None and all(
        k.lstrip("-").isdigit() and 0 <= int(k) < len(train_raw.class_names) for k in classes
    ):
        label_names = [train_raw.class_names[int(k)] for k in classes]

    def mapped(raw: _Raw, keys: list[str] | None = None) -> pd.DataFrame:
        if keys is None:
            keys = _label_keys(raw.frame["label"], raw.shown, spec.label)
        unseen = sorted(set(keys) - set(index))
        if unseen:
            raise DataError(
                f"{raw.shown}: column {spec.label!r} has label value"
                f"{'s' if len(unseen) > 1 else ''} not seen in train: "
                f"{', '.join(map(repr, unseen[:5]))}{' ...' if len(unseen) > 5 else ''} "
                f"(train labels: {', '.join(map(repr, classes))})"
            )
        out = raw.frame.copy()
        out["label"] = pd.Series([index[k] for k in keys], dtype="int64", index=out.index)
        return out

    train = mapped(train_raw, train_keys)
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
        n_test = _n_carve(spec.test_size, n_train_file, "test_size")
        if n_test >= n_train_file - 1:
            raise DataError(
                f"{train_raw.shown}: {n_train_file} rows are too few to carve a "
                f"{_pct(spec.test_size)} test split"
            )
        train, carved_test = _carve(train, n_test, spec.seed, "data.test_size")
        why = f"; {splits.notes['test']}" if "test" in splits.notes else ""
        sources["test"] = f"carved from {train_origin} ({_pct(spec.test_size)}){why}"
        carved.append(f"test {_pct(spec.test_size)}")
        if need_test:
            test = carved_test

    if splits.validation is not None:
        validation = mapped(splits.validation)
        sources["validation"] = splits.validation.origin
    else:
        n_val = _n_carve(spec.validation_size, n_train_file, "validation_size")
        if n_val >= len(train):
            raise DataError(
                f"{train_raw.shown}: {n_train_file} rows are too few to carve a "
                f"{_pct(spec.validation_size)} validation split"
            )
        train, validation = _carve(train, n_val, spec.seed, "data.validation_size")
        why = f"; {splits.notes['validation']}" if "validation" in splits.notes else ""
        sources["validation"] = f"carved from {train_origin} ({_pct(spec.validation_size)}){why}"
        carved.append(f"validation {_pct(spec.validation_size)}")

    n_before = len(train)
    train = _limit(train, spec.train_limit, spec.seed, "data.train_limit")
    n_val_before = len(validation)
    validation = _limit(validation, spec.validation_limit, spec.seed, "data.validation_limit")

    parts = [train_origin]
    if carved:
        parts.append(f"minus carved {' and '.join(carved)}")
    if len(train) < n_before:
        parts.append(f"stratified sample of {len(train):,} of {n_before:,} rows")
    sources["train"] = ", ".join(parts)
    if len(validation) < n_val_before:
        sources["validation"] += f", stratified sample of {len(validation):,} of {n_val_before:,} rows"

    if train["label"].nunique() < 2:
        raise DataError(
            f"{train_raw.shown}: a single class is left in train after carving and "
            "subsampling; raise data.train_limit"
        )

    train = train.reset_index(drop=True)
    validation = validation.reset_index(drop=True)
    if test is not None:
        test = test.reset_index(drop=True)
    fingerprint = _fingerprint({"train": train, "validation": validation}, label_names=label_names)
    return LoadedData(
        train=train,
        validation=validation,
        test=test,
        label_names=label_names,
        fingerprint=fingerprint,
        sources={k: sources[k] for k in ("train", "validation", "test") if k in sources},
    )


def _fingerprint(frames: dict[str, pd.DataFrame], label_names: list[str]) -> str:
    """sha256 (16 hex chars) of the rows, in order, and the label names."""
    h = hashlib.sha256()
    h.update(json.dumps({"label_names": label_names}).encode())
    for name, df in frames.items():
        payload = {col: df[col].tolist() for col in ("text", "text_pair", "label") if col in df}
        h.update(name.encode())
        h.update(json.dumps(payload, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def describe_source(spec: DataSpec) -> str:
    """Short text naming the data for people, e.g. ``"sst2 (train.tsv, dev.tsv)"``.

    Never raises and reads no file contents (only folder listings).
    """
    limit = f", train_limit {spec.train_limit:,}" if spec.train_limit else ""
    try:
        src = _resolve(spec)
    except DataError:
        return f"{spec.source} (not found){limit}"
    if src.kind == "builtin":
        sizes = "/".join(f"{n:,}" for n in _REVIEWS_SIZES.values())
        return f"{src.name} (generated, train/validation/test {sizes}){limit}"
    if src.kind == "hub":
        return f"hub:{src.name}{limit}"
    assert src.path is not None
    if src.kind == "file":
        return f"{src.path.name} (validation and test carved){limit}"
    try:
        train = _find_split_file(src.path, "train", spec.train, spec.source) or "train?"
        val = _find_split_file(src.path, "validation", spec.validation, spec.source)
    except DataError:
        train, val = spec.train or "train?", spec.validation
    name = src.path.resolve().name
    return f"{name} ({train}, {val or 'validation carved'}){limit}"


def check_spec(spec: DataSpec) -> list[str]:
    """Cheap checks without reading data: paths, file names, sizes, builtin names.

    Returns:
        One line per problem, each starting with its key path (``data.source: ...``); empty
        when nothing is wrong.
    """
    problems: list[str] = []

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            problems.append(f"data.{key}: {msg}")

    need(bool(spec.text), "text", "must name a column")
    need(bool(spec.label), "label", "must name a column")
    need(spec.text != spec.label, "label", f"must differ from data.text (both {spec.text!r})")
    if spec.text_pair is not None:
        need(
            spec.text_pair not in (spec.text, spec.label),
            "text_pair",
            f"must differ from data.text and data.label, got {spec.text_pair!r}",
        )
    for key in ("validation_size", "test_size"):
        value = getattr(spec, key)
        need(
            isinstance(value, (int, float)) and 0.0 < value < 1.0,
            key,
            f"must be between 0 and 1 (exclusive), got {value!r}",
        )
    sizes = (spec.validation_size, spec.test_size)
    if all(isinstance(v, (int, float)) and 0.0 < v < 1.0 for v in sizes):
        need(
            spec.validation_size + spec.test_size < 1.0,
            "validation_size",
            f"validation_size + test_size must be < 1, got {spec.validation_size} + {spec.test_size}",
        )
    for key, low in (("train_limit", 2), ("validation_limit", 1)):
        value = getattr(spec, key)
        if value is not None:
            need(
                isinstance(value, int) and not isinstance(value, bool) and value >= low,
                key,
                f"must be an integer >= {low}, got {value!r}",
            )
    need(
        isinstance(spec.max_length, int) and not isinstance(spec.max_length, bool) and spec.max_length >= 2,
        "max_length",
        f"must be an integer >= 2, got {spec.max_length!r}",
    )
    need(
        isinstance(spec.seed, int) and not isinstance(spec.seed, bool),
        "seed",
        f"must be an integer, got {spec.seed!r}",
    )

    try:
        src = _resolve(spec)
    except DataError as exc:
        problems.append(str(exc))
        return problems
    if src.kind == "builtin":
        for key in ("train", "validation", "test"):
            need(getattr(spec, key) is None, key, f"not used with {src.name} (fixed splits)")
    elif src.kind == "file":
        for key in ("train", "validation", "test"):
            need(
                getattr(spec, key) is None,
                key,
                f"only valid when data.source is a folder ({spec.source} is a file)",
            )
    elif src.kind == "folder":
        assert src.path is not None
        for key in ("train", "validation", "test"):
            try:
                name = _find_split_file(src.path, key, getattr(spec, key), spec.source)
            except DataError as exc:
                problems.append(str(exc))
                continue
            if key == "train" and name is None:
                problems.append(
                    f"data.source: no train file in {spec.source} (expected train"
                    f"{'|'.join(SUFFIXES)} or data.train; files: {_list_files(src.path)})"
                )
    return problems


def is_hub_source(spec: DataSpec) -> bool:
    """True when ``data.source`` names a hub dataset (no local path or builtin by that name)."""
    try:
        return _resolve(spec).kind == "hub"
    except DataError:
        return False


def read_problems(spec: DataSpec) -> list[str]:
    """What :func:`load_data` would refuse, found by loading the data (test split included).

    ``hpo validate`` calls it: every split is read, checked, carved and subsampled exactly as
    a search and a retrain will, so a missing column, an empty file, a single class, bad
    encoding or a broken JSON line is reported before anything runs. A hub dataset is not
    read (validation never downloads); :func:`is_hub_source` says so. No model, tokenizer or
    database is touched.

    Returns:
        The problem as one line (load_data stops at the first), or an empty list.
    """
    try:
        if _resolve(spec).kind == "hub":
            return []
        load_data(spec, need_test=True)
    except DataError as exc:
        return [str(exc)]
    return []


# ---------------------------------------------------------------------------------------
# Tokenizing


TOKENIZE_STATS: dict[str, int] = {"memory_hits": 0, "disk_hits": 0, "tokenized": 0}
"""Counts per split since the process started (tests read them to check the caches)."""

_TOKENIZED: dict[str, datasets.Dataset] = {}


def clear_tokenize_cache() -> None:
    """Forgets the in-process tokenized splits (the disk cache stays)."""
    _TOKENIZED.clear()


def _tokenize_key(split_hash: str, tokenizer: Any, max_length: int, split: str) -> str:
    cls = type(tokenizer)
    ident = {
        "version": _TOKENIZE_CACHE_VERSION,
        "data": split_hash,
        "tokenizer": str(getattr(tokenizer, "name_or_path", "")),
        "vocab": len(tokenizer),  # includes added tokens, unlike vocab_size
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "max_length": max_length,
        "split": split,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def tokenize(
    data: LoadedData,
    tokenizer: Any,
    max_length: int,
    cache_dir: str | Path | None,
    splits: tuple[str, ...] = ("train", "validation"),
) -> dict[str, datasets.Dataset]:
    """Tokenizes splits once per data fingerprint, tokenizer and ``max_length``.

    Texts are truncated to ``max_length`` tokens and not padded (a collator pads each batch).
    Results are kept in this process and, with ``cache_dir``, on disk under
    ``cache_dir/<key>``; a cache entry is written to a temporary folder and renamed into
    place, so concurrent workers never read half of one.

    Args:
        data: Loaded data.
        tokenizer: A Hugging Face tokenizer.
        max_length: Tokens per example after truncation.
        cache_dir: Folder for the disk cache, or None for the in-process cache only.
        splits: Which splits to tokenize.

    Returns:
        Split -> dataset with ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the
        tokenizer makes them) and ``labels``.

    Raises:
        DataError: If a split was not loaded (the test split needs ``need_test=True``).
    """
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
            else _fingerprint({split: frame}, data.label_names)
        )
        key = _tokenize_key(split_hash, tokenizer, max_length, split)
        if key in _TOKENIZED:
            TOKENIZE_STATS["memory_hits"] += 1
            out[split] = _TOKENIZED[key]
            continue
        ds = _load_cached(cache_dir, key)
        if ds is not None:
            TOKENIZE_STATS["disk_hits"] += 1
        else:
            ds = _encode(frame, tokenizer, max_length)
            TOKENIZE_STATS["tokenized"] += 1
            if cache_dir is not None:
                ds = _save_cached(ds, Path(cache_dir), key)
        _TOKENIZED[key] = ds
        out[split] = ds
    return out


def _encode(frame: pd.DataFrame, tokenizer: Any, max_length: int) -> datasets.Dataset:
    import datasets

    texts = frame["text"].tolist()
    pairs = frame["text_pair"].tolist() if "text_pair" in frame else None
    columns: dict[str, list[Any]] = {}
    chunk = 2048  # rows per tokenizer call, to bound peak memory on large splits
    for start in range(0, len(texts), chunk):
        enc = tokenizer(
            texts[start : start + chunk],
            pairs[start : start + chunk] if pairs is not None else None,
            truncation=True,
            max_length=max_length,
            padding=False,
        )
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            if name in enc:
                columns.setdefault(name, []).extend(enc[name])
    columns["labels"] = frame["label"].astype("int64").tolist()
    return datasets.Dataset.from_dict(columns)


def _load_cached(cache_dir: str | Path | None, key: str) -> datasets.Dataset | None:
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


def _save_cached(ds: datasets.Dataset, cache_dir: Path, key: str) -> datasets.Dataset:
    """Writes ``ds`` under ``cache_dir/key`` atomically and returns the on-disk copy."""
    import datasets

    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / key
    tmp = cache_dir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        ds.save_to_disk(str(tmp))
        try:
            os.rename(tmp, final)
        except OSError:
            # Another worker renamed its copy first; theirs is complete, use it.
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(final))
