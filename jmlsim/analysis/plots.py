"""Figures: free energy on phi/psi or on the first two TICA components, implied timescales, Chapman-Kolmogorov test.

Each function draws on a matplotlib Axes (or returns deeptime's figure for the CK test) and returns it; nothing is
shown or saved here. Free energies are in kJ/mol (-kT ln p, shifted to a minimum of zero).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

KB_KJ_PER_MOL_K = 0.00831446261815324


def free_energy_2d(x, y, temperature_k: float = 300.0, bins: int = 60, weights=None, range_=None) -> tuple:
    """(F (bins, bins) kJ/mol with NaN where unvisited, x edges, y edges) from samples x, y (optionally weighted)."""
    h, xe, ye = np.histogram2d(np.ravel(x), np.ravel(y), bins=bins, weights=None if weights is None else np.ravel(weights),
                               range=range_, density=True)
    with np.errstate(divide="ignore"):
        f = -KB_KJ_PER_MOL_K * temperature_k * np.log(h)
    f[~np.isfinite(f)] = np.nan
    return f - np.nanmin(f), xe, ye


def plot_free_energy(ax, x, y, temperature_k: float = 300.0, bins: int = 60, weights=None, range_=None,
                     labels: tuple = ("x", "y"), vmax: Optional[float] = 30.0):
    """Filled free-energy map on ``ax``; returns the mappable (for a colorbar)."""
    f, xe, ye = free_energy_2d(x, y, temperature_k, bins, weights, range_)
    mesh = ax.pcolormesh(xe, ye, f.T, cmap="viridis", vmin=0.0, vmax=vmax, shading="flat")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    return mesh


def plot_ramachandran_fes(ax, phi_psi: Sequence[np.ndarray], temperature_k: float = 300.0, bins: int = 60,
                          states: Optional[Sequence[dict]] = None, weights: Optional[Sequence[np.ndarray]] = None):
    """Free energy on phi/psi (degrees); metastable-state centres (dicts with phi_deg, psi_deg, basin) marked.

    weights: per-frame weights per trajectory (e.g. :func:`jmlsim.analysis.pipeline.frame_weights`, which turn
    adaptively sampled frames into the MSM's equilibrium); None weighs frames equally."""
    angles = np.concatenate([np.asarray(a).reshape(-1, 2) for a in phi_psi])
    w = None if weights is None else np.concatenate([np.ravel(x) for x in weights])
    mesh = plot_free_energy(ax, angles[:, 0], angles[:, 1], temperature_k, bins, weights=w,
                            range_=[[-180, 180], [-180, 180]], labels=(r"$\phi$ (deg)", r"$\psi$ (deg)"))
    for s in states or ():
        ax.plot(s["phi_deg"], s["psi_deg"], "r*", ms=12)
        ax.annotate(f"{s.get('basin', '')} {100 * s['probability']:.0f}%", (s["phi_deg"], s["psi_deg"]),
                    color="w", xytext=(5, 5), textcoords="offset points")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-180, 180)
    return mesh


def plot_tica_fes(ax, projected: Sequence[np.ndarray], temperature_k: float = 300.0, bins: int = 60):
    """Free energy on the first two TICA components."""
    y = np.concatenate([np.asarray(p)[:, :2] for p in projected])
    return plot_free_energy(ax, y[:, 0], y[:, 1], temperature_k, bins, labels=("TIC 1", "TIC 2"))


def plot_implied_timescales(ax, its, frame_ps: float = 1.0):
    """deeptime's implied-timescale plot with both axes converted from frames to ps."""
    from deeptime.plots import plot_implied_timescales as plot

    plot(its, n_its=its.max_n_processes, ax=ax)
    ax.set_yscale("log")
    ax.set_xlabel(f"lag time (frames of {frame_ps:g} ps)")
    ax.set_ylabel("implied timescale (frames)")
    return ax


def plot_ck_test(ck):
    """deeptime's Chapman-Kolmogorov grid (predicted vs estimated set probabilities). Returns the grid object."""
    from deeptime.plots import plot_ck_test as plot

    return plot(ck)
