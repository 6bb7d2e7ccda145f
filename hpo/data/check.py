"""Checking a data spec before anything runs (``hpo validate``).

:func:`check_spec` looks at values, paths and file names without reading data;
:func:`read_problems` loads everything exactly as a search and a retrain will.
"""

from __future__ import annotations

from hpo.data.load import load_data
from hpo.data.sources import SUFFIXES, find_split_file, list_files, resolve_source
from hpo.data.spec import FORMATS, DataError, DataSpec
from hpo.tasks import get_task


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

    task = get_task(spec.task)
    seen: dict[str, str] = {}
    for role in task.roles:
        column = spec.columns.get(role.name, role.default)
        if column is None:
            need(not role.required, role.name, f"missing: the {spec.task} task needs a {role.name} column")
            continue
        if not isinstance(column, str) or not column:
            need(False, role.name, "must name a column")
            continue
        if column in seen:
            need(False, role.name, f"must differ from data.{seen[column]} (both {column!r})")
        seen[column] = role.name
    need(
        spec.format is None or spec.format in FORMATS,
        "format",
        f"expected one of {', '.join(FORMATS)}, got {spec.format!r}",
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
        src = resolve_source(spec)
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
                name = find_split_file(src.path, key, getattr(spec, key), spec.source, spec.format)
            except DataError as exc:
                problems.append(str(exc))
                continue
            if key == "train" and name is None:
                problems.append(
                    f"data.source: no train file in {spec.source} (expected train"
                    f"{'|'.join(SUFFIXES)} or data.train; files: {list_files(src.path)})"
                )
    return problems


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
        if resolve_source(spec).kind == "hub":
            return []
        load_data(spec, need_test=True)
    except DataError as exc:
        return [str(exc)]
    return []
