"""Warm start: a study on the full data warm-started from one on a 10% subset, against a cold
start at the same trial budget.

- data: ``--rows`` sentences drawn (seeded, stratified) from SST-2's train.tsv, written with
  the GLUE dev set as validation (``--validation-limit`` rows of it) to a folder outside the
  repository; the *subset* study reads ``data.train_limit`` = 10% of them;
- **subset**: ``hpo run`` on the subset, ``--subset-trials`` trials (cheap: a tenth of the rows);
- **warm**: the full-data study, ``--warm-start subset --top K``, ``--n-trials`` trials (the K
  best subset configurations first, then the sampler);
- **cold**: the same full-data study without a warm start, same ``--n-trials``.

Both full-data studies use the same sampler and seed. Reported: each study's best validation
accuracy, the best after each trial (anytime curve), and compute (the trials' wall time as
Optuna stored it; the warm start's cost is the subset study's, reported on its own and added).

Usage::

    python benchmarks/warm_start.py                          # full size (see RESULTS.md)
    python benchmarks/warm_start.py --quick --model DIR      # smoke test on a tiny model
    python benchmarks/warm_start.py --markdown benchmarks/results/warm_start.json
"""

from __future__ import annotations

import argparse
import json
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
    resolve_model,
    start_run,
    trial_rows,
    versions,
    write_json,
)

