"""LJ energy and forces: forces equal -grad(E) and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlsim.energy.lennard_jones import LennardJones, LennardJonesParams
from jmlsim.neighbors import plan
from jmlsim.systems.lennard_jones_fluid import lennard_jones_fluid


def setup(switch):
    system = lennard_jones_fluid(300, 0.8, cutoff=2.5, switch_distance=2.0 if switch else None)
    rng = np.random.default_rng(0)
    x = jnp.asarray(system.positions + rng.normal(scale=0.05, size=system.positions.shape))
    box = jnp.asarray(system.box)
    spec, nbrs = plan(x, system.box, 2.5, 0.3)
    params = LennardJonesParams(jnp.float64(1.0), jnp.float64(1.0))
    return system.terms["lennard_jones"], params, x, box, nbrs


@pytest.mark.parametrize("switch", [False, True], ids=["shifted", "switched"])
def test_forces_equal_minus_gradient(switch):
    term, params, x, box, nbrs = setup(switch)
    f = term.forces(params, x, box, nbrs)
    g = jax.grad(term.energy, argnums=1)(params, x, box, nbrs)
    np.testing.assert_allclose(f, -g, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("switch", [False, True], ids=["shifted", "switched"])
def test_forces_match_finite_differences(switch):
    term, params, x, box, nbrs = setup(switch)
    f = np.asarray(term.forces(params, x, box, nbrs))
    energy = jax.jit(lambda y: term.energy(params, y, box, nbrs))
    h = 1e-5
    rng = np.random.default_rng(1)
    for atom in rng.choice(x.shape[0], 8, replace=False):
        for axis in range(3):
            e = np.zeros(x.shape)
            e[atom, axis] = h
            fd = -(float(energy(x + e)) - float(energy(x - e))) / (2 * h)
            assert fd == pytest.approx(f[atom, axis], rel=1e-6, abs=1e-6)


def test_pair_energy_values():
    """Two atoms: minimum -eps at 2^(1/6) sigma (plus the shift), zero beyond the cutoff."""
    term = LennardJones(cutoff=2.5, shift=False)
    params = LennardJonesParams(jnp.float64(1.0), jnp.float64(2.0))
    box = jnp.diag(jnp.array([10.0, 10.0, 10.0]))
    for r, want in [(2 ** (1 / 6), -2.0), (1.0, 0.0), (2.6, 0.0)]:
        x = jnp.array([[1.0, 1.0, 1.0], [1.0 + r, 1.0, 1.0]])
        _, nbrs = plan(x, np.diag([10.0] * 3), 2.5, 0.3)
        assert float(term.energy(params, x, box, nbrs)) == pytest.approx(want, abs=1e-12)


def test_parameter_gradient_is_finite_and_matches_fd():
    """Parameters are differentiable leaves (what force-field fitting needs)."""
    term, params, x, box, nbrs = setup(False)
    grad = jax.grad(term.energy)(params, x, box, nbrs)
    h = 1e-6
    up = term.energy(params._replace(epsilon=params.epsilon + h), x, box, nbrs)
    down = term.energy(params._replace(epsilon=params.epsilon - h), x, box, nbrs)
    assert float(grad.epsilon) == pytest.approx(float((up - down) / (2 * h)), rel=1e-6)
