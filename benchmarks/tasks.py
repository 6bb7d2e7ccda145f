"""Per task: hpo's search against the field's default recipe for that task, on real data.

For each case (a shipped study, sized for this machine):

- **search**: ``hpo run`` the study as shipped (with the case's sizing overrides), ``hpo export``
  the best trial and ``hpo retrain`` it: the best validation metric, the retrained model's
  test metric, and the compute of the search;
- **recipe**: the same study, data, epochs and evaluation, with the space replaced by one fixed
  configuration (the task's default recipe, e.g. full fine-tuning at lr 5e-5) and one trial,
  exported and retrained the same way.

Compute is each method's ``hpo run``: the trials' wall time as Optuna stored it plus its
one-time setup (data, tokenization, base weights). The retrain that measures the test metric
costs the same for both and is reported on its own. The target: the search beats the recipe
(on the study's objective, in its direction) at no more than 4x its compute.

Usage::

    python benchmarks/tasks.py                    # every case, full size
    python benchmarks/tasks.py --case sst2        # some cases
    python benchmarks/tasks.py --quick            # smoke: tiny sizes, minutes
    python benchmarks/tasks.py --markdown benchmarks/results/tasks.json   # the RESULTS.md table
    python benchmarks/tasks.py --case squad --match-budget 4   # the search: whatever 4x the recipe buys

``--match-budget R`` replaces the case's trial count by the target itself: the search starts
trials (up to 100) until ``R`` times the recipe's compute, less the recipe's own trial time, has
passed (``budget.timeout``), so a last trial as long as the recipe's still ends within ``R`` times
its compute. The ratio in the table is measured either way.

Adding a task's row is one :class:`Case` in :data:`CASES`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RESULTS_DIR,
    ROOT,
    LoadSampler,
    Stopwatch,
    machine,
    now_iso,
    start_run,
    trial_rows,
    versions,
    write_json,
)


@dataclass(frozen=True)
class Case:
    """One row of the table: a shipped study and the default recipe to hold it against."""

    study: str
    """The shipped study file, relative to the repository root."""
    recipe: str
    """The default recipe as an inline search space (YAML flow mapping, one configuration)."""
    recipe_name: str
    """How the table names the recipe (``full, lr 5e-5``)."""
    search: dict[str, Any] = field(default_factory=dict)
    """``--set`` overrides that size the search for this machine (both methods get the data,
    epoch and evaluation keys among them)."""
    quick: dict[str, Any] = field(default_factory=dict)
    """Further overrides for ``--quick`` (a smoke run of minutes)."""


# Keys of a case's overrides that describe the data and the training budget: both methods get
# them, so the recipe trains on the same rows for the same epochs as the search.
SHARED_PREFIXES = ("data.", "task.", "budget.max_epochs", "budget.evals_per_epoch", "training.", "seed")

LORA_RECIPE = (
    "{strategy: lora, learning_rate: 2.0e-4, per_device_train_batch_size: 8, "
    "strategies: {lora: {r: 16, alpha_over_r: 2, dropout: 0.05}}}"
)
"""The default recipe of decoder instruction tuning: LoRA r=16, alpha 32, dropout 0.05, lr 2e-4."""

CASES: dict[str, Case] = {
    "sst2": Case(
        study="studies/sst2-minilm.yaml",
        recipe="{strategy: full, learning_rate: 5.0e-5, per_device_train_batch_size: 16}",
        recipe_name="full, lr 5e-5, batch 16",
        search={"budget.n_trials": 8, "budget.max_epochs": 1, "data.train_limit": 1000},
        quick={"budget.n_trials": 2, "data.train_limit": 64, "data.validation_limit": 64},
    ),
    # Causal LM (SmolLM2-135M-Instruct, 134.5M parameters). The field's default: LoRA r=16
    # (alpha 32) at lr 2e-4, as PEFT's and TRL's examples and QLoRA use. The data as shipped
    # (96 rows of 256 tokens: 12 optimizer steps of 8); the search gets 4 trials of the same
    # size, so its compute stays near 4x the recipe's (pruning cuts it further).
    "instructions": Case(
        study="studies/instructions-smollm2.yaml",
        recipe=LORA_RECIPE,
        recipe_name="LoRA r=16, lr 2e-4, batch 8",
        search={"budget.n_trials": 4},
        quick={"budget.n_trials": 2, "data.train_limit": 8, "data.max_length": 64},
    ),
    "headlines": Case(
        study="studies/headlines-smollm2.yaml",
        recipe=LORA_RECIPE,
        recipe_name="LoRA r=16, lr 2e-4, batch 8",
        search={"budget.n_trials": 4},
        quick={
            "budget.n_trials": 2,
            "data.train_limit": 8,
            "task.generation_rows": 2,
            "task.max_new_tokens": 4,
        },
    ),
    # The Hugging Face recipes (run_ner.py, run_qa.py) fine-tune everything with the Trainer's
    # defaults: lr 5e-5, batch 8, no warmup, linear decay.
    # WNUT-17 as shipped (2,000 training sentences, the whole dev set, 64 tokens, 2 epochs);
    # the search gets 6 trials.
    "wnut17": Case(
        study="studies/wnut17-ner.yaml",
        recipe="{strategy: full, learning_rate: 5.0e-5, per_device_train_batch_size: 8}",
        recipe_name="full, lr 5e-5, batch 8",
        search={"budget.n_trials": 6, "budget.max_epochs": 2},
        quick={"budget.n_trials": 2, "data.train_limit": 48, "data.validation_limit": 32},
    ),
    # SQuAD at a quarter of the shipped size for 2 CPU cores (a MiniLM QA trial of 1,000
    # questions x 2 epochs took 22 minutes on one core): 500 training questions, 200 validation
    # questions, 192-token windows sharing 48, 2 epochs; test = train.json's 2 held-out articles.
    "squad": Case(
        study="studies/squad-minilm.yaml",
        recipe="{strategy: full, learning_rate: 5.0e-5, per_device_train_batch_size: 8}",
        recipe_name="full, lr 5e-5, batch 8",
        search={
            "budget.n_trials": 4,
            "budget.max_epochs": 2,
            "data.train_limit": 500,
            "data.validation_limit": 200,
            "data.max_length": 192,
            "task.doc_stride": 48,
        },
        quick={"budget.n_trials": 2, "data.train_limit": 32, "data.validation_limit": 16},
    ),
}
"""Case name -> case. The task issues add theirs (NER, QA, causal LM, seq2seq)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", action="append", choices=sorted(CASES), help="run these cases (default: all)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    p.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/tasks[_quick].json)")
    p.add_argument("--markdown", type=Path, metavar="JSON", help="print the table of a result file and exit")
    p.add_argument(
        "--match-budget",
        type=float,
        metavar="R",
        help="the search starts trials until R x the recipe's compute, less one recipe trial, has passed",
    )
    a = p.parse_args(argv)
    a.case = a.case or sorted(CASES)
    a.out = a.out or RESULTS_DIR / ("tasks_quick.json" if a.quick else "tasks.json")
    return a


