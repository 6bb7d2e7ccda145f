"""Small data: the configuration chosen by 5-fold cross-validation vs the one chosen by a single
validation split, judged on a held-out test split, over several seeds.

Per seed ``s``:

- a data folder outside the repository: ``train.tsv`` = ``--pool`` sentences drawn (seed ``s``,
  stratified) from SST-2's train.tsv, ``test.tsv`` = the GLUE dev set (872 labelled sentences
  that neither method ever sees while searching);
- **holdout**: ``hpo run`` with the validation split carved from the pool (``--validation-size``);
- **cv**: the same study with ``evaluation: {folds: K}`` (the pool is the train + validation
  rows, cut into K stratified folds);
- both studies use the same sampler and seed, so they propose the *same* configurations: the
  only difference is how each configuration is scored, hence which one is chosen;
- the chosen configuration of each is exported and retrained (``hpo retrain``) the same way, on
  every pooled row (the holdout's with ``--set evaluation.folds=K``), so the test accuracies
  differ only by the configuration chosen; both are evaluated on test.

Compute: the trials' wall time as Optuna stored it (the search), and the retrain on its own.

Usage::

    python benchmarks/cv_vs_holdout.py --seeds 0 1 2         # full size (see RESULTS.md)
    python benchmarks/cv_vs_holdout.py --quick --model DIR   # smoke test on a tiny model
    python benchmarks/cv_vs_holdout.py --markdown benchmarks/results/cv_vs_holdout.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RESULTS_DIR,
    SST2_DIR,
    LoadSampler,
    Stopwatch,
    machine,
    now_iso,
    start_run,
    trial_rows,
    versions,
    write_json,
)

SPACE = {
    "strategy": ["full"],
    "learning_rate": {"low": 1.0e-5, "high": 5.0e-4, "log": True},
    "per_device_train_batch_size": [16],
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny sizes")
    p.add_argument("--model", default="minilm")
    p.add_argument("--data", default=str(SST2_DIR), help="folder with SST-2's train.tsv and dev.tsv")
    p.add_argument("--pool", type=int, default=200, help="labelled rows of the small-data setting")
    p.add_argument(
        "--validation-size", type=float, default=0.2, help="holdout: share of the pool validated on"
    )
    p.add_argument("--test-limit", type=int, default=None, help="test rows (default: all of dev.tsv)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--n-trials", type=int, default=6)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=str(RESULTS_DIR / "cv_vs_holdout.json"))
    p.add_argument("--markdown", metavar="JSON", help="print the RESULTS.md table of a result file and exit")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="combine single-seed result files into --out")
    a = p.parse_args(argv)
    if a.quick:
        a.pool, a.n_trials, a.epochs, a.max_length, a.folds = min(a.pool, 48), min(a.n_trials, 2), 1.0, 16, 3
        a.seeds, a.test_limit = a.seeds[:1], a.test_limit or 32
    return a


def write_data(a: argparse.Namespace, seed: int, folder: Path) -> None:
    """``train.tsv``: the seed's stratified sample of the pool; ``test.tsv``: dev.tsv (or a sample)."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    src = Path(a.data)
    train = pd.read_csv(src / "train.tsv", sep="\t", quoting=3, keep_default_na=False)
    _, pool = train_test_split(train, test_size=a.pool, random_state=seed, stratify=train["label"])
    test = pd.read_csv(src / "dev.tsv", sep="\t", quoting=3, keep_default_na=False)
    if a.test_limit and a.test_limit < len(test):
        _, test = train_test_split(test, test_size=a.test_limit, random_state=seed, stratify=test["label"])
    folder.mkdir(parents=True, exist_ok=True)
    pool.to_csv(folder / "train.tsv", sep="\t", index=False)
    test.to_csv(folder / "test.tsv", sep="\t", index=False)


