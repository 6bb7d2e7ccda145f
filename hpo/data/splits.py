"""Cutting rows: carving test and validation splits from train (:func:`carve`), and
subsampling to a limit (:func:`subsample`).

Every cut is seeded and stratified the way the task says (by label for classification); :func:`n_carve` and :func:`pct` turn
a ``*_size`` fraction into a row count and into text for people.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from hpo.data.spec import DataError
from hpo.tasks import Task


def _split_off(
    df: pd.DataFrame, n_take: int, seed: int, what: str, stratify: pd.Series | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, taken): ``n_take`` rows taken at random, stratified by ``stratify`` when possible."""
    from sklearn.model_selection import train_test_split

    if n_take <= 0 or n_take >= len(df):
        raise DataError(f"{what}: cannot take {n_take} of {len(df)} rows")
    if stratify is not None:
        try:
            rest, taken = train_test_split(
                df, test_size=n_take, random_state=seed, shuffle=True, stratify=stratify.loc[df.index]
            )
            return rest, taken
        except ValueError:
            # A class with a single row, or fewer rows taken than classes: fall back to a
            # plain seeded random split rather than fail.
            pass
    rest, taken = train_test_split(df, test_size=n_take, random_state=seed, shuffle=True)
    return rest, taken


def carve(
    df: pd.DataFrame, n_take: int, seed: int, what: str, task: Task
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Like :func:`_split_off`, but rows of one group (the task's ``group``) go to the same side.

    Files such as SST-2's train.tsv repeat some texts (371 of 67,349 rows); splitting rows
    would put copies of one text in both train and the carved test. Unique keys are split
    (stratified by the task's ``stratify`` value of their first row) and every row follows
    its key, so the taken side can be a few rows larger than ``n_take``. A task with
    :attr:`~hpo.tasks.Task.large_groups` (QA: one article's questions) takes the same share of
    groups instead, so the taken side holds about ``n_take`` rows.
    """
    stratify, key = task.stratify(df), task.group(df)
    if key is None:
        return _split_off(df, n_take, seed, what, stratify)
    first = ~key.duplicated()
    if bool(first.all()):
        return _split_off(df, n_take, seed, what, stratify)
    n_unique = int(first.sum())
    n_keys = n_take
    if task.large_groups:
        # One article holds dozens of questions: take the share of articles that the rows
        # asked for are of all rows (10% of 4,961 SQuAD questions in 24 articles: 2 articles).
        n_keys = max(1, round(n_take * n_unique / len(df)))
        if n_keys >= n_unique:
            raise DataError(
                f"{what}: cannot carve {n_take} of {len(df)} rows by group: only {n_unique} groups "
                "(articles or contexts), and a group's rows stay on one side"
            )
    elif n_take >= n_unique:
        raise DataError(f"{what}: cannot carve {n_take} rows: only {n_unique} distinct texts")
    _, taken_unique = _split_off(df[first], n_keys, seed, what, stratify)
    taken = key.isin(set(key.loc[taken_unique.index]))
    return df[~taken], df[taken]


def subsample(df: pd.DataFrame, limit: int | None, seed: int, what: str, task: Task) -> pd.DataFrame:
    """At most ``limit`` rows of ``df``, taken at random, stratified by the task's ``stratify``."""
    if limit is None or limit >= len(df):
        return df
    if limit < 1:
        raise DataError(f"{what}: must be >= 1, got {limit}")
    _, kept = _split_off(df, limit, seed, what, task.stratify(df))
    return kept


def n_carve(fraction: float, n: int, key: str) -> int:
    """Rows to carve for the fraction ``data.<key>`` of ``n`` rows (at least 1)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"data.{key}: must be between 0 and 1 (exclusive), got {fraction}")
    return max(1, round(fraction * n))


def pct(fraction: float) -> str:
    """``0.1`` as ``"10%"``."""
    return f"{fraction * 100:g}%"


def fold_indices(df: pd.DataFrame, k: int, seed: int, task: Task) -> list[tuple[list[int], list[int]]]:
    """``k`` cross-validation folds of ``df``: (train positions, validation positions) each.

    Seeded; stratified by the task's ``stratify`` key and grouped by its ``group`` key (copies of
    one text, one article's questions) when it repeats, so a group never sits on both sides.
    Every row is in exactly one validation fold.

    Raises:
        DataError: fewer rows (or distinct groups) than folds.
    """
    import warnings

    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    what = "evaluation.folds"
    stratify, key = task.stratify(df), task.group(df)
    grouped = key is not None and bool(key.duplicated().any())
    n = int(key.nunique()) if grouped and key is not None else len(df)
    if k > n:
        unit = "distinct groups" if grouped else "rows"
        raise DataError(
            f"{what}: {k} folds need at least {k} {unit}; the pooled train and validation rows have {n}"
        )
    positions = list(range(len(df)))
    y = None if stratify is None else stratify.to_numpy()
    if stratify is not None and int(stratify.value_counts().max()) < k:
        y = None  # no class fills every fold (sklearn refuses): plain seeded folds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn's note on small classes
        if grouped and key is not None:
            groups = key.to_numpy()
            if y is not None:
                splits = StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(positions, y, groups)
            else:
                splits = GroupKFold(k, shuffle=True, random_state=seed).split(positions, None, groups)
        elif y is not None:
            splits = StratifiedKFold(k, shuffle=True, random_state=seed).split(positions, y)
        else:
            splits = KFold(k, shuffle=True, random_state=seed).split(positions)
        return [(sorted(map(int, tr)), sorted(map(int, va))) for tr, va in splits]


def pooled_frame(data: Any) -> pd.DataFrame:
    """The train rows, then the validation rows, numbered 0..n-1 (``LoadedData``)."""
    return pd.concat([data.train, data.validation], ignore_index=True)


def pool_folds(
    data: Any, datasets: dict[str, Any], k: int, seed: int, task: Task
) -> list[tuple[list[int], list[int]]]:
    """Cross-validation set-up: ``datasets["pool"]`` (tokenized train rows, then validation
    rows) and the :func:`fold_indices` of the pooled rows.

    Call before the validation dataset is reordered: the pool's positions must be the pooled
    frame's. The test split is never pooled.
    """
    from datasets import concatenate_datasets

    datasets["pool"] = concatenate_datasets([datasets["train"], datasets["validation"]])
    return fold_indices(pooled_frame(data), k, seed, task)
