"""Local workers: one process per GPU slot (or per share of the CPU cores), one shared study.

The parent loads the data once (surfacing data errors and warming the tokenized cache),
creates the study, then spawns one worker process per slot. Each worker sees only its GPU
(``CUDA_VISIBLE_DEVICES``) and its share of the cores, joins the study and takes trials from a
budget shared by all workers, so ``n_trials`` counts for the whole run. The parent polls the
storage (every ``poll_seconds``) to show each worker's trial and the study's best; it fails
the trial of a worker that dies and starts a replacement; SIGINT/SIGTERM stop every worker
with no trial left RUNNING.

``optimize_loop`` is the trial loop every worker runs (``hpo run``, ``hpo worker`` and the
workers started here): Optuna's ``study.optimize`` one trial at a time, so that a shared
budget, clean interrupts and queued retries fit around it.
"""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hpo.config import StudySpec
from hpo.errors import UserError

# A slot whose worker keeps dying (bad GPU, out of host memory at start) is given up after this
# many replacements, so a broken slot cannot spin forever.
MAX_RESPAWNS_PER_SLOT = 3
# Seconds the parent waits for workers to fail their trial and exit after SIGINT/SIGTERM before
# it kills them (their trials are then failed by the parent).
STOP_WAIT_SECONDS = 30.0


# --------------------------------------------------------------------------- slots


