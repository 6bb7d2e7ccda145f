"""Storage under load: N worker processes on one PostgreSQL study, trivial trials.

Each worker is what ``hpo run --workers N`` starts, minus the training: it opens the storage
the way hpo does (``hpo.storage.open_storage``: bounded pool, pre-ping, heartbeats with the
default 10 s interval and the retry callback) and runs ``hpo.drivers.loop.optimize_loop`` with the
run's shared budget, on a function objective (``x`` suggested, returned). What is measured
is the storage path: ask, heartbeat, report, tell, the budget, the stale-trial sweeper.

Afterwards every trial is checked against what the workers say they ran:
- lost: a trial a worker finished that the database does not have as COMPLETE, or a budget
  slot that produced no trial;
- duplicated: a trial number (or trial id) that two workers ran, or that appears twice.

Usage::

    python benchmarks/storage_load.py                      # 8, 16, 32 workers on local PostgreSQL
    python benchmarks/storage_load.py --workers 8 --trials-per-worker 50 \\
        --server postgresql://postgres@127.0.0.1:5432

A fresh database is created for each worker count and dropped afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "storage_load.json"


def _worker(url: str, study_name: str, budget: Any, ready: Any, go: Any, out: Any, index: int) -> None:
    import optuna

    from hpo.drivers.loop import optimize_loop
    from hpo.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    ran: list[tuple[int, int]] = []
    errors: list[str] = []
    try:
        storage = open_storage(url)
        study = optuna.load_study(
            study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=index)
        )

        def objective(trial: optuna.Trial) -> float:
            x = trial.suggest_float("x", 0.0, 1.0)
            trial.report(x, 1)
            ran.append((trial.number, trial._trial_id))
            return x

        ready.release()
        go.wait()
        t0 = time.perf_counter()
        optimize_loop(study, objective, budget=budget)
        seconds = time.perf_counter() - t0
    except Exception as e:  # a worker's failure is a result, not a crash of the benchmark
        errors.append(f"{type(e).__name__}: {e}"[:300])
        seconds = float("nan")
        ready.release()
    out.put({"index": index, "ran": ran, "seconds": seconds, "errors": errors})


def _create_database(server: str) -> tuple[str, str]:
    import sqlalchemy

    from hpo.storage import normalize_url

    name = f"hpo_bench_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(normalize_url(server + "/postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{server}/{name}", name


def _drop_database(server: str, name: str) -> None:
    import sqlalchemy

    from hpo.storage import normalize_url

    engine = sqlalchemy.create_engine(normalize_url(server + "/postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    engine.dispose()


def run_one(server: str, n_workers: int, per_worker: int) -> dict[str, Any]:
    """One measurement: ``n_workers`` processes, ``n_workers * per_worker`` trials in all."""
    import optuna

    from hpo.drivers.local import Budget
    from hpo.storage import open_storage

    url, db = _create_database(server)
    try:
        storage = open_storage(url)
        optuna.create_study(study_name="load", storage=storage, direction="maximize")
        total = n_workers * per_worker
        ctx = multiprocessing.get_context("spawn")
        budget = Budget(ctx, total)
        ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_worker, args=(url, "load", budget, ready, go, out, i))
            for i in range(n_workers)
        ]
        for p in procs:
            p.start()
        for _ in procs:  # every worker connected and loaded the study
            ready.acquire()
        t0 = time.perf_counter()
        go.set()
        reports = [out.get(timeout=1800) for _ in procs]
        wall = time.perf_counter() - t0
        for p in procs:
            p.join(60)

        trials = optuna.load_study(study_name="load", storage=storage).get_trials(deepcopy=False)
        ran = [r for rep in reports for r in rep["ran"]]
        db_numbers = [t.number for t in trials]
        complete = {t.number for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
        states: dict[str, int] = {}
        for t in trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
        ran_numbers = [n for n, _ in ran]
        lost_finished = len(set(ran_numbers) - complete)
        lost_budget = total - len(set(ran_numbers))
        duplicated = (len(ran_numbers) - len(set(ran_numbers))) + (len(db_numbers) - len(set(db_numbers)))
        duplicated += len(ran) - len({tid for _, tid in ran})
        missing_values = sum(
            1
            for t in trials
            if t.state == optuna.trial.TrialState.COMPLETE and t.intermediate_values != {1: t.value}
        )
        worker_secs = [r["seconds"] for r in reports]
        return {
            "workers": n_workers,
            "trials": total,
            "wall_seconds": round(wall, 2),
            "trials_per_second": round(len(complete) / wall, 1),
            "slowest_worker_seconds": round(max(worker_secs), 2),
            "states": states,
            "lost": lost_finished + lost_budget,
            "duplicated": duplicated,
            "intermediate_values_wrong": missing_values,
            "worker_errors": [e for r in reports for e in r["errors"]],
            "trials_per_worker_min_max": [
                min(len(r["ran"]) for r in reports),
                max(len(r["ran"]) for r in reports),
            ],
        }
    finally:
        _drop_database(server, db)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--server", default="postgresql://postgres@127.0.0.1:5432", help="server URL, no database"
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--trials-per-worker", type=int, default=25)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from importlib import metadata

    from hpo.storage import redact

    results = []
    for n in args.workers:
        load_before = os.getloadavg()[0]
        r = run_one(args.server, n, args.trials_per_worker)
        r["load_avg_1min_before"] = round(load_before, 2)
        r["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
        results.append(r)
        print(
            f"{n:>3} workers: {r['trials']} trials in {r['wall_seconds']} s = {r['trials_per_second']} trials/s; "
            f"lost {r['lost']}, duplicated {r['duplicated']}, states {r['states']}, errors {len(r['worker_errors'])}",
            flush=True,
        )
    record = {
        "benchmark": "storage_load",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python benchmarks/storage_load.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "server": redact(args.server),
        "machine": machine(with_torch=False),  # no torch: workers here never train
        "versions": {
            k: metadata.version(k) for k in ("optuna", "sqlalchemy", "psycopg2-binary") if _installed(k)
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    bad = [r for r in results if r["lost"] or r["duplicated"] or r["worker_errors"]]
    return 1 if bad else 0


def _installed(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    sys.exit(main())
