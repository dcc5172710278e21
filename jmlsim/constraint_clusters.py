"""Exact block solves for constraints that fall into small clusters: RATTLE projections and SHAKE Newton steps.

The velocity projection solves K mu = rhs with K = B M^-1 B^T (B the constraint Jacobian rows s_a on the first
atom, -s_a on the second). K couples two constraints only when they share an atom, so it is block diagonal over
the clusters of constraints connected through shared atoms. With bonds to hydrogen constrained (HBonds) every
cluster is one heavy atom and its hydrogens: at most four constraints. Such blocks are solved exactly here, by
unrolled Gaussian elimination on arrays of all blocks of one size at once, instead of iterating to a tolerance
(an iterative solve with a convergence test per replica costs a loop of several masked steps per MD step). The
SHAKE position solve uses the same blocks for exact Newton steps: its Jacobian d sigma_a / d lambda_b =
2 c_ab s_a . d_b has the pattern of K, with the current bond vectors s and the reference directions d.

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
    constraints shares no atom); inverse: the permutation that puts the blocks' solutions (concatenated block
    size by block size) back in constraint order; pairs: (C, 2) the constraint atom pairs."""

    blocks: dict
    shared: dict
    inverse: np.ndarray
    pairs: np.ndarray

    def solve(self, s: tuple, t: tuple, inv_m, rhs):
        """mu (C,) or (C, R) with A mu = rhs, A_ab = c_ab s_a . t_b and c_ab the coupling coefficients of K (so
        t = s gives K itself; t = the reference directions gives half the SHAKE Jacobian). s, t: (x, y, z) of
        (C,) or (C, R); inv_m the inverse masses (N,) or (N, 1) / (N, R), 0 for massless atoms."""
        first, second = inv_m[self.pairs[:, 0]], inv_m[self.pairs[:, 1]]
        solutions = []
        for k, members in self.blocks.items():
            atoms, signs = self.shared[k]
            s_rows = [tuple(c[members[:, p]] for c in s) for p in range(k)]
            t_rows = s_rows if t is s else [tuple(c[members[:, p]] for c in t) for p in range(k)]
            matrix = [[None] * k for _ in range(k)]
            for p in range(k):
                for q in range(k):
                    if p == q:
                        coefficient = first[members[:, p]] + second[members[:, p]]
                    else:
                        lower = (max(p, q), min(p, q))  # the coefficient table holds the lower triangle
                        sign = jnp.asarray(signs[:, lower[0], lower[1]], rhs.dtype)
                        coefficient = sign.reshape((-1,) + (1,) * (rhs.ndim - 1)) * inv_m[atoms[:, lower[0], lower[1]]]
                    matrix[p][q] = coefficient * dot(s_rows[p], t_rows[q])
            solutions.append(_eliminate(matrix, [rhs[members[:, p]] for p in range(k)]))
        return jnp.concatenate(solutions)[self.inverse]


def _eliminate(matrix: list, rhs: list) -> Array:
    """Gaussian elimination without pivoting (the blocks are diagonally dominant: each constraint couples most to
    itself) of the k x k systems matrix[p][q] of arrays (G, ...) for right-hand sides rhs[p] (G, ...); returns the
    solutions stacked as (G k, ...), block-major and member-minor as the caller's (G, k) member table."""
    k = len(rhs)
    a = [row[:] for row in matrix]
    b = rhs[:]
    pivot = [None] * k
    for p in range(k):
        pivot[p] = jnp.where(a[p][p] != 0, a[p][p], 1.0)  # a massless pair: zero row, its multiplier stays 0
        for r in range(p + 1, k):
            factor = a[r][p] / pivot[p]
            for c in range(p + 1, k):
                a[r][c] = a[r][c] - factor * a[p][c]
            b[r] = b[r] - factor * b[p]
    x = [None] * k
    for p in reversed(range(k)):
        rest = b[p]
        for c in range(p + 1, k):
            rest = rest - a[p][c] * x[c]
        x[p] = rest / pivot[p]
    return jnp.stack(x, axis=1).reshape((-1,) + rhs[0].shape[1:])


def cluster_blocks(pairs) -> Optional[ClusterBlocks]:
    """The block structure of K for static constraint pairs (C, 2), or None when the pairs are traced (a molecule
    batch), absent, or form a cluster of more than :data:`MAX_CLUSTER` constraints."""
    if not isinstance(pairs, np.ndarray) or pairs.shape[0] == 0:
        return None
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    # constraints sharing an atom are connected through it: components of the atom graph, read at each first atom
    n_atoms = int(pairs.max()) + 1
    graph = sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_atoms, n_atoms))
    labels = connected_components(graph, directed=False)[1][pairs[:, 0]]
    groups: dict = {}
    for c, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(c)
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
