"""examples/notebook.ipynb, run top to bottom in a kernel of its own against the
session's cluster, as an engineer runs it."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from actors.client import Lootify

pytestmark = pytest.mark.cluster

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "notebook.ipynb"


def test_the_notebook_runs_top_to_bottom(lootify: Lootify, client_env, monkeypatch) -> None:
    for name, value in client_env.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot was drawn"
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert " bet_stake " in printed and " deposit " in printed
