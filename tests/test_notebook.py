"""experiments/notebooks/explore.ipynb runs top to bottom, and is stored without outputs."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).parent.parent / "experiments" / "notebooks" / "explore.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"cell {i} of {NOTEBOOK.name} has outputs: strip them before committing"
            )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jupyter_client/zmq internals
def test_notebook_executes_top_to_bottom(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("VAE_JAX_NOTEBOOK_SECONDS", "0")  # one epoch per model
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    text = "\n".join(
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "(empty)" in text  # the standard prior's theta["p_z"] has no leaves
    assert "decoder unchanged at corresponding points: True" in text
    assert "pseudo_inputs" in text  # the VampPrior's theta["p_z"]
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # manifold and two aggregate-posterior plots
