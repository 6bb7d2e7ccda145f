"""What people see while and after a study runs: tables, progress lines, the live monitor.

Which trial is best and how trials are counted come from :mod:`hpo.results`; this module
only formats. ``quiet_libraries`` silences what transformers, datasets and Optuna would print
over it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpo.config import StudySpec
from hpo.results import (
    best_of,
    best_trial,
    directions,
    duration_s,
    fmt_params,
    objective_labels,
    objective_names,
    pareto_front,
    state_counts,
    strategy_rows,
    trial_strategy,
)
from hpo.study import max_evaluations


def quiet_libraries() -> None:
    """Silence what transformers, datasets and Optuna print over hpo's own lines (bars, advice)."""
    import logging
    import warnings

    import optuna
    from transformers.utils import logging as hf_logging

    # hpo relies on heartbeats, retry callbacks and metric names on purpose.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("datasets").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def repeat_note(trial: Any) -> str:
    """`` [repeat of #N, not trained]`` for a trial that sampler.skip_repeats did not train."""
    n = trial.user_attrs.get("repeat_of")
    return "" if n is None else f" [repeat of #{n}, not trained]"


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain fixed-width table."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    widths = {c: max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(cell(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def trial_seconds(trial: Any) -> float:
    """Wall-clock seconds of a finished trial (0 when Optuna recorded no start)."""
    return duration_s(trial) or 0.0


def values_text(trial: Any, names: str | list[str]) -> str:
    """``accuracy=0.8400`` or, with several objectives, ``f1=0.8400 trainable_params=74498``."""
    names = [names] if isinstance(names, str) else names
    pairs = zip(names, trial.values or (), strict=False)  # a pruned trial has the primary only
    return " ".join(f"{n}={v:.4g}" if i else f"{n}={v:.4f}" for i, (n, v) in enumerate(pairs))


def trial_line(trial: Any, metric: str | list[str]) -> str:
    """One finished trial: number, state, value(s), seconds, parameters, retry/repeat notes, reason."""
    value = f" {values_text(trial, metric)}" if trial.values else ""
    if not trial.values and trial.intermediate_values:  # pruned in a multi-objective study
        step = max(trial.intermediate_values)
        first = metric if isinstance(metric, str) else metric[0]
        value = f" {first}={trial.intermediate_values[step]:.4f} (evaluation {step})"
    value += " (infeasible)" if trial.user_attrs.get("feasible") is False else ""
    reason = (
        f" ({trial.user_attrs['fail_reason']})"
        if trial.state.name == "FAIL" and "fail_reason" in trial.user_attrs
        else ""
    )
    retry = f" [retry of #{trial.user_attrs['retry_of']}]" if "retry_of" in trial.user_attrs else ""
    return (
        f"trial {trial.number:>3} {trial.state.name:<8}{value} {trial_seconds(trial):6.1f}s  "
        f"{fmt_params(trial)}{retry}{repeat_note(trial)}{reason}"
    )


def best_text(best: Any, metric: str | list[str]) -> str:
    """``best accuracy=0.8400 (#3 full)``, or ``best -`` before any trial completed."""
    if best is None:
        return "best -"
    return f"best {values_text(best, metric)} (#{best.number} {trial_strategy(best) or ''})"


class ProgressPrinter:
    """Prints one line per evaluation and per finished trial, with the study's best so far."""

    def __init__(self, spec: StudySpec, worker: str = "", stream: Any = None):
        self.metric = spec.objective.metric
        self.names = spec.objectives
        self.worker = worker
        self.stream = stream or sys.stdout
        self.n_evals = max_evaluations(spec)

    def say(self, text: str) -> None:
        """Print one line (prefixed with the worker when there are several)."""
        prefix = f"[{self.worker}] " if self.worker else ""
        print(prefix + text, file=self.stream, flush=True)

    def eval_hook(self, trial: Any) -> Callable[[int, dict[str, float]], None]:
        """What to call at each evaluation of ``trial``: prints a progress bar line."""

        def hook(index: int, metrics: dict[str, float]) -> None:
            bar = "#" * index + "." * max(0, self.n_evals - index)
            self.say(
                f"trial {trial.number:>3} [{bar}] eval {index}/{self.n_evals} {self.metric}={metrics.get(self.metric, float('nan')):.4f}"
            )

        return hook

    def __call__(self, study: Any, trial: Any) -> None:
        self.say(f"{trial_line(trial, self.names)}  | {best_text(best_trial(study), self.names)}")


def print_summary(study: Any) -> None:
    """Trials by state, the best trial and a per-strategy table, after a run."""
    counts = state_counts(study.get_trials(deepcopy=False))
    states = ", ".join(
        f"{k.upper()} {v}"
        + (f" ({counts['infeasible']} infeasible)" if k == "complete" and counts["infeasible"] else "")
        for k, v in sorted(counts.items())
        if k not in ("trials", "infeasible") and v
    )
    print(f"\nstudy {study.study_name!r}: {counts['trials']} trials ({states})")
    best = best_trial(study)  # stopped-early (Ray ASHA) trials never count as best
    names = objective_names(study)
    if best is not None:
        print(f"best: trial {best.number} {values_text(best, names)}  {fmt_params(best)}")
    if len(names) > 1:
        front = pareto_front(study)
        print(f"Pareto front ({', '.join(objective_labels(study))}): {len(front)} trial(s)")
        for t in front:
            print(f"  trial {t.number:>3} {values_text(t, names)}  {fmt_params(t)}")
    rows = strategy_rows(study)
    columns = ["strategy", "trials", "complete", "infeasible", "pruned", "stopped", "fail"]
    columns += ["best_value", "best_trial", "best_params"]
    for optional in ("stopped", "infeasible"):  # shown where a study has them
        if not any(r[optional] for r in rows):
            columns.remove(optional)
    print("\nper strategy:")
    print(format_table(rows, columns))


