"""Term-by-term comparison of a jmlsim System against OpenMM's Reference platform.

``compare_with_openmm(omm_system, system)`` evaluates every term of ``system`` (converted from ``omm_system``
by :func:`jmlsim.io.openmm_import.from_openmm`, so term names are OpenMM force class names, ``#k`` for
repeats) and the matching OpenMM force, isolated in its own force group, at the same positions. It returns,
per term, both energies and the RMS force error relative to the RMS force: the figures the force-field tests
assert on and that users can print for their own systems.
"""

from __future__ import annotations

import copy
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.neighbors import plan
from jmlsim.system import System, term_positions


class TermComparison(NamedTuple):
    """energy, reference_energy kJ/mol; force_rms_error and reference_force_rms kJ/mol/nm."""

    energy: float
    reference_energy: float
    force_rms_error: float
    reference_force_rms: float

    @property
    def energy_error(self) -> float:
        return abs(self.energy - self.reference_energy)

    @property
    def relative_energy_error(self) -> float:
        return self.energy_error / max(abs(self.reference_energy), 1e-300)

    @property
    def relative_force_error(self) -> float:
        return self.force_rms_error / max(self.reference_force_rms, 1e-300)

    def within(self, rel_energy: float, abs_energy: float, rel_force: float) -> bool:
        """Energy within rel_energy relative or abs_energy absolute; force RMS error within rel_force of RMS."""
        energy_ok = self.relative_energy_error <= rel_energy or self.energy_error <= abs_energy
        return energy_ok and self.relative_force_error <= rel_force


def openmm_reference_terms(omm_system, positions: np.ndarray, box: Optional[np.ndarray] = None) -> dict:
    """{term name: (energy kJ/mol, forces (N, 3) kJ/mol/nm)} from OpenMM's Reference platform, double precision."""
    import openmm as mm
    import openmm.unit as u

    omm_system = copy.deepcopy(omm_system)
    names, seen = [], {}
    for i, force in enumerate(omm_system.getForces()):
        force.setForceGroup(i)
        cls = force.__class__.__name__
        seen[cls] = seen.get(cls, 0) + 1
        names.append(cls if seen[cls] == 1 else f"{cls}#{seen[cls]}")
    if box is not None:
        omm_system.setDefaultPeriodicBoxVectors(*[mm.Vec3(*row) for row in np.asarray(box)])
    context = mm.Context(omm_system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    context.setPositions(np.asarray(positions) * u.nanometer)
    out = {}
    for i, name in enumerate(names):
        state = context.getState(getEnergy=True, getForces=True, groups={i})
        out[name] = (state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
                     state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer))
    return out


def jmlsim_terms(system: System, positions: Optional[np.ndarray] = None, dtype=jnp.float64,
                 skin: float = 0.0, state_dtype=None) -> dict:
    """{term name: (energy, forces (N, 3))} evaluated by jmlsim in ``dtype`` (one neighbor list for all terms).

    state_dtype: the dtype positions are kept in (mixed precision: float64 with dtype float32); coordinate-sensitive
    terms (:func:`jmlsim.system.coordinate_sensitive`) then run on positions in it, as a Simulation does."""
    x = jnp.asarray(system.positions if positions is None else positions, dtype)
    if state_dtype is not None and jnp.dtype(state_dtype).itemsize > jnp.dtype(dtype).itemsize:
        jax.config.update("jax_enable_x64", True)
        precise = jnp.asarray(system.positions if positions is None else positions, state_dtype)
    else:
        precise = x
    box = None if system.box is None else jnp.asarray(system.box, dtype)
    nbrs = None
    if system.neighbor_cutoff is not None:
        spec, nbrs = plan(x, system.box, system.neighbor_cutoff, skin)
        if bool(nbrs.overflow):
            spec = spec.regrown(nbrs, system.box)
            nbrs = spec.build(x, box)
        assert not bool(nbrs.overflow)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), system.params)
    out = {}
    for name, term in system.terms.items():
        # box and neighbor list are arguments, not closed-over constants: XLA would fold them at compile time
        def energy(p, pos, bx, nb, term=term):
            return term.energy(p, pos, bx, nb)
        xt = term_positions(term, x, precise)
        e = jax.jit(energy)(params[name], xt, box, nbrs)
        if hasattr(term, "forces"):
            f = jax.jit(lambda p, pos, bx, nb, term=term: term.forces(p, pos, bx, nb))(params[name], xt, box, nbrs)
        else:
            f = -jax.jit(jax.grad(energy, argnums=1))(params[name], xt, box, nbrs)
        # rounded to dtype as a Simulation's force sum is
        e, f = jnp.asarray(e).astype(dtype), jnp.asarray(f).astype(dtype)
        out[name] = (float(e), np.asarray(f, np.float64))
    return out


def compare_with_openmm(omm_system, system: System, positions: Optional[np.ndarray] = None,
                        dtype=jnp.float64) -> dict:
    """{term name: TermComparison} for every term (OpenMM's CMMotionRemover and barostats carry no energy)."""
    x = system.positions if positions is None else positions
    reference = openmm_reference_terms(omm_system, x, system.box)
    ours = jmlsim_terms(system, x, dtype)
    missing = set(ours) - set(reference)
    if missing:
        raise KeyError(f"terms without an OpenMM counterpart: {sorted(missing)}")
    out = {}
    for name, (energy, forces) in ours.items():
        ref_energy, ref_forces = reference[name]
        out[name] = TermComparison(
            energy=energy, reference_energy=ref_energy,
            force_rms_error=float(np.sqrt(np.mean((forces - ref_forces) ** 2))),
            reference_force_rms=float(np.sqrt(np.mean(ref_forces**2))))
    return out
