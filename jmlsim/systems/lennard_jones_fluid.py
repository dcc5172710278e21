"""A single-species Lennard-Jones fluid in a cubic periodic box, in reduced units (sigma = epsilon = m = 1)."""

from __future__ import annotations

import math

import numpy as np

from jmlsim.energy.lennard_jones import LennardJones, LennardJonesParams
from jmlsim.system import System


def lattice_positions(n_atoms: int, box_length: float) -> np.ndarray:
    """(n_atoms, 3) start positions: an fcc lattice when n_atoms = 4 k^3, else the first sites of a simple
    cubic lattice just large enough to hold them. Lattices start far from overlaps; the fluid melts quickly."""
    k = round((n_atoms / 4) ** (1 / 3))
    if 4 * k**3 == n_atoms:
        basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        cells = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
        frac = ((cells + basis[None]).reshape(-1, 3) + 0.25) / k
    else:
        m = math.ceil(n_atoms ** (1 / 3) - 1e-9)
        grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_atoms]
        frac = (grid + 0.5) / m
    return frac * box_length


def lennard_jones_fluid(n_atoms: int, density: float, cutoff: float = 2.5, switch_distance: float | None = None,
                        shift: bool = True) -> System:
    """Build the fluid.

    Args:
      n_atoms: number of particles (> 0). density: number density rho in sigma^-3 (> 0, finite).
      cutoff: interaction cutoff in sigma. switch_distance: start of OpenMM's smooth switch (sigma), or None for
        a truncated (and by default shifted) potential.
    Returns:
      A System in reduced units with kB = 1 (trajectory writers give it a topology of 'LJ' atoms, element Ar).
    """
    if not n_atoms > 0:
        raise ValueError(f"number of atoms must be positive, got {n_atoms}")
    if not (math.isfinite(density) and density > 0):
        raise ValueError(f"density must be a positive finite number, got {density}")
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a positive finite number, got {cutoff}")
    box_length = (n_atoms / density) ** (1 / 3)
    if cutoff > box_length / 2:
        raise ValueError(f"cutoff {cutoff:g} exceeds half the box length {box_length / 2:g}; "
                         f"use more atoms or a shorter cutoff")
    term = LennardJones(cutoff=cutoff, switch_distance=switch_distance, shift=shift)
    return System(
        terms={"lennard_jones": term},
        params={"lennard_jones": LennardJonesParams(sigma=np.float32(1.0), epsilon=np.float32(1.0))},
        masses=np.ones(n_atoms),
        positions=lattice_positions(n_atoms, box_length),
        box=np.diag([box_length] * 3),
        neighbor_cutoff=cutoff,
        kB=1.0,
        reduced_units=True,
        topology=None,
        name=f"LJ fluid N={n_atoms} rho={density:g}",
    )
