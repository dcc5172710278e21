"""Where an integrator's per-atom arrays keep their axes: the usual (..., N, 3), or replica-minor (3, N, R).

A batch of R replicas of a small molecule is fastest on CPU with the replica axis last and contiguous: the force
terms and constraints gather and scatter whole rows of R values (:mod:`jmlsim.energy.replica_batch`), and the
integrator's arithmetic vectorises over replicas. The run loop (:meth:`jmlsim.simulation.Simulation.chunk_fn`)
carries such a batch as (3, N, R) and hands the integrator :data:`REPLICA_MINOR`; everything an integrator does
that depends on the axes goes through one of these objects, so the same step serves both layouts and a replica
sees the same numbers in either.
"""

from __future__ import annotations

import jax.numpy as jnp

from jmlsim.integrators.state import per_replica, split_and_normal, split_streams_and_normal

Array = jnp.ndarray


class AtomMajor:
    """Positions, velocities and forces (N, 3) for one system or (R, N, 3) for a batch."""

    def per_atom(self, values: Array) -> Array:
        """(N,) or (R, N) per-atom values (masses) broadcast against the arrays."""
        return values[..., None]

    def per_replica(self, value, like: Array):
        """A float (unchanged) or a tuple of R values (a temperature ladder) broadcast against ``like``."""
        return per_replica(value, like)

    def split_and_normal(self, key: Array, like: Array):
        """(new keys, standard normal noise shaped like ``like``): see :func:`~jmlsim.integrators.state.split_and_normal`."""
        return split_and_normal(key, like.shape, like.dtype)

    def components(self, a: Array) -> tuple:
        """(x, y, z) of an array, each (..., N)."""
        return a[..., 0], a[..., 1], a[..., 2]

    def per_atom_of_replica(self, value: Array) -> Array:
        """A per-replica value (R,) (or a scalar) broadcast against per-atom arrays (R, N) (or (N,))."""
        return jnp.expand_dims(value, -1)


class ReplicaMinor:
    """Positions, velocities and forces (3, N, R) of a batch of R replicas; keys (R, 2), masses (N,) or (R, N)."""

    def per_atom(self, values: Array) -> Array:
        return values[:, None] if values.ndim == 1 else values.T

    def per_replica(self, value, like: Array):
        return jnp.asarray(value, like.dtype) if isinstance(value, (tuple, list)) else value

    def split_and_normal(self, key: Array, like: Array):
        """The numbers of :class:`AtomMajor`'s noise (each replica's stream drawn as N * 3 values, atom-major),
        generated with the replica axis last and laid out (3, N, R)."""
        _, n_atoms, n_replicas = like.shape
        key, noise = split_streams_and_normal(key, n_atoms * 3, like.dtype, stream_axis=-1)
        return key, jnp.transpose(noise.reshape(n_atoms, 3, n_replicas), (1, 0, 2))

    def components(self, a: Array) -> tuple:
        return a[0], a[1], a[2]

    def per_atom_of_replica(self, value: Array) -> Array:
        return value


ATOM_MAJOR = AtomMajor()
REPLICA_MINOR = ReplicaMinor()
