"""One trial, top to bottom: config -> model -> strategy -> Trainer -> metrics -> record.

``prepare`` does the per-worker work once (data, tokenizer, tokenized splits, base
weights); ``train_and_evaluate`` is the single training path that search trials and
``hpo retrain`` share, so a retrained config reproduces its trial.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.config import StudySpec
from hpo.data import LoadedData, load_data, tokenize
from hpo.models import ensure_local_model
from hpo.space import TrialConfig
from hpo.strategies import count_parameters, get_strategy
from hpo.tasks import get_task

CACHE_DIR = Path(os.environ.get("HPO_CACHE_DIR", ".hpo-cache"))


@dataclass
class WorkerContext:
    """What a worker loads once and reuses for every trial."""

    spec: StudySpec
    data: LoadedData
    tokenizer: Any
    datasets: dict[str, Any]
    device: str
    worker: str
    _base: Any = None
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def base_model(self) -> Any:
        """The pretrained model with its task head, loaded once per worker (never trained)."""
        if self._base is None:
            task = get_task(self.spec.task)
            t0 = time.perf_counter()
            self._base = task.load_model(
                self.spec.model_path, len(self.data.label_names), self.data.label_names
            )
            self.load_seconds += time.perf_counter() - t0
        return self._base


def pick_device(requested: str = "auto") -> str:
    """cuda when asked for or visible (auto), else cpu."""
    import torch

    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def prepare(spec: StudySpec, need_test: bool = False, worker: str | None = None) -> WorkerContext:
    """Load data and tokenizer and tokenize (cached on disk by data fingerprint).

    Raises:
        DataError: bad data, before any database is touched.
    """
    import datasets
    from transformers import AutoTokenizer

    # Progress bars for a few hundred cached rows are noise in a trial log.
    datasets.disable_progress_bars()
    data = load_data(spec.data, need_test=need_test)
    ensure_local_model(spec.model_path)  # a GGUF alias (smollm2) is converted into the cache once
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    splits = (
        ("train", "validation", "test") if need_test and data.test is not None else ("train", "validation")
    )
    datasets = tokenize(data, tokenizer, spec.data.max_length, CACHE_DIR / "tokenized", splits=splits)
    # Metrics do not depend on the evaluation order, padding does: batches of similar length
    # pad least (SST-2 dev, 64 per batch: about half the padded tokens of file order).
    datasets["validation"] = sorted_by_length(datasets["validation"])
    return WorkerContext(
        spec=spec,
        data=data,
        tokenizer=tokenizer,
        datasets=datasets,
        device=pick_device(spec.execution.device),
        worker=worker or f"{socket.gethostname()}:{os.getpid()}",
    )


def sorted_by_length(ds: Any) -> Any:
    """The dataset reordered by input length (stable), for cheaper batched evaluation."""
    lengths = [len(ids) for ids in ds["input_ids"]]
    return ds.select(sorted(range(len(lengths)), key=lengths.__getitem__))


def build_model(ctx: WorkerContext, cfg: TrialConfig, seed: int) -> Any:
    """A fresh copy of the base model with a seeded task head and the strategy applied."""
    import torch

    model = copy.deepcopy(ctx.base_model())
    # The head is re-initialised from the seed, so a trial and its retrain start identically
    # whichever trials this worker ran before. BERT-style init: normal(0, initializer_range).
    prefix = getattr(model, "base_model_prefix", "")
    std = float(getattr(model.config, "initializer_range", 0.02))
    torch.manual_seed(seed)
    for name, module in model.named_modules():
        if prefix and (name == prefix or name.startswith(prefix + ".")):
            continue
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    torch.manual_seed(seed)
    return get_strategy(cfg.strategy).apply(model, dict(cfg.strategy_params))


class _PeakMemory:
    """Peak memory during a block: CUDA allocator peak, or the process RSS sampled every 0.1 s."""

    def __init__(self, device: str):
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _PeakMemory:
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            proc = psutil.Process()

            def sample() -> None:
                while not self._stop.is_set():
                    self.peak_bytes = max(self.peak_bytes, proc.memory_info().rss)
                    self._stop.wait(0.1)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device == "cuda":
            import torch

            self.peak_bytes = int(torch.cuda.max_memory_allocated())
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()


@dataclass
class Outcome:
    """What one training run produced."""

    metrics: dict[str, float]
    history: list[dict[str, float]]
    pruned: bool
    train_seconds: float
    samples_per_second: float
    peak_memory_mb: float
    trainable_params: int
    total_params: int
    steps: int
    model: Any = None
    selected: int = 0
    """1-based index into ``history`` of the evaluation ``metrics`` come from (0: no evaluation)."""

    def select(self, metric: str, direction: str, rule: str) -> Outcome:
        """Take ``metrics`` from the evaluation the objective's ``select`` rule picks.

        ``last``: the final evaluation. ``best``: the best one on the schedule (the earliest of
        equals), which a retrain reproduces by stopping at its step (``stop_after_step``).
        """
        index = len(self.history)
        if rule == "best" and self.history:
            values = [h.get(metric, math.nan) for h in self.history]
            sign = 1.0 if direction == "maximize" else -1.0
            finite = [i for i, v in enumerate(values) if math.isfinite(v)]
            if finite:
                index = 1 + max(finite, key=lambda i: (sign * values[i], -i))
        self.selected = index
        if self.history:
            self.metrics = {k: v for k, v in self.history[index - 1].items() if k not in ("step", "epoch")}
        return self

    @property
    def selected_step(self) -> int:
        """The optimizer step of the selected evaluation."""
        if not self.selected:
            return self.steps
        return int(self.history[self.selected - 1].get("step", self.steps))


def training_arguments(
    ctx: WorkerContext, cfg: TrialConfig, seed: int, output_dir: str, max_steps: int
) -> Any:
    """TrainingArguments for one run; evaluation is driven by EvalSchedule, nothing is saved."""
    from transformers import TrainingArguments

    t = cfg.training
    return TrainingArguments(
        output_dir=output_dir,
        learning_rate=float(t["learning_rate"]),
        per_device_train_batch_size=int(t["per_device_train_batch_size"]),
        per_device_eval_batch_size=int(ctx.spec.training.get("eval_batch_size") or 64),
        gradient_accumulation_steps=int(t["gradient_accumulation_steps"]),
        weight_decay=float(t["weight_decay"]),
        warmup_steps=int(math.ceil(float(t["warmup_ratio"]) * max_steps)),
        lr_scheduler_type=str(t["lr_scheduler_type"]),
        max_grad_norm=float(t["max_grad_norm"]),
        adam_beta1=float(t["adam_beta1"]),
        adam_beta2=float(t["adam_beta2"]),
        adam_epsilon=float(t["adam_epsilon"]),
        label_smoothing_factor=float(t["label_smoothing_factor"]),
        max_steps=max_steps,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
        use_cpu=ctx.device == "cpu",
        dataloader_num_workers=0,
        label_names=["labels"],
    )


def plan_steps(n_train: int, cfg: TrialConfig, spec: StudySpec) -> tuple[int, list[int]]:
    """Total optimizer steps and the steps at which to evaluate."""
    from hpo.pruning import eval_steps

    t = cfg.training
    per_step = int(t["per_device_train_batch_size"]) * int(t["gradient_accumulation_steps"])
    steps_per_epoch = max(1, math.ceil(n_train / per_step))
    epochs = float(t["num_train_epochs"] or spec.budget.max_epochs)
    total = max(1, math.ceil(epochs * steps_per_epoch))
    cap = spec.training.get("max_train_steps")
    if cap:
        total = min(total, int(cap))
    n_evals = max(1, round(epochs * spec.budget.evals_per_epoch))
    return total, eval_steps(total, n_evals)


def train_and_evaluate(
    ctx: WorkerContext,
    cfg: TrialConfig,
    seed: int,
    on_eval: Callable[[int, dict[str, float]], bool] | None = None,
    keep_model: bool = False,
    train_split: str = "train",
    stop_after_step: int | None = None,
    select: str = "last",
) -> Outcome:
    """Train one configuration and evaluate on the validation split on the fixed schedule.

    ``stop_after_step`` ends training after that optimizer step (and its evaluation) without
    changing the schedule: the learning rate decays as for the full run, so the weights are the
    ones the full run had at that step. ``select`` (``objective.select``) picks the evaluation
    the outcome's metrics come from; a pruned run reports its last one.
    """
    import torch
    from transformers import PrinterCallback, Trainer, set_seed

    from hpo.pruning import EvalSchedule, ReportEvaluations, StopAfterStep

    task = get_task(ctx.spec.task)
    set_seed(seed)
    model = build_model(ctx, cfg, seed)
    trainable, total = count_parameters(model)
    train_ds = ctx.datasets[train_split]
    max_steps, schedule = plan_steps(len(train_ds), cfg, ctx.spec)
    reporter = ReportEvaluations(on_eval)
    output_dir = tempfile.mkdtemp(prefix="hpo-trial-")
    trainer = None
    try:
        trainer = Trainer(
            model=model,
            args=training_arguments(ctx, cfg, seed, output_dir, max_steps),
            train_dataset=train_ds,
            eval_dataset=ctx.datasets["validation"],
            data_collator=task.collator(ctx.tokenizer),
            compute_metrics=lambda p: task.compute_metrics(p.predictions, p.label_ids),
            callbacks=[EvalSchedule(schedule), reporter, StopAfterStep(stop_after_step)],
        )
        # With tqdm disabled the Trainer adds a callback that prints every log dict.
        trainer.remove_callback(PrinterCallback)
        with _PeakMemory(ctx.device) as mem:
            t0 = time.perf_counter()
            result = trainer.train()
            seconds = time.perf_counter() - t0
        steps = int(result.global_step)
        last_step = int(reporter.history[-1]["step"]) if reporter.history else -1
        if last_step != steps and not reporter.pruned:  # stopped off the evaluation schedule
            reporter.on_evaluate(trainer.args, trainer.state, trainer.control, trainer.evaluate())
        per_step = int(cfg.training["per_device_train_batch_size"]) * int(
            cfg.training["gradient_accumulation_steps"]
        )
        return Outcome(
            metrics={},
            history=reporter.history,
            pruned=reporter.pruned,
            train_seconds=seconds,
            samples_per_second=steps * per_step / seconds if seconds > 0 else 0.0,
            peak_memory_mb=mem.peak_bytes / 2**20,
            trainable_params=trainable,
            total_params=total,
            steps=steps,
            model=model if keep_model else None,
        ).select(ctx.spec.objective.metric, ctx.spec.direction, "last" if reporter.pruned else select)
    finally:
        del trainer
        if not keep_model:
            del model
        gc.collect()
        if ctx.device == "cuda":
            torch.cuda.empty_cache()
        shutil.rmtree(output_dir, ignore_errors=True)


def trial_seed(spec: StudySpec) -> int:
    """Every trial trains with the study's seed, so trials differ by configuration only."""
    return spec.seed


