"""The product card's space (search_spaces/default.yaml) against strategy-aware.yaml.

Both spaces search the same five strategies (full, partial, adapter, LoRA, prompt) on the
same data with the same trial budget, sampler seed and hpo defaults (pruner, evaluations per
epoch); they differ only in the learning-rate range each strategy may use. Full run: MiniLM,
1,000 seeded SST-2 training sentences, dev.tsv for validation, 64 tokens, 1 epoch, 10 trials
per space (5 minutes on 2 idle CPU cores; budgeted for ~25 under load). Reported: best accuracy per strategy and overall,
trials per strategy, pruned trials, compute seconds.

    python benchmarks/space_card_vs_aware.py            # full run
    python benchmarks/space_card_vs_aware.py --quick    # smoke test

``--pruning`` measures ``pruner.compare`` instead: the strategy-aware space twice, once with
today's pruning (``compare: value``, every trial against every trial) and once with
``compare: strategy`` (a trial against the trials of its own strategy only); everything else
identical. Results go to ``space_pruning_compare.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    RESULTS_DIR,
    SST2_DIR,
    LoadSampler,
    Stopwatch,
    now_iso,
    run_header,
    start_run,
    summarize,
    trial_rows,
    write_json,
)

SPACES = ("default", "strategy-aware")
PRUNING = ("value", "strategy")
"""``--pruning``: the ``pruner.compare`` settings measured on the strategy-aware space."""


def runs(a: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(column key, space, pruner.compare) of each study the run makes, in order."""
    if a.pruning:
        return [(f"compare-{c}", "strategy-aware", c) for c in PRUNING if a.setting in (None, c)]
    return [(space, space, "value") for space in SPACES]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny subset, 3 trials per space")
    p.add_argument("--model", default="minilm", help="minilm (the packaged MiniLM) or a model folder")
    p.add_argument("--data", default=str(SST2_DIR), help="folder with train.tsv and dev.tsv")
    p.add_argument("--train-limit", type=int, default=None, help="training sentences (1000; quick 64)")
    p.add_argument("--validation-limit", type=int, default=None, help="dev sentences (all; quick 64)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per sentence (64; quick 32)")
    p.add_argument("--epochs", type=float, default=1.0, help="epochs per trial")
    p.add_argument("--n-trials", type=int, default=None, help="trials per space (10; quick 3)")
    p.add_argument("--seed", type=int, default=0, help="sampler, data and training seed")
    p.add_argument("--out", type=Path, default=None, help="JSON result file")
    p.add_argument(
        "--pruning", action="store_true", help="pruner.compare value vs strategy on the strategy-aware space"
    )
    p.add_argument(
        "--setting",
        choices=PRUNING,
        default=None,
        help="with --pruning: run this pruner.compare setting only (two processes side by side; "
        "--markdown A.json B.json merges them)",
    )
    a = p.parse_args(argv)
    q = a.quick
    a.train_limit = a.train_limit or (64 if q else 1000)
    a.validation_limit = a.validation_limit or (64 if q else None)
    a.max_length = a.max_length or (32 if q else 64)
    a.n_trials = a.n_trials or (3 if q else 10)
    stem = "space_pruning_compare" if a.pruning else "space_card_vs_aware"
    stem += f"_{a.setting}" if a.setting else ""
    a.out = a.out or RESULTS_DIR / (f"{stem}_quick.json" if q else f"{stem}.json")
    return a


def study_yaml(a: argparse.Namespace, space: str, key: str | None = None, compare: str = "value") -> str:
    """One study per space (or pruner.compare setting); everything else identical."""
    import yaml

    data: dict[str, Any] = {
        "source": str(Path(a.data).resolve()),
        "text": "sentence",
        "label": "label",
        "train_limit": a.train_limit,
        "validation": "dev.tsv",
        "max_length": a.max_length,
    }
    if a.validation_limit:
        data["validation_limit"] = a.validation_limit
    study = {
        "name": f"space-{key or space}",
        "task": "sequence-classification",
        "model": a.model,
        "data": data,
        "space": space,
        "objective": {"metric": "accuracy", "direction": "maximize"},
        "budget": {"n_trials": a.n_trials, "max_epochs": a.epochs},
        "sampler": {"name": "tpe", "seed": a.seed},
        "seed": a.seed,
    }
    if compare != "value":
        study["pruner"] = {"name": "hyperband", "compare": compare}
    return yaml.safe_dump(study, sort_keys=False)


