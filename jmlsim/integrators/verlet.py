"""Velocity Verlet (NVE)."""

from __future__ import annotations

import dataclasses

from jmlsim.integrators.state import MDState, make_state


@dataclasses.dataclass(frozen=True)
class VelocityVerlet:
    """Time-reversible, symplectic NVE integrator; timestep in ps (or tau)."""

    timestep: float
    conserves_momentum = True

    def init(self, key, positions, masses, forces, box, kT, velocities=None) -> MDState:
        return make_state(key, positions, masses, forces, box, kT, velocities)

    def step(self, state: MDState, force_fn, aux=None):
        """One step; ``force_fn(positions, aux) -> (forces, aux)``. Returns (state, aux)."""
        dt = self.timestep
        inv_m = 1.0 / state.masses[..., None]
        v = state.velocities + 0.5 * dt * state.forces * inv_m
        x = state.positions + dt * v
        f, aux = force_fn(x, aux)
        v = v + 0.5 * dt * f * inv_m
        return state._replace(positions=x, velocities=v, forces=f, step=state.step + 1), aux