def _distance(a: Any, b: Any, dist: Any) -> float:
    """|a - b| as a fraction of the distribution's range on its sampling scale; categorical: 0 or inf."""
    low, high = getattr(dist, "low", None), getattr(dist, "high", None)
    if low is None or high is None or isinstance(a, bool) or not isinstance(a, (int, float)):
        return 0.0 if a == b else math.inf
    if a == b:
        return 0.0
    if getattr(dist, "log", False):
        a, b, low, high = math.log(a), math.log(b), math.log(low), math.log(high)
    span = float(high - low)
    return abs(float(a) - float(b)) / span if span > 0 else math.inf


def find_repeat(trial: Any, tolerance: float | None) -> Any:
    """The COMPLETE, trained trial that ``trial``'s sampled configuration repeats, or None.

    A repeat has the same parameters, the same categorical values and every numeric value within
    ``tolerance`` of its range (``sampler.skip_repeats``); the closest one wins. Enqueued trials
    (a user's own configurations: system attribute ``fixed_params``) and retries of dead
    workers' trials (``failed_trial``, queued with their parameters by ``RetryWithLink``) are
    never repeats: their point was chosen, not sampled.
    """
    import optuna

    if tolerance is None:
        return None
    frozen = getattr(trial, "_cached_frozen_trial", None)
    system_attrs = (
        frozen.system_attrs if frozen is not None else trial.storage.get_trial_system_attrs(trial._trial_id)
    )
    if "fixed_params" in system_attrs or "failed_trial" in system_attrs:
        return None
    params, dists = trial.params, trial.distributions
    best, best_d = None, math.inf
    for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.number == trial.number or "repeat_of" in t.user_attrs or set(t.params) != set(params):
            continue
        if any(t.distributions[k] != dists[k] for k in params):
            continue
        d = max((_distance(params[k], t.params[k], dists[k]) for k in params), default=0.0)
        if d <= tolerance and d < best_d:
            best, best_d = t, d
    return best


