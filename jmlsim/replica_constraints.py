"""SHAKE and RATTLE for R replicas of one small molecule at once, in the replica-minor layout.

:class:`jmlsim.constraints.Constraints` solves one system; a replica batch used to ``vmap`` it, which for a
molecule of 20-odd atoms spends the solve in per-replica incidence-matrix products (a third of a 256-replica
Langevin step of alanine dipeptide). Here the same CCMA-preconditioned iterations run on (C, R) arrays: the
constraint vectors are row gathers of the (N, R) position components, the per-atom displacements one row
scatter-add (:mod:`jmlsim.energy.replica_batch`). Each replica keeps its own convergence test and stops on its own
(:func:`~jmlsim.energy.replica_batch.masked_while`), so every replica ends where the vmapped solve of it alone
would, to rounding. Gradients come from the implicit function theorem, as in the one-system solver.

Applies to general distance constraints (no rigid waters) of molecules of at most
:data:`~jmlsim.energy.differences.DENSE_MAX_ATOMS` atoms; :func:`applies` says when.
Shapes: positions and velocities (R, N, 3) nm and nm/ps; masses (N,) or (R, N) amu.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.energy import replica_batch as rb
from jmlsim.energy.differences import DENSE_MAX_ATOMS, dot, scale, subtract

Array = jnp.ndarray


def applies(constraints, x: Array) -> bool:
    """True for a replica batch x (R, N, 3) of a small molecule whose constraints are all general pairs."""
    return x.ndim == 3 and applies_to(constraints, x.shape[1])


def applies_to(constraints, n_atoms: int) -> bool:
    """True for constraints of a molecule of n_atoms that this module solves: general pairs only (static, no
    rigid waters), at most DENSE_MAX_ATOMS atoms."""
    return (n_atoms <= DENSE_MAX_ATOMS and constraints.waters.shape[0] == 0
            and constraints.pairs.shape[0] > 0 and isinstance(constraints.pairs, np.ndarray))


def _inverse_masses(masses: Array, dtype) -> Array:
    """(N, 1) or (N, R) inverse masses, 0 for massless (fixed) atoms."""
    masses = jnp.asarray(masses, dtype)
    inv = jnp.where(masses > 0, 1.0 / jnp.where(masses > 0, masses, 1.0), 0.0)
    return inv.T if inv.ndim == 2 else inv[:, None]


def _pair_vectors(components: tuple, pairs: np.ndarray) -> tuple:
    """x_a - x_b of each constraint pair, (x, y, z) of (C, R)."""
    first, second = rb.slot_positions(components, pairs)
    return subtract(first, second)


def _displacements(pairs: np.ndarray, vectors: tuple, inv_m: Array, components: tuple) -> tuple:
    """Per-atom (x, y, z) of (N, R): inv_m times the sum of +vectors at the first and -vectors at the second atom."""
    sums = rb.atom_sums(pairs, [vectors, scale(vectors, -1.0)], components)
    return scale(sums, inv_m)


def positions_with_info(constraints, new: Array, reference: Array, masses: Array) -> Tuple[Array, Array]:
    """SHAKE (CCMA) of every replica: ``new`` (R, N, 3) moved along the constraint vectors at ``reference`` so that
    every constraint holds; returns (positions (R, N, 3), iterations (R,) int32)."""
    moved, iterations = shake_components(constraints, rb.to_components(new),
                                         rb.to_components(reference.astype(new.dtype)), masses)
    return rb.from_components(moved), iterations


def shake_components(constraints, current: tuple, previous: tuple, masses: Array) -> Tuple[tuple, Array]:
    """:func:`positions_with_info` on the replica-minor layout: current and previous positions as (x, y, z) of
    (N, R) nm; returns (the same of the constrained positions, iterations (R,) int32)."""
    c = constraints
    pairs = c.pairs
    dtype = current[0].dtype
    inv_m = _inverse_masses(masses, dtype)
    inv_pair = inv_m[pairs[:, 0]] + inv_m[pairs[:, 1]]
    d = _pair_vectors(previous, pairs)          # constraint directions at the reference
    s_new = _pair_vectors(current, pairs)
    length2 = jnp.asarray(c.distances, dtype)[:, None] ** 2
    tol = c._tol(dtype)

    def shift(lam):
        return _displacements(pairs, scale(d, lam), inv_m, current)

    def bond_vectors(lam):
        # s_new plus relative displacements, not absolute coordinates: no cancellation (as the one-system solve)
        return tuple(a + b for a, b in zip(s_new, _pair_vectors(shift(lam), pairs)))

    def sigma(lam):
        s = bond_vectors(lam)
        return dot(s, s) - length2

    def max_error(s):
        return jnp.max(jnp.abs(dot(s, s) - length2) / (2.0 * length2), axis=0)

    def solve(_, lam0):
        def active(state):
            it, _, _, err, prev = state
            return c._keeps_iterating(it, err, prev, tol)

        def body(state):
            it, lam, s, err, _ = state
            lam = lam - c._shake_update(dot(s, s) - length2, s, d, inv_m, inv_pair)
            s = bond_vectors(lam)
            return it + 1, lam, s, max_error(s), err

        s0 = bond_vectors(lam0)
        err0 = max_error(s0)
        start = (jnp.zeros(err0.shape, jnp.int32), lam0, s0, err0, jnp.full_like(err0, jnp.inf))
        it, lam, _, _, _ = rb.masked_while(active, body, start)
        return lam, it.astype(lam.dtype)

    def tangent_solve(g, y):
        diag = 2.0 * inv_pair * dot(d, d)
        richardson = lambda mv, rhs: c._richardson(mv, rhs, diag)
        return jax.lax.custom_linear_solve(g, y, solve=richardson, transpose_solve=richardson)

    lam0 = jnp.zeros((pairs.shape[0], current[0].shape[1]), dtype)
    lam, iterations = jax.lax.custom_root(sigma, lam0, solve, tangent_solve, has_aux=True)
    moved = tuple(a + b for a, b in zip(current, shift(lam)))
    return moved, jax.lax.stop_gradient(iterations).astype(jnp.int32)


def velocities(constraints, positions: Array, velocities: Array, masses: Array) -> Array:
    """RATTLE of every replica: remove each constraint's relative velocity along its bond; (R, N, 3) nm/ps."""
    return rb.from_components(rattle_components(constraints, rb.to_components(positions.astype(velocities.dtype)),
                                                rb.to_components(velocities), masses))


