"""`hpo dashboard`: optuna-dashboard on the study storage, checked over HTTP and in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REQUIRE_SERVICES, ROOT, write_study

from hpo.cli import main
from hpo.config import load_study
from hpo.dashboard import bind_warning, is_loopback, make_dashboard_server
from hpo.drivers.worker import run_worker

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=8000",
    "--window-size=1400,1000",
]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    """A real tiny study ("dash", two trials) in a fresh SQLite file."""
    root = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{root / 'hpo.db'}"
    with pytest.MonkeyPatch.context() as mp:
        # The module fixture runs before the autouse cache fixture: keep the cache out of the repo.
        mp.setenv("HPO_CACHE_DIR", str(root / "cache"))
        mp.setattr("hpo.context.CACHE_DIR", root / "cache")
        path = write_study(root, tiny_model_dir, name="dash", description="tiny dashboard study")
        run_worker(load_study(path), url, n_trials=2, timeout=None, quiet=True)
    yield url


@pytest.fixture(scope="module")
def attached(db: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The best trial of "dash" retrained (its files attached to the trial) and reported (the
    per-strategy table and plots in the study's note)."""
    import hpo

    root = tmp_path_factory.mktemp("attached")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPO_CACHE_DIR", str(root / "cache"))
        mp.setattr("hpo.context.CACHE_DIR", root / "cache")
        spec = hpo.export("dash", root / "best.yaml", storage=db)
        hpo.retrain(spec, root / "run", storage=db, quiet=True)
        report = hpo.report("dash", root / "report", storage=db)
    return {"best": hpo.best("dash", db).number, "report": report}


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return bytes(r.read())


def _study_id(base: str, name: str) -> int:
    summaries = json.loads(_get(f"{base}/api/studies"))["study_summaries"]
    return next(s["study_id"] for s in summaries if s["study_name"] == name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_only_loopback_goes_without_a_warning() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback(host) and bind_warning(host) is None
    for host in ("0.0.0.0", "192.168.1.10", "myhost"):
        warning = bind_warning(host)
        assert warning is not None and "no authentication" in warning and host in warning


def test_the_warning_names_the_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    warning = bind_warning("0.0.0.0", 9123)
    assert warning is not None
    assert "ssh -L 9123:127.0.0.1:9123 HOST" in warning and "8080" not in warning
    # the command prints it with its own --port (the missing storage then stops it)
    assert (
        main(["dashboard", "--host", "0.0.0.0", "--port", "9124", "--storage", "sqlite:////nonexistent/x.db"])
        == 1
    )
    err = capsys.readouterr().err
    assert "ssh -L 9124:127.0.0.1:9124 HOST" in err and "8080" not in err


def test_api_lists_the_study_with_metric_names_and_trials(db: str) -> None:
    server = make_dashboard_server(db, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        study_id = _study_id(base, "dash")
        detail = json.loads(_get(f"{base}/api/studies/{study_id}"))
        assert detail["name"] == "dash"
        assert detail["objective_names"] == ["accuracy"]
        assert [t["number"] for t in detail["trials"]] == [0, 1]
        assert {a["key"] for a in detail["user_attrs"]} >= {"description", "hpo_config"}
        assert b"<html" in _get(f"{base}/dashboard/studies/{study_id}").lower()
    finally:
        server.shutdown()
        server.server_close()


def test_retrain_files_and_the_report_note_are_served(db: str, attached: dict[str, object]) -> None:
    server = make_dashboard_server(db, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        study_id = _study_id(base, "dash")
        detail = json.loads(_get(f"{base}/api/studies/{study_id}"))
        trial = next(t for t in detail["trials"] if t["number"] == attached["best"])
        files = {a["filename"]: a for a in trial["artifacts"]}
        assert {"metrics.json", "metrics.png", "best.yaml"} <= set(files)
        png = _get(f"{base}/artifacts/{study_id}/{trial['trial_id']}/{files['metrics.png']['artifact_id']}")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        metrics = json.loads(
            _get(f"{base}/artifacts/{study_id}/{trial['trial_id']}/{files['metrics.json']['artifact_id']}")
        )
        assert metrics["trial"] == attached["best"] and "accuracy" in metrics["test"]
        # the note: the per-strategy table, and the report's plots through the study's artifacts
        note = detail["note"]["body"]
        assert note.startswith("## hpo report: dash") and "| strategy | trials |" in note
        images = re.findall(r"!\[[^\]]*\]\((/artifacts/[^)]+)\)", note)
        assert images and all(_get(base + src)[:8] == b"\x89PNG\r\n\x1a\n" for src in images)
    finally:
        server.shutdown()
        server.server_close()


def test_missing_storage_and_busy_port_are_user_errors(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dashboard", "--storage", f"sqlite:///{tmp_path / 'none.db'}"]) == 1
    assert "no database" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["dashboard", "--storage", db, "--port", str(s.getsockname()[1])]) == 1
    assert "pick another --port" in capsys.readouterr().err


def _chromium(args: list[str]) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="hpo-chromium-")
    try:
        return subprocess.run(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_in_headless_chromium(db: str, attached: dict[str, object]) -> None:
    if shutil.which("chromium") is None:
        msg = "chromium not installed (make browser, or apt-get install chromium)"
        if REQUIRE_SERVICES:
            pytest.fail(msg + " (HPO_REQUIRE_SERVICES=1)")
        pytest.skip(msg)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The command as a user runs it, in its own process.
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", "--storage", db, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                study_id = _study_id(base, "dash")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"dashboard did not start: {proc.communicate(timeout=5)}") from None
                time.sleep(0.3)

        dom = _chromium(["--dump-dom", f"{base}/dashboard/studies/{study_id}/trials"])
        assert dom.returncode == 0, dom.stderr[-2000:]
        # The trial list rendered by the browser shows both trials with their strategy.
        assert "Trial 0" in dom.stdout and "Trial 1" in dom.stdout
        assert "dash" in dom.stdout and "strategy" in dom.stdout

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard-study.png"
        shot.unlink(missing_ok=True)
        done = _chromium([f"--screenshot={shot}", f"{base}/dashboard/studies/{study_id}"])
        assert done.returncode == 0, done.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 20_000  # a rendered page with plots, not a blank one
        # the study's note page shows the report, rendered: heading, table, plots
        note_page = f"{base}/dashboard/studies/{study_id}/note"
        dom = _chromium(["--dump-dom", note_page])
        assert "hpo report: dash" in dom.stdout and "best parameters" in dom.stdout
        assert f"/artifacts/{study_id}/" in dom.stdout  # the plots' images
        shot = ARTIFACTS / "dashboard-study-note.png"
        shot.unlink(missing_ok=True)
        assert _chromium([f"--screenshot={shot}", note_page]).returncode == 0
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

        # the retrained trial's page lists its files
        page = f"{base}/dashboard/studies/{study_id}/trials?numbers={attached['best']}"
        dom = _chromium(["--dump-dom", page])
        assert "metrics.png" in dom.stdout and "metrics.json" in dom.stdout and "best.yaml" in dom.stdout
        shot = ARTIFACTS / "dashboard-trial-artifacts.png"
        shot.unlink(missing_ok=True)
        assert _chromium([f"--screenshot={shot}", page]).returncode == 0
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/dashboard/" in out
    assert "no authentication" not in err  # loopback: no warning
