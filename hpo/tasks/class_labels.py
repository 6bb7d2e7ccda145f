"""Class labels: canonical label keys, their order, and the mapping to integers 0..k-1.

The sequence-classification task's label handling (:mod:`hpo.tasks.sequence_classification`).
"""

from __future__ import annotations

import math

import pandas as pd

from hpo.errors import DataError


def label_keys(col: pd.Series, shown: str, name: str) -> list[str]:
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


def sort_keys(keys: set[str]) -> list[str]:
    """Numeric order when every label is an integer, else string order."""
    try:
        return sorted(keys, key=int)
    except ValueError:
        return sorted(keys)


def class_labels(
    train_keys: list[str], shown: str, name: str, class_names: list[str] | None
) -> tuple[list[str], list[str]]:
    """The classes of a train split and their names.

    Args:
        train_keys: :func:`label_keys` of the whole train split.
        shown: How messages name the train split.
        name: The label column's name in the source.
        class_names: Names of integer labels given by the source (hub ``ClassLabel``), if any.

    Returns:
        (classes, label_names): the distinct keys in :func:`sort_keys` order (index = integer
        label), and the name of each class (the key itself, or its ``class_names`` entry when
        every key is an index into them).

    Raises:
        DataError: If there is a single class.
    """
    classes = sort_keys(set(train_keys))
    if len(classes) < 2:
        raise DataError(f"{shown}: column {name!r} has a single class ({classes[0]!r}); need at least 2")
    label_names = list(classes)
    if class_names is not None and all(
        k.lstrip("-").isdigit() and 0 <= int(k) < len(class_names) for k in classes
    ):
        label_names = [class_names[int(k)] for k in classes]
    return classes, label_names


def map_labels(
    frame: pd.DataFrame, keys: list[str], classes: list[str], shown: str, name: str
) -> pd.DataFrame:
    """A copy of ``frame`` whose ``label`` column holds the index in ``classes`` of each key.

    Raises:
        DataError: If a key is not one of ``classes`` (a label not seen in train).
    """
    index = {k: i for i, k in enumerate(classes)}
    unseen = sorted(set(keys) - set(index))
    if unseen:
        raise DataError(
            f"{shown}: column {name!r} has label value"
            f"{'s' if len(unseen) > 1 else ''} not seen in train: "
            f"{', '.join(map(repr, unseen[:5]))}{' ...' if len(unseen) > 5 else ''} "
            f"(train labels: {', '.join(map(repr, classes))})"
        )
    out = frame.copy()
    out["label"] = pd.Series([index[k] for k in keys], dtype="int64", index=out.index)
    return out
