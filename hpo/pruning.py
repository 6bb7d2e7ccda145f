"""Trainer callbacks: evaluate on a fixed schedule, report each evaluation, stop when told to.

The pruning resource is the evaluation index (1, 2, ... ``evals_per_epoch * epochs``), not the
optimizer step, so trials with different batch sizes are compared at the same fraction of an
epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback


def eval_steps(total_steps: int, n_evals: int) -> list[int]:
    """Optimizer steps after which to evaluate: ``n_evals`` evenly spread, the last at the end."""
    n = max(1, min(n_evals, total_steps))
    return sorted({max(1, round(k * total_steps / n)) for k in range(1, n + 1)})


class EvalSchedule(TrainerCallback):  # type: ignore[misc]
    """Ask the Trainer to evaluate exactly at the given steps."""

    def __init__(self, steps: list[int]):
        self.steps = set(steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step in self.steps:
            control.should_evaluate = True
            control.should_log = True
        return control


class StopAfterStep(TrainerCallback):  # type: ignore[misc]
    """End training after a given optimizer step (None: never); its evaluation still runs."""

    def __init__(self, step: int | None):
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.step is not None and state.global_step >= self.step:
            control.should_training_stop = True
        return control


class ReportEvaluations(TrainerCallback):  # type: ignore[misc]
    """Collect each evaluation, fail on a NaN loss, and pass it to ``on_eval``.

    ``on_eval(index, metrics) -> bool`` returns True to stop training (pruned).
    """

    def __init__(self, on_eval: Callable[[int, dict[str, float]], bool] | None):
        self.on_eval = on_eval
        self.history: list[dict[str, float]] = []
        self.pruned = False

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> Any:
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {state.global_step}")
        return control

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kw: Any
    ) -> Any:
        m = {
            k.removeprefix("eval_"): float(v)
            for k, v in (metrics or {}).items()
            if isinstance(v, (int, float))
        }
        if "loss" in m and not math.isfinite(m["loss"]):
            raise FloatingPointError(
                f"validation loss became {m['loss']} at evaluation {len(self.history) + 1}"
            )
        m["step"] = float(state.global_step)
        m["epoch"] = float(state.epoch or 0.0)
        self.history.append(m)
        if self.on_eval is not None and self.on_eval(len(self.history), m):
            self.pruned = True
            control.should_training_stop = True
        return control


class SaveCheckpoints(TrainerCallback):  # type: ignore[misc]
    """Count the optimizer steps this run trains; after each evaluation that training goes on
    from (not the last, not one that stops it), call ``save(trainer)`` (``hpo.checkpoints``).

    Registered after :class:`ReportEvaluations`, so a pruned evaluation is never saved.
    ``trainer`` is set once the Trainer exists (the callback's own ``optimizer`` argument is not
    the Trainer's optimizer).
    """

    def __init__(self, save: Callable[[Any], None] | None):
        self.save = save
        self.trainer: Any = None
        self.steps_trained = 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.steps_trained += 1
        return control

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.save is None or self.trainer is None:
            return control
        if control.should_training_stop or state.global_step >= state.max_steps:
            return control
        self.save(self.trainer)
        return control