def study_dict(a: argparse.Namespace, seed: int, data_dir: Path, folds: int | None) -> dict[str, Any]:
    from _common import resolve_model

    out: dict[str, Any] = {
        "name": f"{'cv' if folds else 'holdout'}-{seed}",
        "model": resolve_model(a.model),
        "data": {
            "source": str(data_dir),
            "text": "sentence",
            "label": "label",
            "validation_size": a.validation_size,
            "max_length": a.max_length,
        },
        "space": SPACE,
        "objective": {"metric": "accuracy"},
        "budget": {"n_trials": a.n_trials, "max_epochs": a.epochs, "evals_per_epoch": 1},
        "sampler": {"name": "random", "seed": seed},
        "pruner": {"name": "none"},
        "seed": seed,
    }
    if folds:
        out["evaluation"] = {"folds": folds}
    return out


def run_method(
    a: argparse.Namespace, seed: int, folds: int | None, workdir: Path, url: str, data_dir: Path
) -> dict[str, Any]:
    """Search, export the chosen trial, retrain it and evaluate on test."""
    from hpo._yaml import dump_yaml
    from hpo.config import load_study
    from hpo.drivers.worker import run_worker
    from hpo.export import export_trial
    from hpo.retrain import retrain

    spec_dict = study_dict(a, seed, data_dir, folds)
    path = workdir / f"{spec_dict['name']}.yaml"
    path.write_text(dump_yaml(spec_dict))
    with LoadSampler() as load, Stopwatch() as search:
        study = run_worker(load_study(path), url, n_trials=a.n_trials, timeout=None, quiet=True)
    rows = trial_rows(study)
    best = study.best_trial
    exported = export_trial(url, study.study_name, workdir / f"{study.study_name}-best.yaml")
    with Stopwatch() as rt:
        # the same training rows for both choices: every pooled row
        pooled = None if folds else {"evaluation.folds": a.folds}
        result = retrain(exported, workdir / f"{study.study_name}-run", pooled, quiet=True)
    metrics = json.loads((workdir / f"{study.study_name}-run" / "metrics.json").read_text())
    return {
        "study": study.study_name,
        "chosen_trial": best.number,
        "chosen_params": dict(best.params),
        "chosen_score": best.value,
        "chosen_fold_std": best.user_attrs.get("fold_std"),
        "test_accuracy": result.test["accuracy"],
        "trial_scores": [r["value"] for r in rows],
        "search_trial_seconds": round(sum(r["seconds"] or 0.0 for r in rows), 1),
        "search_wall_seconds": round(search.seconds, 1),
        "retrain_seconds": round(rt.seconds, 1),
        "retrain_train_rows": metrics["data"]["train"] + metrics["data"]["validation"],
        "test_rows": metrics["data"]["test"],
        "train_steps": sum(int(t.user_attrs.get("steps", 0)) for t in study.trials),
        "load_average": load.summary(),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.markdown:
        print(markdown(json.loads(Path(a.markdown).read_text())))
        return 0
    if a.merge:
        doc = merge(a.merge)
        write_json(Path(a.out), doc)
        print(markdown(doc))
        return 0
    started = now_iso()
    workdir, url = start_run("hpo-cv-")
    seeds: list[dict[str, Any]] = []
    for seed in a.seeds:
        data_dir = workdir / f"data-{seed}"
        write_data(a, seed, data_dir)
        row: dict[str, Any] = {"seed": seed}
        for name, folds in (("holdout", None), ("cv", a.folds)):
            row[name] = run_method(a, seed, folds, workdir, url, data_dir)
            print(
                f"seed {seed} {name}: chose trial {row[name]['chosen_trial']} "
                f"(score {row[name]['chosen_score']:.4f}) test {row[name]['test_accuracy']:.4f}, "
                f"search {row[name]['search_trial_seconds']:.0f} s",
                flush=True,
            )
        row["same_choice"] = row["holdout"]["chosen_trial"] == row["cv"]["chosen_trial"]
        seeds.append(row)
        doc = document(a, argv, started, seeds)
        write_json(Path(a.out), doc)  # after every seed: a long run that stops keeps what it did
    print(markdown(doc))
    return 0


def summarize(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the seeds: test accuracy of each choice, their difference, compute ratio."""

    def mean(name: str, key: str) -> float:
        return round(statistics.fmean(s[name][key] for s in seeds), 4)

    return {
        "holdout_test_mean": mean("holdout", "test_accuracy"),
        "cv_test_mean": mean("cv", "test_accuracy"),
        "cv_minus_holdout_points": round(
            100 * statistics.fmean(s["cv"]["test_accuracy"] - s["holdout"]["test_accuracy"] for s in seeds), 2
        ),
        "same_choice": sum(s["same_choice"] for s in seeds),
        "search_compute_ratio_cv_over_holdout": round(
            sum(s["cv"]["search_trial_seconds"] for s in seeds)
            / max(1e-9, sum(s["holdout"]["search_trial_seconds"] for s in seeds)),
            2,
        ),
    }


def document(
    a: argparse.Namespace, argv: list[str], started: str, seeds: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "benchmark": "cv_vs_holdout",
        "mode": "quick" if a.quick else "full",
        "started": started,
        "finished": now_iso(),
        "command": "python benchmarks/cv_vs_holdout.py " + " ".join(argv),
        "machine": machine(),
        "versions": versions(),
        "config": {
            "model": a.model,
            "pool": a.pool,
            "validation_size": a.validation_size,
            "folds": a.folds,
            "n_trials": a.n_trials,
            "epochs": a.epochs,
            "max_length": a.max_length,
            "seeds": a.seeds,
            "space": SPACE,
        },
        "seeds": seeds,
        "summary": summarize(seeds),
    }


def merge(paths: list[str]) -> dict[str, Any]:
    """One result from runs of single seeds (run side by side as separate processes)."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    keep = {k: v for k, v in docs[0]["config"].items() if k != "seeds"}
    for p, d in zip(paths, docs, strict=True):
        if {k: v for k, v in d["config"].items() if k != "seeds"} != keep:
            raise SystemExit(f"--merge: {p} was run with another configuration")
    seeds = sorted((s for d in docs for s in d["seeds"]), key=lambda s: s["seed"])
    out = dict(docs[0])
    out["config"] = {**keep, "seeds": [s["seed"] for s in seeds]}
    out["command"] = [d["command"] for d in docs]
    out["started"] = min(d["started"] for d in docs)
    out["finished"] = max(d["finished"] for d in docs)
    out["seeds"] = seeds
    out["summary"] = summarize(seeds)
    return out


def markdown(doc: dict[str, Any]) -> str:
    c = doc["config"]
    lines = [
        f"| seed | holdout: chosen trial (val acc) | holdout test acc | {c['folds']}-fold: chosen trial "
        "(mean ± std) | CV test acc | search s holdout / CV | retrain s holdout / CV |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in doc["seeds"]:
        h, v = s["holdout"], s["cv"]
        std = f" ± {v['chosen_fold_std']:.3f}" if v.get("chosen_fold_std") is not None else ""
        lines.append(
            f"| {s['seed']} | #{h['chosen_trial']} ({h['chosen_score']:.3f}) | {h['test_accuracy']:.4f} | "
            f"#{v['chosen_trial']} ({v['chosen_score']:.3f}{std}) | {v['test_accuracy']:.4f} | "
            f"{h['search_trial_seconds']:.0f} / {v['search_trial_seconds']:.0f} | "
            f"{h['retrain_seconds']:.0f} / {v['retrain_seconds']:.0f} |"
        )
    m = doc["summary"]
    lines.append(
        f"| mean | | {m['holdout_test_mean']:.4f} | | {m['cv_test_mean']:.4f} | "
        f"CV x{m['search_compute_ratio_cv_over_holdout']} | |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
