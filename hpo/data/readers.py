"""Reading one local file into a frame.

- :func:`read_table`: a csv, tsv, json, jsonl or parquet table, as it is (text stays text).
- :func:`read_conll`: a CoNLL-style token/tag file, one row per sentence (``tokens``, ``tags``).
- :func:`read_squad_json`: the official SQuAD v1.1 JSON, one row per question (Hugging Face
  ``squad`` rows); :func:`answer_problem` is its check that an answer sits at its offset.

Every reader raises :class:`~hpo.data.spec.DataError` with a message that names the file (as
``shown``) and, where there is one, the line or JSON path.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from hpo.data.spec import DataError
from hpo.tasks.question_answering import answer_problem, show_value

# ---------------------------------------------------------------------------------------
# Tables (csv, tsv, json, jsonl, parquet)


def read_table(path: Path, shown: str, header_only: bool = False, fmt: str | None = None) -> pd.DataFrame:
    """Reads one local file; text stays text ("NA", "null" and "" are not missing values).

    ``fmt`` (``data.format``) says how to read it; default: the suffix, and a ``.json`` file
    in SQuAD's layout is read as SQuAD. CoNLL and SQuAD files are read whole even for
    ``header_only`` (their columns come from the reader).
    """
    suffix = f".{fmt}" if fmt else path.suffix.lower()
    kind = suffix[1:].upper()
    if suffix == ".conll":
        return read_conll(path, shown)
    if suffix == ".squad":
        return read_squad_json(path, shown)
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
        if _is_squad(obj):
            return read_squad_json(path, shown)
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


def _is_squad(obj: Any) -> bool:
    """SQuAD's layout: ``{"data": [{"title", "paragraphs": [...]}, ...]}``."""
    data = obj.get("data") if isinstance(obj, dict) else None
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "paragraphs" in data[0]


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
# CoNLL token/tag files


DOCSTART = "-DOCSTART-"
"""First column of the document-separator lines of CoNLL-2003 style files; such lines are skipped."""