def overrides(case: Case, quick: bool, method: str) -> dict[str, Any]:
    """The ``--set`` overrides of one method: the case's sizing (the recipe: its shared keys only),
    and for the recipe one fixed configuration, one trial, no pruning."""
    sizing = {**case.search, **(case.quick if quick else {})}
    if method == "search":
        return sizing
    shared = {k: v for k, v in sizing.items() if k.startswith(SHARED_PREFIXES)}
    return {**shared, "space": case.recipe, "budget.n_trials": 1, "pruner": "{name: none}"}


MATCHED_TRIAL_CAP = 100
"""``--match-budget``: the trial count that the timeout, not the count, ends."""


def matched_budget(recipe: dict[str, Any], ratio: float) -> dict[str, Any]:
    """The search's overrides under ``--match-budget ratio``: no new trial after ``ratio`` times
    the recipe's compute less the recipe's trial time (so a last trial of the recipe's length
    still ends within ``ratio`` times its compute)."""
    timeout = ratio * recipe["compute_seconds"] - recipe["trial_seconds"]
    if timeout <= 0:
        raise ValueError(
            f"--match-budget {ratio}: leaves no time for the search (recipe {recipe['compute_seconds']} s)"
        )
    return {"budget.n_trials": MATCHED_TRIAL_CAP, "budget.timeout": round(timeout, 1)}