def rattle_components(constraints, positions: tuple, v: tuple, masses: Array) -> tuple:
    """:func:`velocities` on the replica-minor layout: positions and velocities as (x, y, z) of (N, R)."""
    c = constraints
    pairs = c.pairs
    inv_m = _inverse_masses(masses, v[0].dtype)
    s = _pair_vectors(positions, pairs)

    def kick(mu):
        return _displacements(pairs, scale(s, mu), inv_m, v)

    def matvec(mu):
        # K mu = s_k . (dv_a - dv_b), K = B M^-1 B^T: symmetric positive definite
        return dot(s, _pair_vectors(kick(mu), pairs))

    rhs = -dot(s, _pair_vectors(v, pairs))
    mu = c._rattle_multipliers(s, inv_m, inv_m[pairs[:, 0]] + inv_m[pairs[:, 1]], rhs, matvec)
    return tuple(a + b for a, b in zip(v, kick(mu)))


@dataclasses.dataclass(frozen=True, eq=False)
class ReplicaMinorConstraints:
    """A small molecule's constraints for an integrator working in the replica-minor layout
    (:data:`jmlsim.integrators.layout.REPLICA_MINOR`): positions and velocities (3, N, R), masses (N,) or (R, N).
    The same solves as :func:`positions_with_info` and :func:`velocities`, without the transposes."""

    constraints: object

    @property
    def n_constraints(self):
        return self.constraints.n_constraints

    def positions(self, new: Array, reference: Array, masses: Array) -> Array:
        moved, _ = shake_components(self.constraints, tuple(new), tuple(reference.astype(new.dtype)), masses)
        return jnp.stack(moved)

    def velocities(self, positions: Array, velocities: Array, masses: Array) -> Array:
        return jnp.stack(rattle_components(self.constraints, tuple(positions.astype(velocities.dtype)),
                                           tuple(velocities), masses))
