"""notebooks/temperature.ipynb runs top to bottom on the CPU, fast, and writes its figures."""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "temperature.ipynb"
BUDGET_S = 60.0


@pytest.fixture
def executed(tmp_path, monkeypatch):
    """Execute a copy of the notebook (the stored one keeps its outputs); return it and timings."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    # An empty kernel_dirs leaves only ipykernel's own spec, which runs sys.executable: the
    # kernel is this interpreter and this environment, whatever kernelspecs the machine has.
    km = AsyncKernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[])
    )
    client = NotebookClient(
        nb, km=km, timeout=BUDGET_S, record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    start = time.time()
    client.execute()  # raises CellExecutionError on the first failing cell
    elapsed = time.time() - start
    nbformat.write(nb, tmp_path / NOTEBOOK.name)
    return nb, start, elapsed


def test_temperature_notebook_runs_clean_within_budget_and_writes_its_figures(executed):
    nb, start, elapsed = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert elapsed < BUDGET_S, f"notebook took {elapsed:.1f} s"

    names = re.findall(r'show\(fig, "([\w-]+)"\)', "\n".join(c.source for c in code))
    assert len(names) >= 7
    for name in names:
        png = NOTEBOOK.parent / "figures" / f"{name}.png"
        assert png.is_file(), png
        # Written by this run, not left over from an earlier one (1 s slack for coarse clocks).
        assert png.stat().st_mtime >= start - 1.0, png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    displayed = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(displayed) == len(names)


def test_every_markdown_section_is_followed_by_code_with_asserts():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    sections = [i for i, c in enumerate(nb.cells)
                if c.cell_type == "markdown" and c.source.lstrip().startswith("## ")]
    assert len(sections) == 7
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and i > 0:
            nxt = nb.cells[i + 1]
            assert nxt.cell_type == "code" and "assert " in nxt.source, cell.source[:60]


def test_stored_notebook_has_its_outputs_and_stays_small():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert NOTEBOOK.stat().st_size < 1.5e6
