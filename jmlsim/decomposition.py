"""Atom decomposition of one large system over several devices.

The neighbor list is *full* (every pair in both rows) and the direct-space pair forces are row sums, so the rows of
the list split over devices with no communication inside the pair sum: device d sums the rows of its block of
atoms against the positions of all atoms (replicated) and the per-row results are gathered afterwards. That is a
``shard_map`` over a mesh axis named :data:`ATOM_AXIS`; JAX inserts the collective (an all-reduce in the compiled
CPU program) where replicated terms (bonded forces, PME's reciprocal sum, the integrator) meet the sharded rows.

How it is switched on: the run loop traces its compiled chunks and energy evaluations inside :func:`splitting_rows`
(``Simulation(devices=D)`` for a system without replicas; other compiled pieces, such as barostat trials, run
replicated), and :func:`jmlsim.energy.nonbonded.pair_row_sums` asks :func:`atom_shards` whether
such a mesh is active. Everything else (list builds, PME, bonded terms, constraints) runs replicated on every
device, so the decomposition pays where the pair sum dominates and devices do not share cores (several GPUs); on
one CPU the devices share the cores that one device already keeps busy.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

ATOM_AXIS = "atoms"


def atom_mesh(devices: int):
    """A one-axis mesh (``"atoms"``) over the first ``devices`` devices."""
    from jax.sharding import Mesh

    return Mesh(np.asarray(jax.devices()[:devices]), (ATOM_AXIS,))


_ACTIVE = contextvars.ContextVar("jmlsim_atom_mesh", default=None)


@contextlib.contextmanager
def splitting_rows(mesh):
    """Within this context, functions being traced split pair-sum rows over ``mesh`` (from :func:`atom_mesh`;
    None: no split)."""
    token = _ACTIVE.set(mesh)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def atom_shards() -> int:
    """How many devices the rows of a pair sum are split over while tracing (1 outside :func:`splitting_rows`)."""
    mesh = _ACTIVE.get()
    return 1 if mesh is None else int(mesh.shape[ATOM_AXIS])


def decomposed_rows(row_fn: Callable, rows: jnp.ndarray, idx: jnp.ndarray, n_atoms: int, operands: tuple = ()):
    """row_fn over blocks of rows, one block per device of the active mesh.

    row_fn(rows (B,), idx (B, K), *operands) -> pytree of per-row arrays (B, ...). rows: (N,) atom indices; idx:
    (N, K) their neighbor-list rows, padded with n_atoms; operands: pytrees every device needs whole (positions,
    parameters, box), replicated. The rows are padded to a multiple of the device count with rows of the
    sentinel alone (dropped again). Returns the pytree with leading axis N.
    """
    from jax.sharding import PartitionSpec as P

    mesh, shards, n = _ACTIVE.get(), atom_shards(), rows.shape[0]
    pad = (-n) % shards
    rows = jnp.pad(rows, (0, pad), constant_values=n_atoms - 1)
    idx = jnp.pad(idx, ((0, pad), (0, 0)), constant_values=n_atoms)
    # row_fn is traced inside the shard_map: everything it reads must come in as an argument, not a closure
    out = jax.shard_map(row_fn, mesh=mesh, in_specs=(P(ATOM_AXIS), P(ATOM_AXIS, None)) + (P(),) * len(operands),
                        out_specs=P(ATOM_AXIS), check_vma=False)(rows, idx, *operands)
    return jax.tree_util.tree_map(lambda a: a[:n], out)
