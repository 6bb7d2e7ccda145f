"""benchmarks/resume.py end to end on a tiny model (timings are not asserted: RESULTS.md holds them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT

SST2 = ROOT.parent / "shared" / "data" / "sst2"


@pytest.mark.skipif(not (SST2 / "train.tsv").exists(), reason="SST-2 not in ../shared/data")
def test_resume_benchmark_runs_on_a_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.resume import main as bench

    out = tmp_path / "resume.json"
    payload = bench(["--quick", "--model", str(tiny_model_dir), "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == payload["rows"]
    for row in payload["rows"]:
        assert row["restart"]["steps_trained"] == row["steps"]
        assert row["resumed"]["steps_trained"] == row["steps"] - row["killed_after_step"] > 0
        assert row["killed_after_step"] > 0 and row["same_end"], row
        assert row["checkpoint_mb"] > 0