SPACE = {
    "strategy": ["full", "lora"],
    "learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
    "per_device_train_batch_size": [16],
    "strategies": {"lora": {"r": [4, 8, 16]}},
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: tiny sizes")
    p.add_argument("--model", default="minilm")
    p.add_argument("--data", default=str(SST2_DIR), help="folder with SST-2's train.tsv and dev.tsv")
    p.add_argument("--rows", type=int, default=240, help="full-data training rows")
    p.add_argument("--subset", type=float, default=0.1, help="share of the rows the subset study sees")
    p.add_argument("--validation-limit", type=int, default=100)
    p.add_argument("--subset-trials", type=int, default=6)
    p.add_argument("--n-trials", type=int, default=4, help="trials of each full-data study")
    p.add_argument("--top", type=int, default=2, help="subset trials enqueued by the warm start")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS_DIR / "warm_start.json"))
    p.add_argument(
        "--markdown",
        metavar="JSON",
        nargs="+",
        help="print the RESULTS.md table of a result file (of several: one row per seed and the means) and exit",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.rows, a.validation_limit, a.subset_trials, a.n_trials = 40, 16, 2, 2
        a.top, a.epochs, a.max_length, a.subset = 1, 1.0, 16, 0.5
    return a


def write_data(a: argparse.Namespace, folder: Path) -> None:
    """``train.tsv``: the seeded, stratified full-data rows; ``dev.tsv``: GLUE dev (validation)."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    src = Path(a.data)
    train = pd.read_csv(src / "train.tsv", sep="\t", quoting=3, keep_default_na=False)
    _, rows = train_test_split(train, test_size=a.rows, random_state=a.seed, stratify=train["label"])
    folder.mkdir(parents=True, exist_ok=True)
    rows.to_csv(folder / "train.tsv", sep="\t", index=False)
    (folder / "dev.tsv").write_bytes((src / "dev.tsv").read_bytes())


def study_file(
    a: argparse.Namespace, workdir: Path, name: str, data_dir: Path, train_limit: int | None
) -> Path:
    from hpo._yaml import dump_yaml

    data: dict[str, Any] = {
        "source": str(data_dir),
        "text": "sentence",
        "label": "label",
        "validation_limit": a.validation_limit,
        "max_length": a.max_length,
    }
    if train_limit is not None:
        data["train_limit"] = train_limit
    study = {
        "name": name,
        "model": resolve_model(a.model),
        "data": data,
        "space": SPACE,
        "objective": {"metric": "accuracy"},
        "budget": {"max_epochs": a.epochs, "evals_per_epoch": 1},
        "sampler": {"name": "tpe", "seed": a.seed, "n_startup_trials": 2},
        "pruner": {"name": "none"},
        "seed": a.seed,
    }
    path = workdir / f"{name}.yaml"
    path.write_text(dump_yaml(study))
    return path


def run_study(path: Path, url: str, n_trials: int, extra: list[str]) -> dict[str, Any]:
    import optuna

    from hpo.cli import main

    argv = ["run", str(path), "--storage", url, "--n-trials", str(n_trials), *extra]
    with LoadSampler() as load, Stopwatch() as sw:
        rc = main(argv)
    if rc != 0:
        raise SystemExit(f"hpo {' '.join(argv)} exited {rc}")
    study = optuna.load_study(study_name=path.stem, storage=url)
    rows = trial_rows(study)
    for r, t in zip(rows, sorted(study.trials, key=lambda t: t.number), strict=True):
        if "warm_start_of" in t.user_attrs:
            r["warm_start_of"] = t.user_attrs["warm_start_of"]["trial"]
            r["warm_start_changes"] = t.user_attrs.get("warm_start_changes")
    best_so_far, curve = None, []
    for r in rows:
        if r["state"] == "COMPLETE" and r["value"] is not None:
            best_so_far = r["value"] if best_so_far is None else max(best_so_far, r["value"])
        curve.append(best_so_far)
    return {
        "best_accuracy": max((v for v in curve if v is not None), default=None),
        "best_after_each_trial": curve,
        "trial_seconds": round(sum(r["seconds"] or 0.0 for r in rows), 1),
        "wall_seconds": round(sw.seconds, 1),
        "load_average": load.summary(),
        "trials": rows,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.markdown:
        docs = [json.loads(Path(f).read_text()) for f in a.markdown]
        print(markdown(docs[0]) if len(docs) == 1 else seeds_markdown(docs))
        return 0
    started = now_iso()
    workdir, url = start_run("hpo-warm-")
    data_dir = workdir / "data"
    write_data(a, data_dir)
    n_subset = max(2, round(a.subset * a.rows))
    subset = run_study(study_file(a, workdir, "subset", data_dir, n_subset), url, a.subset_trials, [])
    print(
        f"subset ({n_subset} rows): best {subset['best_accuracy']}, {subset['trial_seconds']} s", flush=True
    )
    full_path = study_file(a, workdir, "warm", data_dir, None)
    warm = run_study(full_path, url, a.n_trials, ["--warm-start", "subset", "--top", str(a.top)])
    print(f"warm: best {warm['best_accuracy']}, {warm['trial_seconds']} s", flush=True)
    cold = run_study(study_file(a, workdir, "cold", data_dir, None), url, a.n_trials, [])
    print(f"cold: best {cold['best_accuracy']}, {cold['trial_seconds']} s", flush=True)
    doc = {
        "benchmark": "warm_start",
        "mode": "quick" if a.quick else "full",
        "started": started,
        "finished": now_iso(),
        "command": "python benchmarks/warm_start.py " + " ".join(argv),
        "machine": machine(),
        "versions": versions(),
        "config": {
            "model": a.model,
            "rows": a.rows,
            "subset_rows": n_subset,
            "validation_limit": a.validation_limit,
            "subset_trials": a.subset_trials,
            "n_trials": a.n_trials,
            "top": a.top,
            "epochs": a.epochs,
            "max_length": a.max_length,
            "seed": a.seed,
            "space": SPACE,
        },
        "subset": subset,
        "warm": warm,
        "cold": cold,
    }
    write_json(Path(a.out), doc)
    print(markdown(doc))
    return 0


def markdown(doc: dict[str, Any]) -> str:
    c = doc["config"]
    s, w, k = doc["subset"], doc["warm"], doc["cold"]

    def curve(m: dict[str, Any]) -> str:
        return " → ".join("-" if v is None else f"{v:.3f}" for v in m["best_after_each_trial"])

    return "\n".join(
        [
            "| study | rows | trials | best val acc | best after each trial | trial s |",
            "|---|---|---|---|---|---|",
            f"| subset | {c['subset_rows']} | {c['subset_trials']} | {s['best_accuracy']:.4f} | {curve(s)} | "
            f"{s['trial_seconds']:.0f} |",
            f"| warm (top {c['top']} of subset first) | {c['rows']} | {c['n_trials']} | {w['best_accuracy']:.4f} | "
            f"{curve(w)} | {w['trial_seconds']:.0f} (+{s['trial_seconds']:.0f} subset) |",
            f"| cold | {c['rows']} | {c['n_trials']} | {k['best_accuracy']:.4f} | {curve(k)} | "
            f"{k['trial_seconds']:.0f} |",
        ]
    )


def seeds_markdown(docs: list[dict[str, Any]]) -> str:
    """One row per result file (a seed): warm against cold, best accuracy and trial seconds; then
    the means."""
    rows = [
        (
            d["subset"]["best_accuracy"],
            d["warm"]["best_accuracy"],
            d["cold"]["best_accuracy"],
            d["warm"]["best_accuracy"] - d["cold"]["best_accuracy"],
            d["warm"]["trial_seconds"],
            d["subset"]["trial_seconds"],
            d["cold"]["trial_seconds"],
        )
        for d in docs
    ]

    def line(label: Any, v: tuple[float, ...]) -> str:
        return (
            f"| {label} | {v[0]:.4f} | {v[1]:.4f} | {v[2]:.4f} | {v[3]:+.4f} | {v[4]:.0f} (+{v[5]:.0f}) | "
            f"{v[6]:.0f} |"
        )

    means = tuple(sum(col) / len(rows) for col in zip(*rows, strict=True))
    return "\n".join(
        [
            "| seed | subset best | warm best | cold best | warm - cold | warm s (+ subset s) | cold s |",
            "|---|---|---|---|---|---|---|",
            *(line(d["config"]["seed"], r) for d, r in zip(docs, rows, strict=True)),
            line("mean", means),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
