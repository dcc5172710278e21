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
