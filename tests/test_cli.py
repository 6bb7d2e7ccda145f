"""Command-line contract: precedence written once, exit codes, one-line user errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.cli import build_parser, main
from hpo.config import load_study
from hpo.options import OPTIONS, RunOptions, resolve_options, resolve_storage
from hpo.storage import DEFAULT_STORAGE

# option -> (a flag value, the study-file section that sets it, the file's value, the default)
PRECEDENCE_CASES: dict[str, tuple[object, dict[str, object], object, object]] = {
    "storage": ("sqlite:///flag.db", {"storage": "sqlite:///file.db"}, "sqlite:///file.db", DEFAULT_STORAGE),
    "workers": (3, {"execution": {"workers": 2}}, 2, 1),
    "n_trials": (7, {"budget": {"n_trials": 5}}, 5, 20),
    "timeout": (30.0, {"budget": {"timeout": 60}}, 60, None),
    "gpus": ([1], {"execution": {"gpus": [0, 2]}}, [0, 2], None),
    "trials_per_gpu": (4, {"execution": {"trials_per_gpu": 2}}, 2, 1),
}


def _study_file(tmp_path: Path, name: str, extra: dict[str, object]) -> Path:
    from hpo._yaml import dump_yaml

    # a hub id needs no model on disk; the shipped quickstart space
    study = {"name": "p", "model": "org/model", "data": {"source": "builtin:reviews"}, "space": "quickstart"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_yaml({**study, **extra}))
    return path


def test_every_run_option_has_one_precedence_case_and_one_flag() -> None:
    """OPTIONS, RunOptions and `hpo run`'s flags name the same options (a flag named otherwise
    would silently never win)."""
    assert set(OPTIONS) == set(RunOptions.__dataclass_fields__) == set(PRECEDENCE_CASES)
    run = build_parser().commands["run"]
    assert set(OPTIONS) <= {a.dest for a in run._actions}


@pytest.mark.parametrize("name", list(PRECEDENCE_CASES))
def test_precedence_flag_env_file_default(name: str, tmp_path: Path) -> None:
    flag, section, file_value, default = PRECEDENCE_CASES[name]
    with_key = load_study(_study_file(tmp_path, "with", section))
    without_key = load_study(_study_file(tmp_path, "without", {}))
    env_var = OPTIONS[name].env
    env = {env_var: "sqlite:///env.db"} if env_var else {}

    def get(flags: dict[str, object], spec: object, environ: dict[str, str]) -> object:
        return getattr(resolve_options(flags, spec, environ), name)

    # default: no flag, no environment, the file leaves the key out (or there is no file)
    assert get({}, None, {}) == default
    assert get({}, without_key, {}) == default
    assert get({name: None}, without_key, {name.upper(): "ignored"}) == default
    # file beats default
    assert get({}, with_key, {}) == file_value
    # environment beats file (for the options that have a variable: HPO_STORAGE)
    if env_var:
        assert get({}, with_key, env) == env[env_var]
        assert get({}, with_key, {env_var: ""}) == file_value  # an empty variable is not set
    # flag beats everything
    assert get({name: flag}, with_key, env) == flag
    assert get({name: flag}, None, {}) == flag


def test_storage_precedence_flag_env_file_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    assert resolve_storage(None, None) == DEFAULT_STORAGE == "sqlite:///studies/hpo.db"
    assert resolve_storage(None, "sqlite:///file.db") == "sqlite:///file.db"
    monkeypatch.setenv("HPO_STORAGE", "sqlite:///env.db")
    assert resolve_storage(None, "sqlite:///file.db") == "sqlite:///env.db"
    assert resolve_storage("sqlite:///flag.db", "sqlite:///file.db") == "sqlite:///flag.db"
    assert resolve_storage("", "sqlite:///file.db") == "sqlite:///env.db"  # --storage "" is not given


def test_bad_set_is_a_one_line_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "studies/quickstart.yaml", "--set", "budget.n_trials"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hpo run: error: --set: expected key=value, got 'budget.n_trials'"]


def test_set_value_is_validated_like_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    assert (
        main(["run", "studies/quickstart.yaml", "--storage", f"sqlite:///{db}", "--set", "budget.n_trials=0"])
        == 1
    )
    assert "budget.n_trials: must be >= 1, got 0" in capsys.readouterr().err
    assert not db.exists()


def test_missing_study_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "nope.yaml"]) == 1
    assert "nope.yaml: file not found" in capsys.readouterr().err


def test_unreachable_storage_is_a_user_error_without_password(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    assert main(["studies", "--storage", "postgresql://bob:s3cret@127.0.0.1:9/db"]) == 1
    err = capsys.readouterr().err
    assert "s3cret" not in err and "***" in err and "Traceback" not in err


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in (
        "run",
        "worker",
        "validate",
        "studies",
        "compare",
        "report",
        "export",
        "retrain",
        "dashboard",
    ):
        assert cmd in out


QUICK = "studies/quickstart.yaml"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", QUICK, "--n-trials", "0"], "hpo run: error: argument --n-trials: must be >= 1, got 0"),
        (["run", QUICK, "--workers", "0"], "hpo run: error: argument --workers: must be >= 1, got 0"),
        (["run", QUICK, "--bogus"], "hpo run: error: unrecognized arguments: --bogus"),
        (["run"], "hpo run: error: the following arguments are required: study"),
        (["export", "exp"], "hpo export: error: the following arguments are required: -o/--output"),
        ([], "hpo: error: the following arguments are required: COMMAND"),
        (
            ["run", QUICK, "--timeout", "-5"],
            "hpo run: error: argument --timeout: must be > 0 seconds, got -5",
        ),
        (
            ["run", QUICK, "--timeout", "nan"],
            "hpo run: error: argument --timeout: must be > 0 seconds, got nan",
        ),
        (
            ["worker", QUICK, "--storage", "sqlite:///x.db", "--timeout", "0"],
            "hpo worker: error: argument --timeout: must be > 0 seconds, got 0",
        ),
        (
            ["run", QUICK, "--gpus", "0,-1"],
            "hpo run: error: argument --gpus: GPU indices must be >= 0, got -1",
        ),
        (
            ["export", "exp", "-o", "x.yaml", "--trial", "-1"],
            "hpo export: error: argument --trial: must be >= 0, got -1",
        ),
        (
            ["dashboard", "--port", "99999"],
            "hpo dashboard: error: argument --port: must be a TCP port 1..65535, got 99999",
        ),
        (
            ["dashboard", "--port", "0"],
            "hpo dashboard: error: argument --port: must be a TCP port 1..65535, got 0",
        ),
    ],
)
def test_bad_flags_are_one_line_user_errors(
    argv: list[str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [str(Path.cwd() / a) if a == QUICK else a for a in argv]
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [expected] and out == ""
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing was created


def test_bad_flag_exit_status_of_the_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "hpo", "dashboard", "--port", "99999"],
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "hpo dashboard: error: argument --port: must be a TCP port 1..65535, got 99999"
    ]


def test_read_commands_never_create_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    # the default storage, absent
    assert main(["studies"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "hpo studies: error: storage sqlite:///studies/hpo.db: no database at studies/hpo.db "
        "(run a study first, or pass --storage)"
    ]
    # a path in folders that do not exist
    assert main(["studies", "--storage", "sqlite:///no/such/dir/x.db"]) == 1
    assert "no database at no/such/dir/x.db" in capsys.readouterr().err
    # two slashes: a malformed URL, refused before any folder is made, for every reader
    for argv in (["studies"], ["compare", "q"], ["export", "q", "-o", "q.yaml"], ["report", "q", "-o", "r"]):
        assert main([*argv, "--storage", "sqlite://relative.db"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "sqlite:///relative.db" in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url",
    ["sqlite://relative.db", "sqlite:/x.db", "sqlite:///", "sqlite://host/x.db", "sqlite+pysqlite://x.db"],
)
def test_malformed_sqlite_urls_are_refused_before_anything_is_created(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpo.storage import StorageError, open_storage

    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError, match="sqlite:///"):
        open_storage(url)
    assert list(tmp_path.iterdir()) == []


def test_run_storage_still_creates_its_folder_and_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpo.storage import open_storage

    monkeypatch.chdir(tmp_path)
    open_storage("sqlite:///sub/dir/hpo.db", heartbeat=False).get_all_studies()
    assert (tmp_path / "sub" / "dir" / "hpo.db").is_file()
    open_storage(f"sqlite:///{tmp_path / 'abs' / 'a.db'}", heartbeat=False).get_all_studies()
    assert (tmp_path / "abs" / "a.db").is_file()
    open_storage("sqlite:///:memory:", heartbeat=False).get_all_studies()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abs", "sub"]
