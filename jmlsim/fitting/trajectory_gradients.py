"""Gradients through short trajectories: differentiate a trajectory-averaged observable with respect to
force-field parameters by backpropagating through the integrator (velocity Verlet, deterministic).

Reverse mode keeps every step's carry for the backward pass: memory grows linearly with trajectory length.
With ``segment = s`` the trajectory runs as an outer ``lax.scan`` over n/s segments whose inner scan of s steps
is wrapped in ``jax.checkpoint``: only segment boundaries are stored, and each segment's steps are recomputed
during the backward pass, so memory goes like n/s + s (minimal near s = sqrt(n)) for about one extra forward
pass of compute. Where trajectories are long or chaotic, reweighting (:mod:`jmlsim.fitting.reweighting`) is
the better tool; this is for short horizons (relaxation, transport over a few hundred steps, dynamics fits).

Shapes: positions/velocities (N, 3); masses (N,); one scalar observable per step, averaged.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp


def verlet_observable(force_fn: Callable, observable_fn: Callable, masses, dt: float, n_steps: int,
                      segment: Optional[int] = None) -> Callable:
    """Build ``run(params, x0, v0) -> mean over steps of observable_fn(params, x_t, v_t)``.

    force_fn(params, x) -> (N, 3) forces; observable_fn(params, x, v) -> scalar. dt in the system's time unit.
    segment: None for a plain scan (memory ~ n_steps), or s dividing n_steps for checkpointed segments."""
    if segment is not None and (segment < 1 or n_steps % segment):
        raise ValueError(f"segment {segment} must be a positive divisor of n_steps {n_steps}")
    inv_m = 1.0 / jnp.asarray(masses)[:, None]

    def step(params, carry):
        x, v, f = carry
        v = v + 0.5 * dt * f * inv_m
        x = x + dt * v
        f = force_fn(params, x)
        v = v + 0.5 * dt * f * inv_m
        return (x, v, f), observable_fn(params, x, v)

    def run(params, x0, v0):
        carry = (x0, v0, force_fn(params, x0))
        body = lambda c, _: step(params, c)  # noqa: E731
        if segment is None:
            _, obs = jax.lax.scan(body, carry, None, length=n_steps)
            return jnp.mean(obs)

        @jax.checkpoint
        def run_segment(c):
            c, obs = jax.lax.scan(body, c, None, length=segment)
            return c, jnp.sum(obs)

        _, sums = jax.lax.scan(lambda c, _: run_segment(c), carry, None, length=n_steps // segment)
        return jnp.sum(sums) / n_steps

    return run


def gradient_memory_bytes(run: Callable, params, x0, v0) -> int:
    """Peak temporary memory XLA allocates for jit(grad(run)) (bytes), from the compiled program's analysis."""
    compiled = jax.jit(jax.grad(run)).lower(params, x0, v0).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:  # some backends do not report
        return -1
    return int(analysis.temp_size_in_bytes)


def lj_force_and_energy(term, box, nbrs):
    """(force_fn(params, x), energy_fn(params, x)) for an LJ term with a fixed all-pairs neighbor list."""
    box = jnp.asarray(box)

    def force_fn(params, x):
        return term.forces(params, x, box, nbrs)

    def energy_fn(params, x):
        return term.energy(params, x, box, nbrs)

    return force_fn, energy_fn
