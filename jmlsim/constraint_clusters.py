"""Exact RATTLE velocity projection for constraints that fall into small clusters.

The velocity projection solves K mu = rhs with K = B M^-1 B^T (B the constraint Jacobian rows s_a on the first
atom, -s_a on the second). K couples two constraints only when they share an atom, so it is block diagonal over
the clusters of constraints connected through shared atoms. With bonds to hydrogen constrained (HBonds) every
cluster is one heavy atom and its hydrogens: at most four constraints. Such blocks are solved exactly here, by an
unrolled Cholesky factorization on arrays of all blocks of one size at once, instead of iterating to a tolerance
(an iterative solve with a convergence test per replica costs a loop of several masked steps per MD step).

Entries: K_aa = (1/m_i + 1/m_j) |s_a|^2 for a = (i, j); for a != b sharing atom k,
K_ab = sign_a sign_b (1/m_k) s_a . s_b with sign +1 where k is the first atom of the pair and -1 where it is the
second. Arrays are (C,) for one system or replica-minor (C, R); pair vectors are (x, y, z) component tuples.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp
import numpy as np

from jmlsim.energy.differences import dot

Array = jnp.ndarray

MAX_CLUSTER = 4  # an XH4 group (methane, ammonium); larger clusters (AllBonds chains, HAngles) iterate


@dataclasses.dataclass(frozen=True, eq=False)
class ClusterBlocks:
    """Static block structure of K. blocks: {k: (G, k) int constraint indices of the G clusters of size k};
    shared: {k: ((G, k, k) atom index, (G, k, k) sign)} for the off-diagonal entries (sign 0 where a pair of
    constraints shares no atom); order: all blocks' constraint indices concatenated; inverse: its inverse
    permutation; pairs: (C, 2) the constraint atom pairs."""

    blocks: dict
    shared: dict
    inverse: np.ndarray
    pairs: np.ndarray

    def solve(self, s: tuple, inv_m, rhs):
        """mu (C,) or (C, R) with K mu = rhs; s the constraint vectors (x, y, z) of (C,) or (C, R), inv_m the
        inverse masses (N,) or (N, 1) / (N, R), 0 for massless atoms."""
        first, second = inv_m[self.pairs[:, 0]], inv_m[self.pairs[:, 1]]
        solutions = []
        for k, members in self.blocks.items():
            atoms, signs = self.shared[k]
            vec = [tuple(c[members[:, p]] for c in s) for p in range(k)]
            diag = [(first[members[:, p]] + second[members[:, p]]) * dot(vec[p], vec[p]) for p in range(k)]
            matrix = [[None] * k for _ in range(k)]
            for p in range(k):
                matrix[p][p] = diag[p]
                for q in range(p):
                    coefficient = jnp.asarray(signs[:, p, q], rhs.dtype).reshape((-1,) + (1,) * (rhs.ndim - 1))
                    matrix[p][q] = coefficient * inv_m[atoms[:, p, q]] * dot(vec[p], vec[q])
            solutions.append(_cholesky_solve(matrix, [rhs[members[:, p]] for p in range(k)]))
        return jnp.concatenate(solutions)[self.inverse]


def _cholesky_solve(matrix: list, rhs: list) -> Array:
    """Solve the k x k symmetric positive definite systems given by their lower triangle ``matrix[p][q]`` (q <= p)
    of arrays (G, ...) for right-hand sides rhs[p] (G, ...); returns the solutions stacked as (G k, ...) in the
    order block-major, member-minor of the caller's (G, k) member table."""
    k = len(rhs)
    low = [[None] * k for _ in range(k)]
    for p in range(k):
        for q in range(p + 1):
            value = matrix[p][q] - sum((low[p][m] * low[q][m] for m in range(q)), jnp.zeros_like(matrix[p][q]))
            if p == q:  # a massless pair leaves a zero pivot: its multiplier stays 0
                low[p][p] = jnp.sqrt(jnp.where(value > 0, value, 1.0))
            else:
                low[p][q] = value / low[q][q]
    y = []
    for p in range(k):
        y.append((rhs[p] - sum((low[p][m] * y[m] for m in range(p)), jnp.zeros_like(rhs[p]))) / low[p][p])
    x = [None] * k
    for p in reversed(range(k)):
        x[p] = (y[p] - sum((low[m][p] * x[m] for m in range(p + 1, k)), jnp.zeros_like(y[p]))) / low[p][p]
    return jnp.stack(x, axis=1).reshape((-1,) + rhs[0].shape[1:])


def cluster_blocks(pairs) -> Optional[ClusterBlocks]:
    """The block structure of K for static constraint pairs (C, 2), or None when the pairs are traced (a molecule
    batch), absent, or form a cluster of more than :data:`MAX_CLUSTER` constraints."""
    if not isinstance(pairs, np.ndarray) or pairs.shape[0] == 0:
        return None
    n = pairs.shape[0]
    parent = np.arange(n)

    def root(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    owner: dict = {}
    for c, (i, j) in enumerate(pairs.tolist()):
        for atom in (i, j):
            if atom in owner:
                parent[root(c)] = root(owner[atom])
            else:
                owner[atom] = c
    groups: dict = {}
    for c in range(n):
        groups.setdefault(root(c), []).append(c)
    if max(len(g) for g in groups.values()) > MAX_CLUSTER:
        return None
    by_size: dict = {}
    for members in groups.values():
        by_size.setdefault(len(members), []).append(members)
    blocks, shared = {}, {}
    for k in sorted(by_size):
        members = np.asarray(by_size[k], np.int64).reshape(-1, k)
        atoms = np.zeros((len(members), k, k), np.int64)
        signs = np.zeros((len(members), k, k), np.float64)
        for g, row in enumerate(members):
            for p in range(k):
                for q in range(p):
                    for slot_p, atom in enumerate(pairs[row[p]]):
                        slot_q = np.flatnonzero(pairs[row[q]] == atom)
                        if slot_q.size:
                            atoms[g, p, q] = atom
                            signs[g, p, q] = (1.0 if slot_p == 0 else -1.0) * (1.0 if slot_q[0] == 0 else -1.0)
        blocks[k], shared[k] = members, (atoms, signs)
    order = np.concatenate([blocks[k].reshape(-1) for k in blocks])
    return ClusterBlocks(blocks=blocks, shared=shared, inverse=np.argsort(order), pairs=pairs)
