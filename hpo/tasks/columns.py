"""Column checks every task's ``normalize`` shares: the role columns are there, text is text."""

from __future__ import annotations

import pandas as pd

from hpo.errors import DataError


def select_columns(df: pd.DataFrame, columns: dict[str, str], shown: str) -> pd.DataFrame:
    """The role columns of ``df``, renamed to their roles, in the order of ``columns``.

    Raises:
        DataError: a column is missing (the message lists the file's columns), or no rows.
    """
    found = [str(c) for c in df.columns]
    for col in columns.values():
        if col not in df.columns:
            raise DataError(f"{shown}: column {col!r} not found (columns: {', '.join(found) or 'none'})")
    if len(df) == 0:
        raise DataError(f"{shown}: no rows")
    return pd.DataFrame({role: df[col].to_numpy() for role, col in columns.items()})


def check_text(col: pd.Series, shown: str, name: str) -> None:
    """Every value a non-empty string (``name``: the column as the source calls it).

    Raises:
        DataError: numbers, or empty / non-text values (the first one's row is named).
    """
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
