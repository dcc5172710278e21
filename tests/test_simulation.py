"""Run loop: overflow regrowth redoes the chunk (single and batched); blow-ups name the step."""

import jax.numpy as jnp
import numpy as np
import pytest

from jmlsim.errors import SimulationError
from jmlsim.integrators import LangevinBAOAB, VelocityVerlet
from jmlsim.neighbors import plan
from jmlsim.simulation import Simulation
from jmlsim.systems.lennard_jones_fluid import lennard_jones_fluid


def make(capacity=None, replicas=None):
    system = lennard_jones_fluid(500, 0.8)
    return Simulation(system, LangevinBAOAB(0.005, 1.0, 1.0), kT=1.0, precision="double", seed=7, skin=0.3,
                      replicas=replicas, neighbor_capacity=capacity)


def tight_capacity():
    """The start lattice's exact neighbor count: fits at step 0, overflows once the lattice melts."""
    system = lennard_jones_fluid(500, 0.8)
    _, nbrs = plan(system.positions, system.box, 2.5, 0.3)
    return int(nbrs.max_neighbors)


@pytest.mark.parametrize("replicas", [None, pytest.param(3, marks=pytest.mark.slow)], ids=["single", "batched"])
def test_overflow_regrows_and_reproduces_the_ample_run(replicas):
    capacity = tight_capacity()
    tight, ample = make(capacity, replicas), make(None, replicas)
    assert tight.spec.capacity == capacity < ample.spec.capacity
    for _ in range(4):
        tight.advance(100)
        ample.advance(100)
    assert tight.regrowths >= 1, "the test start must overflow"
    assert not bool(np.any(np.asarray(tight.nbrs.overflow)))
    np.testing.assert_allclose(np.asarray(tight.state.positions), np.asarray(ample.state.positions), atol=1e-8)


def test_blow_up_names_the_step():
    system = lennard_jones_fluid(256, 0.8)
    sim = Simulation(system, VelocityVerlet(0.005), kT=1.0, precision="double")
    sim.run(100, 100, progress=False)
    x = np.asarray(sim.state.positions).copy()
    x[1] = x[0] + 1e-4  # overlapping atoms: forces overflow to inf
    sim.state = sim.state._replace(positions=jnp.asarray(x))
    with pytest.raises(SimulationError, match=r"at step 10[1-9]"):
        sim.advance(50)


def test_replicas_are_independent_streams_of_the_same_system():
    sim = make(None, 2)
    sim.advance(50)
    x = np.asarray(sim.state.positions)
    assert x.shape == (2, 500, 3)
    assert not np.allclose(x[0], x[1])
