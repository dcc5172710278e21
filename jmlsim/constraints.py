"""Holonomic distance constraints: SHAKE/RATTLE-style projection for bonds, SETTLE for rigid waters.

Two kinds of constraint are handled:

* general distance constraints |r_a - r_b| = L (bonds to hydrogen, all bonds, H-X-H angles as distances), solved
  together by a CCMA-like Newton iteration (Eastman & Pande, JCTC 6, 434 (2010)): each step takes the SHAKE
  update of every constraint simultaneously and couples them through a precomputed, sparsified inverse of the
  constraint coupling matrix built from the ideal geometry (bond lengths, equilibrium angles, masses). Coupled
  clusters (a methyl group, a whole protein under AllBonds) then converge in a handful of steps instead of the
  hundreds plain simultaneous SHAKE needs;
* rigid three-site waters, solved in closed form by SETTLE (Miyamoto & Kollman, J. Comput. Chem. 13, 952
  (1992)) for positions, and by an exact 3x3 solve for velocities.

Conventions: positions nm, velocities nm/ps, masses amu. ``positions(new, reference, masses)`` moves each atom
by mass-weighted multiples of the constraint vectors taken at ``reference`` (the previous, constrained
positions), as SHAKE does; ``velocities(positions, velocities, masses)`` removes the relative velocity along
every constraint (RATTLE's second half). Both accept one system ((N, 3), (N,)) or a leading replica axis
((R, N, 3) with masses (N,) or (R, N)). Atom positions must be unwrapped (molecules whole): no periodic images.

Both are differentiable: the iterative solves are wrapped in ``jax.lax.custom_root`` /
``jax.lax.custom_linear_solve``, so reverse-mode gradients come from the implicit function theorem (exact to the
solver tolerance) rather than from differentiating through a while loop, which JAX cannot do.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim import replica_constraints
from jmlsim.constraint_clusters import cluster_blocks
from jmlsim.energy.differences import DENSE_MAX_ATOMS, differences, dot, scatter_differences
from jmlsim.energy.replica_batch import masked_while

Array = jnp.ndarray


def _components(vectors: Array) -> tuple:
    """(C, 3) -> (x, y, z), each (C,): the layout the shared SHAKE/RATTLE steps take."""
    return vectors[:, 0], vectors[:, 1], vectors[:, 2]


class Coupling(NamedTuple):
    """Sparse normalized inverse coupling matrix, as COO triplets (host numpy arrays).

    rows, cols: (nnz,) int32 constraint indices; values: (nnz,) float64. The matrix is the inverse of
    N = D0^-1/2 J0 D0^-1/2 (unit diagonal), J0 being the constraint Jacobian at the ideal geometry, with small
    entries dropped. It is only a preconditioner: a poor one costs iterations, never accuracy.
    """

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Constraints:
    """Static description of a system's holonomic constraints.

    pairs: (C, 2) int32 atom pairs constrained to fixed distances, excluding rigid waters.
    distances: (C,) their lengths, nm.
    waters: (W, 3) int32 rigid waters as (O, H1, H2), solved by SETTLE; both H must have the same mass.
    water_oh, water_hh: the rigid water's O-H and H-H distances, nm (one water model per system).
    tolerance: relative tolerance on constraint lengths (|r| - L) / L for positions, and on the relative
      residual of the linear solves for velocities and gradients; floored at 8 machine epsilons, and an
      iteration that stops improving near that floor ends early. In float32 the returned coordinates carry
      their own rounding, about eps * |r| / L relative (|r| the coordinate magnitude).
    max_iterations: cap on iterations of each solve (reached only if the tolerance cannot be).
    coupling: CCMA preconditioner (see :class:`Coupling`), or None for plain simultaneous SHAKE (Jacobi).
    """

    pairs: np.ndarray
    distances: np.ndarray
    waters: np.ndarray
    water_oh: float = 0.0
    water_hh: float = 0.0
    tolerance: float = 1e-7
    max_iterations: int = 200
    coupling: Optional[Coupling] = None

    def __post_init__(self):
        if isinstance(self.pairs, jax.core.Tracer):
            return  # one molecule's arrays of a batch, inside vmap (see ConstraintsBatch): already checked
        pairs = np.asarray(self.pairs, dtype=np.int32).reshape(-1, 2)
        waters = np.asarray(self.waters, dtype=np.int32).reshape(-1, 3)
        distances = np.asarray(self.distances, dtype=np.float64).reshape(-1)
        if distances.shape[0] != pairs.shape[0]:
            raise ValueError(f"{pairs.shape[0]} constraint pairs but {distances.shape[0]} distances")
        if waters.shape[0] and not (0 < self.water_hh < 2 * self.water_oh):
            raise ValueError(f"impossible water geometry: O-H {self.water_oh} nm, H-H {self.water_hh} nm")
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "waters", waters)
        object.__setattr__(self, "distances", distances)

    @property
    def n_constraints(self) -> int:
        """Degrees of freedom removed: C + 3 W."""
        return int(self.pairs.shape[0] + 3 * self.waters.shape[0])

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(cls, pairs, distances, masses, waters=None, water_oh: float = 0.0, water_hh: float = 0.0,
              positions=None, angles: Optional[Mapping[Tuple[int, int, int], float]] = None,
              tolerance: float = 1e-7, max_iterations: int = 200, threshold: float = 0.01) -> "Constraints":
        """Constraints with a CCMA preconditioner.

        masses: (N,) amu used for the preconditioner (the call-time masses may differ slightly, e.g. after
          repartitioning, at the cost of a few iterations).
        positions: optional (N, 3) conformation whose angles define the coupling geometry; otherwise
          ``angles`` {(i, center, k): theta rad} (order of i, k free), then the law of cosines for triangles
          of constraints; pairs of constraints with unknown angle are treated as uncoupled.
        threshold: entries of the normalized inverse below this magnitude are dropped.
        """
        pairs = np.asarray(pairs, dtype=np.int32).reshape(-1, 2)
        distances = np.asarray(distances, dtype=np.float64).reshape(-1)
        coupling = ccma_coupling(pairs, distances, np.asarray(masses, dtype=np.float64),
                                 positions=positions, angles=angles, threshold=threshold)
        return cls(pairs=pairs, distances=distances,
                   waters=np.zeros((0, 3), np.int32) if waters is None else waters,
                   water_oh=float(water_oh), water_hh=float(water_hh), tolerance=float(tolerance),
                   max_iterations=int(max_iterations), coupling=coupling)

    # ------------------------------------------------------------------ public API

    def positions(self, new: Array, reference: Array, masses: Array) -> Array:
        """SHAKE/SETTLE: return ``new`` moved so that every constraint holds.

        Args:
          new: (N, 3) or (R, N, 3) unconstrained positions, nm.
          reference: same shape; the previous, constrained positions that give the constraint directions.
          masses: (N,) or (R, N) amu.
        Returns:
          positions of the same shape and dtype as ``new``.
        """
        return self.positions_with_info(new, reference, masses)[0]

    def positions_with_info(self, new: Array, reference: Array, masses: Array) -> Tuple[Array, Array]:
        """As :meth:`positions`, also returning the iterations the general solve took (() or (R,) int32)."""
        new = jnp.asarray(new)
        reference = jnp.asarray(reference, dtype=new.dtype)
        masses = jnp.asarray(masses, dtype=new.dtype)
        if replica_constraints.applies(self, new):
            return replica_constraints.positions_with_info(self, new, reference, masses)
        if new.ndim == 3:
            return jax.vmap(self._positions_one, in_axes=(0, 0, 0 if masses.ndim == 2 else None))(
                new, reference, masses)
        return self._positions_one(new, reference, masses)

    def velocities(self, positions: Array, velocities: Array, masses: Array) -> Array:
        """RATTLE/SETTLE velocity projection: remove each constraint's relative velocity along its bond.

        Args:
          positions: (N, 3) or (R, N, 3) positions satisfying the constraints, nm.
          velocities: same shape, nm/ps.
          masses: (N,) or (R, N) amu.
        Returns:
          velocities of the same shape; momentum is only exchanged within constrained groups.
        """
        velocities = jnp.asarray(velocities)
        positions = jnp.asarray(positions, dtype=velocities.dtype)
        masses = jnp.asarray(masses, dtype=velocities.dtype)
        if replica_constraints.applies(self, velocities):
            return replica_constraints.velocities(self, positions, velocities, masses)
        if velocities.ndim == 3:
            return jax.vmap(self._velocities_one, in_axes=(0, 0, 0 if masses.ndim == 2 else None))(
                positions, velocities, masses)
        return self._velocities_one(positions, velocities, masses)

    def errors(self, positions: Array) -> Array:
        """Relative length errors (|r| - L) / L of every constraint, general ones first then waters
        (O-H1, O-H2, H1-H2); shape (..., C + 3W)."""
        positions = jnp.asarray(positions)
        a, b = self.pairs[:, 0], self.pairs[:, 1]
        o, h1, h2 = self.waters[:, 0], self.waters[:, 1], self.waters[:, 2]
        i = np.concatenate([a, o, o, h1])
        j = np.concatenate([b, h1, h2, h2])
        lengths = np.concatenate([self.distances, np.full(len(o), self.water_oh), np.full(len(o), self.water_oh),
                                  np.full(len(o), self.water_hh)])
        r = jnp.linalg.norm(positions[..., i, :] - positions[..., j, :], axis=-1)
        return r / lengths - 1.0

    # ------------------------------------------------------------------ general constraints (CCMA-like)

    @functools.cached_property
    def _blocks(self):
        """The block structure of the constraint matrix when every cluster of constraints sharing atoms is small
        (:mod:`jmlsim.constraint_clusters`: RATTLE solved exactly, SHAKE by Newton steps), else None (the
        preconditioned iterations)."""
        return cluster_blocks(self.pairs)

    def _tol(self, dtype) -> float:
        # The linear solves' relative residual cannot go much below a few ulps.
        return max(self.tolerance, 8.0 * float(jnp.finfo(dtype).eps))

    def _keeps_iterating(self, it: Array, err: Array, prev: Array, tol) -> Array:
        """An iterative solve goes on below the cap while its error is above the tolerance, unless rounding has
        stopped progress near convergence (the error no longer falls and is within 64 x tol). Elementwise: one
        system's scalars or a replica batch's (R,) arrays."""
        stalled = (err >= prev) & (err < 64.0 * tol)
        return (it < self.max_iterations) & (err > tol) & ~stalled

    def _shake_update(self, sigma: Array, s: tuple, d: tuple, inv_m: Array, inv_pair: Array) -> Array:
        """The step of the SHAKE multipliers for the length errors sigma = |s|^2 - L^2, (C,) or (C, R): an exact
        Newton step on the cluster blocks where they apply, else the CCMA-preconditioned step with the exact
        Jacobian diagonal 2 (1/m_a + 1/m_b) s . d. s, d: current and reference bond vectors as (x, y, z) of the
        same shape; inv_m, inv_pair: inverse masses per atom and summed per pair (0 for massless atoms)."""
        if self._blocks is not None:
            return 0.5 * self._blocks.solve(s, d, inv_m, sigma)
        return self._precondition(sigma, 2.0 * inv_pair * dot(s, d))

    def _rattle_multipliers(self, s: tuple, inv_m: Array, inv_pair: Array, rhs: Array, matvec) -> Array:
        """mu with K mu = rhs, K = B M^-1 B^T at bond vectors s ((x, y, z) of (C,) or (C, R)): one exact block
        solve where the clusters are small (HBonds), else the preconditioned Richardson solve of matvec (K mu)."""
        if self._blocks is not None:
            return self._blocks.solve(s, s, inv_m, rhs)
        diag = inv_pair * dot(s, s)
        return jax.lax.custom_linear_solve(matvec, rhs, solve=lambda mv, r: self._richardson(mv, r, diag),
                                           symmetric=True)

    def _precondition(self, y: Array, diag: Array) -> Array:
        """Apply D^-1/2 N^-1 D^-1/2 to y (C,) or (C, R), D = diag (same shape) the current diagonal of the
        Jacobian."""
        w = jax.lax.rsqrt(diag)
        y = y * w
        if self.coupling is not None:
            c = self.coupling
            n = y.shape[0]
            if n <= DENSE_MAX_ATOMS:  # a few constraints (a small molecule): a dense product, no scatter
                if isinstance(c.rows, np.ndarray):
                    dense = np.zeros((n, n))
                    np.add.at(dense, (c.rows, c.cols), c.values)
                    dense = jnp.asarray(dense, y.dtype)
                else:  # traced (one molecule of a batch)
                    dense = jnp.zeros((n, n), y.dtype).at[c.rows, c.cols].add(c.values.astype(y.dtype))
                y = jnp.matmul(dense, y, precision=jax.lax.Precision.HIGHEST)
            else:
                values = jnp.asarray(c.values, y.dtype).reshape((-1,) + (1,) * (y.ndim - 1))  # (C, R): per column
                y = jnp.zeros_like(y).at[c.rows].add(values * y[c.cols])
        return y * w

    def _scatter(self, vec: Array, n: int) -> Array:
        """Per-atom sum of +vec on the first atom and -vec on the second of each pair; (C, 3) -> (n, 3)."""
        return scatter_differences(vec, self.pairs[:, 0], self.pairs[:, 1], n)

    def _richardson(self, matvec, rhs: Array, diag: Array) -> Array:
        """Preconditioned Richardson iteration for matvec(x) = rhs, to a relative max-norm residual; rhs (C,) or
        replica-minor (C, R), each replica to its own tolerance and stopping on its own (as under vmap)."""
        tol = self._tol(rhs.dtype) * jnp.max(jnp.abs(rhs), axis=0)

        def active(state):
            it, _, _, err, prev = state
            return self._keeps_iterating(it, err, prev, tol)

        def body(state):
            it, x, res, err, _ = state
            x = x + self._precondition(res, diag)
            res = rhs - matvec(x)
            return it + 1, x, res, jnp.max(jnp.abs(res), axis=0), err

        start = jnp.max(jnp.abs(rhs), axis=0)
        state = (jnp.zeros(start.shape, jnp.int32), jnp.zeros_like(rhs), rhs, start, jnp.full_like(start, jnp.inf))
        return masked_while(active, body, state)[1]

    def _general_positions(self, new: Array, reference: Array, masses: Array) -> Tuple[Array, Array]:
        n = new.shape[0]
        a, b = self.pairs[:, 0], self.pairs[:, 1]
        inv_m = jnp.where(masses > 0, 1.0 / jnp.where(masses > 0, masses, 1.0), 0.0)
        inv_pair = inv_m[a] + inv_m[b]
        d = differences(reference, a, b)                      # constraint directions at the reference
        s_new = differences(new, a, b)
        length2 = jnp.asarray(self.distances, new.dtype) ** 2
        tol = self._tol(new.dtype)

        def shift(lam):
            # Per-atom displacement for multipliers lam; small, so float32 keeps it accurate.
            return inv_m[:, None] * self._scatter(lam[:, None] * d, n)

        def bond_vectors(lam):
            # Built from s_new plus relative displacements, not from absolute coordinates: no cancellation.
            dx = shift(lam)
            return s_new + differences(dx, a, b)

        def sigma(lam):
            # |r_ab|^2 - L^2 after displacing by lam; the root is the constrained configuration.
            s = bond_vectors(lam)
            return jnp.sum(s * s, axis=-1) - length2

        def solve(_, lam0):
            def max_error(s):
                return jnp.max(jnp.abs(jnp.sum(s * s, axis=-1) - length2) / (2.0 * length2))

            def cond(state):
                it, _, _, err, prev = state
                return self._keeps_iterating(it, err, prev, tol)

            def body(state):
                it, lam, s, err, _ = state
                sig = jnp.sum(s * s, axis=-1) - length2
                lam = lam - self._shake_update(sig, _components(s), _components(d), inv_m, inv_pair)
                s = bond_vectors(lam)
                return it + 1, lam, s, max_error(s), err

            s0 = bond_vectors(lam0)
            inf = jnp.asarray(jnp.inf, new.dtype)
            it, lam, _, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), lam0, s0, max_error(s0), inf))
            # custom_root gives an integer aux an integer tangent, which JAX rejects: pass it as a float.
            return lam, it.astype(lam.dtype)

        def tangent_solve(g, y):
            # Linear system of the implicit-function gradient; its matrix (and transpose) ~ the Jacobian,
            # whose diagonal at the reference is 2 (1/m_a + 1/m_b) |d|^2.
            diag = 2.0 * inv_pair * jnp.sum(d * d, axis=-1)
            sol = lambda mv, rhs: self._richardson(mv, rhs, diag)
            return jax.lax.custom_linear_solve(g, y, solve=sol, transpose_solve=sol)

        lam, iterations = jax.lax.custom_root(sigma, jnp.zeros_like(length2), solve, tangent_solve,
                                              has_aux=True)
        return new + shift(lam), jax.lax.stop_gradient(iterations).astype(jnp.int32)

    def _general_velocities(self, positions: Array, velocities: Array, masses: Array) -> Array:
        n = positions.shape[0]
        a, b = self.pairs[:, 0], self.pairs[:, 1]
        inv_m = jnp.where(masses > 0, 1.0 / jnp.where(masses > 0, masses, 1.0), 0.0)
        s = differences(positions, a, b)

        def kick(mu):
            return inv_m[:, None] * self._scatter(mu[:, None] * s, n)

        def matvec(mu):
            # K mu = s_k . (dv_a - dv_b), K = B M^-1 B^T: symmetric positive definite.
            dv = kick(mu)
            return jnp.sum(s * differences(dv, a, b), axis=-1)

        rhs = -jnp.sum(s * differences(velocities, a, b), axis=-1)
        return velocities + kick(self._rattle_multipliers(_components(s), inv_m, inv_m[a] + inv_m[b], rhs, matvec))

    # ------------------------------------------------------------------ rigid waters (SETTLE)

    def _settle_geometry(self, masses: Array):
        o, h1 = self.waters[:, 0], self.waters[:, 1]
        m_o, m_h = masses[o], masses[h1]
        total = m_o + 2.0 * m_h
        rc = 0.5 * self.water_hh                                   # half the H-H distance
        height = float(np.sqrt(self.water_oh ** 2 - rc ** 2))      # O above the H-H midpoint
        ra = 2.0 * m_h * height / total                            # centre of mass -> O
        rb = height - ra                                           # centre of mass -> H-H midpoint
        return m_o, m_h, total, rc, ra, rb

    def _settle_positions(self, new: Array, reference: Array, masses: Array) -> Array:
        o, h1, h2 = self.waters[:, 0], self.waters[:, 1], self.waters[:, 2]
        m_o, m_h, total, rc, ra, rb = self._settle_geometry(masses)
        # Everything relative to the new O position (differences of nearby coordinates are exact in floating
        # point), and the result applied as small displacements of the new positions: a centre of mass taken in
        # absolute coordinates (~2 nm) carried float32 rounding of ~1e-7 nm into every water each step, a random
        # translation that heated float32 NVE runs by ~1.7 K/ps (solvated alanine dipeptide).
        origin = new[o]
        b_new, c_new = new[h1] - origin, new[h2] - origin
        com = m_h[:, None] * (b_new + c_new) / total[:, None]      # relative to the new O
        a1, b1, c1 = -com, b_new - com, c_new - com
        b0 = reference[h1] - reference[o]
        c0 = reference[h2] - reference[o]

        # Frame: z normal to the reference plane (constraint forces lie in it, so z coordinates are kept),
        # x perpendicular to the new O position (keeps the in-plane rotation small).
        def unit(v):
            return v * jax.lax.rsqrt(jnp.sum(v * v, axis=-1, keepdims=True))

        ez = unit(jnp.cross(b0, c0))
        ex = unit(jnp.cross(a1, ez))
        ey = jnp.cross(ez, ex)
        frame = jnp.stack([ex, ey, ez], axis=-2)                   # (W, 3, 3), rows = axes
        to_frame = lambda v: jnp.einsum("wij,wj->wi", frame, v)
        xb0, yb0, _ = jnp.moveaxis(to_frame(b0), -1, 0)
        xc0, yc0, _ = jnp.moveaxis(to_frame(c0), -1, 0)
        za1 = to_frame(a1)[:, 2]
        xb1, yb1, zb1 = jnp.moveaxis(to_frame(b1), -1, 0)
        xc1, yc1, zc1 = jnp.moveaxis(to_frame(c1), -1, 0)

        # Tilt the canonical triangle (O at (0, ra), H at (-/+rc, -rb)) to match the z coordinates.
        sin_phi = za1 / ra
        cos_phi = jnp.sqrt(1.0 - sin_phi ** 2)
        sin_psi = (zb1 - zc1) / (2.0 * rc * cos_phi)
        cos_psi = jnp.sqrt(1.0 - sin_psi ** 2)
        ya2 = ra * cos_phi
        xb2 = -rc * cos_psi
        yb2 = -rb * cos_phi - rc * sin_psi * sin_phi
        yc2 = -rb * cos_phi + rc * sin_psi * sin_phi

        # In-plane rotation theta: zero angular momentum change about z (forces along reference bonds):
        # alpha sin(theta) + beta cos(theta) = gamma.
        alpha = xb2 * (xb0 - xc0) + yb0 * yb2 + yc0 * yc2
        beta = xb2 * (yc0 - yb0) + xb0 * yb2 + xc0 * yc2
        gamma = xb0 * yb1 - xb1 * yb0 + xc0 * yc1 - xc1 * yc0
        norm2 = alpha ** 2 + beta ** 2
        root = jnp.sqrt(norm2 - gamma ** 2)
        sin_t = (alpha * gamma - beta * root) / norm2
        cos_t = (beta * gamma + alpha * root) / norm2

        a3 = jnp.stack([-ya2 * sin_t, ya2 * cos_t, za1], axis=-1)
        b3 = jnp.stack([xb2 * cos_t - yb2 * sin_t, xb2 * sin_t + yb2 * cos_t, zb1], axis=-1)
        c3 = jnp.stack([-xb2 * cos_t - yc2 * sin_t, -xb2 * sin_t + yc2 * cos_t, zc1], axis=-1)
        # displacements from the new positions: (a3 - a1), (b3 - b1), (c3 - c1) back in the lab frame
        shift = lambda v3, v1: jnp.einsum("wji,wj->wi", frame, v3) - v1
        return new.at[o].add(shift(a3, a1)).at[h1].add(shift(b3, b1)).at[h2].add(shift(c3, c1))

    def _settle_velocities(self, positions: Array, velocities: Array, masses: Array) -> Array:
        o, h1, h2 = self.waters[:, 0], self.waters[:, 1], self.waters[:, 2]
        m_o, m_h = masses[o], masses[h1]
        io, ih = 1.0 / m_o, 1.0 / m_h
        # Constraint vectors s1 = O-H1, s2 = O-H2, s3 = H1-H2; impulses mu_k s_k on the first atom.
        s1 = positions[o] - positions[h1]
        s2 = positions[o] - positions[h2]
        s3 = positions[h1] - positions[h2]
        dot = lambda u, v: jnp.sum(u * v, axis=-1)
        vo, vh1, vh2 = velocities[o], velocities[h1], velocities[h2]
        r1 = -dot(s1, vo - vh1)
        r2 = -dot(s2, vo - vh2)
        r3 = -dot(s3, vh1 - vh2)
        # K_kl = sum over shared atoms of (+-1/m) s_k.s_l (sign + when the atom has the same role in both).
        k11 = (io + ih) * dot(s1, s1)
        k22 = (io + ih) * dot(s2, s2)
        k33 = 2.0 * ih * dot(s3, s3)
        k12 = io * dot(s1, s2)
        k13 = -ih * dot(s1, s3)
        k23 = ih * dot(s2, s3)
        # Symmetric 3x3 solve by cofactors.
        c11 = k22 * k33 - k23 * k23
        c12 = k13 * k23 - k12 * k33
        c13 = k12 * k23 - k13 * k22
        c22 = k11 * k33 - k13 * k13
        c23 = k12 * k13 - k11 * k23
        c33 = k11 * k22 - k12 * k12
        det = k11 * c11 + k12 * c12 + k13 * c13
        mu1 = (c11 * r1 + c12 * r2 + c13 * r3) / det
        mu2 = (c12 * r1 + c22 * r2 + c23 * r3) / det
        mu3 = (c13 * r1 + c23 * r2 + c33 * r3) / det
        dvo = io[:, None] * (mu1[:, None] * s1 + mu2[:, None] * s2)
        dvh1 = ih[:, None] * (-mu1[:, None] * s1 + mu3[:, None] * s3)
        dvh2 = ih[:, None] * (-mu2[:, None] * s2 - mu3[:, None] * s3)
        return velocities.at[o].add(dvo).at[h1].add(dvh1).at[h2].add(dvh2)

    # ------------------------------------------------------------------ one system

    def _positions_one(self, new, reference, masses):
        iterations = jnp.int32(0)
        out = new
        if self.pairs.shape[0]:
            out, iterations = self._general_positions(new, reference, masses)
        if self.waters.shape[0]:
            out = self._settle_positions(out, reference, masses)
        return out, iterations

    def _velocities_one(self, positions, velocities, masses):
        out = velocities
        if self.pairs.shape[0]:
            out = self._general_velocities(positions, out, masses)
        if self.waters.shape[0]:
            out = self._settle_velocities(positions, out, masses)
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class ConstraintsBatch:
    """Different bond constraints for each replica of a batch (a library of molecules padded to N atoms).

    Every replica's constraints are padded to C: the extra rows join two padding atoms of that replica (each its
    own pair) at their current distance, so they hold trivially; the CCMA preconditioner of each molecule is
    padded with identity rows and zero entries. Each call vmaps :class:`Constraints`' solvers over the replicas
    with that replica's arrays. No rigid waters.

    template: a Constraints with C rows (its settings: tolerance, max_iterations). pairs (R, C, 2) int32;
    distances (R, C) nm; coupling_rows/cols (R, K) int32 and coupling_values (R, K); counts (R,) the real
    constraints of each replica.
    """

    template: Constraints
    pairs: np.ndarray
    distances: np.ndarray
    coupling_rows: np.ndarray
    coupling_cols: np.ndarray
    coupling_values: np.ndarray
    counts: np.ndarray

    @property
    def n_constraints(self) -> np.ndarray:
        """(R,) degrees of freedom each replica loses (its real constraints only)."""
        return np.asarray(self.counts)

    def _arrays(self):
        return (jnp.asarray(self.pairs), jnp.asarray(self.distances), jnp.asarray(self.coupling_rows),
                jnp.asarray(self.coupling_cols), jnp.asarray(self.coupling_values))

    def _one(self, pairs, distances, rows, cols, values) -> Constraints:
        return dataclasses.replace(self.template, pairs=pairs, distances=distances,
                                   coupling=Coupling(rows, cols, values))

    def positions_with_info(self, new: Array, reference: Array, masses: Array) -> Tuple[Array, Array]:
        """As :meth:`Constraints.positions_with_info` for (R, N, 3) positions and (R, N) masses."""
        new = jnp.asarray(new)
        return jax.vmap(lambda arrays, x, ref, m: self._one(*arrays)._positions_one(x, ref, m))(
            self._arrays(), new, jnp.asarray(reference, new.dtype), jnp.asarray(masses, new.dtype))

    def positions(self, new: Array, reference: Array, masses: Array) -> Array:
        return self.positions_with_info(new, reference, masses)[0]

    def velocities(self, positions: Array, velocities: Array, masses: Array) -> Array:
        """As :meth:`Constraints.velocities` for (R, N, 3) arrays and (R, N) masses."""
        velocities = jnp.asarray(velocities)
        return jax.vmap(lambda arrays, x, v, m: self._one(*arrays)._velocities_one(x, v, m))(
            self._arrays(), jnp.asarray(positions, velocities.dtype), velocities,
            jnp.asarray(masses, velocities.dtype))

    def errors(self, positions: Array) -> Array:
        """(R, C) relative length errors (padding rows included: they hold too)."""
        positions = jnp.asarray(positions)
        pairs = jnp.asarray(self.pairs)
        r = jax.vmap(lambda x, p: jnp.linalg.norm(x[p[:, 0]] - x[p[:, 1]], axis=-1))(positions, pairs)
        return r / jnp.asarray(self.distances, r.dtype) - 1.0

    @classmethod
    def pad(cls, constraints: list, padding_atoms: list, positions: np.ndarray) -> "ConstraintsBatch":
        """Pad per-replica Constraints (or None) to one batch.

        padding_atoms[r]: replica r's padding atom indices (at least twice its missing rows); positions (R, N, 3)
        their start positions (the padding rows' lengths).
        """
        counts = np.array([0 if c is None else c.pairs.shape[0] for c in constraints])
        if any(c is not None and c.waters.shape[0] for c in constraints):
            raise ValueError("constraint batches hold bond constraints only, not rigid waters")
        width = max(int(counts.max()), 1)
        settings = next((c for c in constraints if c is not None), None)
        pairs, distances, rows, cols, values = [], [], [], [], []
        for r, c in enumerate(constraints):
            missing = width - counts[r]
            if len(padding_atoms[r]) < 2 * missing:
                raise ValueError(f"replica {r}: {missing} padding constraints need {2 * missing} padding atoms")
            extra = np.asarray(padding_atoms[r][:2 * missing], np.int32).reshape(-1, 2)
            p = np.concatenate([np.zeros((0, 2), np.int32) if c is None else c.pairs, extra])
            pairs.append(p)
            lengths = np.linalg.norm(positions[r, extra[:, 0]] - positions[r, extra[:, 1]], axis=-1)
            distances.append(np.concatenate([np.zeros(0) if c is None else c.distances, lengths]))
            if c is None or c.coupling is None:  # no preconditioner: the identity
                coupling = Coupling(np.arange(width), np.arange(width), np.ones(width))
            else:  # the molecule's own, and the identity on its padding rows
                pad_rows = np.arange(counts[r], width)
                coupling = Coupling(np.concatenate([c.coupling.rows, pad_rows]),
                                    np.concatenate([c.coupling.cols, pad_rows]),
                                    np.concatenate([c.coupling.values, np.ones(len(pad_rows))]))
            rows.append(coupling.rows)
            cols.append(coupling.cols)
            values.append(coupling.values)
        nnz = max(len(v) for v in values)
        fill = lambda arrays, value: np.stack([np.concatenate([a, np.full(nnz - len(a), value, a.dtype)])
                                               for a in arrays])
        template = Constraints(pairs=pairs[0], distances=distances[0], waters=np.zeros((0, 3), np.int32),
                               tolerance=1e-7 if settings is None else settings.tolerance,
                               max_iterations=200 if settings is None else settings.max_iterations,
                               coupling=Coupling(np.arange(width, dtype=np.int32), np.arange(width, dtype=np.int32),
                                                 np.ones(width)))
        return cls(template=template, pairs=np.stack(pairs).astype(np.int32), distances=np.stack(distances),
                   coupling_rows=fill(rows, 0).astype(np.int32), coupling_cols=fill(cols, 0).astype(np.int32),
                   coupling_values=fill(values, 0.0).astype(np.float64), counts=counts)


# ---------------------------------------------------------------------- preconditioner


def ccma_coupling(pairs: np.ndarray, distances: np.ndarray, masses: np.ndarray, positions=None,
                  angles: Optional[Mapping[Tuple[int, int, int], float]] = None,
                  threshold: float = 0.01) -> Optional[Coupling]:
    """Sparsified inverse of the normalized constraint coupling matrix (host-side, numpy/scipy).

    For constraints k = (a, b) and l sharing atom c, the Jacobian of |r_k|^2 with respect to the SHAKE
    multiplier of l is 2 L_k L_l cos(theta_kl) / m_c, theta_kl the angle at c; the diagonal is
    2 (1/m_a + 1/m_b) L_k^2. N is that matrix scaled to unit diagonal; its inverse is computed per connected
    cluster (dense for small ones, sparse LU for big ones) and entries below ``threshold`` dropped.

    Args:
      pairs: (C, 2) int atom pairs; distances: (C,) nm; masses: (N,) amu.
      positions: optional (N, 3) conformation giving the angles; else ``angles`` {(i, center, k): theta}, then
        the law of cosines when the third side is itself constrained; unknown angles count as 90 degrees.
    Returns:
      a :class:`Coupling`, or None when no constraints share an atom.
    """
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    n_c = pairs.shape[0]
    if n_c == 0:
        return None
    masses = np.asarray(masses, dtype=np.float64)
    if positions is not None:
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    inv_m = np.where(masses > 0, 1.0 / np.where(masses > 0, masses, 1.0), 0.0)
    inv_pair = inv_m[pairs[:, 0]] + inv_m[pairs[:, 1]]
    length = dict()
    for k, (i, j) in enumerate(pairs):
        length[(min(i, j), max(i, j))] = float(distances[k])
    angle_table = {}
    if angles is not None:
        for (i, c, k), theta in angles.items():
            angle_table[(c, min(i, k), max(i, k))] = float(theta)

    # Constraints incident on each atom.
    incident: dict = {}
    for k, (i, j) in enumerate(pairs):
        incident.setdefault(int(i), []).append(k)
        incident.setdefault(int(j), []).append(k)
    rows, cols, vals = [], [], []
    for c, ks in incident.items():
        for p in range(len(ks)):
            for q in range(p + 1, len(ks)):
                k, l = ks[p], ks[q]
                i = int(pairs[k, 1] if pairs[k, 0] == c else pairs[k, 0])
                j = int(pairs[l, 1] if pairs[l, 0] == c else pairs[l, 0])
                cos = _angle_cosine(c, i, j, positions, angle_table, length)
                v = inv_m[c] * cos / np.sqrt(inv_pair[k] * inv_pair[l])
                rows += [k, l]
                cols += [l, k]
                vals += [v, v]
    if not rows:
        return None
    rows = np.array(rows + list(range(n_c)), dtype=np.int64)
    cols = np.array(cols + list(range(n_c)), dtype=np.int64)
    vals = np.array(vals + [1.0] * n_c)
    mat = sp.csr_matrix((vals, (rows, cols)), shape=(n_c, n_c))
    _, label = connected_components(mat, directed=False)
    order = np.argsort(label, kind="stable")
    starts = np.flatnonzero(np.diff(label[order], prepend=-1))
    sizes = np.diff(np.append(starts, n_c))
    local = np.empty(n_c, np.int64)                       # index of each constraint within its cluster
    local[order] = np.arange(n_c) - np.repeat(starts, sizes)
    comp_size = np.empty(label.max() + 1, np.int64)
    comp_size[label[order[starts]]] = sizes

    out_r, out_c, out_v = [], [], []
    # One BLAS thread: SuperLU and small LAPACK calls slow down badly when competing with XLA's threads.
    with _single_threaded_blas():
        for size in np.unique(sizes):
            comps = label[order[starts[sizes == size]]]
            members = np.zeros((len(comps), size), np.int64)  # (G, size) constraint indices per cluster
            slot = np.full(comp_size.shape[0], -1)
            slot[comps] = np.arange(len(comps))
            in_bucket = slot[label] >= 0
            members[slot[label[in_bucket]], local[in_bucket]] = np.flatnonzero(in_bucket)
            if size <= 256:
                # Many small clusters (methyls, amines): one batched dense inverse.
                dense = np.zeros((len(comps), size, size))
                sel = in_bucket[rows]
                np.add.at(dense, (slot[label[rows[sel]]], local[rows[sel]], local[cols[sel]]), vals[sel])
                inv = np.linalg.inv(dense)
                g, r, c = np.nonzero(np.abs(inv) >= threshold)
                out_r.append(members[g, r]), out_c.append(members[g, c]), out_v.append(inv[g, r, c])
                continue
            for idx in members:
                # A big cluster (a protein under AllBonds): sparse LU, inverse column blocks, thresholded.
                lu = sp.linalg.splu(mat[idx][:, idx].tocsc())
                for start in range(0, size, 512):
                    stop = min(size, start + 512)
                    eye = np.zeros((size, stop - start), order="F")     # SuperLU wants Fortran order
                    eye[np.arange(start, stop), np.arange(stop - start)] = 1.0
                    block = lu.solve(eye)
                    r, c = np.nonzero(np.abs(block) >= threshold)
                    out_r.append(idx[r]), out_c.append(idx[c + start]), out_v.append(block[r, c])
    return Coupling(rows=np.concatenate(out_r).astype(np.int32), cols=np.concatenate(out_c).astype(np.int32),
                    values=np.concatenate(out_v).astype(np.float64))


def _single_threaded_blas():
    """Limit BLAS to one thread (measured: SuperLU's multi-column solve went from 0.1 s to 12 s for DHFR when
    its BLAS threads competed with XLA's). A no-op if threadpoolctl is absent."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _angle_cosine(center: int, i: int, j: int, positions, angle_table, length) -> float:
    """cos of the angle i-center-j from positions, an angle table, or a constrained third side."""
    if positions is not None:
        u, v = positions[i] - positions[center], positions[j] - positions[center]
        return float(u @ v / np.sqrt((u @ u) * (v @ v)))
    theta = angle_table.get((center, min(i, j), max(i, j)))
    if theta is not None:
        return float(np.cos(theta))
    third = length.get((min(i, j), max(i, j)))
    if third is not None:
        li = length[(min(i, center), max(i, center))]
        lj = length[(min(j, center), max(j, center))]
        return (li * li + lj * lj - third * third) / (2.0 * li * lj)
    return 0.0


# ---------------------------------------------------------------------- from OpenMM


def constraints_from_openmm(system, positions=None, tolerance: float = 1e-7, max_iterations: int = 200,
                            threshold: float = 0.01) -> Optional[Constraints]:
    """Read an ``openmm.System``'s constraints; None if it has none.

    Rigid waters (three atoms mutually constrained and nothing else, two equal O-H distances, equal H masses,
    the same geometry as the first such water) go to SETTLE; everything else to the general solver, whose
    preconditioner takes its angles from ``positions`` (N, 3) nm if given, else from the system's
    HarmonicAngleForce equilibrium angles.
    """
    import openmm
    from openmm import unit

    n_con = system.getNumConstraints()
    if n_con == 0:
        return None
    masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton)
                       for i in range(system.getNumParticles())])
    pairs = np.zeros((n_con, 2), np.int64)
    dist = np.zeros(n_con)
    for k in range(n_con):
        i, j, d = system.getConstraintParameters(k)
        pairs[k] = (i, j)
        dist[k] = d.value_in_unit(unit.nanometer) if unit.is_quantity(d) else float(d)

    # Rigid-water detection on the constraint graph.
    neighbors: dict = {}
    for k, (i, j) in enumerate(pairs):
        neighbors.setdefault(int(i), {})[int(j)] = k
        neighbors.setdefault(int(j), {})[int(i)] = k
    waters, water_cons = [], set()
    geometry = None
    for centre, nb in neighbors.items():
        if len(nb) != 2:
            continue
        h1, h2 = sorted(nb)
        if len(neighbors[h1]) != 2 or len(neighbors[h2]) != 2 or h2 not in neighbors[h1]:
            continue
        k1, k2, k3 = nb[h1], nb[h2], neighbors[h1][h2]
        oh1, oh2, hh = dist[k1], dist[k2], dist[k3]
        if abs(oh1 - oh2) > 1e-9 * oh1 or abs(hh - oh1) < 1e-9 * oh1 or not hh < 2 * oh1:
            continue
        if masses[h1] != masses[h2] or masses[h1] <= 0 or masses[centre] <= 0:
            continue
        if geometry is None:
            geometry = (oh1, hh)
        if abs(oh1 - geometry[0]) > 1e-9 * oh1 or abs(hh - geometry[1]) > 1e-9 * hh:
            continue
        waters.append((centre, h1, h2))
        water_cons.update((k1, k2, k3))
    general = np.array([k for k in range(n_con) if k not in water_cons], dtype=np.int64)

    angles = None
    if positions is None and len(general):
        angles = {}
        for force in system.getForces():
            if isinstance(force, openmm.HarmonicAngleForce):
                for a in range(force.getNumAngles()):
                    i, c, j, theta, _ = force.getAngleParameters(a)
                    angles[(i, c, j)] = theta.value_in_unit(unit.radian) if unit.is_quantity(theta) else theta
    elif positions is not None and unit.is_quantity(positions):
        positions = positions.value_in_unit(unit.nanometer)

    waters_arr = np.array(waters, dtype=np.int32).reshape(-1, 3)
    oh, hh = geometry if geometry is not None else (0.0, 0.0)
    return Constraints.build(pairs[general], dist[general], masses, waters=waters_arr, water_oh=oh,
                             water_hh=hh, positions=positions, angles=angles, tolerance=tolerance,
                             max_iterations=max_iterations, threshold=threshold)


