"""Generalized Born implicit solvent, OBC model II, with the ACE surface-area term (OpenMM's GBSAOBCForce).

Energy (kJ/mol), with tau = 1/eps_solute - 1/eps_solvent and k = ONE_4PI_EPS0:

    E_GB  = -k tau [ sum_{i<j} q_i q_j (1/f_ij - s_cut) + 1/2 sum_i q_i^2 / R_i ]
    f_ij  = sqrt(d_ij^2 + R_i R_j exp(-d_ij^2 / (4 R_i R_j)))
    E_SA  = 4 pi E_sa sum_{i: R_i > 0} (r_i + 0.14)^2 (r_i / R_i)^6

where s_cut = 1/cutoff with a cutoff and 0 without; only pairs with d_ij <= cutoff enter either the Born
radii or E_GB (OpenMM's convention: the pair energy is shifted, the self term is not). Born radii:

    rho_i = r_i - 0.009,   R_i = 1 / (1/rho_i - tanh(psi_i - 0.8 psi_i^2 + 4.85 psi_i^3) / r_i)
    psi_i = rho_i / 2 * sum_{j != i} I_ij      (HCT pair integral of sphere j, radius scale_j rho_j)

r_i is OpenMM's per-particle radius (before the offset), q_i the charge. Everything is all-pairs
(N x N), so this suits systems up to a few thousand atoms; the neighbor list argument is ignored. Replica batches
of a small molecule use :meth:`GBSAOBC.batched_forces`, the same formulas over the unique pairs of all replicas at
once (:mod:`jmlsim.energy.replica_batch`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim import space
from jmlsim.energy import replica_batch as rb
from jmlsim.energy.differences import dot, subtract

Array = jnp.ndarray

ONE_4PI_EPS0 = 138.93545764438198  # kJ mol^-1 nm e^-2; matches OpenMM 8 Reference (138.935456 is off by 1.2e-8)
DIELECTRIC_OFFSET = 0.009  # nm
PROBE_RADIUS = 0.14  # nm, solvent probe of the ACE term
OBC2_ALPHA, OBC2_BETA, OBC2_GAMMA = 1.0, 0.8, 4.85
DEFAULT_SURFACE_AREA_ENERGY = 2.25936  # kJ/mol/nm^2, OpenMM's default


class GBSAOBCParams(NamedTuple):
    """Differentiable per-particle parameters, each (N,): charge (e), radius (nm, before the dielectric
    offset), scale (dimensionless HCT overlap scale factor)."""

    charge: Array
    radius: Array
    scale: Array


@dataclasses.dataclass(frozen=True, eq=False)
class GBSAOBC:
    """Static configuration of the GBSA-OBC2 term.

    cutoff: nm, or None for OpenMM's NoCutoff. periodic: minimum-image distances in ``box`` (needs a cutoff;
    OpenMM's CutoffPeriodic). triclinic: static choice of minimum-image code path for a non-diagonal box.
    surface_area_energy: kJ/mol/nm^2 (0 turns the ACE term off).
    surface_mask: optional (N,) 1/0, the atoms that get the surface-area term; None means all (the padding atoms
    of a molecule batch are masked out); (N, R) in :meth:`batched_forces` of a batch of different molecules.
    """

    solute_dielectric: float = 1.0
    solvent_dielectric: float = 78.5
    cutoff: Optional[float] = None
    periodic: bool = False
    surface_area_energy: float = DEFAULT_SURFACE_AREA_ENERGY
    triclinic: bool = False
    surface_mask: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.periodic and self.cutoff is None:
            raise ValueError("a periodic GBSAOBC term needs a cutoff")

    def _pair_geometry(self, positions: Array, box: Optional[Array]):
        """Squared distances (N, N) and the mask of pairs j != i within the cutoff."""
        n = positions.shape[0]
        dr = positions[:, None, :] - positions[None, :, :]
        if self.periodic:
            dr = space.minimum_image(dr, box, self.triclinic)
        r2 = jnp.sum(dr * dr, axis=-1)
        offdiag = ~jnp.eye(n, dtype=bool)
        if self.cutoff is not None:
            offdiag = offdiag & (r2 <= self.cutoff**2)
        return r2, offdiag

    def born_radii(self, params: GBSAOBCParams, positions: Array, box: Optional[Array] = None) -> Array:
        """OBC-II effective Born radii R (N,) in nm."""
        r2, pairs = self._pair_geometry(positions, box)
        return self._born_radii(params, r2, pairs)

    def _born_radii(self, params: GBSAOBCParams, r2: Array, pairs: Array) -> Array:
        rho = params.radius - DIELECTRIC_OFFSET
        term = _descreening(rho[:, None], (rho * params.scale)[None, :], r2, pairs)
        return _born_from_psi(0.5 * rho * jnp.sum(term, axis=1), rho, params.radius)

    def energy(self, params: GBSAOBCParams, positions: Array, box: Optional[Array], nbrs=None) -> Array:
        """Total GB + ACE energy (scalar, kJ/mol) for positions (N, 3) nm; box (3, 3) nm when periodic."""
        del nbrs  # all pairs
        r2, pairs = self._pair_geometry(positions, box)
        born = self._born_radii(params, r2, pairs)
        q = params.charge
        # The diagonal of f (d = 0) is R_i itself, so the full matrix with weight 1/2 gives both the pair
        # sum over i < j and the self term 1/2 q_i^2 / R_i. No sqrt of r2 here, so d = 0 has finite gradients.
        inv_f = _inverse_f(r2, born[:, None] * born[None, :])
        keep = pairs | jnp.eye(positions.shape[0], dtype=bool)
        if self.cutoff is not None:
            inv_f = jnp.where(pairs, inv_f - 1.0 / self.cutoff, inv_f)  # only pairs are shifted, not self
        e_gb = 0.5 * self._prefactor() * jnp.sum(jnp.where(keep, q[:, None] * q[None, :] * inv_f, 0.0))
        return e_gb + jnp.sum(self._surface_energies(params.radius, born))

    def _prefactor(self) -> float:
        """-k (1/eps_solute - 1/eps_solvent), kJ/mol nm / e^2 (0 when either dielectric is 0, as OpenMM)."""
        if self.solute_dielectric != 0.0 and self.solvent_dielectric != 0.0:
            return -ONE_4PI_EPS0 * (1.0 / self.solute_dielectric - 1.0 / self.solvent_dielectric)
        return 0.0

    def _surface_energies(self, radius: Array, born: Array) -> Array:
        """ACE surface-area energy of each atom (kJ/mol), radius and born of the same shape ((N,) or (N, R))."""
        if self.surface_area_energy == 0.0:
            return jnp.zeros_like(born)
        safe_born = jnp.where(born > 0, born, 1.0)
        sa = (4.0 * math.pi * self.surface_area_energy) * (radius + PROBE_RADIUS) ** 2 * (radius / safe_born) ** 6
        keep = born > 0
        if self.surface_mask is not None:  # (N,), or (N, R) per replica
            mask = jnp.asarray(self.surface_mask) > 0
            keep = keep & mask.reshape(mask.shape + (1,) * (born.ndim - mask.ndim))
        return jnp.where(keep, sa, 0.0)

    def batched_forces(self, params: GBSAOBCParams, components: tuple, params_batched: bool, box=None,
                       nbrs=None) -> Optional[tuple]:
        """Forces of R replicas, replica-minor (:mod:`jmlsim.energy.replica_batch`): components (x, y, z) of (N, R)
        nm -> the same of kJ/mol/nm, as minus the gradient of :meth:`batched_energies` (its gathers are static
        rows, so their adjoints are row scatter-adds). None for a periodic term."""
        if self.periodic:
            return None
        grads = jax.grad(lambda c: jnp.sum(self.batched_energies(params, c, params_batched)))(components)
        return tuple(-g for g in grads)

    def batched_energies(self, params: GBSAOBCParams, components: tuple, params_batched: bool) -> Array:
        """Energies (R,) kJ/mol of R replicas (non-periodic), over the unique pairs i < j as (P, R) rows; the same
        sums as :meth:`energy` in another order."""
        n = components[0].shape[0]
        i, j = np.triu_indices(n, 1)
        d = subtract(rb.gather_rows(components, j), rb.gather_rows(components, i))
        r2 = dot(d, d)
        pairs = jnp.ones_like(r2, dtype=bool) if self.cutoff is None else r2 <= self.cutoff ** 2
        charge, radius, scale = (rb.replica_columns(v, params_batched) for v in params)
        rho = radius - DIELECTRIC_OFFSET
        screened = rho * scale
        both = np.concatenate([i, j])
        term = _descreening(jnp.concatenate([rho[i], rho[j]]), jnp.concatenate([screened[j], screened[i]]),
                            jnp.concatenate([r2, r2]), jnp.concatenate([pairs, pairs]))  # i by j, then j by i
        psi = 0.5 * rho * jnp.zeros((n,) + term.shape[1:], term.dtype).at[both].add(term)
        born = _born_from_psi(psi, rho, radius)
        inv_f = _inverse_f(r2, born[i] * born[j])
        if self.cutoff is not None:
            inv_f = inv_f - 1.0 / self.cutoff
        pair_sum = jnp.sum(jnp.where(pairs, charge[i] * charge[j] * inv_f, 0.0), axis=0)
        self_sum = 0.5 * jnp.sum(charge * charge / born, axis=0)
        return self._prefactor() * (pair_sum + self_sum) + jnp.sum(self._surface_energies(radius, born), axis=0)


def _descreening(rho_i: Array, s_j: Array, r2: Array, pairs: Array) -> Array:
    """HCT pair integral I_ij of sphere j (scaled radius s_j) seen from atom i (offset radius rho_i), zero where
    ``pairs`` is False; all arguments broadcast against r2, nm^-1."""
    # Substitute r = 1 nm where a pair is excluded, so every branch below stays finite (and so do the
    # gradients that jnp.where discards).
    r = jnp.sqrt(jnp.where(pairs, r2, 1.0))
    upper = r + s_j
    lower = jnp.maximum(rho_i, jnp.abs(r - s_j))
    inv_l, inv_u = 1.0 / lower, 1.0 / upper
    inv_l2, inv_u2 = inv_l * inv_l, inv_u * inv_u
    term = (inv_l - inv_u
            + 0.25 * r * (inv_u2 - inv_l2)
            + 0.5 / r * jnp.log(lower / upper)
            + 0.25 * s_j * s_j / r * (inv_l2 - inv_u2))
    # Sphere i entirely inside sphere j: add the part of j's interior between rho_i and |r - s_j|.
    term = term + jnp.where(rho_i < s_j - r, 2.0 * (1.0 / rho_i - inv_l), 0.0)
    # Sphere j does not reach past rho_i: no descreening.
    return jnp.where(pairs & (rho_i < upper), term, 0.0)


def _born_from_psi(psi: Array, rho: Array, radius: Array) -> Array:
    """OBC-II Born radii (nm) from psi = rho/2 sum_j I_ij."""
    t = jnp.tanh(OBC2_ALPHA * psi - OBC2_BETA * psi**2 + OBC2_GAMMA * psi**3)
    return 1.0 / (1.0 / rho - t / radius)


def _inverse_f(r2: Array, rr: Array) -> Array:
    """1/f_ij = 1/sqrt(d^2 + R_i R_j exp(-d^2 / (4 R_i R_j))), with rr = R_i R_j; nm^-1."""
    return 1.0 / jnp.sqrt(r2 + rr * jnp.exp(-r2 / (4.0 * rr)))


def gbsa_from_openmm(force, triclinic: bool = False) -> tuple[GBSAOBC, GBSAOBCParams]:
    """Build the term and its parameters (float64 arrays) from an ``openmm.GBSAOBCForce``.

    triclinic: set True when a CutoffPeriodic force will be used with a non-diagonal box.
    """
    import numpy as np
    import openmm
    from openmm import unit

    def strip(x, u):
        return x.value_in_unit(u) if unit.is_quantity(x) else float(x)

    rows = []
    for i in range(force.getNumParticles()):
        charge, radius, scale = force.getParticleParameters(i)
        rows.append((strip(charge, unit.elementary_charge), strip(radius, unit.nanometer), float(scale)))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 3)

    method = force.getNonbondedMethod()
    cutoff = None
    if method != openmm.GBSAOBCForce.NoCutoff:
        cutoff = strip(force.getCutoffDistance(), unit.nanometer)
    term = GBSAOBC(
        solute_dielectric=float(force.getSoluteDielectric()),
        solvent_dielectric=float(force.getSolventDielectric()),
        cutoff=cutoff,
        periodic=method == openmm.GBSAOBCForce.CutoffPeriodic,
        surface_area_energy=strip(force.getSurfaceAreaEnergy(), unit.kilojoule_per_mole / unit.nanometer**2),
        triclinic=triclinic,
    )
    params = GBSAOBCParams(charge=jnp.asarray(arr[:, 0]), radius=jnp.asarray(arr[:, 1]), scale=jnp.asarray(arr[:, 2]))
    return term, params
