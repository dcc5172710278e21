"""The OpenMM Custom* forces that CHARMM36 systems use, recognised by their energy expressions.

OpenMM's CHARMM36 force field (``charmm36.xml``) creates, besides the standard forces:

    CustomTorsionForce     k*(theta-theta0)^2                               harmonic impropers
    CustomBondForce        4*epsilon*((sigma/r)^12-(sigma/r)^6)             1-4 Lennard-Jones pairs
    CustomNonbondedForce   acoef(type1, type2)/r^12 - bcoef(type1, type2)/r^6   LJ with NBFIX pair tables

(with NBFIX the NonbondedForce then carries the charges only). Arbitrary expressions are not compiled:
:func:`term_from_custom_force` matches these exact expressions (whitespace and a trailing ';' ignored) and
raises ValueError for anything else.

Conventions follow OpenMM: theta is the IUPAC dihedral in (-pi, pi] and (theta - theta0) is *not* wrapped;
bond and torsion forces see no periodic images unless the force uses periodic boundary conditions; the
tabulated LJ is truncated (not shifted) at the cutoff, optionally multiplied by the switching polynomial
S(x) = 1 - 10x^3 + 15x^4 - 6x^5, x = (r - r_switch)/(r_cut - r_switch), and excluded pairs are skipped.
Units: nm, rad, kJ/mol; acoef kJ/mol nm^12, bcoef kJ/mol nm^6.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim import space
from jmlsim.energy.nonbonded import (masked_pairs, pair_force_rows, pair_row_sums, partner_values, row_values,
                                     switching_function, tail_integrals)
from jmlsim.energy.bonded import dihedral_values

Array = jnp.ndarray

IMPROPER_EXPRESSION = "k*(theta-theta0)^2"
PAIR_LJ_EXPRESSION = "4*epsilon*((sigma/r)^12-(sigma/r)^6)"
TABULATED_LJ_EXPRESSION = "acoef(type1,type2)/r^12-bcoef(type1,type2)/r^6"


# -- harmonic impropers ------------------------------------------------------------------------------
class HarmonicImproperParams(NamedTuple):
    """k (T,) kJ/mol/rad^2; theta0 (T,) rad."""

    k: Array
    theta0: Array


@dataclasses.dataclass(frozen=True, eq=False)
class HarmonicImproper:
    """E = sum k (theta - theta0)^2 over torsions ``atoms`` (T, 4) int (note: no 1/2, as in CHARMM).

    periodic: bond vectors take the minimum image (only when the OpenMM force uses periodic conditions).
    """

    coordinate_sensitive = True  # see jmlsim.system.coordinate_sensitive

    atoms: np.ndarray
    periodic: bool = False
    triclinic: bool = False

    def energy(self, params: HarmonicImproperParams, positions: Array, box=None, nbrs=None) -> Array:
        if len(self.atoms) == 0:
            return jnp.zeros((), positions.dtype)
        if self.periodic:
            # rebuild each quadruple from minimum-image bond vectors, then measure it as usual
            p = positions[self.atoms]  # (T, 4, 3)
            steps = space.minimum_image(p[:, 1:] - p[:, :-1], box, self.triclinic)
            p = jnp.concatenate([p[:, :1], p[:, :1] + jnp.cumsum(steps, axis=1)], axis=1)
            theta = dihedral_values(p.reshape(-1, 3), np.arange(4 * len(self.atoms)).reshape(-1, 4))
        else:
            theta = dihedral_values(positions, self.atoms)
        return jnp.sum(params.k * (theta - params.theta0) ** 2)


# -- 1-4 Lennard-Jones pairs -------------------------------------------------------------------------
class PairLJParams(NamedTuple):
    """sigma (P,) nm; epsilon (P,) kJ/mol."""

    sigma: Array
    epsilon: Array


@dataclasses.dataclass(frozen=True, eq=False)
class PairLJ:
    """E = sum 4 eps ((sigma/r)^12 - (sigma/r)^6) over ``pairs`` (P, 2) int; no cutoff.

    periodic: minimum image (only when the OpenMM force uses periodic conditions; off by default there).
    """

    coordinate_sensitive = True

    pairs: np.ndarray
    periodic: bool = False
    triclinic: bool = False

    def energy(self, params: PairLJParams, positions: Array, box=None, nbrs=None) -> Array:
        if len(self.pairs) == 0:
            return jnp.zeros((), positions.dtype)
        d = positions[self.pairs[:, 1]] - positions[self.pairs[:, 0]]
        if self.periodic:
            d = space.minimum_image(d, box, self.triclinic)
        s6 = (params.sigma**2 / jnp.sum(d * d, axis=-1)) ** 3
        return jnp.sum(4.0 * params.epsilon * (s6 * s6 - s6))


# -- tabulated (NBFIX) Lennard-Jones -----------------------------------------------------------------
class TabulatedLJParams(NamedTuple):
    """acoef (T, T) kJ/mol nm^12; bcoef (T, T) kJ/mol nm^6 (symmetric type-pair tables)."""

    acoef: Array
    bcoef: Array


def long_range_weights(types: np.ndarray, n_types: int) -> np.ndarray:
    """(T, T) pair counts as OpenMM's long-range correction weighs them, split symmetrically.

    Class pairs a < b count n_a n_b (half in each of [a, b] and [b, a]); a class with itself counts
    n_a (n_a + 1) / 2 (OpenMM includes the self pair). The total is N (N + 1) / 2.
    """
    counts = np.bincount(np.asarray(types), minlength=n_types).astype(np.float64)
    weights = np.outer(counts, counts) / 2.0
    np.fill_diagonal(weights, counts * (counts + 1.0) / 2.0)
    return weights


@dataclasses.dataclass(frozen=True, eq=False)
class TabulatedLJ:
    """E = sum over non-excluded pairs (r < cutoff) of [acoef(t_i, t_j)/r^12 - bcoef(t_i, t_j)/r^6] S(r)
    + long-range correction.

    types: (N,) int per-atom type (index into the tables). exclusions: (X, 2) int.
    band/band_width/far_exclusions: from :func:`jmlsim.energy.nonbonded.exclusion_band` (the same excluded
    pair lookup as the NonbondedForce). cutoff nm or None (dense N x N, no cutoff); periodic: minimum image.
    switch_distance nm or None. lrc_weights: (T, T) from :func:`long_range_weights`, or None for no correction.
    With a cutoff, ``nbrs.idx`` (N, K) is a full neighbor list (each pair twice, padded with N).
    """

    n_atoms: int
    types: np.ndarray
    exclusions: np.ndarray
    band: np.ndarray
    band_width: int
    far_exclusions: np.ndarray
    cutoff: Optional[float] = None
    periodic: bool = False
    triclinic: bool = False
    switch_distance: Optional[float] = None
    lrc_weights: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.periodic and self.cutoff is None:
            raise ValueError("a periodic tabulated LJ term needs a cutoff")
        if self.switch_distance is not None and (self.cutoff is None or not 0 <= self.switch_distance < self.cutoff):
            raise ValueError("switching distance must satisfy 0 <= r_switch < r_cutoff")
        if self.lrc_weights is not None and not self.periodic:
            raise ValueError("the long-range correction needs a periodic box")

    @classmethod
    def create(cls, types: np.ndarray, exclusions: np.ndarray, **kwargs) -> "TabulatedLJ":
        from jmlsim.energy.nonbonded import exclusion_band  # the shared excluded-pair lookup

        types = np.asarray(types, np.int32)
        exclusions = np.asarray(exclusions, np.int32).reshape(-1, 2)
        band, width, far = exclusion_band(len(types), exclusions)
        return cls(n_atoms=len(types), types=types, exclusions=exclusions, band=band, band_width=width,
                   far_exclusions=far, **kwargs)

    # -- pair kernel ----------------------------------------------------------------------------------
    def _pair(self, r2: Array, a: Array, b: Array):
        """Energy u and -du/dr / r of pairs at squared distance r2 with coefficients a, b (no masking)."""
        inv_r6 = 1.0 / (r2 * r2 * r2)
        u = (a * inv_r6 - b) * inv_r6
        f = (12.0 * a * inv_r6 - 6.0 * b) * inv_r6 / r2
        if self.switch_distance is not None:
            r = jnp.sqrt(r2)
            s, ds = switching_function(r, self.switch_distance, self.cutoff)
            f = f * s - u * ds / r
            u = u * s
        return u, f

    def _coefficients(self, params: TabulatedLJParams, ti: Array, tj: Array):
        """acoef, bcoef of type pairs (flat-table gather)."""
        n_types = params.acoef.shape[0]
        flat = ti * n_types + tj
        return params.acoef.reshape(-1)[flat], params.bcoef.reshape(-1)[flat]

    def _pair_rows(self, params: TabulatedLJParams, positions: Array, box: Optional[Array], rows, idx,
                   with_forces: bool = True):
        """Row sums of rows (B,) (None: all atoms): energy (B,) and forces (B, 3) (None unless with_forces) over
        the non-excluded partners within the cutoff."""
        partners, dr, r2, keep = masked_pairs(positions, box, rows, idx, self.band, self.band_width, self.cutoff,
                                              self.periodic, self.triclinic)
        types = jnp.asarray(self.types)
        a, b = self._coefficients(params, row_values(types, rows)[:, None], partner_values(types, partners))
        u, f_over_r = self._pair(r2, a, b)
        zero = jnp.zeros_like(u)
        energy = jnp.sum(jnp.where(keep, u, zero), axis=1)
        return energy, (pair_force_rows(jnp.where(keep, f_over_r, zero), dr) if with_forces else None)

    def _corrections(self, params: TabulatedLJParams, positions: Array, box: Optional[Array]) -> Array:
        """Far exclusions (counted by the pair sum, taken out again) and the long-range correction."""
        energy = jnp.zeros((), positions.dtype)
        if len(self.far_exclusions):
            i, j = self.far_exclusions[:, 0], self.far_exclusions[:, 1]
            d = positions[i] - positions[j]
            if self.periodic:
                d = space.minimum_image(d, box, self.triclinic)
            r2 = jnp.sum(d * d, axis=-1)
            inside = r2 < (self.cutoff**2 if self.cutoff is not None else jnp.inf)
            r2 = jnp.where(inside, r2, 1.0)
            a, b = self._coefficients(params, jnp.asarray(self.types[i]), jnp.asarray(self.types[j]))
            u, _ = self._pair(r2, a, b)
            energy = energy - jnp.sum(jnp.where(inside, u, 0.0))
        if self.lrc_weights is not None:
            energy = energy + self.long_range_correction(params, box)
        return energy

    def long_range_correction(self, params: TabulatedLJParams, box: Array) -> Array:
        """OpenMM's long-range correction (kJ/mol): 2 pi N^2 / V * <integral of the omitted U(r) r^2 dr>, the
        average over all N (N + 1) / 2 particle pairs counted per type pair."""
        j12, j6 = tail_integrals(self.cutoff, self.switch_distance)
        w = jnp.asarray(self.lrc_weights, params.acoef.dtype)
        n = float(self.n_atoms)
        mean = jnp.sum(w * (params.acoef * j12 - params.bcoef * j6)) / (n * (n + 1.0) / 2.0)
        return 2.0 * math.pi * n * n * mean / space.volume(box)

    # -- public ---------------------------------------------------------------------------------------
    def energy(self, params: TabulatedLJParams, positions: Array, box: Optional[Array], nbrs=None) -> Array:
        """Total energy (kJ/mol). Each pair appears in two rows of the pair sum, hence 1/2."""
        rows = pair_row_sums(lambda r, i, *ops: self._pair_rows(*ops, r, i, with_forces=False)[0], self.n_atoms,
                             nbrs, (params, positions, box))
        return 0.5 * jnp.sum(rows) + self._corrections(params, positions, box)

    def forces(self, params: TabulatedLJParams, positions: Array, box: Optional[Array], nbrs=None) -> Array:
        """Forces (N, 3) kJ/mol/nm: analytic row sums for the pair sum, autodiff for the corrections."""
        direct = pair_row_sums(lambda r, i, *ops: self._pair_rows(*ops, r, i)[1], self.n_atoms, nbrs,
                             (params, positions, box))
        return direct - jax.grad(self._corrections, argnums=1)(params, positions, box)


# -- conversion from OpenMM --------------------------------------------------------------------------
def _normalized(expression: str) -> str:
    """Expression without whitespace and trailing ';' (the form the supported expressions are matched in)."""
    return "".join(expression.split()).rstrip(";")


def _unsupported(force, why: str = "") -> ValueError:
    expression = " ".join(force.getEnergyFunction().split()) if hasattr(force, "getEnergyFunction") else "?"
    suffix = f" ({why})" if why else ""
    return ValueError(f"unsupported {type(force).__name__} with energy expression {expression!r}{suffix}")


def _check_no_globals(force):
    if force.getNumGlobalParameters():
        raise _unsupported(force, "global parameters are not supported")


def _named_columns(values: list, names: list[str], wanted: tuple[str, ...]) -> list[np.ndarray]:
    """Per-entry parameter tuples -> one float64 column per wanted name (OpenMM allows any parameter order)."""
    table = np.asarray(values, np.float64).reshape(len(values), len(names))
    return [table[:, names.index(name)] for name in wanted]


def _improper_from_force(force, periodic: bool, triclinic: bool):
    names = [force.getPerTorsionParameterName(i) for i in range(force.getNumPerTorsionParameters())]
    if sorted(names) != ["k", "theta0"]:
        raise _unsupported(force, f"per-torsion parameters {names}")
    atoms, values = [], []
    for t in range(force.getNumTorsions()):
        *quad, p = force.getTorsionParameters(t)
        atoms.append(quad)
        values.append(tuple(p))
    k, theta0 = _named_columns(values, names, ("k", "theta0"))
    uses_pbc = bool(force.usesPeriodicBoundaryConditions())
    if uses_pbc and not periodic:
        raise _unsupported(force, "periodic force in a non-periodic system")
    term = HarmonicImproper(atoms=np.asarray(atoms, np.int32).reshape(-1, 4), periodic=uses_pbc, triclinic=triclinic)
    return term, HarmonicImproperParams(k=jnp.asarray(k), theta0=jnp.asarray(theta0))


def _pair_lj_from_force(force, periodic: bool, triclinic: bool):
    names = [force.getPerBondParameterName(i) for i in range(force.getNumPerBondParameters())]
    if sorted(names) != ["epsilon", "sigma"]:
        raise _unsupported(force, f"per-bond parameters {names}")
    pairs, values = [], []
    for b in range(force.getNumBonds()):
        i, j, p = force.getBondParameters(b)
        pairs.append((i, j))
        values.append(tuple(p))
    sigma, epsilon = _named_columns(values, names, ("sigma", "epsilon"))
    uses_pbc = bool(force.usesPeriodicBoundaryConditions())
    if uses_pbc and not periodic:
        raise _unsupported(force, "periodic force in a non-periodic system")
    term = PairLJ(pairs=np.asarray(pairs, np.int32).reshape(-1, 2), periodic=uses_pbc, triclinic=triclinic)
    return term, PairLJParams(sigma=jnp.asarray(sigma), epsilon=jnp.asarray(epsilon))


def _discrete_table(force, name: str) -> np.ndarray:
    """A Discrete2DFunction as a (T, T) array indexed [type1, type2] (OpenMM stores values[x + xsize * y])."""
    import openmm

    names = [force.getTabulatedFunctionName(i) for i in range(force.getNumTabulatedFunctions())]
    if name not in names:
        raise _unsupported(force, f"no tabulated function {name!r}")
    function = force.getTabulatedFunction(names.index(name))
    if not isinstance(function, openmm.Discrete2DFunction):
        raise _unsupported(force, f"{name} is a {type(function).__name__}, not a Discrete2DFunction")
    xsize, ysize, values = function.getFunctionParameters()
    if xsize != ysize:
        raise _unsupported(force, f"{name} table is {xsize} x {ysize}, not square")
    table = np.asarray(values, np.float64).reshape(ysize, xsize).T
    if not np.array_equal(table, table.T):
        # OpenMM's result would depend on which atom of a pair it calls "1"
        raise _unsupported(force, f"{name} table is not symmetric")
    return table


def _tabulated_lj_from_force(force, periodic: bool, triclinic: bool):
    import openmm

    if force.getNumInteractionGroups() or force.getNumComputedValues():
        raise _unsupported(force, "interaction groups and computed values are not supported")
    if [force.getPerParticleParameterName(i) for i in range(force.getNumPerParticleParameters())] != ["type"]:
        raise _unsupported(force, "expected one per-particle parameter 'type'")
    acoef = _discrete_table(force, "acoef")
    bcoef = _discrete_table(force, "bcoef")
    if acoef.shape != bcoef.shape:
        raise _unsupported(force, "acoef and bcoef tables differ in size")
    raw = np.array([force.getParticleParameters(i)[0] for i in range(force.getNumParticles())], np.float64)
    types = np.rint(raw).astype(np.int32)  # OpenMM rounds a discrete function's argument to the nearest integer
    if len(types) and (types.min() < 0 or types.max() >= acoef.shape[0]):
        raise _unsupported(force, "a particle type lies outside the tables")
    exclusions = np.array([force.getExclusionParticles(i) for i in range(force.getNumExclusions())],
                          np.int32).reshape(-1, 2)

    method = force.getNonbondedMethod()
    cnb = openmm.CustomNonbondedForce
    if method == cnb.NoCutoff:
        cutoff, term_periodic = None, False
    elif method in (cnb.CutoffNonPeriodic, cnb.CutoffPeriodic):
        cutoff = float(force.getCutoffDistance().value_in_unit(openmm.unit.nanometer))
        term_periodic = method == cnb.CutoffPeriodic
    else:
        raise _unsupported(force, f"nonbonded method {method}")
    if term_periodic and not periodic:
        raise _unsupported(force, "periodic cutoff in a non-periodic system")
    switch = None
    if cutoff is not None and force.getUseSwitchingFunction():
        switch = float(force.getSwitchingDistance().value_in_unit(openmm.unit.nanometer))
    weights = None
    if term_periodic and force.getUseLongRangeCorrection():
        weights = long_range_weights(types, acoef.shape[0])
    term = TabulatedLJ.create(types, exclusions, cutoff=cutoff, periodic=term_periodic,
                              triclinic=triclinic and term_periodic, switch_distance=switch, lrc_weights=weights)
    return term, TabulatedLJParams(acoef=jnp.asarray(acoef), bcoef=jnp.asarray(bcoef))


def term_from_custom_force(force, periodic: bool, triclinic: bool) -> tuple[object, NamedTuple]:
    """(term, params) for a supported OpenMM Custom*Force.

    Args:
      force: an OpenMM CustomTorsionForce, CustomBondForce or CustomNonbondedForce.
      periodic: whether the system has a periodic box. triclinic: whether that box is triclinic.
    Raises:
      ValueError: one line naming the force class and its energy expression when it is not supported.
    """
    import openmm

    if not hasattr(force, "getEnergyFunction"):
        raise ValueError(f"unsupported force class {type(force).__name__}")
    expression = _normalized(force.getEnergyFunction())
    if isinstance(force, openmm.CustomTorsionForce) and expression == IMPROPER_EXPRESSION:
        _check_no_globals(force)
        return _improper_from_force(force, periodic, triclinic)
    if isinstance(force, openmm.CustomBondForce) and expression == PAIR_LJ_EXPRESSION:
        _check_no_globals(force)
        return _pair_lj_from_force(force, periodic, triclinic)
    if isinstance(force, openmm.CustomNonbondedForce) and expression == TABULATED_LJ_EXPRESSION:
        _check_no_globals(force)
        return _tabulated_lj_from_force(force, periodic, triclinic)
    raise _unsupported(force)
