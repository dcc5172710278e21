"""Execute notebooks/temperature_scan.ipynb with 4 replicas for a few hundred steps and check what it wrote."""

from __future__ import annotations

import re

import numpy as np
import pytest
from notebook_runner import NOTEBOOKS, run_notebook, stream_text

NOTEBOOK = NOTEBOOKS / "temperature_scan.ipynb"


@pytest.mark.slow
def test_temperature_scan_notebook_runs_at_small_size(tmp_path):
    nb = run_notebook(NOTEBOOK.name, f"N_REPLICAS = 4\nT_MIN_K, T_MAX_K = 300.0, 600.0\nN_STEPS = 300\n"
                      f"REPORT_INTERVAL = 50\nSEED = 1\nOUTPUT_DIR = {str(tmp_path)!r}\n", NOTEBOOK.parent)
    stdout = stream_text(nb, "stdout")
    assert re.search(r"22 atoms, 12 constraints, 4 replicas, T = 300 \.\.\. 600 K", stdout), stdout
    assert "replica-ns/day aggregate" in stdout
    data = np.load(tmp_path / "temperature_scan.npz")
    assert data["potential"].shape == (6, 4) and data["phi_psi"].shape == (6, 4, 2)
    np.testing.assert_allclose(data["temperatures"], [300.0, 377.98, 476.22, 600.0], rtol=1e-3)
    assert np.all(np.isfinite(data["kinetic_temperature"])) and np.all(np.abs(data["phi_psi"]) <= 180.0)
    # hotter thermostats give hotter replicas (averaged over the short run)
    assert data["kinetic_temperature"][1:].mean(0)[-1] > data["kinetic_temperature"][1:].mean(0)[0]
    for png in ("temperature_scan_energy.png", "temperature_scan_basins.png"):
        assert (tmp_path / png).stat().st_size > 10_000
