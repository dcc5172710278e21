"""The edge-list graph every neural-network potential reads, and two ways to build it.

A ``Graph`` is a fixed-shape pytree: padded atoms and padded edges are carried along and masked, so a batch
of molecules of different sizes (padded to a common N) jits once and vmaps.

Edge e points from ``senders[e]`` (j) to ``receivers[e]`` (i): ``edge_vectors[e] = r_i - r_j`` (minimum image
when periodic). Messages are summed onto receivers with ``jax.ops.segment_sum(..., num_segments=N)``.

Both builders lay edges out receiver-major with the same number of slots K per atom (edge i*K + k has
receiver i): ``dense_graph`` uses K = N - 1, ``neighbor_graph`` uses the list's capacity. Models must not
rely on that layout except through ``receiver_slots`` (used by ANI's angular terms), which does not.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim import space

Array = jnp.ndarray


class Graph(NamedTuple):
    """Fixed-shape molecular graph.

    species: (N,) int32 index into the model's element list (padding atoms: 0).
    atom_mask: (N,) bool, False for padding atoms.
    edge_vectors: (E, 3) nm, r[receiver] - r[sender] (minimum image when periodic).
    senders: (E,) int32.
    receivers: (E,) int32.
    edge_mask: (E,) bool, False for padded edges, edges touching padding atoms, and |r| >= cutoff.
    """

    species: Array
    atom_mask: Array
    edge_vectors: Array
    senders: Array
    receivers: Array
    edge_mask: Array


def _masked_edges(positions, species, atom_mask, senders, receivers, valid, box, cutoff) -> Graph:
    """Edge vectors (minimum image when ``box`` is given) and the full edge mask."""
    positions = jnp.asarray(positions)
    n = positions.shape[0]
    species = jnp.asarray(species, jnp.int32)
    atom_mask = jnp.ones((n,), bool) if atom_mask is None else jnp.asarray(atom_mask, bool)
    species = jnp.where(atom_mask, species, 0)
    dr = positions[receivers] - positions[senders]
    if box is not None:
        # The triclinic form is exact for diagonal boxes too, and needs no host-side look at the values
        # (the box may be traced, e.g. under a barostat).
        dr = space.minimum_image(dr, jnp.asarray(box, positions.dtype), triclinic=True)
    r2 = jnp.sum(dr * dr, axis=-1)
    mask = valid & atom_mask[senders] & atom_mask[receivers] & (r2 < cutoff * cutoff)
    return Graph(species=species, atom_mask=atom_mask, edge_vectors=dr, senders=jnp.asarray(senders, jnp.int32),
                 receivers=jnp.asarray(receivers, jnp.int32), edge_mask=mask)


def dense_graph(positions: Array, species: Array, atom_mask: Optional[Array], cutoff: float,
                box: Optional[Array] = None) -> Graph:
    """All ordered pairs i != j (E = N(N-1)), for small molecules.

    Args:
      positions: (N, 3) nm. species: (N,) int. atom_mask: (N,) bool or None (all real).
      cutoff: nm; longer edges are masked. box: (3, 3) rows = lattice vectors, (3,) lengths, or None.
    Returns:
      Graph with static index arrays (receiver-major, N - 1 slots per atom).
    """
    n = int(np.shape(positions)[0])
    receivers = np.repeat(np.arange(n, dtype=np.int32), max(n - 1, 0))
    # Row i lists every j != i in increasing order.
    cols = np.tile(np.arange(n - 1, dtype=np.int32), n)
    senders = (cols + (cols >= receivers)).astype(np.int32)
    if box is not None and np.ndim(box) == 1:
        box = jnp.diag(jnp.asarray(box))
    return _masked_edges(positions, species, atom_mask, senders, receivers, True, box, cutoff)


def neighbor_graph(positions: Array, species: Array, atom_mask: Optional[Array], nbrs, box: Optional[Array],
                   cutoff: float) -> Graph:
    """Graph from a jmlsim ``NeighborList`` (``idx`` (N, capacity) padded with N), for large/periodic systems.

    Args:
      positions: (N, 3) nm. species: (N,) int. atom_mask: (N,) bool or None.
      nbrs: ``jmlsim.neighbors.NeighborList`` built with a list cutoff >= ``cutoff``.
      box: (3, 3) rows = lattice vectors, (3,) lengths, or None. cutoff: nm.
    Returns:
      Graph with E = N * capacity edges (receiver-major); empty slots are masked.
    """
    idx = jnp.asarray(nbrs.idx)
    n, k = idx.shape
    receivers = np.repeat(np.arange(n, dtype=np.int32), k)
    flat = idx.reshape(-1)
    valid = flat < n
    # Empty slots point at the receiver itself: a zero vector, masked, and safe under the safe norm.
    senders = jnp.where(valid, flat, jnp.asarray(receivers)).astype(jnp.int32)
    if box is not None and np.ndim(box) == 1:
        box = jnp.diag(jnp.asarray(box))
    return _masked_edges(positions, species, atom_mask, senders, receivers, valid, box, cutoff)


def edge_lengths(graph: Graph) -> tuple[Array, Array]:
    """Gradient-safe edge lengths and unit vectors.

    Returns:
      r: (E,) nm, 1.0 on masked edges (so sqrt and 1/r never see 0).
      unit: (E, 3) r_vec / r, zero on masked edges.
    """
    vec = graph.edge_vectors
    r2 = jnp.sum(vec * vec, axis=-1)
    r = jnp.sqrt(jnp.where(graph.edge_mask, r2, 1.0))
    unit = jnp.where(graph.edge_mask[:, None], vec / r[:, None], 0.0)
    return r, unit


def cosine_cutoff(r: Array, cutoff: float) -> Array:
    """Behler cosine cutoff 0.5 (cos(pi r / rc) + 1) for r < rc, else 0; value and slope vanish at rc."""
    return jnp.where(r < cutoff, 0.5 * (jnp.cos(jnp.pi * jnp.minimum(r, cutoff) / cutoff) + 1.0), 0.0)


def polynomial_envelope(r: Array, cutoff: float, p: int = 6) -> Array:
    """DimeNet/NequIP polynomial envelope u_p(r / rc): 1 at 0, zero value, slope and curvature at rc."""
    x = jnp.minimum(r / cutoff, 1.0)
    u = (1.0 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2))
    return jnp.where(r < cutoff, u, 0.0)


def receiver_slots(graph: Graph, n_slots: int, mask: Optional[Array] = None) -> tuple[Array, Array]:
    """Group edges by receiver into a fixed (N, n_slots) table, valid edges first.

    Works for any edge order: edges are sorted by (receiver, masked-last), and each takes the next slot of
    its receiver. A receiver with more than ``n_slots`` valid edges would lose the extras, so callers pass
    n_slots >= the largest valid degree (E // N suffices for ``dense_graph`` and ``neighbor_graph``).
    ``mask`` (E,) bool replaces ``graph.edge_mask`` as the notion of valid (e.g. a shorter cutoff).

    Returns:
      edge_index: (N, n_slots) int32 edge ids (0 where empty).
      slot_mask: (N, n_slots) bool, True where the slot holds a valid (unmasked) edge.
    """
    n = graph.species.shape[0]
    e = graph.receivers.shape[0]
    mask = graph.edge_mask if mask is None else mask
    key = graph.receivers.astype(jnp.int32) * 2 + (~mask).astype(jnp.int32)
    order = jnp.argsort(key, stable=True).astype(jnp.int32)
    sorted_recv = graph.receivers[order]
    first = jnp.searchsorted(sorted_recv, jnp.arange(n, dtype=sorted_recv.dtype))
    slot = jnp.arange(e, dtype=jnp.int32) - first[sorted_recv].astype(jnp.int32)
    table = jnp.full((n, n_slots), e, jnp.int32).at[sorted_recv, slot].set(order, mode="drop")
    filled = table < e
    safe = jnp.where(filled, table, 0)
    return safe, filled & mask[safe]


def aggregate(messages: Array, graph: Graph) -> Array:
    """Sum edge messages (E, ...) onto their receivers -> (N, ...); masked edges contribute nothing."""
    mask = graph.edge_mask.reshape(graph.edge_mask.shape + (1,) * (messages.ndim - 1))
    return jax.ops.segment_sum(jnp.where(mask, messages, 0.0), graph.receivers,
                               num_segments=graph.species.shape[0])
