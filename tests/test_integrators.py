"""Integrators: NVE energy conservation, thermostat temperatures within statistical error."""

import numpy as np
import pytest

from jmlsim.integrators import LangevinBAOAB, NoseHooverChain, VelocityVerlet
from jmlsim.simulation import Simulation
from jmlsim.systems.lennard_jones_fluid import lennard_jones_fluid


class Collect:
    def __init__(self):
        self.frames = []

    def report(self, frame):
        self.frames.append(frame)


def block_mean_and_error(x, n_blocks=10):
    """Mean and standard error from block averages (handles time correlation)."""
    blocks = np.array_split(np.asarray(x), n_blocks)
    means = np.array([b.mean() for b in blocks])
    return float(np.mean(x)), float(means.std(ddof=1) / np.sqrt(n_blocks))


def test_nve_energy_drift_over_10k_steps():
    """Velocity Verlet, smooth (switched) LJ, N = 256, dt = 0.004 tau, double precision.

    Measured: max |E(t) - E(0)| / N about 1e-4 epsilon and no trend (drift < 1e-5 eps per atom per 1000 tau);
    the bounds below are a few times that.
    """
    system = lennard_jones_fluid(256, 0.8, cutoff=2.5, switch_distance=2.0)
    sim = Simulation(system, VelocityVerlet(0.004), kT=1.0, precision="double", seed=1)
    sim.run(1000, 100, progress=False)  # let the lattice melt
    out = Collect()
    sim.run(10_000, 50, [out], progress=False)
    total = np.array([f.potential + f.kinetic for f in out.frames]) / 256
    fluctuation = np.max(np.abs(total - total[0]))
    slope = np.polyfit(np.arange(len(total)) * 50 * 0.004, total, 1)[0]  # eps per atom per tau
    print(f"NVE: max |dE|/N = {fluctuation:.2e} eps, drift = {slope:.2e} eps/atom/tau over 10^4 steps")
    assert fluctuation < 2e-3
    assert abs(slope) < 1e-5
    assert np.mean([f.temperature for f in out.frames]) > 0.3  # it really moved


@pytest.mark.parametrize("name", ["langevin", pytest.param("nose-hoover", marks=pytest.mark.slow)])
def test_thermostat_holds_target_temperature(name):
    target = 1.2
    system = lennard_jones_fluid(256, 0.8, cutoff=2.5, switch_distance=2.0)
    dt = 0.005
    integrator = LangevinBAOAB(dt, target, 2.0) if name == "langevin" else NoseHooverChain(dt, target, tau=0.25)
    sim = Simulation(system, integrator, kT=target, precision="double", seed=3)
    sim.run(2000, 100, progress=False)
    out = Collect()
    sim.run(20_000, 20, [out], progress=False)
    temps = np.array([f.temperature for f in out.frames])
    mean, err = block_mean_and_error(temps)
    print(f"{name}: <T> = {mean:.4f} +/- {err:.4f} (target {target})")
    assert abs(mean - target) < max(4 * err, 0.005), (mean, err)
    # The canonical ensemble also fixes the size of the fluctuations: var(T)/T^2 = 2/dof (kinetic part).
    rel = temps.std() / target
    assert rel == pytest.approx(np.sqrt(2 / sim.dof), rel=0.25)


def test_nose_hoover_conserved_quantity():
    system = lennard_jones_fluid(256, 0.8, cutoff=2.5, switch_distance=2.0)
    nhc = NoseHooverChain(0.004, 1.0, tau=0.2)
    sim = Simulation(system, nhc, kT=1.0, precision="double", seed=5)
    sim.run(500, 100, progress=False)
    values = []
    for _ in range(20):
        potential = sim.advance(100)
        values.append(float(nhc.conserved_energy(sim.state, potential)))
    values = np.array(values) / 256
    assert np.max(np.abs(values - values[0])) < 2e-3


def test_langevin_closing_projection_deferred_to_the_end_of_a_chunk():
    """Skipping the closing RATTLE projection inside a chunk (the run loop does) and projecting once at its end gives
    the trajectory of projecting every step: the projection is linear, and the next step projects again."""
    import os

    import jax

    from jmlsim import units
    from jmlsim.io.openmm_import import load_amber

    ala = os.path.join(os.path.dirname(__file__), "data", "amber", "alanine-dipeptide-gbsa", "alanine-dipeptide")
    system = load_amber(ala + ".prmtop", ala + ".crd", nonbonded="nocutoff", constraints="hbonds")
    kT = units.kT_kj_per_mol(300.0)
    sim = Simulation(system, LangevinBAOAB(0.002, kT, 1.0), kT=kT, precision="double", seed=3)
    integrator, force_fn = sim.integrator, sim._force_fn(sim.params, None)

    def run(project_end):
        body = lambda st, _: (integrator.step(st, force_fn, None, project_end=project_end)[0], None)
        return jax.jit(lambda st: jax.lax.scan(body, st, None, length=40)[0])(sim.state)

    every, deferred = run(True), run(False)
    cons = integrator.constraints

    def along_constraints(st):  # largest velocity component along a constrained bond, nm/ps
        a, b = cons.pairs[:, 0], cons.pairs[:, 1]
        d = np.asarray(st.positions)[a] - np.asarray(st.positions)[b]
        dv = np.asarray(st.velocities)[a] - np.asarray(st.velocities)[b]
        return np.max(np.abs(np.sum(d * dv, -1) / np.linalg.norm(d, axis=-1)))

    assert along_constraints(deferred) > 1e-3  # unprojected at the end of the chunk ...
    finished = integrator.finish(deferred)
    assert along_constraints(finished) < 1e-6 and along_constraints(every) < 1e-6  # ... until finish()
    np.testing.assert_allclose(np.asarray(finished.positions), np.asarray(every.positions), atol=1e-9)
    np.testing.assert_allclose(np.asarray(finished.velocities), np.asarray(every.velocities), atol=1e-6)
