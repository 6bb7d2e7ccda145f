"""`hpo compare` and `hpo report` on a tiny study trained for real and on a study with known timings."""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import write_study

from hpo.cli import main
from hpo.compare import compare_rows, render
from hpo.config import load_study
from hpo.drivers.worker import run_worker
from hpo.report import importance_data, intermediate_data, write_report
from hpo.results import strategy_rows

TS = optuna.trial.TrialState
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    """A storage with a tiny study trained for real ("tiny", loss minimized, some trials
    pruned) and a hand-made one with exact durations and a Ray-style stopped-early trial."""
    root = tmp_path_factory.mktemp("compare")
    url = f"sqlite:///{root / 'hpo.db'}"
    with pytest.MonkeyPatch.context() as mp:
        # The module fixture runs before the autouse cache fixture: keep the cache out of the repo.
        mp.setenv("HPO_CACHE_DIR", str(root / "cache"))
        mp.setattr("hpo.context.CACHE_DIR", root / "cache")
        path = write_study(
            root,
            tiny_model_dir,
            objective={"metric": "loss"},
            budget={"n_trials": 5, "max_epochs": 1, "evals_per_epoch": 3},
            # Prune anything worse than the best trial so far at the same evaluation.
            pruner={"name": "percentile", "percentile": 99.0, "n_startup_trials": 1, "n_warmup_steps": 0},
            sampler={"name": "random", "seed": 3},
        )
        run_worker(load_study(path), url, n_trials=5, timeout=None, quiet=True)
    _synthetic(url)
    yield url


def _trial(
    number: int,
    state: TS,
    strategy: str,
    seconds: float,
    value: float | None = None,
    stopped: bool = False,
    steps: int = 3,
) -> optuna.trial.FrozenTrial:
    start = datetime.datetime(2026, 1, 1, 12, 0, 0)
    params: dict[str, object] = {"strategy": strategy, "learning_rate": 1e-4 * (number + 1)}
    dists: dict[str, optuna.distributions.BaseDistribution] = {
        "strategy": optuna.distributions.CategoricalDistribution(["full", "lora"]),
        "learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
    }
    if strategy == "lora":
        params["lora.r"] = 4 + number
        dists["lora.r"] = optuna.distributions.IntDistribution(1, 64)
    attrs: dict[str, object] = {"strategy": strategy}
    if stopped:
        attrs["stopped_early"] = True
    base = value if value is not None else 0.5
    return optuna.trial.FrozenTrial(
        number=number,
        state=state,
        value=value if state == TS.COMPLETE else None,
        datetime_start=start,
        datetime_complete=start + datetime.timedelta(seconds=seconds),
        params=params,
        distributions=dists,
        user_attrs=attrs,
        system_attrs={},
        intermediate_values={i: base - 0.01 * (steps - i) for i in range(1, steps + 1)},
        trial_id=0,
    )


def _synthetic(url: str) -> None:
    """Known durations: 10 + 6 + 2 + 3 + 1 = 22 s, of which 2 (stopped) + 3 (pruned) = 5 s."""
    study = optuna.create_study(study_name="ray", storage=url, direction="maximize")
    study.set_user_attr("metric", "accuracy")
    study.add_trial(_trial(0, TS.COMPLETE, "full", 10, 0.80))
    study.add_trial(_trial(1, TS.COMPLETE, "lora", 6, 0.85))
    # ASHA stopped it: COMPLETE with a higher value from a shorter run; never the best.
    study.add_trial(_trial(2, TS.COMPLETE, "lora", 2, 0.90, stopped=True, steps=1))
    study.add_trial(_trial(3, TS.PRUNED, "full", 3, steps=2))
    study.add_trial(_trial(4, TS.FAIL, "lora", 1, steps=0))


def test_compare_counts_times_and_stopped_early_trials(db: str) -> None:
    (row,) = compare_rows(db, ["ray"])
    assert (row["trials"], row["complete"], row["stopped"], row["pruned"], row["fail"]) == (5, 2, 1, 1, 1)
    assert (row["best_value"], row["best_trial"], row["best_strategy"]) == (0.85, 1, "lora")
    assert row["best_params"] == "lora lr=2.00e-04 r=5"
    assert row["total_time_s"] == 22.0 and row["median_time_s"] == 3.0
    assert row["pruned_time_s"] == 5.0 and row["pruned_share"] == pytest.approx(5 / 22, abs=1e-4)

    by = {r["strategy"]: r for r in compare_rows(db, ["ray"], by="strategy")}
    assert list(by) == ["lora", "full"]  # best first
    assert (by["lora"]["trials"], by["lora"]["complete"], by["lora"]["stopped"], by["lora"]["fail"]) == (
        3,
        1,
        1,
        1,
    )
    assert (by["lora"]["best_value"], by["lora"]["best_trial"], by["lora"]["median_time_s"]) == (0.85, 1, 6.0)
    assert (by["full"]["trials"], by["full"]["pruned"], by["full"]["best_value"]) == (2, 1, 0.80)
    # `hpo run`'s end-of-study summary uses the same rules
    assert [r["best_trial"] for r in strategy_rows(optuna.load_study(study_name="ray", storage=db))] == [
        1,
        0,
    ]