def make_objective(
    ctx: WorkerContext,
    on_trial_start: Callable[[Any], Callable[[int, dict[str, float]], None]] | None = None,
) -> Callable[[Any], float]:
    """The Optuna objective: sample, train, record attributes, prune or return the metric.

    ``on_trial_start(trial)`` may return a hook that sees every evaluation (progress display).
    """
    import optuna

    from hpo.oom import memory_baseline, train_with_oom_retry
    from hpo.pruning import optuna_reporter
    from hpo.storage import HOST_ID_ATTR, AttrBuffer, local_host_id, write_user_attrs

    spec = ctx.spec
    metric = spec.objective.metric
    baseline = memory_baseline(ctx.device)
    host_id = local_host_id()

    def objective(trial: Any) -> float:
        import torch

        cfg = spec.space.sample(trial, spec.training)
        seed = trial_seed(spec)
        # One transaction for all (hpo.storage.AttrBuffer); "worker" tells a launcher which
        # trial a worker that died was running, and the host id tells a sweep on this host
        # that it may check whether that process still runs (hpo.storage.local_worker_gone).
        write_user_attrs(
            trial,
            {
                "worker": ctx.worker,
                "strategy": cfg.strategy,
                "config": json.dumps(cfg.to_dict(), sort_keys=True),
                "seed": seed,
                "device": ctx.device,
                "torch_threads": torch.get_num_threads(),
            },
            {HOST_ID_ATTR: host_id},
        )
        repeat = find_repeat(trial, spec.sampler.skip_repeats)
        if repeat is not None:
            # Within sampler.skip_repeats of a trained trial, same seed: training it again
            # would measure noise, not the configuration.
            write_user_attrs(trial, {"repeat_of": repeat.number})
            return float(repeat.value)
        report = optuna_reporter(trial, metric)
        show = on_trial_start(trial) if on_trial_start else None

        def on_eval(index: int, metrics: dict[str, float]) -> bool:
            if show is not None:
                show(index, metrics)
            return report(index, metrics)

        try:
            # Out of accelerator memory: the same config again at half the micro-batch (hpo.oom).
            out = train_with_oom_retry(
                lambda c: train_and_evaluate(ctx, c, seed, on_eval=on_eval, select=spec.objective.select),
                cfg,
                device=ctx.device,
                floor=spec.execution.min_micro_batch,
                record=trial.set_user_attr,
                baseline_bytes=baseline,
            )
        except Exception as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:1000])
            raise
        attrs = AttrBuffer(trial)
        record_outcome(attrs, out)
        attrs.flush()
        if out.pruned:
            raise optuna.TrialPruned(f"pruned after evaluation {len(out.history)}")
        return out.metrics[metric]

    return objective


def record_outcome(trial: Any, out: Outcome) -> None:
    """Store what a person comparing trials needs as trial user attributes."""
    trial.set_user_attr("trainable_params", out.trainable_params)
    trial.set_user_attr("total_params", out.total_params)
    trial.set_user_attr(
        "trainable_percent", round(100.0 * out.trainable_params / max(1, out.total_params), 4)
    )
    for k, v in out.metrics.items():
        trial.set_user_attr(f"val_{k}", v)
    trial.set_user_attr("train_seconds", round(out.train_seconds, 3))
    trial.set_user_attr("samples_per_second", round(out.samples_per_second, 2))
    trial.set_user_attr("peak_memory_mb", round(out.peak_memory_mb, 1))
    trial.set_user_attr("steps", out.steps)
    trial.set_user_attr("evaluations", len(out.history))
    trial.set_user_attr("selected_evaluation", out.selected)
    trial.set_user_attr("selected_step", out.selected_step)
