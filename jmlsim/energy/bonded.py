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
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.energy.differences import component_blocks, cross, differences, dot, scale, subtract
from jmlsim.energy import replica_batch as rb
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

    coordinate_sensitive = True  # see jmlsim.system.coordinate_sensitive

    atoms: np.ndarray

    def energy(self, params: HarmonicBondParams, positions: Array, box=None, nbrs=None) -> Array:
        if len(self.atoms) == 0:
            return jnp.zeros((), positions.dtype)
        d = bond_vectors(positions, self.atoms[:, 0], self.atoms[:, 1])
        r = jnp.sqrt(jnp.sum(d * d, axis=-1))
        return 0.5 * jnp.sum(params.k * (r - params.length) ** 2)

    def batched_forces(self, params: HarmonicBondParams, components: tuple, params_batched: bool, box=None,
                       nbrs=None) -> Optional[tuple]:
        """Forces of R replicas, replica-minor (:mod:`jmlsim.energy.replica_batch`): components (x, y, z) of
        (N, R) nm -> the same of kJ/mol/nm (None for a traced topology). F_j = -k (r - r0) d / r with
        d = x_j - x_i, F_i = -F_j."""
        if not isinstance(self.atoms, np.ndarray):
            return None
        xi, xj = rb.slot_positions(components, self.atoms)
        d = subtract(xj, xi)
        r = jnp.sqrt(dot(d, d))
        k, r0 = (rb.replica_columns(v, params_batched) for v in (params.k, params.length))
        f_j = scale(d, -k * (r - r0) / r)
        return rb.atom_sums(self.atoms, [scale(f_j, -1.0), f_j], components)


@dataclasses.dataclass(frozen=True, eq=False)
class HarmonicAngle:
    """atoms: (A, 3) int, the vertex in the middle."""

    coordinate_sensitive = True

    atoms: np.ndarray

    def energy(self, params: HarmonicAngleParams, positions: Array, box=None, nbrs=None) -> Array:
        if len(self.atoms) == 0:
            return jnp.zeros((), positions.dtype)
        theta = angle_values(positions, self.atoms)
        return 0.5 * jnp.sum(params.k * (theta - params.angle) ** 2)

    def batched_forces(self, params: HarmonicAngleParams, components: tuple, params_batched: bool, box=None,
                       nbrs=None) -> Optional[tuple]:
        """Forces of R replicas, replica-minor (see :meth:`HarmonicBond.batched_forces`). With u = x_0 - x_1,
        v = x_2 - x_1, c = u x v: d theta/du = ((u.v) u/|u|^2 - v)/|c|, d theta/dv likewise, so
        F_0 = -k (theta - theta0) d theta/du, F_2 the same with v, F_1 = -(F_0 + F_2)."""
        if not isinstance(self.atoms, np.ndarray):
            return None
        x0, x1, x2 = rb.slot_positions(components, self.atoms)
        u, v = subtract(x0, x1), subtract(x2, x1)
        c = cross(u, v)
        sine_norm = jnp.sqrt(dot(c, c))  # |u| |v| sin(theta)
        uv = dot(u, v)
        theta = atan2(sine_norm, uv)
        k, theta0 = (rb.replica_columns(a, params_batched) for a in (params.k, params.angle))
        g = -k * (theta - theta0) / sine_norm  # -dE/dtheta / |c|
        f0 = scale(subtract(scale(u, uv / dot(u, u)), v), g)
        f2 = scale(subtract(scale(v, uv / dot(v, v)), u), g)
        f1 = tuple(-(a + b) for a, b in zip(f0, f2))
        return rb.atom_sums(self.atoms, [f0, f1, f2], components)


@dataclasses.dataclass(frozen=True, eq=False)
class PeriodicTorsion:
    """atoms: (T, 4) int; periodicity: (T,) int (static: it selects the Fourier component)."""

    coordinate_sensitive = True

    atoms: np.ndarray
    periodicity: np.ndarray

    def energy(self, params: PeriodicTorsionParams, positions: Array, box=None, nbrs=None) -> Array:
        if len(self.atoms) == 0:
            return jnp.zeros((), positions.dtype)
        phi = dihedral_values(positions, self.atoms)
        n = jnp.asarray(self.periodicity, positions.dtype)
        return jnp.sum(params.k * (1.0 + jnp.cos(n * phi - params.phase)))

    def batched_forces(self, params: PeriodicTorsionParams, components: tuple, params_batched: bool, box=None,
                       nbrs=None) -> Optional[tuple]:
        """Forces of R replicas, replica-minor (see :meth:`HarmonicBond.batched_forces`), with the dihedral
        gradient of Blondel & Karplus (J. Comput. Chem. 17, 1132 (1996)): b1, b2, b3 the bond vectors,
        n1 = b1 x b2, n2 = b2 x b3; F_0 = dE/dphi |b2|/|n1|^2 n1, F_3 = -dE/dphi |b2|/|n2|^2 n2,
        F_1 = s3 F_3 - (1 + s1) F_0, F_2 = s1 F_0 - (1 + s3) F_3 with s1 = b1.b2/|b2|^2, s3 = b3.b2/|b2|^2."""
        if not (isinstance(self.atoms, np.ndarray) and isinstance(self.periodicity, np.ndarray)):
            return None
        x0, x1, x2, x3 = rb.slot_positions(components, self.atoms)
        b1, b2, b3 = subtract(x1, x0), subtract(x2, x1), subtract(x3, x2)
        n1, n2 = cross(b1, b2), cross(b2, b3)
        b2_sq = dot(b2, b2)
        b2_len = jnp.sqrt(b2_sq)
        # cos(phi), sin(phi) of the IUPAC angle of dihedral_values, then cos/sin(n phi) by the angle-addition
        # recurrence up to the largest periodicity (static): no atan2 and no sin per torsion
        y, x = -dot(cross(n1, b2), n2) / b2_len, dot(n1, n2)
        rho2 = x * x + y * y
        inv_rho = jax.lax.rsqrt(jnp.where(rho2 > 0, rho2, 1.0))
        cos1, sin1 = jnp.where(rho2 > 0, x * inv_rho, 1.0), y * inv_rho
        cos_n, sin_n = jnp.zeros_like(cos1), jnp.zeros_like(sin1)
        cos_m, sin_m = jnp.ones_like(cos1), jnp.zeros_like(sin1)
        for m in range(1, int(self.periodicity.max(initial=0)) + 1):
            cos_m, sin_m = cos_m * cos1 - sin_m * sin1, sin_m * cos1 + cos_m * sin1
            pick = jnp.asarray(self.periodicity == m, b2_sq.dtype)[:, None]
            cos_n, sin_n = cos_n + pick * cos_m, sin_n + pick * sin_m
        n = jnp.asarray(self.periodicity, b2_sq.dtype)[:, None]
        k, phase = (rb.replica_columns(a, params_batched) for a in (params.k, params.phase))
        de_dphi = -k * n * (sin_n * jnp.cos(phase) - cos_n * jnp.sin(phase))  # -k n sin(n phi - phase)
        f0 = scale(n1, de_dphi * b2_len / dot(n1, n1))
        f3 = scale(n2, -de_dphi * b2_len / dot(n2, n2))
        s1, s3 = dot(b1, b2) / b2_sq, dot(b3, b2) / b2_sq
        f1 = tuple(s3 * a - (1.0 + s1) * b for a, b in zip(f3, f0))
        f2 = tuple(s1 * a - (1.0 + s3) * b for a, b in zip(f0, f3))
        return rb.atom_sums(self.atoms, [f0, f1, f2, f3], components)
