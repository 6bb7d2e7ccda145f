"""Study and search-space files: every problem reported at once, nothing written anywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpo._yaml import YamlError, loads_yaml
from hpo.cli import main
from hpo.config import ConfigError, load_space_file, load_study
from hpo.space import SHIPPED_DIR

ROOT = Path(__file__).resolve().parent.parent


def test_yaml_reads_exponent_floats_and_rejects_duplicates() -> None:
    assert loads_yaml("a: 1e-5\nb: 3") == {"a": 1e-5, "b": 3}
    with pytest.raises(YamlError, match=r"x.yaml: line 3: duplicate key 'a'"):
        loads_yaml("a: 1\nb: 2\na: 3\n", "x.yaml")


SHIPPED_STUDIES = sorted(p.stem for p in (ROOT / "studies").glob("*.yaml"))
SHIPPED_SPACES = sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def test_the_shipped_files_are_found() -> None:
    assert {"quickstart", "sst2-minilm"} <= set(SHIPPED_STUDIES) and "default" in SHIPPED_SPACES


@pytest.mark.parametrize("name", SHIPPED_STUDIES)
def test_shipped_studies_validate(name: str) -> None:
    """Every study in studies/ validates offline (hub models and data are not fetched)."""
    spec = load_study(ROOT / "studies" / f"{name}.yaml")
    assert spec.name == name
    assert spec.space.strategies


@pytest.mark.parametrize("name", SHIPPED_SPACES)
def test_shipped_spaces_validate(name: str) -> None:
    space = load_space_file(SHIPPED_DIR / f"{name}.yaml")
    assert set(space.strategies) >= {"full", "lora"}


def test_default_space_is_the_product_card() -> None:
    space = load_space_file(SHIPPED_DIR / "default.yaml")
    assert space.strategies == ["full", "partial", "adapter", "lora", "prompt"]
    lr = space.shared["learning_rate"]
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 2e-5, 5e-5, True)
    assert space.shared["per_device_train_batch_size"].choices == (8, 16, 32)
    assert space.per_strategy["lora"]["r"].choices == (4, 8, 16, 32)


def test_strategy_aware_space_overrides_learning_rate_per_strategy() -> None:
    import optuna

    space = load_space_file(SHIPPED_DIR / "strategy-aware.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen: dict[str, set[str]] = {}
    for _ in range(40):
        trial = study.ask()
        cfg = space.sample(trial)
        seen.setdefault(cfg.strategy, set()).update(trial.params)
        if cfg.strategy == "lora":
            assert 1e-4 <= cfg.training["learning_rate"] <= 1e-3
            assert "lora.learning_rate" in trial.params and "learning_rate" not in trial.params
            assert cfg.strategy_params["r"] in (4, 8, 16, 32)
        if cfg.strategy == "prompt":
            assert 1e-3 <= cfg.training["learning_rate"] <= 0.3
        if cfg.strategy == "full":
            assert 2e-5 <= cfg.training["learning_rate"] <= 5e-5
            assert not any(k.startswith("lora.") for k in trial.params)
        study.tell(trial, 0.5)
    assert set(seen) == {"full", "partial", "adapter", "lora", "prompt"}
    assert "lora.r" in seen["lora"] and "lora.r" not in seen["full"]


BROKEN = """\
name: broken
model: minilm
data:
  source: builtin:reviews
  txt: sentence
  train_limit: -5
space:
  strategy: [full, lora, qlora]
  learning_rate: {low: 5.0e-5, high: 2.0e-5, log: true}
  per_device_train_batch_size: [8, 0]
  strategies:
    lora: {r: [4, 8], rank: 3}
