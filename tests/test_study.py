"""Samplers and pruners by name, built from the study file."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo.config import load_study
from hpo.study import hyperband_brackets, make_pruner, make_sampler

ROOT = Path(__file__).resolve().parent.parent


def _spec(**over: object):  # type: ignore[no-untyped-def]
    return load_study(ROOT / "studies" / "sst2-minilm.yaml", dict(over))


@pytest.mark.parametrize(
    ("n_trials", "brackets", "cls"),
    [
        (12, 1, optuna.pruners.SuccessiveHalvingPruner),  # 12 // 18 -> one bracket
        (36, 2, optuna.pruners.HyperbandPruner),  # 8 evaluations, rf 3: at most 2 brackets
        (200, 2, optuna.pruners.HyperbandPruner),
    ],
)
def test_hyperband_uses_as_many_brackets_as_the_budget_fills(n_trials: int, brackets: int, cls: type) -> None:
    spec = _spec(**{"budget.n_trials": n_trials})
    assert hyperband_brackets(spec) == brackets
    assert isinstance(make_pruner(spec), cls)


@pytest.mark.parametrize(
    ("settings", "cls", "reached"),
    [
        (
            {"pruner.name": "median", "pruner.n_startup_trials": 4, "pruner.n_warmup_steps": 2},
            optuna.pruners.MedianPruner,
            {"_n_startup_trials": 4, "_n_warmup_steps": 2, "_percentile": 50.0},
        ),
        (
            {"pruner.name": "median"},  # hpo's defaults: 2 trials, 1 evaluation before pruning
            optuna.pruners.MedianPruner,
            {"_n_startup_trials": 2, "_n_warmup_steps": 1},
        ),
        (
            {"pruner.name": "percentile", "pruner.percentile": 30.0, "pruner.n_startup_trials": 5},
            optuna.pruners.PercentilePruner,
            {"_percentile": 30.0, "_n_startup_trials": 5, "_n_warmup_steps": 1},
        ),
        (
            {"pruner.name": "successive-halving", "pruner.min_resource": 2, "pruner.reduction_factor": 4},
            optuna.pruners.SuccessiveHalvingPruner,
            {"_min_resource": 2, "_reduction_factor": 4},
        ),
        (
            {"pruner.name": "hyperband", "budget.n_trials": 200, "pruner.reduction_factor": 2},
            optuna.pruners.HyperbandPruner,
            {"_min_resource": 1, "_max_resource": 8, "_reduction_factor": 2},  # 2 epochs x 4 evals
        ),
        ({"pruner.name": "patient", "pruner.patience": 3}, optuna.pruners.PatientPruner, {"_patience": 3}),
        ({"pruner.name": "none"}, optuna.pruners.NopPruner, {}),
    ],
)
def test_pruner_settings_reach_optuna(
    settings: dict[str, object], cls: type, reached: dict[str, object]
) -> None:
    pruner = make_pruner(_spec(**settings))
    assert isinstance(pruner, cls)
    assert {k: getattr(pruner, k) for k in reached} == reached


@pytest.mark.parametrize(
    ("settings", "cls", "reached"),
    [
        (
            {"sampler.name": "tpe", "sampler.n_startup_trials": 7},
            optuna.samplers.TPESampler,
            {"_n_startup_trials": 7, "_multivariate": True, "_group": True, "_constant_liar": True},
        ),
        (
            {"sampler.name": "tpe", "budget.n_trials": 12},  # default start-up: a third of the budget
            optuna.samplers.TPESampler,
            {"_n_startup_trials": 4},
        ),
        (
            {"sampler.name": "gp", "sampler.n_startup_trials": 5},
            optuna.samplers.GPSampler,
            {"_n_startup_trials": 5},
        ),
        ({"sampler.name": "qmc", "sampler.seed": 11}, optuna.samplers.QMCSampler, {"_seed": 11}),
        ({"sampler.name": "random"}, optuna.samplers.RandomSampler, {}),
    ],
)
def test_sampler_settings_reach_optuna(
    settings: dict[str, object], cls: type, reached: dict[str, object]
) -> None:
    sampler = make_sampler(_spec(**settings))
    assert isinstance(sampler, cls)
    assert {k: getattr(sampler, k) for k in reached} == reached


def test_sampler_seed_reaches_optuna() -> None:
    """The same sampler.seed draws the same points; another seed draws others."""

    def draws(seed: int) -> list[float]:
        study = optuna.create_study(
            sampler=make_sampler(_spec(**{"sampler.name": "random", "sampler.seed": seed}))
        )
        return [study.ask().suggest_float("x", 0, 1) for _ in range(3)]

    assert draws(1) == draws(1) != draws(2)


def test_parallel_workers_get_different_sampler_seeds() -> None:
    spec = _spec(**{"sampler.name": "random"})
    draws = []
    for worker in (0, 1):
        study = optuna.create_study(sampler=make_sampler(spec, worker_index=worker))
        draws.append(study.ask().suggest_float("x", 0, 1))
    assert draws[0] != draws[1]


@pytest.mark.parametrize(
    ("create", "advice", "not_advice"),
    [
        (True, "use another name (--study-name) or the study file it was created from", None),
        # a worker only joins: --study-name would just say "not found"
        (False, "a worker joins with the study file the study was created from", "--study-name"),
    ],
)
def test_mismatch_advice_fits_the_command(
    tmp_path: Path, create: bool, advice: str, not_advice: str | None
) -> None:
    from hpo.storage import open_storage
    from hpo.study import StudyMismatchError, open_study

    storage = open_storage(f"sqlite:///{tmp_path / 'hpo.db'}", heartbeat=False)
    open_study(_spec(), storage)
    with pytest.raises(StudyMismatchError) as exc:
        open_study(_spec(**{"budget.max_epochs": 3}), storage, create=create)
    message = str(exc.value)
    assert "already exists with different settings (budget.max_epochs)" in message
    assert advice in message and str(ROOT / "studies" / "sst2-minilm.yaml") in message
    assert not_advice is None or not_advice not in message


def test_progress_and_summary_show_a_fixed_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    """A space with one strategy has no ``strategy`` parameter: the trial's attribute names it."""
    from hpo.display import ProgressPrinter, print_summary

    study = optuna.create_study(direction="maximize")
    dist = optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    study.add_trial(
        optuna.trial.create_trial(
            params={"learning_rate": 3e-4},
            distributions={"learning_rate": dist},
            value=0.84,
            user_attrs={"strategy": "full"},
        )
    )
    trial = study.trials[0]
    ProgressPrinter(_spec())(study, trial)
    line = capsys.readouterr().out
    assert line.rstrip().endswith("| best accuracy=0.8400 (#0 full)"), line
    print_summary(study)
    out = capsys.readouterr().out
    assert "\nfull " in out.split("per strategy:")[1], out


def test_samplers_that_start_on_a_study_with_trials_do_not_replay_the_first_run() -> None:
    """A resumed run, a replacement worker and a joining worker each draw new points; the same
    starting state draws the same ones (item 1 of the correctness issue).
    """
    spec = _spec(**{"sampler.name": "random"})

    def first_draw(**kw: object) -> float:
        study = optuna.create_study(sampler=make_sampler(spec, **kw))  # type: ignore[arg-type]
        return study.ask().suggest_float("x", 0, 1)

    fresh = first_draw(worker_index=1)
    later = [
        first_draw(worker_index=1, n_before=5),  # the same worker of a resumed run
        first_draw(worker_index=2, n_before=5),  # another worker of that run
        first_draw(worker_index=1, n_before=5, salt="respawn 1"),  # its replacement
        first_draw(worker_index=1, salt="node7:5121"),  # an `hpo worker` joining a fresh study
    ]
    assert len({fresh, *later}) == 5
    assert first_draw(worker_index=1) == fresh and first_draw(worker_index=1, n_before=5) == later[0]
