"""Energy minimization: FIRE (Bitzek et al., PRL 97, 170201 (2006)) here, L-BFGS in :mod:`jmlsim.lbfgs`.

Runs in jit-compiled chunks of steps like the MD loop, with the same neighbor-list rule: on overflow the list
grows and the chunk is redone. Stops when the largest per-atom force falls below ``tolerance``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class FireState(NamedTuple):
    positions: jnp.ndarray  # (N, 3)
    velocities: jnp.ndarray  # (N, 3)
    forces: jnp.ndarray  # (N, 3)
    dt: jnp.ndarray  # ()
    alpha: jnp.ndarray  # ()
    n_positive: jnp.ndarray  # () steps since the power last turned negative


@dataclasses.dataclass(frozen=True)
class Fire:
    """FIRE with the published defaults; dt_start in the system's time unit, masses taken as 1."""

    dt_start: float
    dt_max_factor: float = 10.0
    n_min: int = 5
    f_inc: float = 1.1
    f_dec: float = 0.5
    alpha_start: float = 0.1
    f_alpha: float = 0.99
    max_displacement: float = 0.1  # largest move of any atom per step (length unit); keeps FIRE from flying off

    def step(self, st: FireState, force_fn, aux):
        v = st.velocities + 0.5 * st.dt * st.forces
        dx = st.dt * v
        longest = jnp.sqrt(jnp.max(jnp.sum(dx * dx, axis=-1)))
        x = st.positions + dx * jnp.minimum(1.0, self.max_displacement / jnp.maximum(longest, 1e-30))
        f, aux = force_fn(x, aux)
        v = v + 0.5 * st.dt * f
        power = jnp.sum(f * v)
        f_norm = jnp.sqrt(jnp.sum(f * f))
        v_norm = jnp.sqrt(jnp.sum(v * v))
        mixed = (1.0 - st.alpha) * v + st.alpha * v_norm * f / jnp.maximum(f_norm, 1e-30)
        uphill = power <= 0.0
        grow = (~uphill) & (st.n_positive > self.n_min)
        dt = jnp.where(uphill, st.dt * self.f_dec, jnp.where(grow, jnp.minimum(st.dt * self.f_inc,
                                                                              self.dt_start * self.dt_max_factor), st.dt))
        alpha = jnp.where(uphill, self.alpha_start, jnp.where(grow, st.alpha * self.f_alpha, st.alpha))
        v = jnp.where(uphill, jnp.zeros_like(v), mixed)
        n_positive = jnp.where(uphill, 0, st.n_positive + 1)
        return FireState(x, v, f, dt, alpha, n_positive), aux


def minimize(sim, tolerance: float, max_steps: int = 5000, method: str | None = None, **kwargs) -> dict:
    """Minimize a ``Simulation`` in place with ``method`` 'lbfgs' (:mod:`jmlsim.lbfgs`; the default for
    force-field systems, constraint-aware; also every replica of a batch without neighbor list or constraints,
    such as a molecule library) or 'fire' (the default in LJ reduced units; one system).
    Returns {'steps', 'initial_potential', 'final_potential', 'max_force', 'converged', 'method'}."""
    if method is None:
        method = "fire" if sim.system.reduced_units else "lbfgs"
    if method == "lbfgs":
        from jmlsim.lbfgs import minimize_lbfgs
        return minimize_lbfgs(sim, tolerance, max_iterations=max_steps, **kwargs)
    if method != "fire":
        raise ValueError(f"unknown minimizer {method!r} (lbfgs or fire)")
    if getattr(sim.integrator, "constraints", None) is not None:
        raise ValueError("FIRE does not handle constraints; use method='lbfgs'")
    return minimize_fire(sim, tolerance, max_steps, **kwargs)


def minimize_fire(sim, tolerance: float, max_steps: int = 5000, chunk: int = 100, dt_start: float | None = None,
                  max_displacement: float | None = None) -> dict:
    """FIRE minimization of a single-system ``Simulation`` in place (positions, forces; velocities kept).

    tolerance: largest per-atom force norm to stop at (system force units). max_displacement caps any atom's
    move per step (length units). Returns
    {'steps', 'initial_potential', 'final_potential', 'max_force', 'converged', 'method'}.
    """
    if sim.replicas is not None:
        raise ValueError("minimize works on a single system")
    if max_displacement is None:  # 0.1 sigma in reduced units, 0.01 nm otherwise
        max_displacement = 0.1 if sim.system.reduced_units else 0.01
    fire = Fire(dt_start if dt_start is not None else sim.integrator.timestep, max_displacement=max_displacement)
    energy0 = float(sim._energy(sim.params, sim.state, sim.nbrs))
    st = FireState(sim.state.positions, jnp.zeros_like(sim.state.positions), sim.state.forces,
                   jnp.asarray(fire.dt_start, sim.dtype), jnp.asarray(fire.alpha_start, sim.dtype),
                   jnp.zeros((), jnp.int32))
    nbrs, done, steps, fmax = sim.nbrs, False, 0, float("nan")
    compiled = {}
    while steps < max_steps and not done:
        def run(params, st, nbrs):
            force_fn = sim._force_fn(params, sim.state.box)
            body = lambda c, _: (fire.step(c[0], force_fn, c[1]), None)
            (st, nbrs), _ = jax.lax.scan(body, (st, nbrs), None, length=chunk)
            return st, nbrs, jnp.max(jnp.linalg.norm(st.forces, axis=-1))
        key = sim.spec
        if key not in compiled:
            compiled[key] = jax.jit(run)
        new_st, new_nbrs, fmax = compiled[key](sim.params, st, nbrs)
        if new_nbrs is not None and bool(new_nbrs.overflow):
            sim.spec = sim.spec.regrown(new_nbrs, None if sim.state.box is None else np.asarray(sim.state.box))
            sim.regrowths += 1
            nbrs = sim._rebuild(sim.state._replace(positions=st.positions))
            continue
        st, nbrs, steps = new_st, new_nbrs, steps + chunk
        fmax = float(fmax)
        if not np.isfinite(fmax):
            raise FloatingPointError(f"minimization produced non-finite forces by step {steps}")
        done = fmax < tolerance
    sim.state = sim.state._replace(positions=st.positions, forces=st.forces)
    sim.nbrs = nbrs
    energy = float(sim._energy(sim.params, sim.state, sim.nbrs))
    return {"steps": steps, "initial_potential": energy0, "final_potential": energy, "max_force": fmax,
            "converged": bool(done), "method": "fire"}
