"""Warm starts: an earlier study's best trials, mapped onto the new space, run first, once."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from conftest import write_study

from hpo.cli import main
from hpo.errors import UserError
from hpo.space import parse_space
from hpo.warmstart import map_trial, parse_warm_start, ranked

TS = optuna.trial.TrialState
FLOAT = optuna.distributions.FloatDistribution
CAT = optuna.distributions.CategoricalDistribution
NEW_SPACE = {  # conftest.write_study's space, two batch sizes
    "strategy": ["full", "lora"],
    "learning_rate": {"low": 1e-4, "high": 1e-3, "log": True},
    "per_device_train_batch_size": [8, 16],  # the earlier study fixed 16: taken from its config
    "strategies": {"lora": {"r": [2, 4]}},
}


def _earlier(url: str) -> optuna.Study:
    """An earlier study (another space: adapter, wider learning rates, weight decay, lora r=8)."""
    study = optuna.create_study(study_name="small", storage=url, direction="maximize")
    strategies = CAT(["full", "lora", "adapter"])
    lr = FLOAT(1e-5, 1e-2, log=True)
    rows = [
        # value, params, user attrs
        (0.90, {"strategy": "full", "learning_rate": 5e-3, "weight_decay": 0.1}, {}),
        (0.85, {"strategy": "lora", "learning_rate": 2e-4, "lora.r": 8}, {}),
        (0.95, {"strategy": "adapter", "learning_rate": 1e-3}, {}),  # best, but no adapter now
        (0.70, {"strategy": "full", "learning_rate": 3e-4, "weight_decay": 0.0}, {}),
        (0.99, {"strategy": "full", "learning_rate": 4e-4, "weight_decay": 0.0}, {"repeat_of": 3}),
        (0.80, {"strategy": "lora", "learning_rate": 2e-4, "lora.r": 8}, {}),  # same config as #1
    ]
    dists = {
        "strategy": strategies,
        "learning_rate": lr,
        "weight_decay": FLOAT(0.0, 0.3),
        "lora.r": CAT([4, 8, 16]),
    }
    for value, params, attrs in rows:
        config = {
            "strategy": params["strategy"],
            "strategy_params": {},
            "training": {"per_device_train_batch_size": 16},
        }
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                value=value,
                user_attrs={"config": json.dumps(config), **attrs},
            )
        )
    failed = optuna.trial.create_trial(state=TS.FAIL, params={}, distributions={})
    study.add_trial(failed)
    return study


def test_trials_are_ranked_mapped_clipped_and_dropped_onto_the_new_space(tmp_path: Path) -> None:
    study = _earlier(f"sqlite:///{tmp_path / 'small.db'}")
    best = ranked(study)
    # repeats and a configuration seen before are left out; best first
    assert [t.number for t in best] == [2, 0, 1, 3]
    problems: list[str] = []
    space = parse_space(NEW_SPACE, "new.yaml", None, problems)
    assert space is not None and not problems
    skipped, full, lora, _ = (map_trial(t, space) for t in best)
    assert skipped.params is None
    assert skipped.changes == ["skipped: strategy 'adapter' is not in the new space (full, lora)"]
    assert full.params == {"strategy": "full", "learning_rate": 1e-3, "per_device_train_batch_size": 16}
    assert full.changes == [
        "clipped learning_rate 0.005 -> 0.001",
        "dropped weight_decay (not in the new space)",
    ]
    assert lora.params == {"strategy": "lora", "learning_rate": 2e-4, "per_device_train_batch_size": 16}
    assert lora.changes == ["dropped lora.r=8 (not among 2, 4)"]

    assert parse_warm_start("small").storage is None
    ws = parse_warm_start("small@postgresql://u@h/db", 2)
    assert (ws.study, ws.storage, ws.top) == ("small", "postgresql://u@h/db", 2)
    for bad, msg in (("@x", "expected NAME or NAME@STORAGE"), ("small@", "no storage URL after '@'")):
        with pytest.raises(UserError, match=msg):
            parse_warm_start(bad)


@pytest.mark.slow
def test_a_warm_started_study_runs_the_earlier_best_first_with_workers_and_once(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = f"sqlite:///{tmp_path / 'small.db'}"
    _earlier(src)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    path = write_study(tmp_path, tiny_model_dir, name="full-data", space=NEW_SPACE)
    run = ["run", str(path), "--storage", url, "--warm-start", f"small@{src}", "--top", "3"]
    assert main([*run, "--n-trials", "3", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "warm start: small trial 2 (0.95) skipped: strategy 'adapter' is not in the new space" in out

    study = optuna.load_study(study_name="full-data", storage=url)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    states = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    assert len(trials) == 3 and all(t.state == TS.COMPLETE for t in trials), (states, out)
    warm = {t.number: t for t in trials if "warm_start_of" in t.user_attrs}
    assert sorted(warm) == [0, 1]  # the first trials of the study, each once
    assert warm[0].user_attrs["warm_start_of"] == {"study": f"small@{src}", "trial": 0, "value": 0.9}
    assert warm[0].params == {"strategy": "full", "learning_rate": 1e-3, "per_device_train_batch_size": 16}
    assert "clipped learning_rate" in warm[0].user_attrs["warm_start_changes"]
    assert warm[1].user_attrs["warm_start_of"]["trial"] == 1
    assert warm[1].params["strategy"] == "lora" and warm[1].params["learning_rate"] == 2e-4
    assert warm[1].params["lora.r"] in (2, 4)  # 8 is not a choice: the sampler drew it
    assert json.loads(warm[1].user_attrs["config"])["training"]["learning_rate"] == 2e-4
    assert study.user_attrs["warm_start"]["trials"] == [0, 1]

    # A resumed run does not enqueue them again.
    assert main([*run, "--n-trials", "1"]) == 0
    assert "warm start: already done from small@" in capsys.readouterr().out
    trials = study.get_trials()
    assert len(trials) == 4 and sum("warm_start_of" in t.user_attrs for t in trials) == 2

    # Bad sources are one-line user errors.
    assert main(["run", str(path), "--storage", url, "--warm-start", "nope", "--study-name", "x"]) == 1
    assert "unknown study 'nope'" in capsys.readouterr().err
    assert main(["run", str(path), "--storage", url, "--top", "2"]) == 1
    assert "--top: only with --warm-start" in capsys.readouterr().err