@dataclass(frozen=True)
class Slot:
    """One worker process: which GPU it sees and how many CPU threads it uses."""

    index: int
    gpu: str | None
    """CUDA_VISIBLE_DEVICES value for the worker (a GPU index or UUID); None on CPU."""
    threads: int
    """torch intra-op threads (cores // workers, at least 1)."""
    hide_gpus: bool = False
    """CPU worker on a machine with GPUs (execution.device: cpu): hide them."""

    @property
    def label(self) -> str:
        return f"gpu{self.gpu}" if self.gpu is not None else "cpu"

    def env(self) -> dict[str, str]:
        """Environment the worker process starts with (read by CUDA and OpenMP at import)."""
        env = {
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
            "TOKENIZERS_PARALLELISM": "false",
        }
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        elif self.hide_gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def detect_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """Visible GPUs, without importing torch (the parent must not initialise CUDA).

    ``CUDA_VISIBLE_DEVICES`` wins when set (its entries, in order); otherwise the GPUs that
    ``nvidia-smi`` lists; otherwise none.
    """
    value = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        ids = [v.strip() for v in value.split(",") if v.strip()]
        # CUDA stops at the first invalid entry; "-1" is the usual way to hide every GPU.
        out: list[str] = []
        for v in ids:
            if v.startswith("-"):
                break
            out.append(v)
        return out
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        res = subprocess.run(
            [exe, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if res.returncode != 0:
        return []
    return [line.strip() for line in res.stdout.splitlines() if line.strip().isdigit()]


def _is_hpo_worker(cmdline: list[str]) -> bool:
    """``hpo worker ...`` or ``python -m hpo worker ...``."""
    for i, arg in enumerate(cmdline[:-1]):
        if os.path.basename(arg) == "hpo":  # the module (-m hpo) or the console script
            return cmdline[i + 1] == "worker"
    return False


def local_hpo_workers() -> int:
    """``hpo worker`` processes of this user on this host that may run on this process's cores."""
    import psutil

    mine = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    uid = os.getuid()
    n = 0
    for proc in psutil.process_iter(["cmdline", "uids"]):
        try:
            uids = proc.info["uids"]
            if uids is None or uids.real != uid or not _is_hpo_worker(proc.info["cmdline"] or []):
                continue
            if mine is not None and not mine & set(proc.cpu_affinity()):
                continue  # pinned to other cores (a scheduler's CPU binding)
            n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            continue
    return n


def joining_worker_threads(threads: int | None = None) -> tuple[int, str]:
    """torch intra-op threads for ``hpo worker`` and where the number comes from.

    ``--threads`` if given, else ``OMP_NUM_THREADS`` (what a cluster's job script usually sets),
    else this process's cores divided by the ``hpo worker`` processes of this user on this host
    that share them (torch's default, every core in every worker, oversubscribes the cores as
    soon as two workers share a machine).
    """
    if threads:
        return threads, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores, workers = cpu_cores(), max(1, local_hpo_workers())
    return max(1, cores // workers), f"{cores} cores shared by {workers} hpo worker(s) on this host"


def plan_slots(
    workers: int | str | None,
    gpus: list[int] | None,
    trials_per_gpu: int | None,
    device: str = "auto",
    *,
    cores: int | None = None,
    visible: list[str] | None = None,
) -> list[Slot]:
    """Decide the worker processes.

    Args:
        workers: a number, ``"auto"`` (one per GPU slot; on CPU one per 2 cores) or None (1).
        gpus: indices into the visible GPUs (``--gpus 0,2``); None: every visible GPU when the
            device allows CUDA.
        trials_per_gpu: worker processes that share one GPU (K); with an explicit ``workers``
            count the workers are spread round-robin over the GPUs instead.
        device: ``execution.device`` (auto, cpu, cuda).
        cores: CPU cores to share (default: this process's affinity).
        visible: visible GPUs (default: ``detect_gpus()``).

    Raises:
        UserError: ``--gpus`` names a GPU that is not visible, or GPUs with device cpu.
    """
    cores = cores or cpu_cores()
    k = max(1, trials_per_gpu or 1)
    if device == "cpu":
        if gpus:
            raise UserError("--gpus: the study's execution.device is cpu; drop --gpus or set device to auto")
        visible = []
    elif visible is None:
        visible = detect_gpus()
    ids: list[str] = []
    if gpus:
        for g in gpus:
            if g < 0 or (visible and g >= len(visible)):
                shown = f"0..{len(visible) - 1}" if visible else "none"
                raise UserError(f"--gpus: GPU {g} is not visible (visible GPUs: {shown})")
        ids = [visible[g] if visible else str(g) for g in gpus]
    elif visible:
        ids = list(visible)
    if device == "cuda" and not ids:
        raise UserError("execution.device is cuda but no GPU is visible (CUDA_VISIBLE_DEVICES / nvidia-smi)")
    if ids:
        if isinstance(workers, int) and workers > 1:
            n = workers
            assign = [ids[i % len(ids)] for i in range(n)]
        else:
            n = len(ids) * k
            assign = [ids[i // k] for i in range(n)]
        threads = max(1, cores // n)
        return [Slot(i, assign[i], threads) for i in range(n)]
    if workers == "auto":
        # Two intra-op threads per worker: one thread leaves a small model's matmuls slow, all
        # cores in one worker leave trials queueing.
        n = max(1, cores // 2)
    else:
        n = int(workers or 1)
    threads = max(1, cores // n)
    return [Slot(i, None, threads, hide_gpus=device == "cpu") for i in range(n)]


# --------------------------------------------------------------------------- the trial loop


class _SignalScope:
    """Installs ``_handle`` for SIGINT and SIGTERM while the ``with`` block runs.

    Handlers can only be installed from the main thread (a Ray actor runs elsewhere); there
    the scope does nothing.
    """

    default_name = "SIGINT"

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else self.default_name

    def __enter__(self) -> Any:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        raise NotImplementedError


# Why this process was told to stop when the signal alone does not say it: set by the watch on
# a worker's parent (``_ParentWatch``) before it sends the worker SIGTERM.
_stop_reason: str | None = None


class _Interrupts(_SignalScope):
    """SIGINT/SIGTERM: inside a trial, interrupt it (it is stored FAIL, reason "interrupted");
    between trials, stop before the next one. Later signals only wait for that to finish.
    """

    default_name = "KeyboardInterrupt"

    def __init__(self) -> None:
        super().__init__()
        self.in_objective = False
        self.raised = False

    @property
    def name(self) -> str:
        return _stop_reason or super().name

    @property
    def stopping(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        if self.in_objective and not self.raised:
            self.raised = True
            raise KeyboardInterrupt(self.name)

    def note_keyboard_interrupt(self) -> None:
        """A KeyboardInterrupt not raised by our handler (no handler in this thread)."""
        if self.signum is None:
            self.signum = signal.SIGINT
        self.raised = True


@dataclass
class _Current:
    trial_id: int | None = None
    number: int | None = None
    retry: bool = False
    replaces: bool = False
    """A retry of a trial that this run started (it takes that trial's place in the count)."""


def _waiting_retries(study: Any) -> int:
    """Sweep stale trials, then count queued retries (WAITING trials that repeat a failed one)."""
    import optuna

    from hpo.storage import sweep_stale_trials

    sweep_stale_trials(study)
    waiting = study._storage.get_all_trials(
        study._study_id, deepcopy=False, states=(optuna.trial.TrialState.WAITING,)
    )
    return sum(1 for t in waiting if "failed_trial" in t.system_attrs)


# Held by a background sweep while it fails stale trials and queues their retries, so a worker
# deciding whether a retry is left never looks between the FAIL and the enqueued retry.
_SWEEP_LOCK = threading.Lock()


def _retries_to_run(
    study: Any, stopping: Callable[[], bool], say: Callable[[str], None] | None = None
) -> bool:
    """Whether a worker whose budget is spent should run one more trial: a queued retry.

    While other trials of the study are RUNNING, wait until each has either sent a heartbeat
    since (its worker is alive: leave) or gone stale (its worker died: it is failed, its retry
    queued, and this worker runs it). So the last worker standing finishes a dead worker's
    trial instead of leaving it RUNNING until the study is run again. Costs at most one
    heartbeat interval (+2 s) when the other workers are alive. ``say`` gets one line per
    trial waited for (its worker, heartbeat age, and when it is failed without one).
    """
    from hpo.storage import heartbeat_interval_of, running_trial_lines

    if _waiting_retries(study):
        return True
    interval = heartbeat_interval_of(study._storage)
    backend = getattr(study._storage, "_backend", study._storage)
    ages_of = getattr(backend, "heartbeat_ages", None)
    if interval is None or ages_of is None:
        return False
    # Heartbeat timestamps have 1 s resolution on SQLite and MySQL; 1 s more for a busy host.
    slack = 2.0
    grace = getattr(backend, "grace_period", None) or 2 * interval
    t0 = time.monotonic()
    announced = say is None
    while not stopping():
        ages = ages_of(study._study_id)
        waited = time.monotonic() - t0
        if not ages:
            # Nothing RUNNING: a trial failed by this process's sweep has its retry queued by
            # the time the sweep lets go of the lock.
            with _SWEEP_LOCK:
                return bool(_waiting_retries(study))
        if not announced and say is not None:
            announced = True
            for line in running_trial_lines(study):
                say(f"waiting for other workers: {line}")
        if waited > grace + 2 * interval + slack:
            return False
        if waited > interval + slack and all(age <= interval + slack for age in ages.values()):
            return False  # every running trial beat while we waited
        time.sleep(min(1.0, float(interval)))
        if _waiting_retries(study):
            return True
    return False


def optimize_loop(
    study: Any,
    objective: Callable[[Any], float],
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    callbacks: Iterable[Callable[[Any, Any], None]] = (),
    budget: Any = None,
    first_number: int | None = None,
    say: Callable[[str], None] | None = None,
) -> int:
    """Run trials until the budget, the count or the time is spent; then run queued retries.

    A queued retry of a trial whose worker died is taken first (Optuna's ``ask`` pops WAITING
    trials). It counts toward ``n_trials``/``budget`` like any trial, unless the trial it
    repeats was started by this run (number >= ``first_number``): then it replaces that trial,
    which was counted already. SIGINT/SIGTERM during a trial stores it as FAIL with
    ``fail_reason`` "interrupted (SIGINT)" (the signal's name); no trial is left RUNNING.

    Args:
        study: the Optuna study.
        objective: the trial function.
        n_trials: trials for this worker (None: no limit); ignored when ``budget`` is given.
        timeout: seconds after which no new trial starts.
        callbacks: Optuna callbacks, called after each trial.
        budget: shared budget with ``claim() -> bool``, ``refund()`` and ``first_number``
            (local workers).
        first_number: trials the study had when this run began (default: the budget's, else
            the count now).
        say: where to say what a worker with nothing left to run waits for (None: silent).

    Returns:
        The number of new (not retried) trials this worker ran.

    Raises:
        KeyboardInterrupt: stopped by SIGINT/SIGTERM (after the trial in flight is stored).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    if first_number is None:
        first_number = getattr(budget, "first_number", None)
    if first_number is None:
        first_number = study._storage.get_n_trials(study._study_id)
    guard = _Interrupts()
    current = _Current()

    def wrapped(trial: Any) -> float:
        current.trial_id, current.number = trial._trial_id, trial.number
        attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
        current.retry = "failed_trial" in attrs
        history = attrs.get("retry_history") or []
        current.replaces = current.retry and bool(history) and history[-1] >= first_number
        if guard.stopping:
            trial.set_user_attr("fail_reason", f"interrupted ({guard.name}) before it started")
            raise KeyboardInterrupt(guard.name)
        guard.in_objective = True
        try:
            return objective(trial)
        except KeyboardInterrupt:
            guard.note_keyboard_interrupt()
            trial.set_user_attr("fail_reason", f"interrupted ({guard.name})")
            raise
        finally:
            guard.in_objective = False

    fresh = counted = 0
    _freeze_long_lived_objects()  # what the worker loaded (modules, data, base weights)
    frozen = False  # and again after the first trial (what the first trial imported)
    with guard, _StaleSweeper(study):
        try:
            while not guard.stopping:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if budget is not None:
                    claimed = bool(budget.claim())
                else:
                    claimed = n_trials is None or counted < n_trials
                if not claimed and not _retries_to_run(study, lambda: guard.stopping, say):
                    break
                current.trial_id = current.number = None
                current.retry = current.replaces = False
                study.optimize(wrapped, n_trials=1, catch=(Exception,), callbacks=list(callbacks))
                if not frozen:
                    _freeze_long_lived_objects()
                    frozen = True
                if current.replaces:
                    if claimed and budget is not None:
                        budget.refund()
                elif current.trial_id is not None:
                    counted += 1
                    fresh += 0 if current.retry else 1
        except KeyboardInterrupt:
            guard.note_keyboard_interrupt()
            _fail_if_running(study, current.trial_id, f"interrupted ({guard.name})")
            raise
        finally:
            # In a process that goes on (a notebook, tests) what was frozen and is dropped
            # later must be collectable again.
            gc.unfreeze()
    if guard.stopping:
        raise KeyboardInterrupt(guard.name)
    return fresh


def _freeze_long_lived_objects() -> None:
    """Move what outlives every trial out of the garbage collector's view.

    A worker holds modules, tokenizer, datasets and base weights (millions of objects with
    transformers loaded); each full collection walked them all: 0.23 s per ``gc.collect()``
    here, and a trial runs two (the Trainer's, then the one that frees its model), 16% of a
    2.7 s trial. Collected first, so no garbage is kept; later garbage is collected as before.
    """
    gc.collect()
    gc.freeze()


class _StaleSweeper:
    """Background sweep, once per heartbeat interval, of trials whose worker died.

    Optuna sweeps only when a worker starts a trial, so a dead worker's trial would wait for
    the next trial start anywhere; this fails it within grace period + one interval and queues
    its retry at once.
    """

    def __init__(self, study: Any):
        self.study = study
        from hpo.storage import heartbeat_interval_of

        self.interval = heartbeat_interval_of(study._storage)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _StaleSweeper:
        if self.interval:
            self._thread = threading.Thread(target=self._run, name="hpo-stale-sweep", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        from hpo.storage import sweep_stale_trials

        while not self._stop.wait(self.interval):
            try:
                with _SWEEP_LOCK:
                    sweep_stale_trials(self.study)
            except Exception:
                pass  # a transient database error; the next sweep (or Optuna's own) retries


def _fail_if_running(study: Any, trial_id: int | None, reason: str) -> None:
    """The interrupt hit between Optuna's ask and tell: store the trial as FAIL ourselves."""
    if trial_id is None:
        return
    import optuna

    from hpo.storage import fail_trial

    storage = study._storage
    try:
        storage.remove_session()  # the interrupted session may be mid-transaction
        if storage.get_trial(trial_id).state == optuna.trial.TrialState.RUNNING:
            fail_trial(study, trial_id, reason, retry=False)
    except Exception:
        pass  # the parent (or the next worker's heartbeat sweep) fails it


# --------------------------------------------------------------------------- worker processes


class Budget:
    """Trials left for the whole run, shared by the worker processes.

    ``first_number``: trials the study had when the run began. A retry of a trial numbered
    below it (lost by an earlier run) counts as one of this run's trials; a retry of a later
    one replaces a trial this run counted already. It also seeds the workers' samplers, so a
    run is reproducible from the database it starts on.
    """

    def __init__(self, mp_context: Any, n: int, first_number: int = 0):
        self._value = mp_context.Value("i", n)
        self.first_number = first_number

    def claim(self) -> bool:
        """Take one trial; False when none is left."""
        with self._value.get_lock():
            if self._value.value <= 0:
                return False
            self._value.value -= 1
            return True

    def refund(self) -> None:
        """Give a trial back (the one taken turned out to be a queued retry)."""
        with self._value.get_lock():
            self._value.value += 1

    def remaining(self) -> int:
        with self._value.get_lock():
            return int(self._value.value)

    def close(self) -> None:
        """No further trials start (stopping)."""
        with self._value.get_lock():
            self._value.value = 0


class _ParentWatch:
    """Stops this worker when the process that started it is gone.

    A worker's parent is the fork server, not ``hpo run``, and the fork server lives as long as
    any worker holds its pipe; so when ``hpo run`` is killed (SIGKILL, the OOM killer) nothing
    tells the workers, and they went on taking trials. This thread checks the ``hpo run``
    process (pid and start time, so a reused pid does not count) every ``POLL_SECONDS``; when it
    is gone it sends this process SIGTERM, recorded as ``interrupted (parent process died)``.
    If the worker has not exited ``GIVE_UP_SECONDS`` later, it exits without cleanup (its trial
    is then failed by the next sweep on this host, which finds the process gone).
    """

    POLL_SECONDS = 1.0
    GIVE_UP_SECONDS = 60.0

    def __init__(self, pid: int, created: float):
        self.pid, self.created = pid, created

    @staticmethod
    def identify(pid: int) -> float:
        """The start time of process ``pid`` (with the pid, what identifies it)."""
        import psutil

        return float(psutil.Process(pid).create_time())

    def alive(self) -> bool:
        import psutil

        try:
            proc = psutil.Process(self.pid)
            return proc.create_time() == self.created and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:  # not allowed to look: assume it lives
            return True

    def start(self) -> None:
        threading.Thread(target=self._run, name="hpo-parent-watch", daemon=True).start()

    def _run(self) -> None:
        global _stop_reason
        while self.alive():
            time.sleep(self.POLL_SECONDS)
        _stop_reason = "parent process died"
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(self.GIVE_UP_SECONDS)
        os._exit(1)


def _worker_main(
    spec: StudySpec,
    url: str,
    slot: Slot,
    budget: Budget,
    deadline: float | None,
    respawns: int = 0,
    parent: tuple[int, float] | None = None,
) -> None:
    """Entry point of one worker process (spawned); ``parent``: pid and start time of ``hpo run``."""
    os.environ.update(slot.env())
    if parent is not None:
        _ParentWatch(*parent).start()
    code = 0
    try:
        import torch
        from transformers.utils import logging as hf_logging

        from hpo import storage

        torch.set_num_threads(slot.threads)
        # The parent shows progress; a bar per worker would interleave with it.
        hf_logging.disable_progress_bar()
        # The parent fails a sibling's trial when that worker dies, naming how it died.
        storage.CHECK_LOCAL_WORKERS = False
        from hpo.study import run_worker

        timeout = None if deadline is None else max(0.0, deadline - time.time())
        run_worker(
            spec,
            url,
            n_trials=None,  # the run's shared budget counts the trials
            timeout=timeout,
            worker_index=slot.index + 1,
            create=False,
            quiet=True,
            budget=budget,
            # A replacement must not propose what the worker it replaces proposed.
            sampler_salt=f"respawn {respawns}" if respawns else "",
        )
    except KeyboardInterrupt:
        code = 130
    except UserError as e:
        from hpo.storage import redact

        print(f"worker {slot.index}: error: {redact(str(e))}", file=sys.stderr, flush=True)
        code = 1
    except BaseException as e:  # noqa: B036 - a worker reports whatever ended it, then exits
        from hpo.storage import redact

        print(redact(traceback.format_exc()), file=sys.stderr)
        print(f"worker {slot.index}: internal error: {redact(str(e))}", file=sys.stderr, flush=True)
        code = 2
    sys.stdout.flush()
    sys.stderr.flush()
    # multiprocessing runs its own exit handlers (shared semaphores) before the interpreter's
    # atexit ones; registered last, this runs first among those and skips the teardown of
    # torch and transformers (seconds per worker), whose results are already stored.
    atexit.register(os._exit, code)
    sys.exit(code)


# Imported once in the fork server, so that each worker forks with them loaded instead of
# importing them itself (~5 s of CPU each here, 4 workers on 2 cores: ~10 s before any trial).
# None of them initialises CUDA; each worker picks its GPU after the fork.
PRELOAD = ["torch", "transformers.trainer", "peft", "sklearn.metrics", "optuna", "datasets", "hpo.objective"]


def _mp_context() -> Any:
    """A fork server with the training stack preloaded where there is one, else spawn."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    # A fresh server per launch: it starts from this process's environment and stdout/stderr now.
    _stop_forkserver()
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _start_forkserver(mp: Any) -> None:
    if mp.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _stop_forkserver() -> None:
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)
    if stop is not None:
        stop()


@dataclass
class _Worker:
    slot: Slot
    process: Any
    started: float
    respawns: int = 0
    handled: bool = False

    @property
    def name(self) -> str:
        return f"{socket.gethostname()}:{self.process.pid}"


def _exit_text(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# --------------------------------------------------------------------------- display


class _Display:
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


def _trial_line(t: Any, metric: str, label: str) -> str:
    from hpo.study import fmt_params, repeat_note

    secs = (
        (t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start
        else 0.0
    )
    value = f" {metric}={t.value:.4f}" if t.value is not None else ""
    reason = (
        f" ({t.user_attrs['fail_reason']})"
        if t.state.name == "FAIL" and "fail_reason" in t.user_attrs
        else ""
    )
    retry = f" [retry of #{t.user_attrs['retry_of']}]" if "retry_of" in t.user_attrs else ""
    retry += repeat_note(t)
    return f"trial {t.number:>4} {t.state.name:<8}{value} {secs:6.1f}s  {fmt_params(t)}{retry}{reason}  [{label}]"


class _Monitor:
    """Reads the study every poll and renders worker rows, finished trials and the best."""

    def __init__(self, study: Any, spec: StudySpec, n_trials: int, stream: Any):
        from hpo.study import max_evaluations

        self.study = study
        self.metric = spec.objective.metric
        self.n_evals = max_evaluations(spec)
        self.n_trials = n_trials
        self.display = _Display(stream)
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
        self.first_number = len(trials)

    def poll(self, workers: dict[int, _Worker], force_status: bool = False) -> None:
        import optuna

        from hpo.study import fmt_params

        trials = self._snapshot()
        if self.seen_finished is None:
            self.baseline()
        assert self.seen_finished is not None
        maximize = self.study.direction == optuna.study.StudyDirection.MAXIMIZE
        by_worker: dict[str, Any] = {}
        labels = {w.name: f"w{w.slot.index} {w.slot.label}" for w in workers.values()}
        best = None
        counts: dict[str, int] = {}
        for t in trials:
            if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
                if best is None or (t.value > best.value if maximize else t.value < best.value):
                    best = t
            if self.first_number is not None and t.number >= self.first_number:
                counts[t.state.name] = counts.get(t.state.name, 0) + 1
            if t.state == optuna.trial.TrialState.RUNNING and "worker" in t.user_attrs:
                by_worker[t.user_attrs["worker"]] = t
            if t.state.is_finished() and t.number not in self.seen_finished:
                self.seen_finished.add(t.number)
                self.events.append(
                    _trial_line(t, self.metric, labels.get(t.user_attrs.get("worker", ""), "-"))
                )
        best_txt = (
            f"best {self.metric}={best.value:.4f} (#{best.number} {best.params.get('strategy', '')})"
            if best is not None
            else "best -"
        )
        done = sum(v for k, v in counts.items() if k in ("COMPLETE", "PRUNED", "FAIL"))
        state_txt = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        rows = [f"{self.study.study_name}: {done} finished this run ({state_txt or 'none yet'}), {best_txt}"]
        for w in sorted(workers.values(), key=lambda w: w.slot.index):
            head = f"  w{w.slot.index} {w.slot.label:<6}"
            code = w.process.exitcode
            if code is not None:
                rows.append(f"{head} {'done' if code == 0 else _exit_text(code)}")
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


# --------------------------------------------------------------------------- the parent


def launch(
    spec: StudySpec,
    url: str,
    *,
    workers: int | str,
    gpus: list[int] | None,
    trials_per_gpu: int,
    n_trials: int,
    timeout: float | None,
    stream: Any = None,
    poll_seconds: float = 2.0,
) -> Any:
    """Run the study with one local worker process per slot; returns the study.

    The run options come resolved (flag > env > study file > default: :mod:`hpo.options`).

    Args:
        spec: the study.
        url: storage URL (SQLite is refused above ``SQLITE_MAX_WORKERS`` workers).
        workers: N or ``"auto"``.
        gpus: GPU indices; None: every visible GPU.
        trials_per_gpu: workers per GPU.
        n_trials: new trials for the whole run.
        timeout: seconds after which no new trial starts; None: no limit.
        stream: where the live display goes (default: stdout).
        poll_seconds: seconds between storage polls for the display.

    Raises:
        UserError: bad slots, SQLite with too many workers, data or storage problems.
        KeyboardInterrupt: stopped by SIGINT/SIGTERM, after every worker stored its trial.
    """
    import optuna

    from hpo.storage import check_workers
    from hpo.study import _quiet_transformers

    stream = stream or sys.stdout
    slots = plan_slots(workers, gpus, trials_per_gpu, spec.execution.device)
    check_workers(url, len(slots))

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    _quiet_transformers()
    mp = _mp_context()
    try:
        # The fork server imports the training stack while this process loads the data.
        _start_forkserver(mp)
        return _supervise(spec, url, slots, mp, n_trials, timeout, stream, poll_seconds)
    finally:
        _stop_forkserver()


def _supervise(
    spec: StudySpec,
    url: str,
    slots: list[Slot],
    mp: Any,
    n_trials: int,
    timeout: float | None,
    stream: Any,
    poll_seconds: float,
) -> Any:
    """Create the study, run the worker processes, show progress; see ``launch``."""
    import optuna

    from hpo.objective import prepare
    from hpo.storage import (
        fail_trial,
        failed_trial_lines,
        open_storage,
        redact,
        running_trial_lines,
        sweep_stale_trials,
    )
    from hpo.study import open_study

    ex = spec.execution
    # Data errors surface here, once, and the tokenized splits are cached for the workers.
    ctx = prepare(spec)
    fingerprint = ctx.data.fingerprint
    del ctx
    storage = open_storage(
        url,
        heartbeat_interval=ex.heartbeat_interval,
        grace_period=ex.grace_period,
        max_retries=ex.max_retries,
    )
    # Created here, once, so that workers only ever load it (no create race).
    study = open_study(spec, storage, create=True, fingerprint=fingerprint)
    first_number = storage.get_n_trials(study._study_id)
    # Trials an earlier run left RUNNING: failed now if their process on this host is gone (or
    # their heartbeat is stale); the others are said, with when they will be failed.
    for line in failed_trial_lines(study, sweep_stale_trials(study)) + running_trial_lines(study):
        print(line, file=stream, flush=True)
    print(
        f"{len(slots)} worker(s): "
        + ", ".join(
            f"w{s.index} {s.label} ({s.threads} thread{'s' if s.threads > 1 else ''})" for s in slots
        ),
        file=stream,
        flush=True,
    )

    budget = Budget(mp, n_trials, first_number)
    parent = (os.getpid(), _ParentWatch.identify(os.getpid()))
    deadline = None if timeout is None else time.time() + timeout
    monitor = _Monitor(study, spec, n_trials, stream)
    monitor.baseline()
    workers_by_slot: dict[int, _Worker] = {}
    dead_names: list[str] = []

    def start(slot: Slot, respawns: int = 0) -> None:
        saved = {k: os.environ.get(k) for k in slot.env()}
        os.environ.update(slot.env())  # a spawned child starts from the parent's environment
        try:
            p = mp.Process(
                target=_worker_main,
                args=(spec, url, slot, budget, deadline, respawns, parent),
                name=f"hpo-worker-{slot.index}",
                daemon=False,
            )
            p.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        workers_by_slot[slot.index] = _Worker(slot, p, time.time(), respawns)

    def fail_trials_of(names: list[str], reason: str, retry: bool) -> list[int]:
        """Fail the RUNNING trials whose worker attribute names one of ``names``."""
        failed = []
        storage.remove_session()
        for t in storage.get_all_trials(
            study._study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
        ):
            if t.user_attrs.get("worker") in names and fail_trial(study, t._trial_id, reason, retry=retry):
                failed.append(t.number)
        return failed

    stopping = False
    clean_exits = 0
    signals = _ParentSignals()
    with signals:
        try:
            for slot in slots:
                start(slot)
            next_poll = 0.0
            while True:
                for w in list(workers_by_slot.values()):
                    code = w.process.exitcode
                    if code is None or w.handled:
                        continue
                    w.handled = True
                    if code == 0:
                        clean_exits += 1
                        continue
                    what = _exit_text(code)
                    dead_names.append(w.name)
                    failed = fail_trials_of(
                        [w.name], f"worker {w.slot.index} ({w.name}) died: {what}", retry=True
                    )
                    note = f"; its trial {failed} failed, retry queued" if failed else ""
                    monitor.event(f"worker w{w.slot.index} {w.slot.label} {what}{note}")
                    if code == 1:
                        # A user error (storage, data, settings): a replacement would hit it too.
                        monitor.event(f"worker w{w.slot.index} not restarted (see its error above)")
                    elif w.respawns < MAX_RESPAWNS_PER_SLOT and (
                        budget.remaining() > 0 or _waiting_retries(study)
                    ):
                        start(w.slot, w.respawns + 1)
                        monitor.event(f"worker w{w.slot.index} restarted")
                    elif w.respawns >= MAX_RESPAWNS_PER_SLOT:
                        monitor.event(f"worker w{w.slot.index} gave up after {w.respawns} restarts")
                alive = [w for w in workers_by_slot.values() if w.process.exitcode is None]
                if not alive:
                    # A worker that died last leaves its retry queued with nobody to run it.
                    if dead_names and _waiting_retries(study):
                        w0 = min(workers_by_slot.values(), key=lambda w: w.respawns)
                        if w0.respawns < MAX_RESPAWNS_PER_SLOT:
                            start(w0.slot, w0.respawns + 1)
                            monitor.event(f"worker w{w0.slot.index} started for queued retries")
                            continue
                    break
                now = time.monotonic()
                if now >= next_poll:
                    try:
                        monitor.poll(workers_by_slot)
                    except Exception as e:  # the display must not stop the run (database hiccup)
                        print(f"(display: {redact(str(e))[:200]})", file=stream, flush=True)
                    next_poll = now + poll_seconds
                time.sleep(0.2)
        except KeyboardInterrupt:
            stopping = True
            budget.close()
            signals.ignore()
            name = signals.name
            monitor.event(
                f"{name}: stopping {len(workers_by_slot)} worker(s); their trials are stored as FAIL"
            )
            # The workers get the signal the user sent, so that their trials record it.
            forward = signal.SIGTERM if signals.signum == signal.SIGTERM else signal.SIGINT
            for w in workers_by_slot.values():
                if w.process.exitcode is None:
                    try:
                        os.kill(w.process.pid, forward)
                    except ProcessLookupError:
                        pass
            end = time.monotonic() + STOP_WAIT_SECONDS
            for w in workers_by_slot.values():
                w.process.join(max(0.0, end - time.monotonic()))
            stuck = [w for w in workers_by_slot.values() if w.process.exitcode is None]
            for w in stuck:
                w.process.kill()
                w.process.join(5)
            names = [w.name for w in workers_by_slot.values()] + dead_names
            fail_trials_of(names, f"interrupted ({name})", retry=False)
        finally:
            for w in workers_by_slot.values():
                if w.process.exitcode is None:
                    w.process.kill()
                    w.process.join(5)
    if dead_names:
        sweep_stale_trials(study)
    monitor.poll(workers_by_slot, force_status=True)
    monitor.finish()
    storage.remove_session()
    if stopping:
        print(f"stopped; the study is in {redact(url)}", file=stream, flush=True)
        raise KeyboardInterrupt(signals.name)
    if clean_exits == 0:
        raise UserError(f"every worker failed ({len(workers_by_slot)} slot(s)); see the errors above")
    return study


class _ParentSignals(_SignalScope):
    """The first SIGINT/SIGTERM raises KeyboardInterrupt in the parent; later ones are ignored
    while it waits for the workers to store their trials.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ignoring = False

    def ignore(self) -> None:
        self.ignoring = True

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        if not self.ignoring:
            self.ignoring = True
            raise KeyboardInterrupt(signal.Signals(signum).name)
