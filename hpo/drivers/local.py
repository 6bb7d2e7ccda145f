"""Local workers: one process per GPU slot (or per share of the CPU cores), one shared study.

The parent loads the data once (surfacing data errors and warming the tokenized cache),
creates the study, then spawns one worker process per slot. Each worker sees only its GPU
(``CUDA_VISIBLE_DEVICES``) and its share of the cores, joins the study and takes trials from a
budget shared by all workers, so ``n_trials`` counts for the whole run. The parent polls the
storage (every ``poll_seconds``) to show each worker's trial and the study's best; it fails
the trial of a worker that dies and starts a replacement; SIGINT/SIGTERM stop every worker
with no trial left RUNNING.

Each worker process runs :func:`hpo.drivers.worker.run_worker`; a worker whose parent dies
stops itself (``_ParentWatch``).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from hpo.config import StudySpec
from hpo.display import Monitor, WorkerView, quiet_libraries
from hpo.drivers.loop import SignalScope, set_stop_reason, waiting_retries
from hpo.drivers.setup import open_run
from hpo.drivers.slots import Slot, plan_slots
from hpo.errors import UserError

# A slot whose worker keeps dying (bad GPU, out of host memory at start) is given up after this
# many replacements, so a broken slot cannot spin forever.
MAX_RESPAWNS_PER_SLOT = 3
# Seconds the parent waits for workers to fail their trial and exit after SIGINT/SIGTERM before
# it kills them (their trials are then failed by the parent).
STOP_WAIT_SECONDS = 30.0


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
        while self.alive():
            time.sleep(self.POLL_SECONDS)
        set_stop_reason("parent process died")
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
        from hpo.drivers.worker import run_worker

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


def _views(workers: dict[int, _Worker]) -> list[WorkerView]:
    """What the live monitor shows of each worker process."""
    views = []
    for w in workers.values():
        code = w.process.exitcode
        ended = None if code is None else "done" if code == 0 else _exit_text(code)
        views.append(WorkerView(w.slot.index, w.slot.label, w.name, w.started, ended))
    return views


def _exit_text(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


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

    stream = stream or sys.stdout
    slots = plan_slots(workers, gpus, trials_per_gpu, spec.execution.device)
    check_workers(url, len(slots))

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    quiet_libraries()
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

    from hpo.connectivity import is_transient
    from hpo.outage import call_with_retry, first_line
    from hpo.storage import fail_trial, redact, sweep_stale_trials

    # Data errors surface here, once, and the tokenized splits are cached for the workers; the
    # study is created here, once, so that workers only ever load it (no create race).
    run = open_run(
        spec, url, create=True, say=lambda line: print(line, file=stream, flush=True), requeue=True
    )
    storage, study, first_number = run.storage, run.study, run.first_number
    del run
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
    monitor = Monitor(study, spec, n_trials, stream)
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

        def fail() -> list[int]:
            failed = []
            storage.remove_session()
            for t in storage.get_all_trials(
                study._study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
            ):
                if t.user_attrs.get("worker") in names and fail_trial(study, t._trial_id, reason, retry=retry):
                    failed.append(t.number)
            return failed

        what = "fail the trials of a stopped worker"
        return call_with_retry(fail, what, spec.execution.db_patience, storage=storage)

    stopping = False
    clean_exits = 0
    signals = _ParentSignals()
    with signals:
        try:
            for slot in slots:
                start(slot)
            next_poll = 0.0
            display_down = False
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
                        budget.remaining() > 0 or waiting_retries(study)
                    ):
                        start(w.slot, w.respawns + 1)
                        monitor.event(f"worker w{w.slot.index} restarted")
                    elif w.respawns >= MAX_RESPAWNS_PER_SLOT:
                        monitor.event(f"worker w{w.slot.index} gave up after {w.respawns} restarts")
                alive = [w for w in workers_by_slot.values() if w.process.exitcode is None]
                if not alive:
                    # A worker that died last leaves its retry queued with nobody to run it.
                    if dead_names and waiting_retries(study):
                        w0 = min(workers_by_slot.values(), key=lambda w: w.respawns)
                        if w0.respawns < MAX_RESPAWNS_PER_SLOT:
                            start(w0.slot, w0.respawns + 1)
                            monitor.event(f"worker w{w0.slot.index} started for queued retries")
                            continue
                    break
                now = time.monotonic()
                if now >= next_poll:
                    try:
                        monitor.poll(_views(workers_by_slot))
                    except Exception as e:  # the display must not stop the run (database hiccup)
                        if not is_transient(e):
                            print(f"(display: {redact(str(e))[:200]})", file=stream, flush=True)
                        elif not display_down:
                            print(
                                f"(display: database unreachable: {first_line(e)}; the workers train on)",
                                file=stream,
                                flush=True,
                            )
                        display_down = is_transient(e)
                    else:
                        display_down = False
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
    monitor.poll(_views(workers_by_slot), force_status=True)
    monitor.finish()
    storage.remove_session()
    if stopping:
        print(f"stopped; the study is in {redact(url)}", file=stream, flush=True)
        raise KeyboardInterrupt(signals.name)
    if clean_exits == 0:
        raise UserError(f"every worker failed ({len(workers_by_slot)} slot(s)); see the errors above")
    return study


class _ParentSignals(SignalScope):
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
