"""Velocity Verlet (NVE); with constraints it is RATTLE (SHAKE/SETTLE on positions, RATTLE on velocities)."""

from __future__ import annotations

import dataclasses
from typing import Any

from jmlsim.integrators.constrained import drift, project_velocities
from jmlsim.integrators.state import MDState, make_state


@dataclasses.dataclass(frozen=True)
class VelocityVerlet:
    """Time-reversible, symplectic NVE integrator; timestep in ps (or tau); constraints: a
    :class:`jmlsim.constraints.Constraints` or None."""

    timestep: float
    constraints: Any = None
    conserves_momentum = True

    def init(self, key, positions, masses, forces, box, kT, velocities=None) -> MDState:
        return make_state(key, positions, masses, forces, box, kT, velocities)

    def step(self, state: MDState, force_fn, aux=None):
        """One step; ``force_fn(positions, aux) -> (forces, aux)``. Returns (state, aux)."""
        dt = self.timestep
        inv_m = 1.0 / state.masses[..., None]
        c, m = self.constraints, state.masses
        v = project_velocities(c, state.positions, state.velocities + 0.5 * dt * state.forces * inv_m, m)
        x, v = drift(c, state.positions, v, m, dt)
        f, aux = force_fn(x, aux)
        v = project_velocities(c, x, v + 0.5 * dt * f * inv_m, m)
        return state._replace(positions=x, velocities=v, forces=f, step=state.step + 1), aux
