"""Every notebook under notebooks/ runs top to bottom (nbclient, a Python kernel) on tiny in-process models.

A failing cell fails the test; each notebook ends with assertion cells that check values. Notebooks are kept in
git without outputs.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs_and_runs_without_error(path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"strip the outputs of {path.name}"
    assert any("assert" in c.source for c in code), f"{path.name} needs a cell that checks a value"
    monkeypatch.setenv("AMLX_NOTEBOOK_MODEL", "tiny")  # the kernel inherits the environment
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def test_every_notebook_is_listed_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert [p.name for p in NOTEBOOKS if f"`{p.name}`" not in readme] == []
