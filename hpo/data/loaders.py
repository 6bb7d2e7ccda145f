"""Reading the splits of each kind of source: a local file or folder, a builtin dataset, a hub dataset.

Each loader returns :class:`RawSplits`: train, validation or None, test or None (with whether a
labelled test split exists but was not read, ``need_test=False``), each with the task's role
columns checked and renamed (the task's ``normalize``), labels still as the source writes them.
:func:`hpo.data.load_data` maps the labels and carves what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from hpo.data.readers import read_table
from hpo.data.sources import SPLIT_STEMS, SUFFIXES, Source, find_split_file, list_files
from hpo.data.spec import DataError, DataSpec
from hpo.tasks import get_task


@dataclass
class RawSplit:
    """One split as read, before label mapping."""

    frame: pd.DataFrame  # the task's role columns (labels as the source writes them)
    shown: str  # file (or source) name for messages
    origin: str  # for LoadedData.sources
    class_names: list[str] | None = None  # names of integer labels the source declares (ClassLabel)


def _select(df: pd.DataFrame, spec: DataSpec, shown: str) -> pd.DataFrame:
    """The task's role columns of one split as read, checked and renamed to their roles."""
    return get_task(spec.task).normalize(df, spec.role_columns(), shown)


def target_columns(spec: DataSpec) -> list[str]:
    """The source columns of the task's targets (label, tags, answers): an evaluation split needs them."""
    targets = {r.name for r in get_task(spec.task).roles if r.target}
    return [col for role, col in spec.role_columns().items() if role in targets]


def _has_targets(columns: list[str], spec: DataSpec) -> bool:
    return all(col in columns for col in target_columns(spec))


@dataclass
class RawSplits:
    """The splits one source gave, before label mapping and carving."""

    train: RawSplit
    validation: RawSplit | None = None
    test: RawSplit | None = None
    test_exists: bool = False  # a labelled test split exists (read or not)
    test_origin: str = ""
    notes: dict[str, str] = field(default_factory=dict)  # split -> why it is carved


def load_local(src: Source, spec: DataSpec, need_test: bool) -> RawSplits:
    """The splits of a local file (train only) or folder (files found by name or named)."""
    assert src.path is not None
    source = spec.source
    if src.kind == "file":
        for key in ("train", "validation", "test"):
            if getattr(spec, key) is not None:
                raise DataError(f"data.{key}: only valid when data.source is a folder ({source} is a file)")
        frame = _select(read_table(src.path, source, fmt=spec.format), spec, source)
        return RawSplits(train=RawSplit(frame, source, src.path.name))

    folder = src.path

    def shown(name: str) -> str:
        return f"{source.rstrip('/')}/{name}"

    train_name = find_split_file(folder, "train", spec.train, source, spec.format)
    if train_name is None:
        raise DataError(
            f"data.source: no train file in {source} (expected train"
            f"{'|'.join(SUFFIXES)} or data.train; files: {list_files(folder)})"
        )
    splits = RawSplits(
        train=RawSplit(
            _select(
                read_table(folder / train_name, shown(train_name), fmt=spec.format), spec, shown(train_name)
            ),
            shown(train_name),
            train_name,
        )
    )
    for split in ("validation", "test"):
        named = getattr(spec, split)
        name = find_split_file(folder, split, named, source, spec.format)
        if name is None:
            continue
        path = folder / name
        header = read_table(path, shown(name), header_only=True, fmt=spec.format)
        if not _has_targets(list(header.columns), spec):
            missing = next(c for c in target_columns(spec) if c not in header.columns)
            if named is not None:
                raise DataError(
                    f"{shown(name)}: column {missing!r} not found "
                    f"(columns: {', '.join(map(str, header.columns))})"
                )
            splits.notes[split] = f"{name} has no {missing!r} column"
            continue
        if split == "test":
            splits.test_exists = True
            splits.test_origin = name
            if not need_test:
                continue
        raw = RawSplit(
            _select(read_table(path, shown(name), fmt=spec.format), spec, shown(name)), shown(name), name
        )
        setattr(splits, split, raw)
    return splits


def load_builtin(src: Source, spec: DataSpec, need_test: bool) -> RawSplits:
    """The fixed splits of a builtin dataset."""
    from hpo.data.reviews import LABEL_NAMES, fixed_splits  # only builtin users pay for the templates

    for key in ("train", "validation", "test"):
        if getattr(spec, key) is not None:
            raise DataError(f"data.{key}: not used with {src.name} (its splits are fixed)")
    frames = fixed_splits()
    raws = {
        split: RawSplit(
            _select(frames[split], spec, f"{src.name} ({split})"),
            f"{src.name} ({split})",
            f"{src.name} {split} ({len(frames[split]):,} generated reviews)",
            class_names=list(LABEL_NAMES),
        )
        for split in frames
    }
    return RawSplits(
        train=raws["train"],
        validation=raws["validation"],
        test=raws["test"] if need_test else None,
        test_exists=True,
        test_origin=raws["test"].origin,
    )


def load_hub(src: Source, spec: DataSpec, need_test: bool) -> RawSplits:
    """The splits of a hub dataset (downloaded by ``datasets``, or from its cache offline)."""
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
        for stem in SPLIT_STEMS[split]:
            if stem in dsd:
                return stem
        return None

    targets = target_columns(spec)

    def class_names(feature: Any) -> list[str] | None:
        """Names of a ClassLabel feature (or of a sequence of them: NER tags), else None."""
        feature = getattr(feature, "feature", feature)
        names = getattr(feature, "names", None)
        return [str(n) for n in names] if names is not None else None

    def raw(split_name: str) -> RawSplit:
        ds = dsd[split_name]
        shown = f"{src.name} [{split_name}]"
        names = class_names(ds.features.get(targets[0])) if targets else None
        return RawSplit(_select(ds.to_pandas(), spec, shown), shown, f"{src.name} [{split_name}]", names)

    def unlabelled(split_name: str) -> str | None:
        """Why a split cannot serve as an evaluation split, or None."""
        ds = dsd[split_name]
        for column in targets:
            if column not in ds.column_names:
                return f"{split_name} has no {column!r} column"
            feature = ds.features.get(column)
            # GLUE-style hidden test sets keep the column but set every label to -1.
            if hasattr(feature, "names") and set(ds.unique(column)) <= {-1}:
                return f"{split_name} has no labels (all -1)"
        return None

    train_name = pick("train")
    if train_name is None:
        raise DataError(
            f"data.train: {src.name} has no 'train' split (splits: {', '.join(available)}); "
            "name one with data.train"
        )
    splits = RawSplits(train=raw(train_name))
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
