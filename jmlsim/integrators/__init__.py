"""Integrators as pure ``init``/``step`` pairs over an :class:`MDState` pytree.

``step(state, force_fn)`` takes ``force_fn(positions) -> (N, 3)`` (a closure over parameters, box and neighbor
list built by the run loop), so integrators know nothing about energy terms or neighbor lists.
"""

from jmlsim.integrators.state import MDState, kinetic_energy, maxwell_boltzmann, temperature
from jmlsim.integrators.verlet import VelocityVerlet
from jmlsim.integrators.langevin import LangevinBAOAB
from jmlsim.integrators.nose_hoover import NoseHooverChain

__all__ = ["MDState", "kinetic_energy", "maxwell_boltzmann", "temperature", "VelocityVerlet", "LangevinBAOAB",
           "NoseHooverChain", "by_name"]


def by_name(name: str, timestep: float, kT: float, friction: float = 1.0, tau: float | None = None,
            constraints=None):
    """Build an integrator from its CLI name: ``verlet``, ``langevin`` or ``nose-hoover``."""
    if name == "verlet":
        return VelocityVerlet(timestep, constraints=constraints)
    if name == "langevin":
        return LangevinBAOAB(timestep, kT, friction, constraints=constraints)
    if name == "nose-hoover":
        return NoseHooverChain(timestep, kT, tau if tau is not None else 100.0 * timestep, constraints=constraints)
    raise ValueError(f"unknown integrator {name!r} (choose verlet, langevin, nose-hoover)")
