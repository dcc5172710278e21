"""Periodic displacements and neighbor lists against brute force."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlsim import space
from jmlsim.neighbors import plan


def brute_force_pairs(positions, box, cutoff):
    """All (i, j) within cutoff over explicit periodic images (27 shifts), i != j."""
    shifts = np.array([np.array(s) @ box for s in itertools.product((-1, 0, 1), repeat=3)])
    d = positions[:, None, None, :] - positions[None, :, None, :] + shifts[None, None]
    dist = np.min(np.linalg.norm(d, axis=-1), axis=-1)
    np.fill_diagonal(dist, np.inf)
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(dist < cutoff))}


def list_pairs(nbrs, n):
    idx = np.asarray(nbrs.idx)
    return {(i, int(j)) for i in range(n) for j in idx[i] if j < n}


TRICLINIC = np.array([[4.0, 0.0, 0.0], [1.3, 3.8, 0.0], [-1.1, 1.2, 4.2]])


@pytest.mark.parametrize("box", [np.diag([4.0, 4.5, 5.0]), TRICLINIC], ids=["orthorhombic", "triclinic"])
def test_minimum_image_matches_brute_force(box):
    rng = np.random.default_rng(0)
    dr = rng.uniform(-9, 9, size=(200, 3))
    got = np.asarray(space.minimum_image(jnp.asarray(dr), jnp.asarray(box), space.is_triclinic(box)))
    shifts = np.array([np.array(s) @ box for s in itertools.product(range(-3, 4), repeat=3)])
    best = np.min(np.linalg.norm(dr[:, None, :] + shifts[None], axis=-1), axis=1)
    # OpenMM's reduced-form rule is exact for distances below half the smallest width.
    short = best < space.widths(box).min() / 2
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1)[short], best[short], rtol=1e-10)
    # and always a lattice translate of the input
    frac = np.linalg.solve(box.T, (got - dr).T).T
    np.testing.assert_allclose(frac, np.round(frac), atol=1e-9)


@pytest.mark.parametrize("box", [np.diag([4.0, 4.5, 5.0]), TRICLINIC], ids=["orthorhombic", "triclinic"])
def test_minimum_image_components_equal_minimum_image(box):
    dr = np.random.default_rng(1).uniform(-9, 9, size=(7, 11, 3))
    triclinic = space.is_triclinic(box)
    whole = np.asarray(space.minimum_image(jnp.asarray(dr), jnp.asarray(box), triclinic))
    parts = space.minimum_image_components(tuple(jnp.asarray(dr[..., a]) for a in range(3)), jnp.asarray(box),
                                           triclinic)
    np.testing.assert_array_equal(np.stack([np.asarray(p) for p in parts], -1), whole)


@pytest.mark.parametrize("k", [1, 5, 40, 200])
def test_first_set_bits_is_the_ordered_compaction(k):
    from jmlsim.neighbors import _first_set_bits, _pack_bits

    rng = np.random.default_rng(2)
    mask = rng.random((9, 96)) < np.array([0.0, 0.02, 0.1, 0.3, 0.5, 0.9, 1.0, 0.05, 0.2])[:, None]
    got = np.asarray(jax.jit(_first_set_bits, static_argnums=1)(_pack_bits(jnp.asarray(mask)), k))
    for row, bits in zip(got, mask):
        expected = np.flatnonzero(bits)[:k]
        np.testing.assert_array_equal(row[:len(expected)], expected)
        assert np.all(row[len(expected):] == 96)  # the sentinel where the row has fewer than k bits


def test_wrap_is_a_lattice_translate_into_the_cell():
    rng = np.random.default_rng(1)
    x = rng.uniform(-20, 20, size=(50, 3))
    w = np.asarray(space.wrap(jnp.asarray(x), jnp.asarray(TRICLINIC)))
    frac = np.linalg.solve(TRICLINIC.T, w.T).T
    assert np.all(frac >= -1e-12) and np.all(frac < 1 + 1e-12)
    shift = np.linalg.solve(TRICLINIC.T, (w - x).T).T
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-9)


@pytest.mark.parametrize("n,box", [(400, np.diag([7.0, 7.5, 8.0])), (400, TRICLINIC * 1.9), (120, np.diag([5.0] * 3))],
                         ids=["cells-orthorhombic", "cells-triclinic", "all-pairs"])
def test_neighbor_list_equals_brute_force(n, box):
    rng = np.random.default_rng(2)
    frac = rng.uniform(0, 1, size=(n, 3))
    positions = frac @ box
    cutoff, skin = 1.6, 0.3
    spec, nbrs = plan(positions, box, cutoff, skin)
    assert not bool(nbrs.overflow)
    if n == 400:
        assert spec.cells is not None, "expected the cell-list path"
    assert list_pairs(nbrs, n) == brute_force_pairs(positions, box, cutoff + skin)


def test_open_boundaries_use_all_pairs():
    rng = np.random.default_rng(3)
    positions = rng.normal(size=(60, 3)) * 2
    spec, nbrs = plan(positions, None, 1.5, 0.2)
    got = list_pairs(nbrs, 60)
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    want = {(i, j) for i in range(60) for j in range(60) if i != j and d[i, j] < 1.7}
    assert got == want


def test_overflow_flag_is_raised_and_regrow_fixes_it():
    rng = np.random.default_rng(4)
    box = np.diag([7.0] * 3)
    positions = rng.uniform(0, 7, size=(400, 3))
    spec, nbrs = plan(positions, box, 1.6, 0.3, capacity=4)
    assert bool(nbrs.overflow)
    assert int(nbrs.max_neighbors) > 4
    bigger = spec.regrown(nbrs, box)
    assert bigger.capacity >= int(nbrs.max_neighbors)
    rebuilt = jax.jit(bigger.build)(jnp.asarray(positions), jnp.asarray(box))
    assert not bool(rebuilt.overflow)
    assert list_pairs(rebuilt, 400) == brute_force_pairs(positions, box, 1.9)


def test_cell_table_overflow_is_flagged():
    """Many atoms piled into one cell overflow the cell table, never silently."""
    rng = np.random.default_rng(5)
    box = np.diag([10.0] * 3)
    positions = rng.uniform(0, 10, size=(400, 3))
    spec, nbrs = plan(positions, box, 1.6, 0.3)
    crowded = positions.copy()
    crowded[:200] = rng.uniform(0.1, 0.4, size=(200, 3))
    rebuilt = jax.jit(spec.build)(jnp.asarray(crowded), jnp.asarray(box))
    assert bool(rebuilt.overflow)
    assert int(rebuilt.max_cell_occupancy) > spec.cell_capacity
