"""What a resumed retry saves against a restart.

For each strategy, one configuration is trained three times through hpo's training path
(``hpo.training.train_and_evaluate``, the path every trial takes):

1. *restart*: from step 0 to the end with no checkpoints: what a retry costs without them
   (and what the trial costs when nothing goes wrong);
2. *killed*: with checkpoints, until the worker "dies" right after writing the checkpoint of
   evaluation ``--kill-after`` (a KeyboardInterrupt raised in the checkpoint writer once the
   checkpoint is on disk: the state a SIGKILL at that moment leaves; the SIGKILL itself is
   exercised by tests/test_resume.py);
3. *resumed*: the retry, from that checkpoint to the end.

Reported per strategy: optimizer steps and seconds of each retry, what resuming saved, the
checkpoint's size and write time, and whether the resumed run ended where the restart did
(validation loss). Run it on an idle machine for stable seconds; the load average is recorded.

    python benchmarks/resume.py                        # MiniLM-L6 on SST-2 (full, lora)
    python benchmarks/resume.py --quick --model DIR    # a tiny model, for the test suite
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    RESULTS_DIR,
    SST2_DIR,
    machine,
    now_iso,
    resolve_model,
    start_run,
    versions,
    write_json,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--data", default=str(SST2_DIR))
    p.add_argument("--strategies", default="full,lora")
    p.add_argument("--train-limit", type=int, default=512)
    p.add_argument("--validation-limit", type=int, default=200)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--evals", type=int, default=4, help="evaluations (and checkpoints but the last) per run")
    p.add_argument("--kill-after", type=int, default=2, help="the worker dies after this evaluation's checkpoint")
    p.add_argument("--quick", action="store_true", help="small settings for tests")
    p.add_argument("--out", default=str(RESULTS_DIR / "resume.json"))
    return p.parse_args(argv)


def _study_file(a: argparse.Namespace, workdir: Path) -> Path:
    from hpo._yaml import dump_yaml

    study = {
        "name": "resume-bench",
        "model": resolve_model(a.model),
        "data": {
            "source": str(Path(a.data).resolve()),
            "text": "sentence",
            "label": "label",
            "train_limit": a.train_limit,
            "validation": "dev.tsv",
            "validation_limit": a.validation_limit,
            "max_length": a.max_length,
        },
        "space": {
            "strategy": a.strategies.split(","),
            "learning_rate": [3.0e-5],
            "per_device_train_batch_size": [a.batch],
            "strategies": {"lora": {"r": [8], "learning_rate": [5.0e-4]}},
        },
        "objective": {"metric": "accuracy", "direction": "maximize"},
        "budget": {"n_trials": 1, "max_epochs": 1, "evals_per_epoch": a.evals},
        "execution": {"checkpoint_dir": str(workdir / "checkpoints")},
    }
    path = workdir / "study.yaml"
    path.write_text(dump_yaml(study))
    return path


def measure(ctx: Any, strategy: str, kill_after: int, folder: Path) -> dict[str, Any]:
    """The three runs of one strategy (see the module docstring)."""
    from hpo.checkpoints import TrialCheckpoint, folder_bytes
    from hpo.training import train_and_evaluate

    spec = ctx.spec
    cfg = spec.space.fixed(strategy, {}, spec.training)
    seed = spec.seed
    saves: list[float] = []
    sizes: list[int] = []

    class Timed(TrialCheckpoint):
        """Times each save; the worker dies after the ``kill_after``-th."""

        def save(self, **kw: Any) -> Path:
            t0 = time.perf_counter()
            path = super().save(**kw)
            saves.append(time.perf_counter() - t0)
            sizes.append(folder_bytes(path))
            if len(saves) == kill_after:
                raise KeyboardInterrupt("worker died")
            return path

    def run(**kw: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        out = train_and_evaluate(ctx, cfg, seed, **kw)
        return out, time.perf_counter() - t0

    restart, restart_s = run()
    ckpt = Timed(folder / strategy)
    t0 = time.perf_counter()
    try:
        train_and_evaluate(ctx, cfg, seed, checkpoint=ckpt)
        raise AssertionError("the killed run did not stop")
    except KeyboardInterrupt:
        killed_s = time.perf_counter() - t0
    resumed, resumed_s = run(checkpoint=TrialCheckpoint(folder / strategy))
    loss_diff = abs(resumed.history[-1]["loss"] - restart.history[-1]["loss"])
    return {
        "strategy": strategy,
        "steps": restart.steps,
        "killed_after_step": resumed.resumed_from_step,
        "restart": {"steps_trained": restart.steps_trained, "seconds": round(restart_s, 2)},
        "killed_run": {"seconds": round(killed_s, 2), "checkpoint_seconds": round(sum(saves), 2)},
        "resumed": {"steps_trained": resumed.steps_trained, "seconds": round(resumed_s, 2)},
        "saved_seconds": round(restart_s - resumed_s, 2),
        "saved_fraction": round(1 - resumed_s / restart_s, 3) if restart_s > 0 else None,
        "checkpoint_mb": round(max(sizes) / 2**20, 2) if sizes else 0.0,
        "checkpoint_write_seconds": round(sum(saves) / len(saves), 3) if saves else 0.0,
        "trainable_params": restart.trainable_params,
        "final_val_loss": {"restart": restart.history[-1]["loss"], "resumed": resumed.history[-1]["loss"]},
        "same_end": loss_diff < 1e-5,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    if a.quick:
        a.train_limit, a.validation_limit, a.max_length, a.batch = 64, 32, 16, 8
    started = now_iso()
    workdir, _ = start_run("hpo-bench-resume-")
    from hpo.config import load_study
    from hpo.context import prepare

    spec = load_study(_study_file(a, workdir))
    ctx = prepare(spec)
    ctx.base_model()
    load_before = os.getloadavg()[0]
    rows = []
    for strategy in a.strategies.split(","):
        row = measure(ctx, strategy, a.kill_after, workdir / "checkpoints")
        row["load_average"] = round(os.getloadavg()[0], 2)
        print(
            f"{strategy:8s} steps {row['steps']}, killed after step {row['killed_after_step']}: restart "
            f"{row['restart']['steps_trained']} steps {row['restart']['seconds']} s, resumed "
            f"{row['resumed']['steps_trained']} steps {row['resumed']['seconds']} s "
            f"(saved {row['saved_seconds']} s, {row['saved_fraction']:.0%}); checkpoint "
            f"{row['checkpoint_mb']} MB, {row['checkpoint_write_seconds']} s each; same end: {row['same_end']}",
            flush=True,
        )
        rows.append(row)
    payload = {
        "benchmark": "resume",
        "mode": "quick" if a.quick else "full",
        "started": started,
        "finished": now_iso(),
        "command": "python benchmarks/resume.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "versions": versions(),
        "load_average_before": round(load_before, 2),
        "config": {
            "model": a.model,
            "data": str(Path(a.data).resolve()),
            "train_limit": a.train_limit,
            "validation_limit": a.validation_limit,
            "max_length": a.max_length,
            "batch": a.batch,
            "evals": a.evals,
            "kill_after": a.kill_after,
        },
        "rows": rows,
    }
    write_json(Path(a.out), payload)
    return payload


if __name__ == "__main__":
    main()