def run_method(
    name: str,
    case: Case,
    quick: bool,
    method: str,
    workdir: Path,
    url: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``hpo run``, ``hpo export`` and ``hpo retrain`` of one method (``extra``: further
    overrides, e.g. a matched budget); its figures."""
    import optuna

    from hpo.cli import main as hpo_main

    study_name = f"{name}-{method}"
    sets = [f"{k}={v}" for k, v in {**overrides(case, quick, method), **(extra or {})}.items()]
    args = ["run", str(ROOT / case.study), "--storage", url, "--study-name", study_name]
    for s in sets:
        args += ["--set", s]
    with Stopwatch() as wall, LoadSampler() as load:
        rc = hpo_main(args)
    if rc != 0:
        raise RuntimeError(f"hpo run exited {rc} ({' '.join(args)})")
    study = optuna.load_study(study_name=study_name, storage=url)
    rows = trial_rows(study)
    trial_seconds = sum(r["seconds"] or 0.0 for r in rows)
    spec_file = workdir / f"{study_name}.yaml"
    if hpo_main(["export", study_name, "--storage", url, "-o", str(spec_file)]) != 0:
        raise RuntimeError(f"hpo export failed for {study_name}")
    out_dir = workdir / f"{study_name}-retrain"
    with Stopwatch() as retrain_wall:
        if hpo_main(["retrain", str(spec_file), "-o", str(out_dir)]) != 0:
            raise RuntimeError(f"hpo retrain failed for {study_name}")
    metrics = json.loads((out_dir / "metrics.json").read_text())
    metric = metrics["metric"]
    return {
        "method": method,
        "overrides": sets,
        "metric": metric,
        "direction": metrics["direction"],
        "best_validation": metrics["trial_value"],
        "best_trial": metrics["trial"],
        "strategy": metrics["strategy"],
        "retrained_validation": metrics["validation"].get(metric),
        "test": metrics["test"].get(metric),
        "test_metrics": metrics["test"],
        "n_trials": len(rows),
        "pruned": sum(r["state"] == "PRUNED" for r in rows),
        "failed": sum(r["state"] == "FAIL" for r in rows),
        "trial_seconds": round(trial_seconds, 1),
        "setup_seconds": round(max(0.0, wall.seconds - trial_seconds), 1),
        "compute_seconds": round(wall.seconds, 1),
        "compute_cpu_seconds": round(wall.cpu_seconds, 1),
        "retrain_seconds": round(retrain_wall.seconds, 1),
        "load_average": load.summary(),
        "trials": rows,
    }


def verdict(search: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """Whether the search beat the recipe (validation and test, in the metric's direction), and
    at what compute ratio."""
    sign = 1.0 if search["direction"] == "maximize" else -1.0

    def better(a: float | None, b: float | None) -> bool | None:
        return None if a is None or b is None else sign * (a - b) > 0

    ratio = search["compute_seconds"] / recipe["compute_seconds"] if recipe["compute_seconds"] else None
    cpu_s, cpu_r = search.get("compute_cpu_seconds"), recipe.get("compute_cpu_seconds")
    return {
        "cpu_ratio": round(cpu_s / cpu_r, 2) if cpu_s and cpu_r else None,
        "validation_better": better(search["best_validation"], recipe["best_validation"]),
        "test_better": better(search["test"], recipe["test"]),
        "compute_ratio": round(ratio, 2) if ratio is not None else None,
        "target_met": bool(better(search["test"], recipe["test"])) and ratio is not None and ratio <= 4.0,
    }


def markdown(doc: dict[str, Any]) -> str:
    """The RESULTS.md table of a result file."""
    lines = [
        "| task (case) | metric | recipe | recipe val. / test | search val. / test | search best | "
        "compute recipe / search (s) | ratio | CPU s recipe / search (ratio) | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in doc["cases"].items():
        s, r, v = row["search"], row["recipe"], row["verdict"]

        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.4f}"

        cpu = (
            f"{r['compute_cpu_seconds']:.0f} / {s['compute_cpu_seconds']:.0f} ({v['cpu_ratio']})"
            if v.get("cpu_ratio")
            else "-"
        )

        lines.append(
            f"| {row['task']} ({name}) | {s['metric']} ({s['direction']}) | {row['recipe_name']} | "
            f"{fmt(r['best_validation'])} / {fmt(r['test'])} | {fmt(s['best_validation'])} / {fmt(s['test'])} | "
            f"{s['strategy']} (trial {s['best_trial']}, {s['n_trials']} trials, {s['pruned']} pruned) | "
            f"{r['compute_seconds']:.0f} / {s['compute_seconds']:.0f} | {v['compute_ratio']} | {cpu} | "
            f"{'met' if v['target_met'] else 'not met'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.markdown:
        print(markdown(json.loads(a.markdown.read_text())))
        return 0
    started = now_iso()
    workdir, url = start_run("hpo-tasks-")
    from hpo.config import load_study

    doc: dict[str, Any] = {
        "benchmark": "tasks",
        "mode": "quick" if a.quick else "full",
        "started": started,
        "command": "python benchmarks/tasks.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "versions": versions(),
        "cases": {},
    }
    from hpo.models import ensure_local_model

    for name in a.case:
        case = CASES[name]
        print(f"== {name}: {case.study}", flush=True)
        # A model shipped as GGUF (smollm2) is converted once, before either method is timed.
        ensure_local_model(load_study(ROOT / case.study).model_path)
        recipe = run_method(name, case, a.quick, "recipe", workdir, url)
        extra = matched_budget(recipe, a.match_budget) if a.match_budget else None
        search = run_method(name, case, a.quick, "search", workdir, url, extra)
        doc["cases"][name] = {
            "task": load_study(ROOT / case.study).task,
            "study": case.study,
            "recipe_name": case.recipe_name,
            "match_budget": a.match_budget,
            "recipe": recipe,
            "search": search,
            "verdict": verdict(search, recipe),
        }
        write_json(a.out, {**doc, "finished": now_iso()})  # after each case: a long run keeps its rows
    print(markdown(doc))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
