"""The shipped quickstart on the real pretrained MiniLM, shortened: the offline default works."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quickstart_on_real_minilm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    args = [
        "run",
        str(ROOT / "studies" / "quickstart.yaml"),
        "--storage",
        url,
        "--n-trials",
        "2",
        "--set",
        "data.train_limit=96",
        "--set",
        "data.validation_limit=48",
        "--set",
        "sampler.name=random",
        "--set",
        "budget.evals_per_epoch=2",
    ]
    assert main(args) == 0
    assert "per strategy:" in capsys.readouterr().out
    study = optuna.load_study(study_name="quickstart", storage=url)
    trials = study.get_trials()
    assert len(trials) == 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:
        assert t.user_attrs["total_params"] >= 22_700_000  # the real MiniLM-L6, not a toy
        assert len(t.intermediate_values) == 2