# ---------------------------------------------------------------------- hydrogen mass repartitioning


def hydrogen_mass_repartition(masses, bonds, hydrogen_mass: float, hydrogens=None, skip_water: bool = True):
    """Set every hydrogen bonded to a heavy atom to ``hydrogen_mass`` amu, taking the difference from that
    heavy atom (total mass unchanged), as OpenMM's ``createSystem(hydrogenMass=...)`` does.

    Args:
      masses: (N,) amu (numpy or JAX; the result has the same kind).
      bonds: (B, 2) int bonded atom pairs (e.g. from the topology).
      hydrogen_mass: the new hydrogen mass, amu.
      hydrogens: optional (N,) bool marking hydrogens; default: atoms lighter than 1.5 amu.
      skip_water: leave water hydrogens alone (OpenMM does so with rigidWater=True). A water is a heavy atom
        bonded to exactly two hydrogens that are bonded to nothing else heavy.
    Returns:
      (N,) repartitioned masses.
    """
    host = np.asarray(masses, dtype=np.float64)
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    is_h = host < 1.5 if hydrogens is None else np.asarray(hydrogens, dtype=bool)
    is_heavy = ~is_h & (host > 0)
    hb = bonds[is_h[bonds[:, 0]] ^ is_h[bonds[:, 1]]]
    hb = np.where(is_h[hb[:, 0]][:, None], hb[:, ::-1], hb)       # (heavy, hydrogen)
    hb = hb[is_heavy[hb[:, 0]]]
    if skip_water and len(hb):
        n = host.shape[0]
        all_deg = np.bincount(bonds.ravel(), minlength=n)
        hh = bonds[is_h[bonds[:, 0]] & is_h[bonds[:, 1]]]
        h_h_deg = np.bincount(hh.ravel(), minlength=n)
        n_h = np.bincount(hb[:, 0], minlength=n)
        # water: heavy atom with exactly two H neighbours and no others; its H's have no other heavy neighbour.
        water_o = (n_h == 2) & (all_deg - h_h_deg == 2) & is_heavy
        h_heavy = np.bincount(hb[:, 1], minlength=n)
        water = water_o[hb[:, 0]] & (h_heavy[hb[:, 1]] == 1)
        hb = hb[~water]
    # OpenMM moves mass bond by bond: a hydrogen with two heavy partners is charged to the first only.
    _, first = np.unique(hb[:, 1], return_index=True)
    hb = hb[np.sort(first)]
    delta = hydrogen_mass - host[hb[:, 1]]
    if isinstance(masses, jax.Array):
        return masses.at[hb[:, 1]].set(hydrogen_mass).at[hb[:, 0]].add(-jnp.asarray(delta, masses.dtype))
    out = np.array(masses, copy=True)
    out[hb[:, 1]] = hydrogen_mass
    np.add.at(out, hb[:, 0], -delta)
    return out
