"""Bonded terms: harmonic bonds, harmonic angles, periodic torsions (propers and impropers alike).

Each term holds static atom-index arrays and takes its force constants and equilibrium values as a
differentiable parameter NamedTuple, with OpenMM's functional forms and units:

    bond      E = 1/2 k (r - r0)^2                  k kJ/mol/nm^2, r0 nm
    angle     E = 1/2 k (theta - theta0)^2          k kJ/mol/rad^2, theta0 rad
    torsion   E = k (1 + cos(n phi - phase))        k kJ/mol, n integer periodicity (static), phase rad

Bonded terms are evaluated without periodic images (as OpenMM does by default): molecules must be whole, which
they are in jmlsim's unwrapped trajectories. Forces come from autodiff (a scatter over a few thousand terms; for
small molecules a dense incidence-matrix product, see :mod:`jmlsim.energy.differences`). Angles use the
vectorizable :func:`jmlsim.energy.fast_math.atan2`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jmlsim.energy.differences import component_blocks, cross, differences, dot, scale
from jmlsim.energy.fast_math import atan2

Array = jnp.ndarray


class HarmonicBondParams(NamedTuple):
    """k (B,) kJ/mol/nm^2; length (B,) nm."""

    k: Array
    length: Array


class HarmonicAngleParams(NamedTuple):
    """k (A,) kJ/mol/rad^2; angle (A,) rad."""

    k: Array
    angle: Array


class PeriodicTorsionParams(NamedTuple):
    """k (T,) kJ/mol; phase (T,) rad."""

    k: Array
    phase: Array


def bond_vectors(positions: Array, i, j) -> Array:
    """positions[j] - positions[i], (..., 3)."""
    return differences(positions, j, i)


def angle_values(positions: Array, atoms) -> Array:
    """Angles (A,) in rad at the middle atom of each (A, 3) triple; atan2 form, stable near 0 and pi."""
    u, v = component_blocks(differences(positions, _concat(atoms[:, 0], atoms[:, 2]),
                                        _concat(atoms[:, 1], atoms[:, 1])), 2)
    c = cross(u, v)
    return atan2(jnp.sqrt(dot(c, c)), dot(u, v))


def dihedral_values(positions: Array, atoms) -> Array:
    """IUPAC dihedral angles (T,) in rad, range (-pi, pi], for (T, 4) atom quadruples."""
    b1, b2, b3 = component_blocks(differences(positions, _concat(atoms[:, 1], atoms[:, 2], atoms[:, 3]),
                                              _concat(atoms[:, 0], atoms[:, 1], atoms[:, 2])), 3)
    n1 = cross(b1, b2)
    n2 = cross(b2, b3)
    m1 = cross(n1, scale(b2, 1.0 / jnp.sqrt(dot(b2, b2))))
    return atan2(-dot(m1, n2), dot(n1, n2))


def _concat(*index_arrays):
    """Concatenate index arrays, host numpy stays numpy (a static topology), traced ones become jnp."""
    if all(isinstance(a, np.ndarray) for a in index_arrays):
        return np.concatenate(index_arrays)
    return jnp.concatenate(index_arrays)


@dataclasses.dataclass(frozen=True, eq=False)
class HarmonicBond:
    """atoms: (B, 2) int."""

    atoms: np.ndarray

    def energy(self, params: HarmonicBondParams, positions: Array, box=None, nbrs=None) -> Array:
        if len(self.atoms) == 0:
            return jnp.zeros((), positions.dtype)
        d = bond_vectors(positions, self.atoms[:, 0], self.atoms[:, 1])
        r = jnp.sqrt(jnp.sum(d * d, axis=-1))
        return 0.5 * jnp.sum(params.k * (r - params.length) ** 2)


@dataclasses.dataclass(frozen=True, eq=False)
class HarmonicAngle:
    """atoms: (A, 3) int, the vertex in the middle."""

    atoms: np.ndarray

    def energy(self, params: HarmonicAngleParams, positions: Array, box=None, nbrs=None) -> Array:
        if len(self.atoms) == 0:
            return jnp.zeros((), positions.dtype)
        theta = angle_values(positions, self.atoms)
        return 0.5 * jnp.sum(params.k * (theta - params.angle) ** 2)


@dataclasses.dataclass(frozen=True, eq=False)
class PeriodicTorsion:
    """atoms: (T, 4) int; periodicity: (T,) int (static: it selects the Fourier component)."""

    atoms: np.ndarray
    periodicity: np.ndarray

    def energy(self, params: PeriodicTorsionParams, positions: Array, box=None, nbrs=None) -> Array:
        if len(self.atoms) == 0:
            return jnp.zeros((), positions.dtype)
        phi = dihedral_values(positions, self.atoms)
        n = jnp.asarray(self.periodicity, positions.dtype)
        return jnp.sum(params.k * (1.0 + jnp.cos(n * phi - params.phase)))
