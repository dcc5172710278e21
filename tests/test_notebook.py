"""Execute notebooks/lj_fluid.ipynb on a small system and check the physics it prints.

The cell tagged ``parameters`` is replaced by small values; the kernel is the ``python3`` kernel, which
jupyter_client launches with the interpreter running this test (so the notebook sees the same jmlsim install).
"""

from __future__ import annotations

import re

import nbformat
import pytest
from notebook_runner import NOTEBOOKS, run_notebook, stream_text

NOTEBOOK = NOTEBOOKS / "lj_fluid.ipynb"

SMALL_PARAMETERS = """\
N_ATOMS = 256
DENSITY = 0.8
TEMPERATURE = 1.0
N_STEPS = 1000
REPORT_INTERVAL = 50
"""


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"notebook printed no line matching {pattern!r}; stdout was:\n{text}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lj_fluid_nb")
    nb = run_notebook(NOTEBOOK.name, SMALL_PARAMETERS, workdir, timeout=600)
    return nb, stream_text(nb, "stdout"), workdir


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
