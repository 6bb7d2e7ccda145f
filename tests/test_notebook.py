"""examples/quickstart.ipynb executes top to bottom (nbclient), with a tiny model and a trimmed
budget, so the notebook never rots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import ROOT, save_tiny_bert

NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_the_quickstart_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    # 4 layers: the quickstart space's partial strategy trains the top 2..4 of them
    model = save_tiny_bert(tmp_path / "tiny-bert", num_layers=4)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "the notebook has one cell tagged 'parameters'"
    params[0].source = (
        f"MODEL = {str(model)!r}\nN_TRIALS = 3\nTRAIN_LIMIT = 48\n"
        f"STORAGE = 'sqlite:///{tmp_path / 'nb.db'}'\nOUT = {str(tmp_path / 'out')!r}\n"
    )
    # the kernel is a child process: it finds this checkout and this test's cache
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the per-strategy plot and the retrain's metrics chart, inline
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    strategies = ("full", "partial", "adapter", "lora", "prompt")
    assert any("best_value" in t and any(f"<td>{s}</td>" in t for s in strategies) for t in tables)
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "study 'notebook-quickstart'" in text and "test " in text
    assert (tmp_path / "out" / "best" / "metrics.json").is_file()
    assert (tmp_path / "out" / "best" / "model" / "hpo_model.json").is_file()
