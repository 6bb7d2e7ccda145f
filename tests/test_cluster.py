"""Cluster jobs: the same `hpo worker` command on every node creates the study exactly once;
the shipped Slurm array script and Kubernetes Job run that one command."""

from __future__ import annotations

import multiprocessing
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import ROOT, service_url, write_study

TS = optuna.trial.TrialState
EXAMPLES = ROOT / "examples"


def _documented_command() -> list[str]:
    """The worker command the README's "Cluster array jobs" section documents."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Cluster array jobs", 1)[1].split("\n### ", 1)[0]
    lines = [ln.strip() for ln in section.splitlines() if ln.strip().startswith("hpo worker ")]
    assert lines, "README: no `hpo worker` command in the cluster section"
    return shlex.split(lines[0])


def _check_worker_argv(argv: list[str]) -> None:
    """A valid `hpo worker` command line on a shipped study file, storage from the environment."""
    from hpo.cli import build_parser

    assert argv[:2] == ["hpo", "worker"], argv
    args = build_parser().parse_args(argv[1:])
    assert (ROOT / args.study).is_file(), args.study
    assert args.storage == "$HPO_STORAGE", args.storage  # never a literal URL with a password
    assert args.n_trials and args.n_trials >= 1


def test_slurm_array_script_runs_the_documented_command() -> None:
    script = EXAMPLES / "slurm-array.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    array = re.search(r"^#SBATCH --array=(\d+)-(\d+)\s*$", text, re.M)
    assert array, "no #SBATCH --array=A-B line"
    assert int(array.group(2)) - int(array.group(1)) + 1 >= 2
    # #SBATCH lines count only before the first command.
    first_command = min(i for i, ln in enumerate(text.splitlines()) if ln and not ln.startswith("#"))
    assert all(
        i < first_command for i, ln in enumerate(text.splitlines()) if ln.startswith("#SBATCH")
    ), "an #SBATCH line after the first command is ignored by sbatch"
    runs = [ln for ln in text.splitlines() if "hpo worker" in ln and not ln.lstrip().startswith("#")]
    assert len(runs) == 1, runs
    argv = shlex.split(runs[0])
    assert argv[0] == "srun"
    _check_worker_argv(argv[1:])
    assert argv[1:] == _documented_command()


def test_kubernetes_job_runs_the_documented_command() -> None:
    job = yaml.safe_load((EXAMPLES / "k8s-job.yaml").read_text())
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["parallelism"] >= 2 and spec["completions"] == spec["parallelism"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (container,) = pod["containers"]
    # Kubernetes expands $(VAR) from the container's environment, as the shell does "$VAR".
    argv = [re.sub(r"\$\((\w+)\)", r"$\1", a) for a in container["command"]]
    _check_worker_argv(argv)
    assert argv == _documented_command()
    env = {e["name"]: e for e in container["env"]}
    assert "@" in env["HPO_STORAGE"]["value"] and ":" not in env["HPO_STORAGE"]["value"].split("@")[0].split("//")[1]
    assert "secretKeyRef" in env["PGPASSWORD"]["valueFrom"]


# --------------------------------------------------------------------------- one study, many creators


def _open_at_once(url: str, study_file: str, barrier: Any, out: Any) -> None:
    """One would-be creator: open the storage, wait for the others, open (create) the study."""
    from hpo.config import load_study
    from hpo.storage import open_storage
    from hpo.study import open_study

    try:
        storage = open_storage(url)
        spec = load_study(Path(study_file))
        barrier.wait(timeout=60)
        study = open_study(spec, storage, create=True, fingerprint="fp")
        out.put((study._study_id, study.user_attrs.get("hpo_config", {}).get("name")))
    except BaseException as e:  # noqa: B036 - reported to the test
        out.put(("error", f"{type(e).__name__}: {e}"))


def test_concurrent_creators_make_exactly_one_study_on_postgresql(tmp_path: Path, tiny_model_dir: Path) -> None:
    """6 processes released together by a barrier all create-or-load the same study."""
    url = service_url("postgresql")
    path = write_study(tmp_path, tiny_model_dir)
    n = 6
    mp = multiprocessing.get_context("fork")
    barrier, out = mp.Barrier(n), mp.Queue()
    procs = [mp.Process(target=_open_at_once, args=(url, str(path), barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(r[0] != "error" for r in results), results
    assert len({r[0] for r in results}) == 1, results
    assert all(r[1] == "tiny" for r in results), results
    from hpo.storage import open_storage

    studies = open_storage(url, heartbeat=False).get_all_studies()
    assert [s.study_name for s in studies] == ["tiny"]
    attrs = studies[0].user_attrs
    assert attrs["data_fingerprint"] == "fp" and attrs["metric"] == "accuracy"


@pytest.mark.slow
def test_hpo_workers_started_together_create_the_study_and_share_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """3 `hpo worker` processes (the array job's command) on a PostgreSQL database with no study."""
    url = service_url("postgresql")
    path = write_study(
        tmp_path,
        tiny_model_dir,
        training={"max_train_steps": 2},
        sampler={"name": "random", "skip_repeats": None},
        # A worker done with its trial waits until the others' trials beat (one interval).
        execution={"heartbeat_interval": 1},
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["HPO_STORAGE"] = url
    argv = [sys.executable, "-m", "hpo", "worker", str(path), "--storage", url, "--n-trials", "1"]
    procs = [
        subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(3)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0], "\n---\n".join(outs)
    assert not any("not found" in o for o in outs)
    from hpo.storage import open_storage

    storage = open_storage(url, heartbeat=False)
    assert [s.study_name for s in storage.get_all_studies()] == ["tiny"]
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert len(trials) == 3 and all(t.state == TS.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 3


def test_a_joiner_does_not_wait_on_a_study_with_trials() -> None:
    """A study made outside hpo (trials, no hpo_config) is not waited for."""
    import time

    from hpo.study import written_by_creator

    study = optuna.create_study()
    study.enqueue_trial({})
    t0 = time.monotonic()
    assert "hpo_config" not in written_by_creator(study, n_trials=1, wait=5)
    assert time.monotonic() - t0 < 1
    t0 = time.monotonic()
    written_by_creator(optuna.create_study(), n_trials=0, wait=0.3)
    assert time.monotonic() - t0 >= 0.3
