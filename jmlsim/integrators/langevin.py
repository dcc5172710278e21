"""Langevin dynamics with the BAOAB splitting (Leimkuhler & Matthews 2013).

One step is B(dt/2) A(dt/2) O(dt) A(dt/2) B(dt/2), with O the exact Ornstein-Uhlenbeck update
v <- c v + sqrt((1 - c^2) kT / m) xi, c = exp(-gamma dt). OpenMM's LangevinMiddleIntegrator is the same
scheme written with the two half kicks merged (velocities at half steps); positions, and so configurational
sampling, are identical. Here velocities are reported on full steps.

With constraints the A-O-A part is one constrained drift from the previous (constrained) positions, as in
OpenMM's LangevinMiddleIntegrator: SHAKE/SETTLE once per step, and the correction goes into the velocities;
every kick is followed by a RATTLE velocity projection.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

from jmlsim.integrators.constrained import project_velocities
from jmlsim.integrators.layout import ATOM_MAJOR
from jmlsim.integrators.state import MDState, make_state


@dataclasses.dataclass(frozen=True)
class LangevinBAOAB:
    """timestep in ps, kT in kJ/mol, friction gamma in 1/ps (in LJ reduced units: tau, epsilon, 1/tau);
    constraints: a :class:`jmlsim.constraints.Constraints` or None.

    kT may be a tuple of R values for a replica batch (a temperature ladder): replica r is thermostatted at
    kT[r]. A tuple, not an array, keeps the integrator hashable and the ladder a compile-time constant.

    layout (:mod:`jmlsim.integrators.layout`) is set by the run loop for a replica-minor batch; with it, the
    constraints object takes arrays in that layout."""

    timestep: float
    kT: float
    friction: float = 1.0
    constraints: Any = None
    layout: Any = dataclasses.field(default=ATOM_MAJOR, repr=False)
    conserves_momentum = False

    def init(self, key, positions, masses, forces, box, kT=None, velocities=None) -> MDState:
        return make_state(key, positions, masses, forces, box, self.kT if kT is None else kT, velocities)

    def step(self, state: MDState, force_fn, aux=None, project_end: bool = True):
        """One step; ``force_fn(positions, aux) -> (forces, aux)``. Returns (state, aux).

        project_end=False leaves out the closing RATTLE projection of the velocities. The projection P at fixed
        positions is linear and idempotent, so the next step's opening P(v + dt/2 f/m) gives the same velocities
        whether or not v was projected: a run loop may skip it inside a chunk of steps and call :meth:`finish`
        once at the end (one velocity projection per step instead of two)."""
        dt = self.timestep
        inv_m = 1.0 / self.layout.per_atom(state.masses)
        c = math.exp(-self.friction * dt)
        cons, m = self.constraints, state.masses
        v = project_velocities(cons, state.positions, state.velocities + 0.5 * dt * state.forces * inv_m, m)
        x = state.positions + 0.5 * dt * v
        key, noise = self.layout.split_and_normal(state.key, v)
        v = c * v + jnp.sqrt((1.0 - c * c) * self.layout.per_replica(self.kT, v) * inv_m) * noise
        x = x + 0.5 * dt * v
        if cons is not None:
            fixed = cons.positions(x, state.positions, m)
            v = v + (fixed - x) / dt
            x = fixed
        f, aux = force_fn(x, aux)
        v = v + 0.5 * dt * f * inv_m
        if project_end:
            v = project_velocities(cons, x, v, m)
        return state._replace(positions=x, velocities=v, forces=f, key=key, step=state.step + 1), aux

    def finish(self, state: MDState) -> MDState:
        """The state with its velocities projected onto the constraints (after steps with project_end=False)."""
        return state._replace(velocities=project_velocities(self.constraints, state.positions, state.velocities,
                                                             state.masses))