def test_studies_never_shows_a_stopped_early_trial_as_best(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hpo studies` takes compare's rules: trial 2 (ASHA-stopped, 0.90) is counted as stopped,
    not complete, and the best is trial 1 (0.85), as `hpo compare` says."""
    assert main(["studies", "--storage", db]) == 0
    out = capsys.readouterr().out
    header, *lines = out.strip().splitlines()
    row = dict(
        zip(header.split(), next(line for line in lines if line.startswith("ray ")).split(), strict=True)
    )
    assert (row["trials"], row["complete"], row["stopped"], row["pruned"], row["fail"]) == (
        "5",
        "2",
        "1",
        "1",
        "1",
    )
    assert (row["best_value"], row["best_strategy"]) == ("0.8500", "lora")
    # The end-of-run summary, the progress line and the report's history plot agree.
    from hpo.display import best_text
    from hpo.report import history_data
    from hpo.results import best_trial

    study = optuna.load_study(study_name="ray", storage=db)
    assert best_trial(study).number == 1 and best_text(best_trial(study), "accuracy").startswith(
        "best accuracy=0.8500"
    )
    assert max(best for _, _, best in history_data(study)) == 0.85


def test_compare_formats(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "tiny", "ray", "--storage", db, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["study"] for r in rows] == ["tiny", "ray"]
    assert rows[1]["pruned_time_s"] == 5.0

    assert main(["compare", "ray", "--storage", db, "--format", "csv", "--by", "strategy"]) == 0
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["strategy"], r["best_trial"], r["best_value"]) for r in records] == [
        ("lora", "1", "0.85"),
        ("full", "0", "0.8"),
    ]

    # the table puts studies side by side, one column each
    assert main(["compare", "tiny", "ray", "--storage", db]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["tiny", "ray"]
    lines = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in table[1:])}
    assert lines["stopped early"][-1] == "1"
    assert lines["time in pruned trials"][-1] == "5.0s"
    assert lines["share of total"][-1] == "22.7%"


def test_compare_real_study_matches_its_trials(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    study = optuna.load_study(study_name="tiny", storage=db)
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TS.COMPLETE]
    pruned = [t for t in trials if t.state == TS.PRUNED]
    assert complete and pruned  # the fixture's pruner does prune
    (row,) = compare_rows(db, ["tiny"])
    best = min(complete, key=lambda t: t.value)  # loss: minimized
    assert (row["direction"], row["metric"]) == ("minimize", "loss")
    assert (row["complete"], row["pruned"]) == (len(complete), len(pruned))
    assert (row["best_trial"], row["best_value"]) == (best.number, best.value)
    durations = [t.duration.total_seconds() for t in trials]
    assert row["total_time_s"] == pytest.approx(sum(durations), abs=1e-2)
    assert row["pruned_time_s"] == pytest.approx(sum(t.duration.total_seconds() for t in pruned), abs=1e-2)

    for r in strategy_rows(study):
        mine = [t for t in complete if t.params["strategy"] == r["strategy"]]
        if mine:
            assert r["best_value"] == min(t.value for t in mine)

    assert main(["compare", "tiny", "--by", "strategy", "--storage", db]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["study", "strategy", "trials"]
    assert f"{best.number}" in out and best.params["strategy"] in out


def test_compare_unknown_study_lists_known(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", "tiny", "nope", "--storage", db]) == 1
    err = capsys.readouterr().err
    assert "unknown study 'nope'" in err and "known: ray, tiny" in err and "Traceback" not in err
    missing = tmp_path / "none.db"
    assert main(["compare", "tiny", "--storage", f"sqlite:///{missing}"]) == 1
    assert "no database" in capsys.readouterr().err
    assert not missing.exists()  # reading never creates a database


def test_report_writes_png_and_html(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main(["report", "tiny", "-o", str(out), "--storage", db]) == 0
    printed = capsys.readouterr().out.split()
    names = [
        "optimization_history",
        "intermediate_values",
        "param_importances",
        "best_per_strategy",
        "best_trial_metrics",
    ]
    for name in names:
        png, page = out / f"{name}.png", out / f"{name}.html"
        assert str(png) in printed and str(page) in printed
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5_000
        text = page.read_text()
        assert "plotly.min.js" in text and "tiny" in text
    assert (out / "plotly.min.js").stat().st_size > 1_000_000  # offline: one shared copy
    index = (out / "index.html").read_text()
    assert all(f"{n}.png" in index for n in names)

    # pruned trials show as such in the pruning curves; importances cover the conditional lora.r
    states = {state for _, state, _ in intermediate_data(optuna.load_study(study_name="tiny", storage=db))}
    assert {"COMPLETE", "PRUNED"} <= states
    study = optuna.load_study(study_name="tiny", storage=db)
    imp = importance_data(study)
    assert set(imp) <= {"strategy", "learning_rate", "lora.r"} and sum(imp.values()) == pytest.approx(1.0)


def test_report_skips_what_the_study_cannot_support(db: str, tmp_path: Path) -> None:
    study = optuna.create_study(study_name="one", storage=db, direction="maximize")
    study.add_trial(_trial(0, TS.COMPLETE, "lora", 4, 0.7))
    report = write_report(db, "one", tmp_path / "one")
    assert any(s.startswith("param_importances: needs at least 2 complete trials") for s in report.skipped)
    assert (tmp_path / "one" / "optimization_history.png").is_file()
    assert not (tmp_path / "one" / "param_importances.png").exists()
    # stopped-early trials are drawn as such
    states = {s for _, s, _ in intermediate_data(optuna.load_study(study_name="ray", storage=db))}
    assert "STOPPED" in states and "PRUNED" in states


def test_render_rejects_unknown_format() -> None:
    from hpo.errors import UserError

    with pytest.raises(UserError, match="--format"):
        render([], "study", "xml")


def test_compare_imports_no_torch(db: str) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from hpo.cli import main; main(['compare', 'ray', '--storage', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run(
        [sys.executable, "-c", code, db], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "lora" in done.stdout
