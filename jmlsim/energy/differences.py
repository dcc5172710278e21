"""Atom-pair difference vectors x[plus] - x[minus] for bonded terms, dense for small molecules.

Bonded terms gather the atoms of each bond, angle and torsion, and their forces are the transposed scatter-add.
Under ``vmap`` over many replicas of a small molecule, XLA's CPU gathers and scatter-adds with a batch axis are
slow (they dominated the replica benchmark). For a molecule of at most :data:`DENSE_MAX_ATOMS` atoms the same
vectors are one matrix product with a (K, N) incidence matrix holding +1 at ``plus`` and -1 at ``minus``; its
transpose is the force scatter. The product is exact: each row sums one +x, one -x and exact zeros, which rounds
the same as the plain subtraction (the matmul runs at HIGHEST precision, so GPUs do not drop to TF32).

Index arrays may be host numpy arrays (a static topology: the incidence matrix is a compile-time constant) or
traced integer arrays (molecule batches carry their topology in the parameters: the matrix is built with
``one_hot``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray

DENSE_MAX_ATOMS = 128  # above this a (K, N) matrix costs more than the gather it replaces


def incidence_matrix(plus, minus, n_atoms: int, dtype) -> Array:
    """(K, N) with +1 at (k, plus[k]) and -1 at (k, minus[k])."""
    if isinstance(plus, np.ndarray) and isinstance(minus, np.ndarray):
        matrix = np.zeros((len(plus), n_atoms), dtype=np.dtype(dtype))
        rows = np.arange(len(plus))
        np.add.at(matrix, (rows, plus), 1.0)
        np.add.at(matrix, (rows, minus), -1.0)
        return jnp.asarray(matrix)
    return jax.nn.one_hot(plus, n_atoms, dtype=dtype) - jax.nn.one_hot(minus, n_atoms, dtype=dtype)


def differences(positions: Array, plus, minus) -> Array:
    """positions[plus] - positions[minus], (K, 3) for (K,) index arrays; positions (N, 3)."""
    n_atoms = positions.shape[0]
    if n_atoms > DENSE_MAX_ATOMS:
        return positions[plus] - positions[minus]
    matrix = incidence_matrix(plus, minus, n_atoms, positions.dtype)
    return jnp.matmul(matrix, positions, precision=jax.lax.Precision.HIGHEST)


def component_blocks(vectors: Array, n_blocks: int) -> list:
    """Split (n_blocks * K, 3) difference vectors into n_blocks vectors, each a tuple (x, y, z) of (K,) arrays.

    Tuples of contiguous component rows, not (K, 3) arrays or stacks: XLA fuses the arithmetic below into a few
    vectorized loops along K (stacked (3, K) intermediates cost 5x more under vmap on the CPU).
    """
    k = vectors.shape[0] // n_blocks
    x, y, z = vectors[:, 0], vectors[:, 1], vectors[:, 2]
    return [(x[b * k:(b + 1) * k], y[b * k:(b + 1) * k], z[b * k:(b + 1) * k]) for b in range(n_blocks)]


def subtract(a: tuple, b: tuple) -> tuple:
    """a - b of (x, y, z) component tuples."""
    return tuple(p - q for p, q in zip(a, b))


def cross(a: tuple, b: tuple) -> tuple:
    """Cross product of (x, y, z) component tuples."""
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def dot(a: tuple, b: tuple) -> Array:
    """Dot product of (x, y, z) component tuples, (K,)."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def scale(a: tuple, factor: Array) -> tuple:
    """(x, y, z) * factor."""
    return tuple(c * factor for c in a)


def scatter_differences(vectors: Array, plus, minus, n_atoms: int) -> Array:
    """The transpose of :func:`differences`: (N, 3) per-atom sums of +vectors[k] at plus[k], -vectors[k] at
    minus[k]; vectors (K, 3)."""
    if n_atoms > DENSE_MAX_ATOMS:
        return jnp.zeros((n_atoms,) + vectors.shape[1:], vectors.dtype).at[plus].add(vectors).at[minus].add(-vectors)
    matrix = incidence_matrix(plus, minus, n_atoms, vectors.dtype)
    return jnp.matmul(matrix.T, vectors, precision=jax.lax.Precision.HIGHEST)


def take_rows(values: Array, index) -> Array:
    """values[index] for a static (host) index (K,) into values (N, ...): a product with a constant (K, N) one-hot
    matrix when N <= DENSE_MAX_ATOMS (under ``vmap`` over replicas one matrix product, not a batched gather)."""
    n = values.shape[0]
    if n > DENSE_MAX_ATOMS:
        return values[index]
    one_hot = np.zeros((len(index), n), dtype=np.dtype(values.dtype))
    one_hot[np.arange(len(index)), index] = 1.0
    flat = values.reshape(n, -1)
    return jnp.matmul(jnp.asarray(one_hot), flat, precision=jax.lax.Precision.HIGHEST).reshape(
        (len(index),) + values.shape[1:])
