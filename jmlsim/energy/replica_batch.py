"""Forces of R replicas of one small system at once, in a replica-minor layout.

Under ``vmap`` each replica's terms gather and scatter over its own 20-odd atoms. For such small molecules
(:data:`~jmlsim.energy.differences.DENSE_MAX_ATOMS`) the per-replica kernels use dense incidence-matrix products,
whose cost grows as N^2 per replica: at 256 replicas of alanine dipeptide they were two thirds of a Langevin step.
Here the batch is evaluated as a whole instead: positions (R, N, 3) become three component arrays (N, R), every
static gather moves whole rows of R contiguous values (one memcpy-like copy per row), all pair, angle and torsion
arithmetic runs on (K, R) arrays that vectorize across replicas, and per-atom sums are one scatter-add of whole
rows (3 R values each). Measured on 256 replicas of alanine dipeptide (a 22 x 256 sum of 330 rows): the row
scatter-add 27 us, a static gather plan plus reduction 41 us, a dense one-hot product 138 us.

Terms that provide ``batched_forces(params, components, params_batched, box, nbrs)`` are evaluated this way by
:meth:`jmlsim.system.System.batched_forces` (a term returns None where its batched form does not apply); the
others still run under ``vmap``. Parameters are either shared
by all replicas (leaves (K,)) or per replica (leaves (R, K), ``params_batched``); :func:`replica_columns` turns
them into (K, 1) or (K, R) columns that broadcast against the (K, R) pair or torsion arrays.

Units are those of the terms (nm, kJ/mol, kJ/mol/nm).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray


def to_components(positions: Array) -> tuple:
    """(R, N, 3) -> (x, y, z), each (N, R)."""
    t = jnp.transpose(positions, (2, 1, 0))
    return t[0], t[1], t[2]


def from_components(components: tuple) -> Array:
    """(x, y, z) of (N, R) -> (R, N, 3)."""
    return jnp.transpose(jnp.stack(components), (2, 1, 0))


def masked_while(active, body, state):
    """``vmap(lax.while_loop)`` semantics for a replica-minor state: active(state) -> (R,) bool (or a scalar for one
    system); the loop runs while any replica is active and keeps each inactive replica's state as it was, so every
    replica ends where a loop of its own would. State leaves carry the replica axis last."""
    def step(current):
        keep_going = active(current)
        return jax.tree_util.tree_map(lambda new, old: jnp.where(keep_going, new, old), body(current), current)
    return jax.lax.while_loop(lambda current: jnp.any(active(current)), step, state)


def replica_columns(value: Array, params_batched: bool) -> Array:
    """A per-term parameter as a column that broadcasts against (K, R): (K,) -> (K, 1); (R, K) -> (K, R)."""
    return value.T if params_batched else value[:, None]


def gather_rows(components: tuple, index: np.ndarray) -> tuple:
    """(x, y, z) of (N, R) -> (x, y, z) of (K, R) at the static atom indices index (K,)."""
    return tuple(c[index] for c in components)


def slot_positions(components: tuple, atoms: np.ndarray) -> list:
    """The positions of a term's atom slots, one row gather for all of them: atoms (K, S) static -> a list over the
    S slots of (x, y, z) tuples of (K, R)."""
    k = atoms.shape[0]
    gathered = gather_rows(components, atoms.T.reshape(-1))
    return [tuple(c[s * k:(s + 1) * k] for c in gathered) for s in range(atoms.shape[1])]


def atom_sums(atoms: np.ndarray, slot_vectors: list, components: tuple) -> tuple:
    """Per-atom sums (x, y, z) of (N, R) of a term's per-slot vectors (forces, constraint displacements):
    slot_vectors is a list over the S columns of atoms (K, S) of (x, y, z) tuples of (K, R); N is the atom count
    of components."""
    slots = atoms.T.reshape(-1)
    n_atoms, n_replicas = components[0].shape
    rows = jnp.stack([jnp.concatenate([f[c] for f in slot_vectors]) for c in range(3)], axis=1)  # (K S, 3, R)
    sums = jnp.zeros((n_atoms, 3, n_replicas), rows.dtype).at[slots].add(rows)
    return sums[:, 0], sums[:, 1], sums[:, 2]
