"""Command-line contract: precedence written once, exit codes, one-line user errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.cli import main
from hpo.storage import DEFAULT_STORAGE, resolve_storage


def test_storage_precedence_flag_env_file_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    assert resolve_storage(None, None) == DEFAULT_STORAGE == "sqlite:///studies/hpo.db"
    assert resolve_storage(None, "sqlite:///file.db") == "sqlite:///file.db"
    monkeypatch.setenv("HPO_STORAGE", "sqlite:///env.db")
    assert resolve_storage(None, "sqlite:///file.db") == "sqlite:///env.db"
    assert resolve_storage("sqlite:///flag.db", "sqlite:///file.db") == "sqlite:///flag.db"


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
