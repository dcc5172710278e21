"""The MD state pytree and kinetic helpers shared by all integrators.

Integrators broadcast over leading axes: a state whose arrays carry a replica axis in front,
(R, N, 3) positions and (R, N) masses, steps all replicas at once.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jnp.ndarray


class MDState(NamedTuple):
    """Everything needed to continue a trajectory exactly (it is what a checkpoint stores).

    positions, velocities, forces: (..., N, 3) in nm, nm/ps, kJ/mol/nm (or reduced units).
    masses: (..., N) amu. key: PRNG key (one per replica). box: (..., 3, 3) or None.
    step: (...) int32 step counter. thermostat: integrator-specific pytree, or ().
    """

    positions: Array
    velocities: Array
    forces: Array
    masses: Array
    key: Array
    box: Optional[Array]
    step: Array
    thermostat: Any = ()


def kinetic_energy(velocities: Array, masses: Array) -> Array:
    """0.5 sum m v^2 over atoms; (..., N, 3), (..., N) -> (...)."""
    return 0.5 * jnp.sum(masses[..., None] * velocities * velocities, axis=(-2, -1))


def temperature(kinetic: Array, dof: int, kB: float) -> Array:
    """Instantaneous temperature 2 KE / (dof kB)."""
    return 2.0 * kinetic / (dof * kB)


def maxwell_boltzmann(key: Array, masses: Array, kT: float, remove_com: bool = True) -> Array:
    """Velocities (N, 3) drawn at temperature kT (energy units), centre-of-mass momentum removed."""
    v = jax.random.normal(key, (masses.shape[0], 3), dtype=masses.dtype) * jnp.sqrt(kT / masses)[:, None]
    if remove_com:
        v = v - jnp.sum(masses[:, None] * v, axis=0) / jnp.sum(masses)
    return v


def split_and_normal(key: Array, shape, dtype) -> tuple[Array, Array]:
    """(new key, standard normal noise of ``shape``) for one key (2,) or a stack of keys (..., 2).

    A stack of keys belongs to a replica batch: each replica draws from its own stream, so a replica
    run in a batch sees exactly the noise it would see alone.
    """
    batch = key.shape[:-1]
    # drawn flat and reshaped: the same numbers as normal(sub, (N, 3)), but XLA's CPU loop over a minor
    # axis of 3 vectorises badly (a 256-replica batch of 22 atoms: ~180 -> ~100 us a step)
    n_per_stream = math.prod(shape[len(batch):])
    if key.ndim == 1:
        key, sub = jax.random.split(key)
        return key, jax.random.normal(sub, (n_per_stream,), dtype).reshape(shape)
    keys, noise = split_streams_and_normal(key.reshape(-1, key.shape[-1]), n_per_stream, dtype)
    return keys.reshape(key.shape), noise.reshape(shape)


def split_streams_and_normal(keys: Array, n_per_stream: int, dtype, stream_axis: int = 0) -> tuple[Array, Array]:
    """Each of R streams (keys (R, 2)) split once and drawing n_per_stream standard normals: (new keys (R, 2),
    noise (R, n_per_stream), or (n_per_stream, R) with stream_axis=-1; the same numbers either way)."""
    pairs = jax.vmap(jax.random.split)(keys)
    noise = jax.vmap(lambda k: jax.random.normal(k, (n_per_stream,), dtype), out_axes=stream_axis)(pairs[:, 1])
    return pairs[:, 0], noise


def per_replica(value, like: Array) -> Array:
    """A thermostat setting broadcast against ``like`` (..., N, 3): a float stays a scalar; a tuple of R values
    (one per replica, e.g. a temperature ladder) becomes (R, 1, 1)."""
    if isinstance(value, (tuple, list)):
        return jnp.asarray(value, like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))
    return value


def make_state(key, positions, masses, forces, box, kT, velocities=None, thermostat=()) -> MDState:
    """Common init for one system: velocities from Maxwell-Boltzmann unless given."""
    key, sub = jax.random.split(key)
    if velocities is None:
        velocities = maxwell_boltzmann(sub, masses, kT)
    return MDState(positions=positions, velocities=jnp.asarray(velocities, positions.dtype), forces=forces,
                   masses=masses, key=key, box=box, step=jnp.zeros((), jnp.int32), thermostat=thermostat)
