"""The benchmark scripts run end to end on a tiny model and write well-formed JSON.

Timings are never asserted (benchmarks/RESULTS.md holds the measured figures).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_bert

ROOT = Path(__file__).resolve().parent.parent
SST2 = ROOT.parent / "shared" / "data" / "sst2"
# Tiny models, 48 sentences: about 10 s on 2 idle cores (not marked slow).
pytestmark = pytest.mark.skipif(not (SST2 / "train.tsv").exists(), reason="SST-2 not in ../shared/data")

sys.path.insert(0, str(ROOT))

SUMMARY_KEYS = {
    "best_accuracy",
    "best_trial",
    "best_params",
    "n_trials",
    "complete",
    "pruned",
    "failed",
    "trial_seconds",
    "setup_seconds",
    "compute_seconds",
    "wall_seconds",
    "seconds_to_within_0.5pt_of_own_best",
    "load_average",
    "trials",
}


@pytest.fixture(scope="module")
def tiny4_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer tiny BERT (the shipped spaces allow 4 top layers)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny4-bert"), num_layers=4)


def _tiny_args(model: Path, out: Path, n_trials: int) -> list[str]:
    return [
        "--quick",
        "--model",
        str(model),
        "--data",
        str(SST2),
        "--train-limit",
        "48",
        "--validation-limit",
        "32",
        "--max-length",
        "16",
        "--n-trials",
        str(n_trials),
        "--out",
        str(out),
    ]


def _check_trials(rows: list[dict], n: int) -> None:
    assert len(rows) == n
    for r in rows:
        assert {"number", "state", "value", "params", "seconds", "intermediate"} <= set(r)
        assert r["state"] in ("COMPLETE", "PRUNED", "FAIL")


def test_vs_trainer_search_quick(tiny_model_dir: Path, tmp_path: Path) -> None:
    from benchmarks import vs_trainer_search

    out = tmp_path / "vs.json"
    assert vs_trainer_search.main(_tiny_args(tiny_model_dir, out, 2)) == 0
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "vs_trainer_search" and doc["mode"] == "quick"
    assert {"machine", "versions", "config", "methods", "comparison", "command"} <= set(doc)
    for name in ("trainer_search", "hpo"):
        m = doc["methods"][name]
        assert SUMMARY_KEYS <= set(m), SUMMARY_KEYS - set(m)
        _check_trials(m["trials"], 2)
        assert m["failed"] == 0
        assert 0.0 <= m["best_accuracy"] <= 1.0
        assert m["compute_seconds"] >= m["trial_seconds"] > 0
    c = doc["comparison"]
    assert {
        "compute_ratio_hpo_over_peer",
        "best_accuracy_diff_points",
        "hpo_equal_or_better",
        "common_target_accuracy",
        "peer_seconds_to_common_target",
        "hpo_seconds_to_common_target",
    } <= set(c)
    w = doc["work"]
    for name in ("trainer_search", "hpo"):
        assert w[name]["train_examples"] > 0 and w[name]["evaluations"] >= 1
    assert "train_examples_ratio_hpo_over_peer" in w
    # Both methods trained on exactly the same rows.
    assert c["same_rows"] is True
    assert doc["methods"]["hpo"]["data_fingerprint"]


def test_space_card_vs_aware_quick(tiny4_model_dir: Path, tmp_path: Path) -> None:
    from benchmarks import space_card_vs_aware

    out = tmp_path / "spaces.json"
    assert space_card_vs_aware.main(_tiny_args(tiny4_model_dir, out, 3)) == 0
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "space_card_vs_aware" and doc["mode"] == "quick"
    assert set(doc["spaces"]) == {"default", "strategy-aware"}
    for space, r in doc["spaces"].items():
        assert SUMMARY_KEYS <= set(r)
        _check_trials(r["trials"], 3)
        assert sum(s["trials"] for s in r["by_strategy"].values()) == 3
        assert doc["overall"][space]["best_accuracy"] == r["best_accuracy"]
    for strategy, row in doc["best_by_strategy"].items():
        assert strategy in ("full", "partial", "adapter", "lora", "prompt")
        assert set(row) == {"default", "strategy-aware"}
    assert doc["winner"] in ("default", "strategy-aware", None)


def test_vs_trainer_search_ablation_reuses_the_peer(tiny_model_dir: Path, tmp_path: Path) -> None:
    """--hpo-set changes hpo's study file; --peer-from takes the peer's figures from a result file."""
    from benchmarks import vs_trainer_search

    first = tmp_path / "vs.json"
    assert vs_trainer_search.main(_tiny_args(tiny_model_dir, first, 1)) == 0
    peer = json.loads(first.read_text())["methods"]["trainer_search"]
    out = tmp_path / "ablation.json"
    args = _tiny_args(tiny_model_dir, out, 1) + [
        "--peer-from",
        str(first),
        "--hpo-set",
        "sampler.skip_repeats=null",
        "--hpo-set",
        "objective.select=last",
    ]
    assert vs_trainer_search.main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["methods"]["trainer_search"] == peer
    assert doc["config"]["order"] == ["hpo"] and doc["config"]["peer_from"] == str(first)
    study = doc["methods"]["hpo"]["study_file"]
    assert "skip_repeats: null" in study and "select: last" in study
    assert (
        "hpo study changed: `sampler.skip_repeats=null, objective.select=last`"
        in vs_trainer_search.markdown(doc)
    )
    # A result file from another configuration is refused.
    with pytest.raises(SystemExit, match="--peer-from"):
        vs_trainer_search.main(_tiny_args(tiny_model_dir, out, 2) + ["--peer-from", str(first)])


def test_cv_vs_holdout_quick(tiny_model_dir: Path, tmp_path: Path) -> None:
    from benchmarks import cv_vs_holdout

    out = tmp_path / "cv.json"
    argv = ["--quick", "--model", str(tiny_model_dir), "--data", str(SST2), "--out", str(out)]
    assert cv_vs_holdout.main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "cv_vs_holdout" and doc["mode"] == "quick"
    (seed,) = doc["seeds"]
    for name in ("holdout", "cv"):
        m = seed[name]
        assert 0.0 <= m["test_accuracy"] <= 1.0 and m["test_rows"] == 32
        assert m["retrain_train_rows"] == 48  # both choices retrained on every pooled row
        assert len(m["trial_scores"]) == 2 and m["search_trial_seconds"] > 0
    assert len(seed["cv"]["chosen_params"]) and seed["cv"]["chosen_fold_std"] is not None
    assert "| mean |" in cv_vs_holdout.markdown(doc)
    merged = cv_vs_holdout.merge([str(out), str(out)])  # single-seed runs side by side -> one
    assert len(merged["seeds"]) == 2 and merged["summary"]["cv_test_mean"] == doc["summary"]["cv_test_mean"]
    assert merged["summary"]["same_choice"] == 2 * doc["summary"]["same_choice"]


def test_warm_start_quick(tiny_model_dir: Path, tmp_path: Path) -> None:
    from benchmarks import warm_start

    out = tmp_path / "warm.json"
    argv = ["--quick", "--model", str(tiny_model_dir), "--data", str(SST2), "--out", str(out)]
    assert warm_start.main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "warm_start" and doc["mode"] == "quick"
    assert len(doc["subset"]["trials"]) == 2
    warm, cold = doc["warm"]["trials"], doc["cold"]["trials"]
    assert len(warm) == len(cold) == 2
    # the warm study's first trial is the subset's best, the cold study's is sampled
    best_subset = max(
        (t for t in doc["subset"]["trials"] if t["value"] is not None), key=lambda t: t["value"]
    )
    assert warm[0]["warm_start_of"] == best_subset["number"] and "warm_start_of" not in cold[0]
    assert warm[0]["params"]["learning_rate"] == best_subset["params"]["learning_rate"]
    assert "| warm (top 1 of subset first) |" in warm_start.markdown(doc)
    seeds = warm_start.seeds_markdown([doc, doc])  # one row per seed, then the means
    gain = doc["warm"]["best_accuracy"] - doc["cold"]["best_accuracy"]
    lines = seeds.splitlines()
    assert [ln.split(" | ")[0] for ln in lines[2:]] == ["| 0", "| 0", "| mean"]  # the seed column
    assert lines[-1].startswith(f"| mean | {doc['subset']['best_accuracy']:.4f} |")
    assert f"{gain:+.4f} |" in lines[-1]


@pytest.mark.slow
def test_chaos_quick_counts_every_trial_from_the_database(tmp_path: Path) -> None:
    """Workers on a throwaway PostgreSQL through a kill, a database restart and a full disk:
    nothing lost, duplicated or left RUNNING (a minute of trials plus the workers' start-up)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from pgserver import unavailable

    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no throwaway PostgreSQL: {reason}")
    from benchmarks import chaos

    out = tmp_path / "chaos.json"
    assert chaos.main(["--quick", "--workers", "2", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["mode"] == "quick" and doc["faults"]["database_restarts"] == 1
    assert doc["trials_started"] >= 1 and doc["complete"] + doc["pruned"] >= 1
    assert doc["lost"] == 0 and doc["duplicated"] == 0 and doc["left_running"] == 0
    assert doc["tracebacks_in_worker_logs"] == 0
    assert sum(doc["failed_by_reason"].values()) == doc["failed"]
