"""CMAP torsion-torsion correction (CHARMM CMAP, Amber ff19SB), matching OpenMM's ``CMAPTorsionForce``.

Each term couples two dihedral angles (phi, psi) through an energy grid E on a regular S x S lattice over
[0, 2pi) x [0, 2pi) (angles in radians; [0, 2pi) is the same circle as [-pi, pi), so a force field's grid
starting at -180 degrees is simply stored rotated, as OpenMM's ``app.ForceField`` already does).

Interpolation, as OpenMM builds it:
  1. dE/dphi and dE/dpsi at every grid node are the derivatives of the periodic cubic spline through each
     grid row / column; d2E/dphi dpsi is the phi-derivative of the periodic spline through the dE/dpsi values.
  2. Inside each grid cell, E is the bicubic Hermite patch matching E, dE/dphi, dE/dpsi, d2E/dphi dpsi at
     the four corners (the classic "bicubic interpolation" of Numerical Recipes' ``bcucof``/``bcuint``).
Both steps are linear in the grid, so they are done inside JAX on every call and d E / d grid is available.

A periodic cubic spline on a uniform periodic grid of spacing h has node derivatives k solving the
circulant system  k[j-1] + 4 k[j] + k[j+1] = 3 (y[j+1] - y[j-1]) / h ; its inverse is a constant S x S
matrix computed once on the host.

Units: positions nm, angles rad, energies kJ/mol.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence, Union

import jax.numpy as jnp
import numpy as np

from jmlsim.energy.fast_math import atan2

Array = jnp.ndarray

TWO_PI = 2.0 * np.pi


class CMAPParams(NamedTuple):
    """Differentiable CMAP parameters.

    grids: energy grids in kJ/mol, ``grids[m, i, j]`` = energy of map m at phi = i 2pi/S, psi = j 2pi/S
      (so OpenMM's flat ``energy[i + S*j]`` is ``grids[m, i, j]``). Either one (M, S, S) array when all maps
      share the size S (the usual case), or a tuple of M square arrays (S_m, S_m) when sizes differ (no
      padding: torsions are evaluated per size group).
    """

    grids: Union[Array, tuple]


@functools.lru_cache(maxsize=None)
def _spline_derivative_matrix(size: int) -> np.ndarray:
    """(S, S) float64 matrix D with k = D @ y: node derivatives (per radian) of the periodic cubic spline
    through y[0..S-1] at angles j 2pi/S."""
    if size < 3:
        raise ValueError(f"CMAP grid size must be at least 3, got {size}")
    h = TWO_PI / size
    eye = np.eye(size)
    up, down = np.roll(eye, 1, axis=1), np.roll(eye, -1, axis=1)  # (up @ y)[j] = y[j+1], (down @ y)[j] = y[j-1]
    lhs = 4.0 * eye + up + down
    rhs = (3.0 / h) * (up - down)
    return np.linalg.solve(lhs, rhs)


def _hermite_basis(u: Array) -> Array:
    """Cubic Hermite basis on [0, 1], (T,) -> (T, 4): weights of f(0), f(1), f'(0), f'(1)."""
    u2 = u * u
    u3 = u2 * u
    return jnp.stack([1.0 - 3.0 * u2 + 2.0 * u3, 3.0 * u2 - 2.0 * u3, u - 2.0 * u2 + u3, u3 - u2], axis=-1)


def _dihedral(p0: Array, p1: Array, p2: Array, p3: Array) -> Array:
    """IUPAC dihedral angle (T,) in (-pi, pi] of atoms p0-p1-p2-p3, each (T, 3); trans = pi.

    atan2 form: accurate near 0 and pi, where an arccos of the normals' cosine loses precision.
    """
    b0 = p1 - p0
    b1 = p2 - p1
    b2 = p3 - p2
    n0 = jnp.cross(b0, b1)
    n1 = jnp.cross(b1, b2)
    b1_norm = jnp.sqrt(jnp.sum(b1 * b1, axis=-1))
    y = b1_norm * jnp.sum(b0 * n1, axis=-1)
    x = jnp.sum(n0 * n1, axis=-1)
    return atan2(y, x)


def _node_data(grids: Array) -> Array:
    """(M, S, S) grids -> (M, S, S, 4) nodal [E, h dE/dphi, h dE/dpsi, h^2 d2E/dphi dpsi], h = 2pi/S
    (derivatives scaled to the unit cell coordinates of the Hermite patch)."""
    size = grids.shape[-1]
    h = TWO_PI / size
    d = jnp.asarray(_spline_derivative_matrix(size) * h, dtype=grids.dtype)
    d_phi = jnp.einsum("ik,mkj->mij", d, grids)
    d_psi = jnp.einsum("jk,mik->mij", d, grids)
    d_phipsi = jnp.einsum("ik,mkj->mij", d, d_psi)
    return jnp.stack([grids, d_phi, d_psi, d_phipsi], axis=-1)


def _patch_energy(grids: Array, map_index: np.ndarray, phi: Array, psi: Array) -> Array:
    """Per-torsion energies (T,) from same-size grids (M, S, S), map indices (T,), angles (T,) in rad."""
    size = grids.shape[-1]
    h = TWO_PI / size
    nodes = _node_data(grids)

    def cell(angle):
        x = jnp.mod(angle, TWO_PI) / h
        # floor picks the cell (no gradient); clip guards x == S from rounding of angles just below 2pi.
        lo = jnp.clip(jnp.floor(x), 0, size - 1)
        frac = x - lo
        lo = lo.astype(jnp.int32)
        return lo, (lo + 1) % size, frac

    i0, i1, u = cell(phi)
    j0, j1, v = cell(psi)
    m = jnp.asarray(map_index)
    c00, c10 = nodes[m, i0, j0], nodes[m, i1, j0]  # each (T, 4): [E, Ea, Eb, Eab]
    c01, c11 = nodes[m, i0, j1], nodes[m, i1, j1]
    # Hermite data matrix F[k, l]: rows = (f at phi-corner 0, 1, phi-derivative at 0, 1),
    # columns = the same along psi; E(u, v) = H(u)^T F H(v) is the bicubic patch.
    f = jnp.stack([
        jnp.stack([c00[:, 0], c01[:, 0], c00[:, 2], c01[:, 2]], axis=-1),
        jnp.stack([c10[:, 0], c11[:, 0], c10[:, 2], c11[:, 2]], axis=-1),
        jnp.stack([c00[:, 1], c01[:, 1], c00[:, 3], c01[:, 3]], axis=-1),
        jnp.stack([c10[:, 1], c11[:, 1], c10[:, 3], c11[:, 3]], axis=-1),
    ], axis=1)
    return jnp.einsum("tk,tkl,tl->t", _hermite_basis(u), f, _hermite_basis(v))


@dataclasses.dataclass(frozen=True, eq=False)
class CMAPTorsion:
    """CMAP torsion-torsion term (static part).

    atoms: (T, 8) int, phi atoms a1..a4 then psi atoms b1..b4 (OpenMM ``addTorsion`` order).
    map_index: (T,) int, which grid of ``CMAPParams.grids`` each torsion pair uses.
    Molecules must be whole: displacements are not minimum-imaged (as OpenMM's default for this force).
    """

    coordinate_sensitive = True  # see jmlsim.system.coordinate_sensitive

    atoms: np.ndarray
    map_index: np.ndarray

    def __post_init__(self):
        atoms = np.asarray(self.atoms, dtype=np.int32).reshape(-1, 8)
        map_index = np.asarray(self.map_index, dtype=np.int32).reshape(-1)
        if map_index.shape[0] != atoms.shape[0]:
            raise ValueError(f"map_index has {map_index.shape[0]} entries for {atoms.shape[0]} torsion pairs")
        object.__setattr__(self, "atoms", atoms)
        object.__setattr__(self, "map_index", map_index)

    def angles(self, positions: Array) -> tuple[Array, Array]:
        """(phi, psi), each (T,) in rad, in (-pi, pi]."""
        p = positions[self.atoms]  # (T, 8, 3)
        phi = _dihedral(p[:, 0], p[:, 1], p[:, 2], p[:, 3])
        psi = _dihedral(p[:, 4], p[:, 5], p[:, 6], p[:, 7])
        return phi, psi

    def energies(self, params: CMAPParams, positions: Array) -> Array:
        """Per-pair energies (T,) in kJ/mol."""
        phi, psi = self.angles(positions)
        grids = params.grids
        if not isinstance(grids, (tuple, list)):
            return _patch_energy(jnp.asarray(grids), self.map_index, phi, psi)
        # Mixed sizes: evaluate each group of same-size maps separately (static grouping; shapes are static).
        sizes = np.array([np.shape(g)[-1] for g in grids])
        out = jnp.zeros(phi.shape, dtype=phi.dtype)
        for size in np.unique(sizes):
            group = np.nonzero(sizes == size)[0]
            sel = np.nonzero(np.isin(self.map_index, group))[0]
            if sel.size == 0:
                continue
            local = np.searchsorted(group, self.map_index[sel])  # global map index -> index within group
            stacked = jnp.stack([jnp.asarray(grids[k]) for k in group])
            e = _patch_energy(stacked, local, phi[sel], psi[sel])
            out = out.at[sel].set(e.astype(out.dtype))
        return out

    def energy(self, params: CMAPParams, positions: Array, box=None, nbrs=None) -> Array:
        """Total CMAP energy (scalar, kJ/mol). positions (N, 3) nm; box and nbrs are ignored."""
        if self.atoms.shape[0] == 0:
            return jnp.zeros((), dtype=positions.dtype)
        return jnp.sum(self.energies(params, positions))


def cmap_from_openmm(force) -> tuple[CMAPTorsion, CMAPParams]:
    """Build the term and its parameters from an ``openmm.CMAPTorsionForce``.

    Returns grids as one (M, S, S) array when all maps share a size, else a tuple of (S_m, S_m) arrays
    (float64 when jax_enable_x64 is on). Raises ValueError if the force uses periodic boundary conditions.
    """
    if force.usesPeriodicBoundaryConditions():
        raise ValueError("CMAPTorsionForce with periodic boundary conditions is not supported (molecules whole)")
    grids = []
    for m in range(force.getNumMaps()):
        size, energy = force.getMapParameters(m)
        if hasattr(energy, "value_in_unit"):
            import openmm.unit as u  # lazy: OpenMM is only needed for import

            energy = energy.value_in_unit(u.kilojoule_per_mole)
        # OpenMM flat index i + S*j (i = phi) -> C-order reshape gives [j, i]; transpose to [i, j].
        grids.append(np.asarray(energy, dtype=np.float64).reshape(size, size).T.copy())
    n = force.getNumTorsions()
    atoms = np.zeros((n, 8), dtype=np.int32)
    map_index = np.zeros((n,), dtype=np.int32)
    for t in range(n):
        p = force.getTorsionParameters(t)
        map_index[t] = p[0]
        atoms[t] = p[1:9]
    if grids and len({g.shape for g in grids}) == 1:
        packed: Union[Array, tuple] = jnp.asarray(np.stack(grids))
    else:
        packed = tuple(jnp.asarray(g) for g in grids)
    return CMAPTorsion(atoms=atoms, map_index=map_index), CMAPParams(grids=packed)


__all__: Sequence[str] = ["CMAPParams", "CMAPTorsion", "cmap_from_openmm"]
