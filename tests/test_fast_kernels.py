"""The vectorizable atan2 and the dense incidence-matrix differences used by bonded terms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlsim.energy import differences as diff
from jmlsim.energy.fast_math import atan2


@pytest.fixture(scope="module", autouse=True)
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def _points(n=100_000, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=n) * 10 ** rng.uniform(-4, 4, n)
    x = rng.normal(size=n) * 10 ** rng.uniform(-4, 4, n)
    # the axes, the diagonals and the octant borders
    y = np.concatenate([y, [0.0, 1.0, -1.0, 0.0, 1.0, -1.0, 1.0, -1.0, np.tan(np.pi / 8), np.tan(np.pi / 16), 1e-300]])
    x = np.concatenate([x, [1.0, 0.0, 0.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0]])
    return y, x


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-15), (np.float32, 6e-7)])
def test_atan2_matches_numpy(dtype, tolerance):
    y, x = _points()
    y, x = y.astype(dtype), x.astype(dtype)
    ours = np.asarray(jax.jit(atan2)(jnp.asarray(y), jnp.asarray(x)))
    assert ours.dtype == dtype
    reference = np.arctan2(y.astype(np.float64), x.astype(np.float64))
    assert np.max(np.abs(ours.astype(np.float64) - reference)) < tolerance


def test_atan2_gradient_is_analytic():
    y, x = _points(2000, seed=1)
    gy, gx = jax.vmap(jax.grad(atan2, argnums=(0, 1)))(jnp.asarray(y), jnp.asarray(x))
    r2 = x * x + y * y
    np.testing.assert_allclose(np.asarray(gy), x / r2, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(gx), -y / r2, rtol=1e-12)


@pytest.mark.parametrize("n_atoms", [20, diff.DENSE_MAX_ATOMS + 5])
def test_differences_dense_equals_gather(n_atoms):
    rng = np.random.default_rng(2)
    positions = jnp.asarray(rng.normal(size=(n_atoms, 3)) * 3.0)
    plus = rng.integers(0, n_atoms, 40)
    minus = rng.integers(0, n_atoms, 40)
    expected = np.asarray(positions)[plus] - np.asarray(positions)[minus]
    static = diff.differences(positions, plus, minus)
    traced = jax.jit(diff.differences)(positions, jnp.asarray(plus), jnp.asarray(minus))
    # a dense row sums +x, -x and exact zeros: bitwise the plain subtraction
    np.testing.assert_array_equal(np.asarray(static), expected)
    np.testing.assert_array_equal(np.asarray(traced), expected)
    # and the transposed product is the scatter-add of the gradient
    weights = jnp.asarray(rng.normal(size=(40, 3)))
    grad = jax.grad(lambda p: jnp.sum(weights * diff.differences(p, plus, minus)))(positions)
    scatter = np.zeros((n_atoms, 3))
    np.add.at(scatter, plus, np.asarray(weights))
    np.add.at(scatter, minus, -np.asarray(weights))
    np.testing.assert_allclose(np.asarray(grad), scatter, atol=1e-12)


def test_component_helpers():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    ua, ub = diff.component_blocks(jnp.asarray(np.concatenate([a, b])), 2)
    np.testing.assert_allclose(np.stack(diff.cross(ua, ub), axis=-1), np.cross(a, b), atol=1e-14)
    np.testing.assert_allclose(diff.dot(ua, ub), np.sum(a * b, axis=-1), atol=1e-14)


@pytest.mark.parametrize("method, periodic, traced_band", [("nocutoff", False, False), ("nocutoff", False, True),
                                                            ("cutoff", True, False)])
def test_small_system_unique_pair_sum_equals_the_n_by_n_sum(method, periodic, traced_band):
    """The unique-pair path of small systems (incidence-matrix lookups) against the N x N row sums: energy, forces
    and parameter gradients, with a static or a traced exclusion band, open or periodic (reaction field)."""
    import dataclasses

    from jmlsim.energy.nonbonded import Nonbonded, NonbondedParams

    rng = np.random.default_rng(3)
    n = 30
    box = np.eye(3) * 2.5
    x = jnp.asarray(rng.random((n, 3)) * 2.5)
    bonds = np.array([(k, k + 1) for k in range(n - 1)] + [(k, k + 2) for k in range(n - 2)] + [(0, 25)])
    term = Nonbonded.create(method, n, bonds, cutoff=None if method == "nocutoff" else 1.0, periodic=periodic)
    params = NonbondedParams(charge=jnp.asarray(rng.normal(0, 0.4, n)), sigma=jnp.asarray(rng.uniform(0.25, 0.35, n)),
                             epsilon=jnp.asarray(rng.uniform(0.1, 0.9, n)),
                             exception_charge_product=jnp.zeros(len(bonds)), exception_sigma=jnp.ones(len(bonds)),
                             exception_epsilon=jnp.zeros(len(bonds)))
    b = None if not periodic else jnp.asarray(box)

    def small(p, y, band):
        t = dataclasses.replace(term, band=band) if traced_band else term
        return t.direct_energy(p, y, b), t.direct_forces(p, y, b)

    def full(p, y):  # the N x N dense row sums
        rows = term._pair_rows(p, y, b, None, None)
        return 0.5 * jnp.sum(rows[0]), rows[1]

    band = jnp.asarray(term.band) if traced_band else None
    e_small, f_small = jax.jit(small)(params, x, band)
    e_full, f_full = jax.jit(full)(params, x)
    assert abs(float(e_small) - float(e_full)) < 1e-10 * abs(float(e_full))
    np.testing.assert_allclose(np.asarray(f_small), np.asarray(f_full), rtol=0, atol=1e-9 * np.abs(f_full).max())
    np.testing.assert_allclose(np.asarray(f_small), -np.asarray(jax.grad(lambda y: small(params, y, band)[0])(x)),
                               rtol=0, atol=1e-9 * np.abs(f_full).max())
    g_small = jax.grad(lambda p: small(p, x, band)[0])(params)
    g_full = jax.grad(lambda p: full(p, x)[0])(params)
    for name in ("charge", "sigma", "epsilon"):
        np.testing.assert_allclose(np.asarray(getattr(g_small, name)), np.asarray(getattr(g_full, name)),
                                   rtol=1e-9, atol=1e-12, err_msg=name)
    assert e_full != 0.0 and np.abs(f_full).max() > 1.0


@pytest.mark.parametrize("method", ["nocutoff", "pme"])
def test_exception_forces_are_minus_the_gradient_of_their_energy(method):
    """The analytic exception-pair forces (LJ + Coulomb with each exception's parameters, and for PME the removal
    of the reciprocal sum's erf term) against autodiff of the exception energy, and the energy against a loop."""
    import math

    from jmlsim.energy.nonbonded import ONE_4PI_EPS0, Nonbonded, NonbondedParams
    from jmlsim.energy.pme import PMEReciprocal

    rng = np.random.default_rng(5)
    n = 40
    x = jnp.asarray(rng.random((n, 3)) * 2.0)
    pairs = np.array([(k, k + 3) for k in range(0, n - 3, 2)])
    e = len(pairs)
    kwargs = dict(cutoff=0.9, periodic=True, pme=PMEReciprocal(3.2, (16, 16, 16))) if method == "pme" else {}
    term = Nonbonded.create(method, n, pairs, **kwargs)
    params = NonbondedParams(charge=jnp.asarray(rng.normal(0, 0.5, n)), sigma=jnp.full(n, 0.3),
                             epsilon=jnp.full(n, 0.5), exception_charge_product=jnp.asarray(rng.normal(0, 0.2, e)),
                             exception_sigma=jnp.asarray(rng.uniform(0.2, 0.35, e)),
                             exception_epsilon=jnp.asarray(rng.uniform(0.0, 0.8, e)))
    energy, forces = jax.jit(term._exception_terms)(params, x)
    autodiff = -jax.grad(lambda y: term._exception_terms(params, y, with_forces=False)[0])(x)
    np.testing.assert_allclose(np.asarray(forces), np.asarray(autodiff), rtol=0, atol=1e-10 * np.abs(autodiff).max())
    expected = 0.0
    q = np.asarray(params.charge)
    for k, (i, j) in enumerate(pairs):
        r = float(np.linalg.norm(np.asarray(x[i] - x[j])))
        s6 = (float(params.exception_sigma[k]) / r) ** 6
        expected += 4 * float(params.exception_epsilon[k]) * (s6 * s6 - s6)
        expected += ONE_4PI_EPS0 * float(params.exception_charge_product[k]) / r
        if method == "pme":
            expected -= ONE_4PI_EPS0 * q[i] * q[j] * math.erf(3.2 * r) / r
    assert float(energy) == pytest.approx(expected, rel=1e-12)
    assert np.abs(np.asarray(forces)).max() > 1.0