def per_strategy(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Best complete value, trial counts and compute per strategy."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = r["params"].get("strategy", "?")
        d = out.setdefault(
            s,
            {
                "trials": 0,
                "complete": 0,
                "pruned": 0,
                "failed": 0,
                "best_accuracy": None,
                "best_trial": None,
                "best_params": None,
                "trial_seconds": 0.0,
            },
        )
        d["trials"] += 1
        d["trial_seconds"] = round(d["trial_seconds"] + (r["seconds"] or 0.0), 1)
        if r["state"] == "COMPLETE" and r["value"] is not None:
            d["complete"] += 1
            if d["best_accuracy"] is None or r["value"] > d["best_accuracy"]:
                d["best_accuracy"], d["best_trial"], d["best_params"] = r["value"], r["number"], r["params"]
        elif r["state"] == "PRUNED":
            d["pruned"] += 1
        elif r["state"] == "FAIL":
            d["failed"] += 1
    return dict(sorted(out.items()))


def run_space(
    a: argparse.Namespace, space: str, storage_url: str, workdir: Path, key: str | None = None, compare: str = "value"
) -> dict[str, Any]:
    import optuna

    from hpo.cli import main as hpo_main

    key = key or space
    study_file = workdir / f"study-{key}.yaml"
    study_file.write_text(study_yaml(a, space, key, compare))
    with Stopwatch() as wall, LoadSampler() as load:
        rc = hpo_main(["run", str(study_file), "--storage", storage_url])
    if rc != 0:
        raise RuntimeError(f"hpo run exited {rc} for {key}")
    study = optuna.load_study(study_name=f"space-{key}", storage=storage_url)
    rows = trial_rows(study)
    trial_seconds = sum(r["seconds"] or 0.0 for r in rows)
    out = summarize(rows, max(0.0, wall.seconds - trial_seconds), wall.seconds)
    out.update(
        space=space,
        pruner_compare=compare,
        by_strategy=per_strategy(rows),
        load_average=load.summary(),
        study_file=study_file.read_text(),
        trials=rows,
    )
    return out


def markdown(doc: dict[str, Any]) -> str:
    """The results tables of one run, for benchmarks/RESULTS.md."""

    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    cfg, sp = doc["config"], doc["spaces"]
    keys = list(sp)
    lines = [
        f"{doc['machine']['cpu']}, {doc['machine']['cores']} cores; {doc['started']} .. {doc['finished']}; "
        f"{cfg['train_limit']:,} train sentences, dev.tsv, {cfg['epochs']:g} epoch, {cfg['n_trials']} trials "
        f"per space, max_length {cfg['max_length']}, TPE seed {cfg['seed']}, hpo's default pruner.",
        "",
        "| strategy | " + " | ".join(f"{s}: best (trials, pruned)" for s in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for strategy in doc["best_by_strategy"]:
        cells = []
        for space in keys:
            d = sp[space]["by_strategy"].get(strategy)
            cells.append(
                "not sampled" if d is None else f"{pct(d['best_accuracy'])} ({d['trials']}, {d['pruned']})"
            )
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    lines.append(
        "| **overall** | "
        + " | ".join(
            f"**{pct(sp[s]['best_accuracy'])}** ({(sp[s]['best_params'] or {}).get('strategy')}; "
            f"{sp[s]['compute_seconds']:,.0f} s, load {sp[s]['load_average']['mean']})"
            for s in keys
        )
        + " |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--markdown"]:
        import json

        docs = [json.loads(Path(f).read_text()) for f in argv[1:]]
        doc = docs[0]
        for other in docs[1:]:  # one setting per file (--setting): side by side
            doc["spaces"].update(other["spaces"])
            for strategy, cells in other["best_by_strategy"].items():
                doc["best_by_strategy"].setdefault(strategy, {}).update(cells)
            doc["finished"] = max(doc["finished"], other["finished"])
        print(markdown(doc))
        return 0
    a = parse_args(argv)
    workdir, storage_url = start_run()
    started = now_iso()
    results: dict[str, Any] = {}
    keys = [key for key, _, _ in runs(a)]
    for key, space, compare in runs(a):
        print(f"=== {key} (space {space}, pruner.compare {compare}) ===", flush=True)
        results[key] = run_space(a, space, storage_url, workdir, key, compare)
        r = results[key]
        print(f"=== {key}: best {r['best_accuracy']} compute {r['compute_seconds']} s ===", flush=True)
    strategies = sorted({s for r in results.values() for s in r["by_strategy"]})
    table = {s: {k: results[k]["by_strategy"].get(s, {}).get("best_accuracy") for k in keys} for s in strategies}
    best_space = max(
        (s for s in keys if results[s]["best_accuracy"] is not None),
        key=lambda s: results[s]["best_accuracy"],
        default=None,
    )
    payload = run_header("space_card_vs_aware", a, argv, started)
    payload.update(
        {
            "spaces": results,
            "best_by_strategy": table,
            "overall": {
                space: {
                    "best_accuracy": results[space]["best_accuracy"],
                    "best_strategy": (results[space]["best_params"] or {}).get("strategy"),
                    "compute_seconds": results[space]["compute_seconds"],
                    "pruned": results[space]["pruned"],
                }
                for space in keys
            },
            "winner": best_space,
        }
    )
    write_json(a.out, payload)
    for s, v in table.items():
        print(f"{s:<8} " + "  ".join(f"{sp}={v[sp]}" for sp in keys))
    print(f"overall winner: {best_space} -> {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
