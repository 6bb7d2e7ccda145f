"""The one training path: a fresh model with its strategy, a Trainer, the evaluation schedule.

Search trials (every driver) and ``hpo retrain`` train through :func:`train_and_evaluate`, and
every Trainer is built by :func:`make_trainer`, so a retrained configuration reproduces its
trial. What depends on the task (head, collator, metrics, label columns) comes from the task.
"""

from __future__ import annotations

import copy
import gc
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpo.config import StudySpec
from hpo.context import WorkerContext, task_options
from hpo.space import TrialConfig
from hpo.strategies import count_parameters, get_strategy
from hpo.tasks import get_task


def build_model(ctx: WorkerContext, cfg: TrialConfig, seed: int) -> Any:
    """A fresh copy of the base model, its task head drawn from the seed, the strategy applied."""
    import torch

    model = copy.deepcopy(ctx.base_model())
    get_task(ctx.spec.task).init_head(model, seed)
    torch.manual_seed(seed)
    return get_strategy(cfg.strategy).apply(model, dict(cfg.strategy_params))


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak, or the process RSS sampled every 0.1 s."""

    def __init__(self, device: str):
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
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
    attrs: dict[str, Any] = field(default_factory=dict)
    """More trial user attributes (cross-validation: the value of each fold and their spread)."""
    resumed_from_step: int = 0
    """The checkpoint's optimizer step this run resumed from (0: trained from the start)."""
    steps_trained: int = 0
    """Optimizer steps this run trained (``steps`` less the resumed ones)."""

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
    """TrainingArguments for one run (the task's class and extra arguments); evaluation is
    driven by EvalSchedule, nothing is saved."""
    import transformers

    task = get_task(ctx.spec.task)
    options = task_options(ctx.spec)
    t = cfg.training
    return getattr(transformers, task.trainer[1])(
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
        label_names=list(task.label_columns),
        **task.trainer_arguments(options),
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


def make_trainer(
    ctx: WorkerContext,
    model: Any,
    cfg: TrialConfig,
    seed: int,
    output_dir: str,
    max_steps: int,
    *,
    train_dataset: Any = None,
    eval_split: str = "validation",
    callbacks: list[Any] | None = None,
) -> Any:
    """The Trainer every run uses: the task's collator and evaluator, hpo's arguments.

    Training (``train_and_evaluate``) and the retrain's test evaluation build their Trainer
    here, so they score a split the same way.
    """
    import transformers
    from transformers import PrinterCallback

    task = get_task(ctx.spec.task)
    evaluation = task.evaluator(ctx, eval_split)
    evaluation.model = model
    trainer = getattr(transformers, task.trainer[0])(
        model=model,
        args=training_arguments(ctx, cfg, seed, output_dir, max_steps),
        train_dataset=train_dataset,
        eval_dataset=ctx.datasets[eval_split],
        data_collator=task.collator(ctx.tokenizer, model),
        compute_metrics=evaluation.compute_metrics,
        preprocess_logits_for_metrics=evaluation.preprocess_logits,
        callbacks=callbacks,
    )
    # With tqdm disabled the Trainer adds a callback that prints every log dict.
    trainer.remove_callback(PrinterCallback)
    return trainer


def train_and_evaluate(
    ctx: WorkerContext,
    cfg: TrialConfig,
    seed: int,
    on_eval: Callable[[int, dict[str, float]], bool] | None = None,
    keep_model: bool = False,
    train_split: str = "train",
    stop_after_step: int | None = None,
    select: str = "last",
    checkpoint: Any = None,
    callbacks: list[Any] | None = None,
) -> Outcome:
    """Train one configuration and evaluate on the validation split on the fixed schedule.

    ``stop_after_step`` ends training after that optimizer step (and its evaluation) without
    changing the schedule: the learning rate decays as for the full run, so the weights are the
    ones the full run had at that step. ``select`` (``objective.select``) picks the evaluation
    the outcome's metrics come from; a pruned run reports its last one.

    ``checkpoint`` (``hpo.checkpoints.TrialCheckpoint``): save one at each evaluation that
    training goes on from, and resume from the latest one of the same run (same configuration,
    seed and plan) when there is one: its evaluations are reported again through ``on_eval``
    (which may prune the trial there, untrained), then only the remaining steps train.
    ``callbacks``: more Trainer callbacks (experiment tracking, :mod:`hpo.tracking`).
    """
    import torch
    from transformers import set_seed

    from hpo.checkpoints import run_fingerprint
    from hpo.pruning import EvalSchedule, ReportEvaluations, SaveCheckpoints, StopAfterStep

    set_seed(seed)
    model = build_model(ctx, cfg, seed)
    trainable, total = count_parameters(model)
    train_ds = ctx.datasets[train_split]
    max_steps, schedule = plan_steps(len(train_ds), cfg, ctx.spec)
    reporter = ReportEvaluations(on_eval)
    fingerprint = run_fingerprint(cfg, seed, max_steps, schedule, len(train_ds))
    resume = checkpoint.latest(fingerprint) if checkpoint is not None else None
    if resume is not None and not checkpoint.check_weights(resume, model):
        resume = None  # saved by another version of the strategy: train from the start
    saver = SaveCheckpoints(
        None
        if checkpoint is None
        else lambda tr: checkpoint.save(
            model=tr.model,
            optimizer=tr.optimizer,
            scheduler=tr.lr_scheduler,
            state=tr.state,
            history=reporter.history,
            fingerprint=fingerprint,
        )
    )
    output_dir = tempfile.mkdtemp(prefix="hpo-trial-")
    trainer = None
    try:
        trainer = make_trainer(
            ctx,
            model,
            cfg,
            seed,
            output_dir,
            max_steps,
            train_dataset=train_ds,
            callbacks=[
                EvalSchedule(schedule),
                reporter,
                saver,
                StopAfterStep(stop_after_step),
                *(callbacks or []),
            ],
        )
        saver.trainer = trainer
        if resume is not None:
            # The evaluations the checkpoint had reached, reported again for this trial.
            for m in resume.history:
                reporter.history.append(m)
                if on_eval is not None and on_eval(len(reporter.history), m):
                    reporter.pruned = True
                    break
        with PeakMemory(ctx.device) as mem:
            t0 = time.perf_counter()
            if reporter.pruned:
                steps = resume.step if resume is not None else 0
            else:
                result = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
                steps = int(result.global_step)
            seconds = time.perf_counter() - t0
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
            samples_per_second=saver.steps_trained * per_step / seconds if seconds > 0 else 0.0,
            peak_memory_mb=mem.peak_bytes / 2**20,
            trainable_params=trainable,
            total_params=total,
            steps=steps,
            model=model if keep_model else None,
            resumed_from_step=resume.step if resume is not None else 0,
            steps_trained=saver.steps_trained,
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
