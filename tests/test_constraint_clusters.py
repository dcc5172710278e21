"""The exact block solve of the RATTLE velocity projection (jmlsim.constraint_clusters) against a dense numpy
projection v - M^-1 B^T (B M^-1 B^T)^-1 B v, on one system and on a replica-minor batch. Double precision."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from constraint_projection import dense_projection

from jmlsim.constraint_clusters import MAX_CLUSTER, cluster_blocks
from jmlsim.constraints import Constraints

HERE = os.path.dirname(__file__)
ALA = os.path.join(HERE, "data", "amber", "alanine-dipeptide-gbsa", "alanine-dipeptide")


# centre atom 0 appears as the first atom of some pairs and the second of others; 5-6 and 7-8 are lone bonds
STAR_PAIRS = np.array([[0, 1], [2, 0], [0, 3], [4, 0], [5, 6], [8, 7], [9, 10], [9, 11]], np.int32)


def test_clusters_are_found_and_large_ones_refused():
    blocks = cluster_blocks(STAR_PAIRS)
    assert sorted(blocks.blocks) == [1, 2, 4]
    assert sorted(blocks.blocks[4][0].tolist()) == [0, 1, 2, 3]
    chain = np.array([[i, i + 1] for i in range(MAX_CLUSTER + 1)], np.int32)  # 5 bonds in a row: one cluster
    assert cluster_blocks(chain) is None
    assert cluster_blocks(chain[:MAX_CLUSTER]) is not None
    assert cluster_blocks(np.zeros((0, 2), np.int32)) is None


@pytest.mark.parametrize("seed", [0, 1])
def test_block_solve_equals_the_dense_projection(seed):
    rng = np.random.default_rng(seed)
    n = 12
    x = rng.normal(size=(n, 3))
    v = rng.normal(size=(n, 3))
    masses = rng.uniform(1.0, 16.0, n)
    lengths = np.linalg.norm(x[STAR_PAIRS[:, 0]] - x[STAR_PAIRS[:, 1]], axis=-1)
    constraints = Constraints(pairs=STAR_PAIRS, distances=lengths, waters=np.zeros((0, 3), np.int32))
    assert constraints._blocks is not None
    expected = dense_projection(STAR_PAIRS, x, v, masses)
    got = np.asarray(jax.jit(constraints.velocities)(jnp.asarray(x), jnp.asarray(v), jnp.asarray(masses)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # the same for a replica batch, replica-minor (each replica its own geometry and masses)
    xs = x[None] + 0.05 * rng.normal(size=(5, n, 3))
    vs = rng.normal(size=(5, n, 3))
    ms = rng.uniform(1.0, 16.0, (5, n))
    got = np.asarray(jax.jit(constraints.velocities)(jnp.asarray(xs), jnp.asarray(vs), jnp.asarray(ms)))
    for r in range(5):
        np.testing.assert_allclose(got[r], dense_projection(STAR_PAIRS, xs[r], vs[r], ms[r]), rtol=0, atol=1e-12)


def test_alanine_dipeptide_hbonds_take_the_block_solve():
    from jmlsim.io.openmm_import import load_amber

    system = load_amber(ALA + ".prmtop", ALA + ".crd", nonbonded="nocutoff", constraints="hbonds")
    constraints = system.constraints
    assert constraints._blocks is not None  # methyl groups: clusters of three
    x = np.asarray(system.positions)
    v = np.random.default_rng(2).normal(size=x.shape)
    got = np.asarray(constraints.velocities(jnp.asarray(x), jnp.asarray(v), jnp.asarray(system.masses)))
    np.testing.assert_allclose(got, dense_projection(constraints.pairs, x, v, np.asarray(system.masses)), atol=1e-11)
