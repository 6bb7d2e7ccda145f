"""Pruning fair across strategies (pruner.compare), multi-objective studies, constraints, the
Pareto front and the readers of "best trial" (hpo studies, compare, report, export --pick)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo.config import ConfigError, load_study
from hpo.study import make_pruner, make_sampler

ROOT = Path(__file__).resolve().parent.parent


def _spec(**over: object):  # type: ignore[no-untyped-def]
    return load_study(ROOT / "studies" / "sst2-minilm.yaml", dict(over))


@pytest.mark.parametrize(("compare", "lora_survives"), [("value", False), ("strategy", True)])
def test_slow_strategy_survives_first_rung_when_best_of_its_strategy(
    tmp_path: Path, compare: str, lora_survives: bool
) -> None:
    """Full fine-tuning stands at 0.80 after the first evaluation, LoRA at 0.55 (it starts slowly
    and ends at 0.84). Compared with every trial, LoRA is pruned at the first rung; compared with
    its own strategy, the best LoRA trial so far goes on, and a worse LoRA trial is still pruned."""
    spec = _spec(**{"pruner.compare": compare, "budget.max_epochs": 2, "budget.evals_per_epoch": 2})
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'p.db'}", direction="maximize", pruner=make_pruner(spec)
    )
    assert _fixed_strategy_trial(study, "full", [0.80, 0.82, 0.83, 0.83]) is False
    assert _fixed_strategy_trial(study, "full", [0.81, 0.82, 0.84, 0.84]) is False
    assert _fixed_strategy_trial(study, "lora", [0.55, 0.70, 0.80, 0.84]) is (not lora_survives)
    if lora_survives:
        # the second LoRA trial is worse than the first at the first rung: pruned by its own kind
        assert _fixed_strategy_trial(study, "lora", [0.52, 0.60, 0.70, 0.75]) is True
        states = [t.state.name for t in study.trials]
        assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
        assert study.trials[2].value == pytest.approx(0.84)


def _fixed_strategy_trial(study: optuna.Study, strategy: str, curve: list[float]) -> bool:
    """One trial whose ``strategy`` parameter is ``strategy``, reporting ``curve``; True: pruned."""
    dist = optuna.distributions.CategoricalDistribution(["full", "lora"])
    study.enqueue_trial({"strategy": strategy})
    trial = study.ask({"strategy": dist})
    assert trial.params["strategy"] == strategy
    for step, value in enumerate(curve, start=1):
        trial.report(value, step)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return True
    study.tell(trial, curve[-1])
    return False


def test_pruner_compare_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pruner.compare: expected value or strategy, got 'kind'"):
        _spec(**{"pruner.compare": "kind"})
    with pytest.raises(ConfigError, match=r"pruner.compare: strategy needs a pruner that compares trials"):
        _spec(**{"pruner.compare": "strategy", "pruner.name": "none"})
    assert make_sampler(_spec()) is not None


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("over", "problem"),
    [
        ({"objective": {"metrics": ["f1", "flops"]}}, "objective.metrics[1]: unknown cost 'flops'"),
        (
            {"objective": {"metrics": ["trainable_params", "f1"]}},
            "objective.metrics[0]: expected a metric of the task first",
        ),
        ({"objective": {"metrics": ["f1"]}}, "objective.metrics: expected 2 or 3 names"),
        (
            {"objective": {"metrics": ["f1", "trainable_params"], "directions": ["maximize"]}},
            "objective.directions: expected 2 (one per metric), got 1",
        ),
        (
            {"objective": {"metric": "f1", "metrics": ["f1", "train_seconds"]}},
            "objective.metric: not with objective.metrics",
        ),
        (
            {"objective": {"directions": ["maximize", "minimize"]}},
            "objective.directions: needs objective.metrics",
        ),
        ({"constraints": {"trainable_percent": 1.0}}, "constraints.trainable_percent: expected '<= NUMBER'"),
        ({"constraints": {"flops": "<= 1"}}, "constraints.flops: unknown quantity"),
        (
            {"constraints": {"trainable_percent": "<= 1"}, "sampler": {"name": "random"}},
            "constraints: sampler 'random' cannot steer",
        ),
    ],
)
def test_objectives_and_constraints_are_validated(
    tmp_path: Path, tiny_model_dir: Path, over: dict[str, object], problem: str
) -> None:
    from conftest import write_study

    path = write_study(tmp_path, tiny_model_dir, **over)
    with pytest.raises(ConfigError) as e:
        load_study(path)
    assert any(line.startswith(f"{path}: {problem}") for line in e.value.problems), e.value.problems


def test_directions_default_to_each_objectives_natural_one(tmp_path: Path, tiny_model_dir: Path) -> None:
    from conftest import write_study

    spec = load_study(
        write_study(
            tmp_path,
            tiny_model_dir,
            objective={"metrics": ["loss", "trainable_params", "samples_per_second"]},
        )
    )
    assert spec.objectives == ["loss", "trainable_params", "samples_per_second"]
    assert spec.directions == ["minimize", "minimize", "maximize"]
    assert spec.objective.metric == "loss" and spec.direction == "minimize"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("f1 >> 0.8", "--pick: cannot read 'f1 >> 0.8'; expected clauses like"),
        ("min a, max b", "--pick: 'max b': only one min/max goal is allowed"),
        ("", "--pick: empty"),
        ("f1 >= 0..8", "--pick: 'f1 >= 0..8': '0..8' is not a number"),
    ],
)
def test_pick_parse_errors_are_one_line(text: str, message: str) -> None:
    from hpo.errors import UserError
    from hpo.pick import parse_pick

    with pytest.raises(UserError) as e:
        parse_pick(text)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- a real study


@pytest.mark.slow
def test_multi_objective_study_prunes_on_primary_and_ends_with_a_front(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Loss and trainable parameters on the tiny model: pruning (successive halving on the
    loss), a constraint that makes full fine-tuning infeasible, and the readers of the front."""
    import json

    from conftest import write_study

    from hpo.cli import main
    from hpo.results import pareto_front

    path = write_study(
        tmp_path,
        tiny_model_dir,
        objective={"metrics": ["loss", "trainable_params"], "directions": ["minimize", "minimize"]},
        constraints={"trainable_percent": "<= 50"},
        budget={"n_trials": 7, "max_epochs": 2, "evals_per_epoch": 2},
        sampler={"name": "tpe", "seed": 3, "n_startup_trials": 3, "skip_repeats": None},
        pruner={"name": "successive-halving", "min_resource": 1, "reduction_factor": 2},
    )
    url = f"sqlite:///{tmp_path / 'mo.db'}"
    assert main(["run", str(path), "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "Pareto front (loss min, trainable_params min)" in out

    study = optuna.load_study(study_name="tiny", storage=url)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert states.count("PRUNED") >= 1 and states.count("COMPLETE") >= 2, states
    assert {t.params["strategy"] for t in trials} == {"full", "lora"}
    for t in trials:
        # every evaluation's loss is stored as an intermediate value (the dashboard's curves)
        assert t.intermediate_values and max(t.intermediate_values) == t.user_attrs["evaluations"]
        if t.state.name == "PRUNED":
            # pruned on the primary metric: some earlier trial had a lower loss at that rung
            step = max(t.intermediate_values)
            rung = t.intermediate_values[step]
            assert any(
                o.intermediate_values.get(step, float("inf")) < rung for o in trials if o.number < t.number
            )
        else:
            assert t.values == [t.user_attrs["val_loss"], t.user_attrs["trainable_params"]]
        # the constraint: full fine-tuning trains 100% of the weights
        feasible = t.user_attrs["trainable_percent"] <= 50
        assert t.user_attrs["feasible"] is feasible
        assert ("infeasible" in t.user_attrs) is (not feasible)
        assert t.system_attrs["constraints"][0] == pytest.approx(t.user_attrs["trainable_percent"] - 50)
    full = [t for t in trials if t.params["strategy"] == "full"]
    assert full and all(
        t.user_attrs["infeasible"].startswith("trainable_percent <= 50 (got 100") for t in full
    )

    front = pareto_front(study)
    assert front and all(t.params["strategy"] == "lora" and t.state.name == "COMPLETE" for t in front)

    # compare: the study table, then the front; --by pareto as JSON
    assert main(["compare", "tiny", "--storage", url]) == 0
    table = capsys.readouterr().out
    assert "Pareto front of tiny (loss min, trainable_params min):" in table
    assert main(["compare", "tiny", "--by", "pareto", "--format", "json", "--storage", url]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["trial"] for r in rows] == [t.number for t in front]
    assert all({"loss", "trainable_params", "strategy"} <= set(r) for r in rows)
    assert main(["studies", "--storage", url]) == 0
    assert "tiny" in capsys.readouterr().out

    # report: the Pareto plot beside the others
    assert main(["report", "tiny", "-o", str(tmp_path / "report"), "--storage", url]) == 0
    assert (tmp_path / "report" / "pareto_front.png").stat().st_size > 0
    assert "Pareto front" in (tmp_path / "report" / "index.html").read_text()

    # export --pick: within 5% of the best loss on the front, the fewest trainable parameters
    best_loss = min(t.values[0] for t in front)
    bound = best_loss * 1.05
    expected = min((t for t in front if t.values[0] <= bound), key=lambda t: (t.values[1], front.index(t)))
    out_file = tmp_path / "picked.yaml"
    pick = f"loss <= {bound:.6f}, min trainable_params"
    assert main(["export", "tiny", "-o", str(out_file), "--pick", pick, "--storage", url]) == 0
    import yaml

    spec = yaml.safe_load(out_file.read_text())
    assert spec["provenance"]["trial"] == expected.number
    assert spec["provenance"]["objectives"]["trainable_params"] == expected.values[1]
    assert spec["objective"] == {"metric": "loss", "direction": "minimize"}
    # nothing on the front passes: one line with the ranges, exit 1
    capsys.readouterr()
    assert main(["export", "tiny", "-o", str(out_file), "--pick", "loss <= -1", "--storage", url]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "none of the" in err and "loss " in err
