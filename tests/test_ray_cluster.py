"""A two-node Ray cluster on this machine, following the README's multi-node recipe: the second
node dies in the middle of a trial; the trial runs again on the surviving node and the study
finishes with every trial accounted for. The storage password given on the command line (the
worst case) reaches neither Ray's job records nor Ray's folders."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, service_url, write_study
from pgserver import free_port

pytest.importorskip("ray")
TS = optuna.trial.TrialState
SECRET = "R4y-secret"
RAY = Path(sys.executable).with_name("ray")


class Cluster:
    """``ray start --head`` and one more ``ray start --address`` node with its own resource."""

    def __init__(self) -> None:
        # A short folder: Ray's Unix socket paths must stay under 107 characters.
        self.temp = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        common = ["--num-gpus", "0", "--disable-usage-stats"]
        self._ray(
            "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port), "--num-cpus", "1",
            "--include-dashboard", "false", f"--temp-dir={self.temp}", "--resources", '{"head": 1}', *common,
        )  # fmt: skip
        self._ray(
            "start", "--address", self.address, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
            "--resources", '{"node2": 1}', *common,
        )  # fmt: skip

    def _ray(self, *args: str) -> None:
        subprocess.run([str(RAY), *args], check=True, env=self.env, capture_output=True, timeout=180)

    def node2_processes(self) -> list[object]:
        """The second node's raylet and every process under it (its Ray workers)."""
        import psutil

        for p in psutil.process_iter(["name", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "raylet" in (p.info["name"] or "") and "node2" in cmd and str(self.temp) in cmd:
                return [p, *p.children(recursive=True)]
        return []

    def kill_node2(self) -> int:
        import psutil

        procs = self.node2_processes()
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
            except psutil.NoSuchProcess:
                pass
        return len(procs)

    def stop(self) -> None:
        """Stop this cluster's processes only (``ray stop`` would stop every Ray on the host)."""
        import psutil

        for p in psutil.process_iter(["cmdline"]):
            if str(self.temp) in " ".join(p.info["cmdline"] or []):
                try:
                    for c in p.children(recursive=True):
                        c.kill()
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if not RAY.exists():
        pytest.skip(f"no ray command beside {sys.executable}")
    c = Cluster()
    try:
        yield c
    finally:
        c.stop()


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    from hpo.storage import open_storage

    storage = open_storage(url, heartbeat=False)
    try:
        return optuna.load_study(study_name="tiny", storage=storage).get_trials()
    except KeyError:
        return []
    finally:
        storage.engine.dispose()


@pytest.mark.slow
@pytest.mark.services
def test_a_dead_node_s_trial_runs_again_on_the_surviving_node(
    cluster: Cluster, tmp_path: Path, tiny_model_dir: Path
) -> None:
    url = service_url("postgresql").replace("postgres@", f"postgres:{SECRET}@")
    # Each trial trains for several seconds, so that the node dies in the middle of one.
    path = write_study(
        tmp_path,
        tiny_model_dir,
        training={"max_train_steps": 300},
        budget={"n_trials": 2, "max_epochs": 1, "evals_per_epoch": 2},
        execution={"max_retries": 1},
    )
    ray_storage = tmp_path / "ray-results"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HPO_RAY_STORAGE": str(ray_storage)}
    # The password on the command line: the worst case, which Ray's job records must not keep.
    argv = ["run", str(path), "--backend", "ray", "--address", cluster.address, "--storage", url]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        victim = None
        end = time.monotonic() + 300
        while victim is None and time.monotonic() < end and proc.poll() is None:
            pids = {p.pid for p in cluster.node2_processes()}  # type: ignore[attr-defined]
            for t in _trials(url):
                worker = str(t.user_attrs.get("worker", ""))
                if (
                    t.state == TS.RUNNING
                    and "strategy" in t.user_attrs
                    and int(worker.rpartition(":")[2] or 0) in pids
                ):
                    victim = t
            time.sleep(0.5)
        assert victim is not None, "no trial ran on the second node"
        assert cluster.kill_node2() > 0
        out, _ = proc.communicate(timeout=400)
    finally:
        proc.kill()
    print(out)
    assert proc.returncode == 0, out
    trials = _trials(url)
    assert len(trials) == 2 and all(t.state == TS.COMPLETE for t in trials), [
        (t.number, t.state, t.user_attrs.get("fail_reason")) for t in trials
    ]
    again = trials[victim.number]
    assert again.user_attrs["ray_attempts"] == 2 and "retried_after" in again.user_attrs
    assert again.user_attrs["worker"] != victim.user_attrs["worker"]  # another process, on the head
    assert SECRET not in out

    # Ray's job records (the entry point is the driver's command line) and Ray's folders.
    jobs = subprocess.run(
        [sys.executable, "-c", f"import ray; ray.init(address={cluster.address!r}); "
         "from ray._private.state import jobs; print(jobs())"],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    assert "hpo" in jobs.stdout and "run" in jobs.stdout, jobs.stdout + jobs.stderr
    assert SECRET not in jobs.stdout and "postgres:***@" in jobs.stdout
    for folder in (cluster.temp, ray_storage):
        for f in folder.rglob("*"):
            if f.is_file() and f.stat().st_size < 50_000_000:
                assert SECRET.encode() not in f.read_bytes(), f
