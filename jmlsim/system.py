"""System: static topology and settings plus a differentiable parameter pytree, and a sum of named terms.

Everything that fixes shapes (atom count, index arrays, neighbor cutoff) is static; everything a user may
differentiate (force-field parameters, network weights) lives in ``params``, a dict keyed by term name, and
is passed to jitted functions as an argument. That is what makes jit, vmap, grad and sharding work.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.energy.differences import DENSE_MAX_ATOMS
from jmlsim.energy.replica_batch import from_components, to_components
from jmlsim.neighbors import NeighborList

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class System:
    """A simulatable system.

    terms: name -> energy term (``energy(params, positions, box, nbrs)``, optional ``forces``).
    params: name -> that term's parameter pytree.
    masses: (N,) in amu (or reduced mass units).
    positions: (N, 3) starting positions, nm (or sigma).
    box: (3, 3) box matrix with rows = lattice vectors, or None for open boundaries.
    neighbor_cutoff: interaction cutoff the neighbor list must cover, or None (no list needed).
    kB: Boltzmann's constant in the system's energy unit per K (1 for reduced units).
    reduced_units: True for LJ reduced units (reporting maps them onto argon).
    topology: an mdtraj.Topology for trajectory files, or None (a generic one is made).
    constraints: a :class:`jmlsim.constraints.Constraints` (bond lengths and rigid waters), or None.
    molecules: (N,) int molecule id per atom (the Monte Carlo barostat scales molecule centres), or None.
    """

    terms: Mapping[str, Any]
    params: Mapping[str, Any]
    masses: np.ndarray
    positions: np.ndarray
    box: Optional[np.ndarray]
    neighbor_cutoff: Optional[float]
    kB: float
    reduced_units: bool = False
    topology: Any = None
    name: str = "system"
    constraints: Any = None
    molecules: Optional[np.ndarray] = None

    @property
    def n_atoms(self) -> int:
        return int(self.masses.shape[0])

    @property
    def n_constraints(self) -> int:
        return 0 if self.constraints is None else int(self.constraints.n_constraints)

    def energy_terms(self, params, positions: Array, box: Optional[Array], nbrs: Optional[NeighborList],
                     precise: Optional[Array] = None) -> dict:
        """Per-term energies {name: scalar}, in positions' dtype. precise: the same positions in a wider dtype
        (mixed precision's float64 state), on which the coordinate-sensitive terms are evaluated (see
        :func:`coordinate_sensitive`); None, or no wider than positions: every term on positions."""
        precise = _wider(precise, positions)
        return {name: term.energy(params[name], term_positions(term, positions, precise), box, nbrs).astype(
            positions.dtype) for name, term in self.terms.items()}

    def energy(self, params, positions: Array, box: Optional[Array], nbrs: Optional[NeighborList],
               precise: Optional[Array] = None) -> Array:
        """Total potential energy (scalar); precise as in :meth:`energy_terms`."""
        return sum(self.energy_terms(params, positions, box, nbrs, precise).values())

    def forces(self, params, positions: Array, box: Optional[Array], nbrs: Optional[NeighborList],
               precise: Optional[Array] = None) -> Array:
        """Forces (N, 3) = -grad(energy), in positions' dtype: analytic where a term provides them, autodiff
        otherwise; precise as in :meth:`energy_terms`."""
        precise = _wider(precise, positions)
        total = jnp.zeros_like(positions)
        autodiff = {}  # by the positions they run on
        for name, term in self.terms.items():
            x = term_positions(term, positions, precise)
            if hasattr(term, "forces"):
                total = total + term.forces(params[name], x, box, nbrs).astype(positions.dtype)
            else:
                autodiff.setdefault(x is precise, {})[name] = term
        for on_precise, group in autodiff.items():
            def rest(x, group=group):
                return sum(t.energy(params[n], x, box, nbrs) for n, t in group.items())
            total = total - jax.grad(rest)(precise if on_precise else positions).astype(positions.dtype)
        return total

    def batched_forces(self, params, positions: Array, box: Optional[Array], nbrs: Optional[NeighborList],
                       params_batched: bool = False, precise: Optional[Array] = None) -> Array:
        """Forces (R, N, 3) of R replicas, positions (R, N, 3); params shared, or with a leading replica axis on
        every leaf (params_batched); box (R, 3, 3) or None; nbrs batched or None; precise (R, N, 3) as in
        :meth:`energy_terms`.

        For a small system (at most DENSE_MAX_ATOMS atoms), terms with a ``batched_forces`` evaluate the whole
        batch replica-minor (:mod:`jmlsim.energy.replica_batch`, no per-replica gathers); the rest run under
        ``vmap``. Equal to ``vmap(self.forces)`` to rounding."""
        precise = _wider(precise, positions)
        if self.n_atoms > DENSE_MAX_ATOMS:
            return self._vmapped_forces(params, positions, box, nbrs, params_batched, list(self.terms), precise)
        return from_components(self.batched_force_components(
            params, to_components(positions), box, nbrs, params_batched,
            None if precise is None else to_components(precise)))

    def batched_force_components(self, params, components: tuple, box: Optional[Array],
                                 nbrs: Optional[NeighborList], params_batched: bool = False,
                                 precise: Optional[tuple] = None) -> tuple:
        """:meth:`batched_forces` of a small system on the replica-minor layout: positions, precise positions and
        forces as (x, y, z), each (N, R)."""
        if precise is not None and _wider(precise[0], components[0]) is None:
            precise = None
        dtype = components[0].dtype
        total = None
        rest = []
        for name, term in self.terms.items():
            x = term_positions(term, components, precise)
            out = term.batched_forces(params[name], x, params_batched, box, nbrs) if hasattr(
                term, "batched_forces") else None
            if out is None:
                rest.append(name)
            else:
                out = tuple(a.astype(dtype) for a in out)
                total = out if total is None else tuple(a + b for a, b in zip(total, out))
        if rest:
            f = to_components(self._vmapped_forces(params, from_components(components), box, nbrs, params_batched,
                                                   rest, None if precise is None else from_components(precise)))
            total = f if total is None else tuple(a + b for a, b in zip(total, f))
        return total

    def _vmapped_forces(self, params, positions: Array, box, nbrs, params_batched: bool, names: list,
                        precise: Optional[Array] = None) -> Array:
        """Forces (R, N, 3) of the named terms, :meth:`forces` under ``vmap``."""
        others = dataclasses.replace(self, terms={n: self.terms[n] for n in names},
                                     params={n: params[n] for n in names})
        return jax.vmap(others.forces, (0 if params_batched else None, 0, None if box is None else 0,
                                        None if nbrs is None else 0, None if precise is None else 0))(
            others.params, positions, box, nbrs, precise)


def coordinate_sensitive(term) -> bool:
    """True for terms whose forces come from small differences between bonded atoms (bonds, angles, torsions,
    CMAP, impropers, 1-4 pairs: a class attribute ``coordinate_sensitive``). Under mixed precision they run on the
    float64 state positions: float32 rounds absolute coordinates of ~2 nm at ~1e-7 nm, a 3e-4 relative error on
    stiff bond forces, while the nonbonded sum (nearly all of the work on a protein) stays in float32."""
    return bool(getattr(term, "coordinate_sensitive", False))


def _wider(precise: Optional[Array], positions: Array) -> Optional[Array]:
    """precise where it carries more digits than positions, else None."""
    if precise is None or jnp.dtype(precise.dtype).itemsize <= jnp.dtype(positions.dtype).itemsize:
        return None
    return precise


def term_positions(term, positions, precise):
    """What a term runs on: precise (wider positions, or None) where the term is coordinate-sensitive, else
    positions; arrays or (x, y, z) tuples alike."""
    return precise if precise is not None and coordinate_sensitive(term) else positions