class LiveDisplay:
    """Worker rows redrawn in place on a terminal; plain event lines otherwise."""

    def __init__(self, stream: Any, status_every: float = 30.0):
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.drawn = 0
        self.status_every = status_every
        self.last_status = time.monotonic()

    def _clear(self) -> None:
        if self.tty and self.drawn:
            # Cursor to the start of the block, then erase to the end of the screen.
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def show(self, events: list[str], rows: list[str], force_status: bool = False) -> None:
        if self.tty:
            self._clear()
            for line in events:
                self.stream.write(line + "\n")
            for line in rows:
                self.stream.write(line + "\n")
            self.drawn = len(rows)
        else:
            for line in events:
                self.stream.write(line + "\n")
            now = time.monotonic()
            if force_status or now - self.last_status >= self.status_every:
                self.last_status = now
                for line in rows:
                    self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self, events: list[str]) -> None:
        self.drawn = 0  # the last worker rows stay on screen
        for line in events:
            self.stream.write(line + "\n")
        self.stream.flush()


@dataclass
class WorkerView:
    """What the live monitor shows of one worker process."""

    index: int
    label: str
    """``gpu0`` or ``cpu``."""
    name: str
    """``host:pid``, as its trials record it in the ``worker`` attribute."""
    started: float
    """time.time() when the process started."""
    ended: str | None = None
    """None while it runs; else how it ended (``done``, ``exit code 1``, ``killed by SIGKILL``)."""


class Monitor:
    """Reads the study every poll and renders worker rows, finished trials and the best."""

    def __init__(self, study: Any, spec: StudySpec, n_trials: int, stream: Any):
        self.study = study
        self.metric = spec.objective.metric
        self.names = spec.objectives
        self.n_evals = max_evaluations(spec)
        self.n_trials = n_trials
        self.display = LiveDisplay(stream)
        self.seen_finished: set[int] | None = None
        self.events: list[str] = []
        self.first_number: int | None = None

    def event(self, text: str) -> None:
        self.events.append(text)

    def _snapshot(self) -> list[Any]:
        return self.study._storage.get_all_trials(self.study._study_id, deepcopy=False)

    def baseline(self) -> None:
        trials = self._snapshot()
        self.seen_finished = {t.number for t in trials if t.state.is_finished()}
        # WAITING trials (warm starts, queued retries) are this run's to run
        waiting = [t.number for t in trials if t.state.name == "WAITING"]
        self.first_number = min(waiting, default=len(trials))

    def poll(self, workers: list[WorkerView], force_status: bool = False) -> None:
        """Read the study once; print newly finished trials and (re)draw the worker rows."""
        import optuna

        trials = self._snapshot()
        if self.seen_finished is None:
            self.baseline()
        assert self.seen_finished is not None
        by_worker: dict[str, Any] = {}
        labels = {w.name: f"w{w.index} {w.label}" for w in workers}
        counts: dict[str, int] = {}
        for t in trials:
            if self.first_number is not None and t.number >= self.first_number:
                counts[t.state.name] = counts.get(t.state.name, 0) + 1
            if t.state == optuna.trial.TrialState.RUNNING and "worker" in t.user_attrs:
                by_worker[t.user_attrs["worker"]] = t
            if t.state.is_finished() and t.number not in self.seen_finished:
                self.seen_finished.add(t.number)
                label = labels.get(t.user_attrs.get("worker", ""), "-")
                self.events.append(f"{trial_line(t, self.names)}  [{label}]")
        best_txt = best_text(best_of(trials, directions(self.study)), self.names)
        done = sum(v for k, v in counts.items() if k in ("COMPLETE", "PRUNED", "FAIL"))
        state_txt = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        rows = [f"{self.study.study_name}: {done} finished this run ({state_txt or 'none yet'}), {best_txt}"]
        for w in sorted(workers, key=lambda w: w.index):
            head = f"  w{w.index} {w.label:<6}"
            if w.ended is not None:
                rows.append(f"{head} {w.ended}")
                continue
            t = by_worker.get(w.name)
            if t is None:
                rows.append(f"{head} {'starting' if time.time() - w.started < 5 else 'between trials'}")
                continue
            steps = sorted(t.intermediate_values)
            last = f" {self.metric}={t.intermediate_values[steps[-1]]:.4f}" if steps else ""
            secs = (time.time() - t.datetime_start.timestamp()) if t.datetime_start is not None else 0.0
            rows.append(
                f"{head} trial {t.number:>4} eval {len(steps)}/{self.n_evals}{last} {secs:5.0f}s  {fmt_params(t)}"
            )
        events, self.events = self.events, []
        if events and not self.display.tty:
            events = [f"{e}  | {best_txt}" if e.startswith("trial") else e for e in events]
        self.display.show(events, rows, force_status=force_status)

    def finish(self) -> None:
        self.display.finish(self.events)
        self.events = []