def read_conll(path: Path, shown: str) -> pd.DataFrame:
    """Read a CoNLL-style file: one token per line, a blank line between sentences.

    Each non-blank line holds columns separated by tabs (when the line has a tab) or by runs
    of spaces; the first column is the token and the last one the tag, so both the two-column
    WNUT layout (``token<TAB>tag``) and the four-column CoNLL-2003 layout (``token POS chunk
    tag``) read. Every token line of a file must have the same number of columns, which
    catches a space inside a token of a space-separated file. Lines whose first column is
    ``-DOCSTART-`` are skipped. A byte-order mark, CRLF line ends, trailing whitespace,
    lines of only whitespace as separators and a missing final blank line are accepted.

    Args:
        path: The file.
        shown: How messages name the file (e.g. the path the user wrote).

    Returns:
        One row per sentence, in file order, with columns ``tokens`` (list of str) and
        ``tags`` (list of str, same length).

    Raises:
        DataError: ``shown: line N: problem`` for a line with one column, a column count
            that differs from the first token line, or an empty token; ``shown: problem``
            for an unreadable, non-UTF-8, empty or sentence-less file.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{shown}: could not read: {exc.strerror or exc}") from None
    try:
        # utf-8-sig: a byte-order mark is not part of the first token.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{shown}: line {bad}: not UTF-8 text ({exc.reason})") from None
    if not text.strip():
        raise DataError(f"{shown}: file is empty")

    sentences_tokens: list[list[str]] = []
    sentences_tags: list[list[str]] = []
    tokens: list[str] = []
    tags: list[str] = []
    n_columns: int | None = None  # columns of the first token line; every other must match
    first_line = 0

    def close_sentence() -> None:
        if tokens:
            sentences_tokens.append(tokens.copy())
            sentences_tags.append(tags.copy())
            tokens.clear()
            tags.clear()

    # splitlines() also splits on \r, so CRLF and old-Mac line ends count lines the same way.
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            close_sentence()
            continue
        fields = _fields(line)
        if fields[0] == DOCSTART:
            close_sentence()
            continue
        if len(fields) < 2:
            raise DataError(
                f"{shown}: line {lineno}: expected a token and a tag separated by a tab or spaces, "
                f"got one column {_clip(line.strip())!r}"
            )
        if n_columns is None:
            n_columns, first_line = len(fields), lineno
        elif len(fields) != n_columns:
            raise DataError(
                f"{shown}: line {lineno}: expected {n_columns} columns like line {first_line}, "
                f"got {len(fields)} in {_clip(line.strip())!r}"
            )
        if not fields[0]:
            raise DataError(f"{shown}: line {lineno}: empty token before tag {fields[-1]!r}")
        tokens.append(fields[0])
        tags.append(fields[-1])
    close_sentence()
    if not sentences_tokens:
        raise DataError(f"{shown}: no sentences (only blank or {DOCSTART} lines)")
    return pd.DataFrame({"tokens": sentences_tokens, "tags": sentences_tags})


def _fields(line: str) -> list[str]:
    """Columns of one token line: tab-separated when it has a tab, else space-separated."""
    line = line.rstrip()
    if "\t" in line:
        # Tabs keep a token that contains a space or a no-break space whole; spaces
        # padding a column are not part of it.
        return [f.strip(" ") for f in line.lstrip(" ").split("\t")]
    return line.split()


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# ---------------------------------------------------------------------------------------
# SQuAD v1.1 JSON


def read_squad_json(path: Path, shown: str) -> pd.DataFrame:
    """Read an official SQuAD v1.1 JSON file into one row per question.

    The file is ``{"version", "data": [{"title", "paragraphs": [{"context", "qas": [{"id",
    "question", "answers": [{"text", "answer_start"}]}]}]}]}``. Every answer is checked to
    sit at its ``answer_start`` in the context.

    Args:
        path: The file.
        shown: How messages name the file (e.g. the path the user wrote).

    Returns:
        Columns ``id`` (str), ``title`` (str; "" when an article has none), ``context``,
        ``question`` and ``answers`` (``{"text": [str, ...], "answer_start": [int, ...]}``,
        the Hugging Face ``squad`` layout), in file order.

    Raises:
        DataError: ``shown: <JSON path>: problem``, e.g. ``train.json:
            data[3].paragraphs[0].qas[7].answers[0].answer_start: expected an integer, got
            '12'``, for invalid JSON, a missing or mistyped key, an answer that is not at its
            offset, a question without answers (SQuAD 2.0 unanswerable questions are not
            supported), a duplicate id, or a file without questions.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not JSON
    except OSError as exc:
        raise DataError(f"{shown}: could not read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{shown}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise DataError(f"{shown}: file is empty")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{shown}: line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}") from None

    def where(key: str) -> str:
        return f"{shown}: {key}" if key else shown

    def need(value: Any, kind: type | tuple[type, ...], key: str, what: str) -> Any:
        # bool is an int to Python but never a count or an offset here.
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DataError(f"{where(key)}: expected {what}, got {show_value(value)}")
        return value

    def field(obj: Mapping[str, Any], name: str, key: str) -> Any:
        if name not in obj:
            raise DataError(
                f"{where(key)}: missing key {name!r} (keys: {', '.join(map(str, obj)) or 'none'})"
            )
        return obj[name]

    need(obj, dict, "", 'a JSON object {"version", "data": [...]}')
    rows: dict[str, list[Any]] = {k: [] for k in ("id", "title", "context", "question", "answers")}
    first_seen: dict[str, str] = {}  # id -> JSON path of its question
    articles = need(field(obj, "data", ""), list, "data", "a list of articles")
    for a, article in enumerate(articles):
        akey = f"data[{a}]"
        need(article, dict, akey, "an object with title and paragraphs")
        title = need(article.get("title", ""), str, f"{akey}.title", "a string")
        paragraphs = need(field(article, "paragraphs", akey), list, f"{akey}.paragraphs", "a list")
        for p, paragraph in enumerate(paragraphs):
            pkey = f"{akey}.paragraphs[{p}]"
            need(paragraph, dict, pkey, "an object with context and qas")
            context = need(field(paragraph, "context", pkey), str, f"{pkey}.context", "a string")
            qas = need(field(paragraph, "qas", pkey), list, f"{pkey}.qas", "a list")
            for q, qa in enumerate(qas):
                qkey = f"{pkey}.qas[{q}]"
                need(qa, dict, qkey, "an object with id, question and answers")
                # Ids are strings in SQuAD; integer ids of home-made files become strings.
                qid = str(need(field(qa, "id", qkey), (str, int), f"{qkey}.id", "a string"))
                if qid in first_seen:
                    raise DataError(f"{where(qkey)}.id: duplicate id {qid!r} (first at {first_seen[qid]})")
                first_seen[qid] = qkey
                question = need(field(qa, "question", qkey), str, f"{qkey}.question", "a string")
                if qa.get("is_impossible") is True:
                    raise DataError(
                        f"{where(qkey)}: unanswerable question (SQuAD 2.0 is_impossible); "
                        "only SQuAD v1.1 data, where every question has an answer, is supported"
                    )
                answers = need(field(qa, "answers", qkey), list, f"{qkey}.answers", "a list")
                if not answers:
                    raise DataError(f"{where(qkey)}.answers: empty (every question needs an answer)")
                texts: list[str] = []
                starts: list[int] = []
                for n, answer in enumerate(answers):
                    nkey = f"{qkey}.answers[{n}]"
                    need(answer, dict, nkey, "an object with text and answer_start")
                    texts.append(need(field(answer, "text", nkey), str, f"{nkey}.text", "a string"))
                    starts.append(
                        need(field(answer, "answer_start", nkey), int, f"{nkey}.answer_start", "an integer")
                    )
                    problem = answer_problem(context, texts[-1], starts[-1])
                    if problem:
                        raise DataError(f"{where(nkey)}: {problem}")
                rows["id"].append(qid)
                rows["title"].append(title)
                rows["context"].append(context)
                rows["question"].append(question)
                rows["answers"].append({"text": texts, "answer_start": starts})
    if not rows["id"]:
        raise DataError(f"{shown}: no questions")
    return pd.DataFrame(rows)
