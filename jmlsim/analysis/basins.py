"""Conformational basins of alanine dipeptide (and any residue) on the Ramachandran map, in degrees.

Boundaries follow the usual partition (e.g. Chodera et al., J. Chem. Phys. 124, 194111 (2006), Fig. 1):
phi > 0 is the left-handed region (alpha_L, and C7ax in vacuum); with phi < 0, -120 < psi < 50 is alpha_R and the
rest is the extended C7eq / beta region.
"""

from __future__ import annotations

import numpy as np

BASINS = ("C7eq/beta", "alphaR", "alphaL")


def basin_index(phi_deg, psi_deg) -> np.ndarray:
    """Basin per frame: 0 C7eq/beta, 1 alphaR, 2 alphaL (index into BASINS). Angles in degrees, any shape."""
    phi = np.asarray(phi_deg)
    psi = np.asarray(psi_deg)
    alpha_r = (psi > -120.0) & (psi < 50.0)
    # phi > 0 but close to 180 belongs to the beta region wrapping around; alpha_L/C7ax sit at phi ~ 50-90
    left = (phi > 0.0) & (phi < 150.0)
    return np.where(left, 2, np.where(alpha_r, 1, 0))


def basin_name(phi_deg: float, psi_deg: float) -> str:
    return BASINS[int(basin_index(phi_deg, psi_deg))]


def circular_mean_deg(angles_deg, weights=None, axis=0) -> np.ndarray:
    """Mean direction of angles (degrees, result in (-180, 180]), optionally weighted."""
    a = np.radians(np.asarray(angles_deg, np.float64))
    w = np.ones_like(a) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), a.shape)
    return np.degrees(np.arctan2(np.sum(w * np.sin(a), axis=axis), np.sum(w * np.cos(a), axis=axis)))
