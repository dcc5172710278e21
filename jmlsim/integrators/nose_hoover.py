"""Nose-Hoover chain thermostat (NVT), Martyna, Klein & Tuckerman (1992), integrated as in
Martyna, Tuckerman, Tobias & Klein, Mol. Phys. 87, 1117 (1996): a Trotter splitting with the chain propagated
for dt/2 before and after a velocity-Verlet step, using a 3rd-order Suzuki-Yoshida factorisation.

The conserved quantity (``conserved_energy``) is
  H = KE + U + sum_j p_j^2 / (2 Q_j) + dof kT xi_1 + kT sum_{j>1} xi_j.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp

from jmlsim.integrators.constrained import drift, project_velocities, removed_dof
from jmlsim.integrators.state import MDState, kinetic_energy, make_state

Array = jnp.ndarray

_W = 1.0 / (2.0 - 2.0 ** (1.0 / 3.0))
_SUZUKI_YOSHIDA = (_W, 1.0 - 2.0 * _W, _W)


class ChainState(NamedTuple):
    """Positions xi, velocities v_xi and masses Q of the chain, each (..., M)."""

    xi: Array
    v_xi: Array
    mass: Array


@dataclasses.dataclass(frozen=True)
class NoseHooverChain:
    """timestep in ps, kT in kJ/mol, tau (chain period) in ps; chain_length M; dof = 3N - 3 - constraints
    (momentum kept 0); constraints: a :class:`jmlsim.constraints.Constraints` or None (RATTLE inside)."""

    timestep: float
    kT: float
    tau: float
    chain_length: int = 3
    substeps: int = 1
    constraints: Any = None
    conserves_momentum = True

    def _dof(self, n_atoms: int) -> int:
        return 3 * n_atoms - 3 - removed_dof(self.constraints)

    def init(self, key, positions, masses, forces, box, kT=None, velocities=None) -> MDState:
        state = make_state(key, positions, masses, forces, box, self.kT if kT is None else kT, velocities)
        dof = self._dof(masses.shape[0])
        dtype = positions.dtype
        q = jnp.full((self.chain_length,), self.kT * self.tau**2, dtype).at[0].set(dof * self.kT * self.tau**2)
        zeros = jnp.zeros((self.chain_length,), dtype)
        return state._replace(thermostat=ChainState(xi=zeros, v_xi=zeros, mass=q))

    def _propagate_chain(self, v: Array, masses: Array, chain: ChainState, dt: float):
        """Advance the chain by half of dt and scale the velocities; v (..., N, 3), chain (..., M)."""
        m_len = self.chain_length
        dof = self._dof(masses.shape[-1])
        kT = self.kT
        ke2 = 2.0 * kinetic_energy(v, masses)
        xi, v_xi, q = chain.xi, chain.v_xi, chain.mass
        scale = jnp.ones_like(ke2)

        def force(j, v_xi, ke2):
            if j == 0:
                return (ke2 - dof * kT) / q[..., 0]
            return (q[..., j - 1] * v_xi[..., j - 1] ** 2 - kT) / q[..., j]

        for _ in range(self.substeps):
            for w in _SUZUKI_YOSHIDA:
                delta = w * dt / self.substeps
                # Top of the chain down to the particles.
                v_xi = v_xi.at[..., m_len - 1].add(0.25 * delta * force(m_len - 1, v_xi, ke2))
                for j in range(m_len - 2, -1, -1):
                    damp = jnp.exp(-0.125 * delta * v_xi[..., j + 1])
                    v_xi = v_xi.at[..., j].set((v_xi[..., j] * damp + 0.25 * delta * force(j, v_xi, ke2)) * damp)
                factor = jnp.exp(-0.5 * delta * v_xi[..., 0])
                scale = scale * factor
                ke2 = ke2 * factor * factor
                xi = xi + 0.5 * delta * v_xi
                # Particles back up to the top.
                for j in range(m_len - 1):
                    damp = jnp.exp(-0.125 * delta * v_xi[..., j + 1])
                    v_xi = v_xi.at[..., j].set((v_xi[..., j] * damp + 0.25 * delta * force(j, v_xi, ke2)) * damp)
                v_xi = v_xi.at[..., m_len - 1].add(0.25 * delta * force(m_len - 1, v_xi, ke2))
        return v * scale[..., None, None], ChainState(xi=xi, v_xi=v_xi, mass=q)

    def step(self, state: MDState, force_fn, aux=None):
        """One step; ``force_fn(positions, aux) -> (forces, aux)``. Returns (state, aux)."""
        dt = self.timestep
        inv_m = 1.0 / state.masses[..., None]
        v, chain = self._propagate_chain(state.velocities, state.masses, state.thermostat, dt)
        cons, m = self.constraints, state.masses
        v = project_velocities(cons, state.positions, v + 0.5 * dt * state.forces * inv_m, m)
        x, v = drift(cons, state.positions, v, m, dt)
        f, aux = force_fn(x, aux)
        v = project_velocities(cons, x, v + 0.5 * dt * f * inv_m, m)
        v, chain = self._propagate_chain(v, state.masses, chain, dt)
        return state._replace(positions=x, velocities=v, forces=f, step=state.step + 1, thermostat=chain), aux

    def conserved_energy(self, state: MDState, potential: Array) -> Array:
        """Extended-system energy, constant along an exact trajectory."""
        chain = state.thermostat
        dof = self._dof(state.masses.shape[-1])
        return (kinetic_energy(state.velocities, state.masses) + potential
                + jnp.sum(0.5 * chain.mass * chain.v_xi**2, axis=-1) + dof * self.kT * chain.xi[..., 0]
                + self.kT * jnp.sum(chain.xi[..., 1:], axis=-1))
