"""Execute notebooks/lj_fluid.ipynb on a small system and check the physics it prints.

The cell tagged ``parameters`` is replaced by small values; the kernel is the ``python3`` kernel, which
jupyter_client launches with the interpreter running this test (so the notebook sees the same jmlsim install).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "lj_fluid.ipynb"

SMALL_PARAMETERS = """\
N_ATOMS = 256
DENSITY = 0.8
TEMPERATURE = 1.0
N_STEPS = 1000
REPORT_INTERVAL = 50
"""


def _stdout(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream"
                   and out.get("name") == "stdout")


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"notebook printed no line matching {pattern!r}; stdout was:\n{text}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    tagged[0].source = SMALL_PARAMETERS
    mp = pytest.MonkeyPatch()
    mp.setenv("MPLBACKEND", "Agg")
    try:
        workdir = tmp_path_factory.mktemp("lj_fluid_nb")
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        mp.undo()
    return nb, _stdout(nb), workdir


def test_saved_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "notebook must be saved without outputs"


def test_runs_with_overridden_parameters(executed):
    nb, out, workdir = executed
    assert "LJ fluid N=256 rho=0.8" in out  # the small parameters were used, not the defaults
    assert "20 frames, 1000 steps" in out
    assert not any(workdir.iterdir()), "the notebook should not write files"


def test_thermostat_reaches_target(executed):
    _, out, _ = executed
    t_mean = _number(r"<T> = ([-\d.]+)", out)
    assert 0.9 < t_mean < 1.1


def test_radial_distribution_first_peak(executed):
    _, out, _ = executed
    r_peak = _number(r"first peak: r = ([-\d.]+) sigma", out)
    g_peak = _number(r"first peak: r = [-\d.]+ sigma, g = ([-\d.]+)", out)
    g_tail = _number(r"mean g\(r\) for r > [\d.]+ sigma: ([-\d.]+)", out)
    # Liquid at rho 0.8, T 1.0: peak near 1.08 sigma, height ~2.7. The unmelted fcc start lattice would give a
    # peak at ~1.21 sigma and height ~3.6, so the height bound also checks that the lattice melted.
    assert 0.95 < r_peak < 1.3
    assert 2.2 < g_peak < 3.2
    assert 0.9 < g_tail < 1.1  # g(r) -> 1 at large r: the ideal-gas normalisation is right
