"""Execute a repository notebook at small size: replace its cell tagged ``parameters``, run it with nbclient in
the ``python3`` kernel (the interpreter running the tests, so it sees the same jmlsim), and collect its output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str, parameters: str, workdir, env: Optional[dict] = None, timeout: int = 900):
    """Run notebooks/<name> with ``parameters`` as the source of its one ``parameters`` cell, in ``workdir``
    (matplotlib's Agg backend; ``env`` adds environment variables for the kernel). Returns the executed notebook."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    tagged[0].source = parameters
    saved = dict(os.environ)
    os.environ.update({"MPLBACKEND": "Agg", **(env or {})})
    try:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb


def stream_text(nb, name: Optional[str] = None) -> str:
    """Everything the code cells printed (only the ``stdout`` or ``stderr`` stream with ``name``)."""
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream"
                   and (name is None or out.get("name") == name))


def images(nb) -> int:
    """Number of PNG images the code cells produced."""
    return sum(1 for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
               if "image/png" in out.get("data", {}))