objective: {metric: bleu, select: first}
budget: {n_trials: 0, evals_per_epoch: 2}
pruner: {name: hyperband, percentile: 30}
sampler: {skip_repeats: 1.5}
colour: blue
"""


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text(BROKEN)
    with pytest.raises(ConfigError) as exc:
        load_study(f)
    text = "\n".join(exc.value.problems)
    for expected in [
        "colour: unknown key",
        "data.txt: unknown key",
        "data.train_limit",
        "strategy: unknown strategy 'qlora' (known: adapter, full, lora, partial, prompt)",
        "learning_rate: low must be <= high",
        "per_device_train_batch_size: must be >= 1, got 0",
        "strategies.lora.rank: unknown parameter for strategy 'lora'",
        "objective.metric: unknown metric 'bleu'",
        "objective.select: expected last or best, got 'first'",
        "budget.n_trials: must be >= 1, got 0",
        "pruner.percentile: not an option of pruner 'hyperband'",
        "sampler.skip_repeats: must be in [0, 1) or null, got 1.5",
    ]:
        assert expected in text, f"missing {expected!r} in:\n{text}"
    assert all(p.startswith(str(f)) for p in exc.value.problems)


def test_validate_cli_lists_all_problems_and_touches_no_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text(BROKEN)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(f)]) == 1
    err = capsys.readouterr().err
    assert err.count(str(f)) >= 10
    assert "Traceback" not in err
    # run refuses too, before any storage is created
    assert main(["run", str(f), "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 1
    assert not (tmp_path / "x.db").exists()
    assert not (tmp_path / "studies").exists()


def test_prefix_tuning_on_bert_is_rejected_at_validation(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(
        "name: p\nmodel: minilm\ndata: {source: builtin:reviews}\n"
        "space:\n  strategy: [prompt]\n  strategies:\n    prompt: {prompt_type: [prompt, prefix]}\n"
    )
    with pytest.raises(ConfigError, match="prefix"):
        load_study(f)


def test_set_overrides_and_space_by_path(tmp_path: Path) -> None:
    (tmp_path / "my-space.yaml").write_text("strategy: [lora]\nlearning_rate: 1e-4\n")
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nmodel: minilm\ndata: {source: builtin:reviews}\nspace: my-space.yaml\n")
    spec = load_study(f, {"budget.n_trials": 3, "seed": 7})
    assert spec.budget.n_trials == 3 and spec.seed == 7 and spec.data.seed == 7
    assert spec.space.shared["learning_rate"].value == 1e-4


def test_unknown_space_name_lists_shipped(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nmodel: minilm\ndata: {source: builtin:reviews}\nspace: nope\n")
    with pytest.raises(ConfigError, match="shipped: default, llm, quickstart, span-tasks, strategy-aware"):
        load_study(f)


def test_validate_prints_resolved_conditional_space(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["validate", str(ROOT / "studies" / "quickstart.yaml"), str(SHIPPED_DIR / "default.yaml")]) == 0
    )
    out = capsys.readouterr().out
    assert "when strategy = lora:" in out and "lora.r: 4 | 8 | 16 | 32" in out
    assert "lora.learning_rate: float [0.001, 0.005] log  (overrides shared)" in out


def test_cli_start_path_imports_no_torch() -> None:
    code = (
        "import sys; from hpo.cli import main; "
        "rc = main(['validate', 'studies/quickstart.yaml']); "
        "assert rc == 0; bad = [m for m in ('torch', 'transformers', 'ray') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)


# ----------------------------------------------------------------------------- max_length vs the model


def _model_dir(tmp_path: Path, **config: object) -> Path:
    """A model folder holding only config.json: validation reads nothing else."""
    import json

    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    return d


def _study_file(tmp_path: Path, model: Path, max_length: int, space: str = "{strategy: [full]}") -> Path:
    f = tmp_path / "s.yaml"
    f.write_text(
        f"name: s\nmodel: {model}\ndata: {{source: builtin:reviews, max_length: {max_length}}}\nspace: {space}\n"
    )
    return f


def test_max_length_beyond_the_models_positions_is_rejected(tmp_path: Path) -> None:
    bert = _model_dir(tmp_path, model_type="bert", max_position_embeddings=512, num_hidden_layers=2)
    assert load_study(_study_file(tmp_path, bert, 512)).data.max_length == 512
    f = _study_file(tmp_path, bert, 702)
    with pytest.raises(ConfigError) as exc:
        load_study(f)
    assert exc.value.problems == [
        f"{f}: data.max_length: must be <= 512, the model's position limit "
        "(max_position_embeddings in its config.json), got 702"
    ]


@pytest.mark.parametrize(
    ("config", "limit"),
    [
        ({"model_type": "gpt2", "n_positions": 64, "n_ctx": 64}, 64),
        # RoBERTa counts positions from pad_token_id + 1: 514 rows serve 512 tokens
        ({"model_type": "roberta", "max_position_embeddings": 66, "pad_token_id": 1}, 64),
    ],
)
def test_position_limit_of_other_model_families(
    tmp_path: Path, config: dict[str, object], limit: int
) -> None:
    model = _model_dir(tmp_path, **config)
    load_study(_study_file(tmp_path, model, limit))
    with pytest.raises(ConfigError, match=rf"data\.max_length: must be <= {limit}, .* got {limit + 1}"):
        load_study(_study_file(tmp_path, model, limit + 1))


def test_prompt_tuning_virtual_tokens_count_against_max_length(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bert = _model_dir(tmp_path, model_type="bert", max_position_embeddings=128, num_hidden_layers=2)
    space = "{strategy: [full, prompt], strategies: {prompt: {num_virtual_tokens: {low: 5, high: 30}}}}"
    load_study(_study_file(tmp_path, bert, 98, space))  # 98 + 30 = 128
    f = _study_file(tmp_path, bert, 100, space)
    assert main(["validate", str(f)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"{f}: data.max_length: 100 tokens plus up to 30 virtual tokens of strategy 'prompt' exceed the "
        "model's 128 positions (max_position_embeddings); lower data.max_length to at most 98 or "
        "num_virtual_tokens",
        "hpo validate: 1 problem(s)",
    ]
    # the default num_virtual_tokens (20) counts when the space leaves it out
    with pytest.raises(ConfigError, match="up to 20 virtual tokens"):
        load_study(_study_file(tmp_path, bert, 120, "{strategy: [prompt]}"))


def test_retraining_spec_max_length_is_checked_too(tmp_path: Path) -> None:
    from hpo.config import load_retrain_spec

    bert = _model_dir(tmp_path, model_type="bert", max_position_embeddings=64, num_hidden_layers=2)
    f = tmp_path / "r.yaml"
    f.write_text(
        f"kind: retrain\nmodel: {{name: {bert}}}\ndata: {{source: builtin:reviews, max_length: 60}}\n"
        "strategy: {name: prompt, params: {num_virtual_tokens: 10}}\n"
    )
    with pytest.raises(ConfigError, match=r"data\.max_length: 60 tokens plus up to 10 virtual tokens"):
        load_retrain_spec(f)


# ----------------------------------------------------------------------------- validate reads the data


def _data_study(tmp_path: Path, data_name: str, content: bytes, **data: str) -> Path:
    (tmp_path / data_name).write_bytes(content)
    extra = "".join(f", {k}: {v}" for k, v in data.items())
    f = tmp_path / "s.yaml"
    f.write_text(
        f"name: s\nmodel: minilm\ndata: {{source: {data_name}{extra}}}\n"
        "space: {strategy: [full]}\nbudget: {n_trials: 0}\n"
    )
    return f


ROWS = "".join(f"row {i} says something,{i % 2}\n" for i in range(40))


@pytest.mark.parametrize(
    ("name", "content", "data", "problem"),
    [
        (
            "all.csv",
            ("sentence,label\n" + ROWS).encode(),
            {"text": "txt"},
            "data: all.csv: column 'txt' not found (columns: sentence, label)",
        ),
        ("all.csv", b"", {}, "data: all.csv: file is empty"),
        (
            "all.csv",
            ("text,label\n" + "".join(f"row {i},0\n" for i in range(40))).encode(),
            {},
            "data: all.csv: column 'label' has a single class ('0'); need at least 2",
        ),
        (
            "all.csv",
            ("text,label\n" + ROWS).encode() + "caf\xe9 cr\xe8me,1\n".encode("latin-1"),
            {},
            "data: all.csv: could not read as CSV: 'utf-8' codec can't decode byte 0xe9",
        ),
        (
            "all.jsonl",
            b'{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n{"text": "oops", "label": \n',
            {},
            "data: all.jsonl: line 3: invalid JSON: Expecting value",
        ),
    ],
    ids=["missing-column", "empty-file", "one-class", "bad-encoding", "broken-jsonl-line"],
)
def test_validate_reads_the_data_and_lists_its_problem_with_the_others(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes,
    data: dict[str, str],
    problem: str,
) -> None:
    f = _data_study(tmp_path, name, content, **data)
    assert main(["validate", str(f)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"{f}: {problem}"), err  # data comes before budget, in file order
    assert err[1:] == [f"{f}: budget.n_trials: must be >= 1, got 0", "hpo validate: 2 problem(s)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "s.yaml"])  # nothing written


def test_validate_reads_a_retraining_specs_data_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "all.csv").write_text("sentence,label\n" + ROWS)
    f = tmp_path / "r.yaml"
    f.write_text(
        "kind: retrain\nmodel: {name: minilm}\ndata: {source: all.csv, text: txt}\nstrategy: {name: full}\n"
    )
    assert main(["validate", str(f)]) == 1
    assert f"{f}: data: all.csv: column 'txt' not found" in capsys.readouterr().err


def test_validate_of_local_data_imports_no_torch_and_notes_hub_data(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    _data_study(good, "all.csv", ("text,label\n" + ROWS).encode())
    (good / "s.yaml").write_text((good / "s.yaml").read_text().replace("n_trials: 0", "n_trials: 2"))
    hub = tmp_path / "hub.yaml"
    hub.write_text(
        "name: h\nmodel: minilm\ndata: {source: someone/some-dataset}\nspace: {strategy: [full]}\n"
    )
    code = (
        "import sys; from hpo.cli import main; "
        f"rc = main(['validate', {str(good / 's.yaml')!r}, {str(hub)!r}]); "
        "assert rc == 0, rc; bad = [m for m in ('torch', 'transformers', 'ray', 'datasets') if m in sys.modules]; "
        "assert not bad, bad"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "data: hub dataset 'someone/some-dataset' not read (hpo validate does not download)" in proc.stdout


def test_run_still_reports_a_data_error_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = _data_study(tmp_path, "all.csv", ("sentence,label\n" + ROWS).encode(), text="txt")
    f.write_text(f.read_text().replace("n_trials: 0", "n_trials: 1"))
    assert main(["run", str(f), "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hpo run: error: all.csv: column 'txt' not found (columns: sentence, label)"]
    assert not (tmp_path / "x.db").exists()
