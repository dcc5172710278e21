"""Replica-minor batched forces (jmlsim.energy.replica_batch, System.batched_forces) equal vmapped per-replica
forces, which are -grad(energy) (itself checked against OpenMM elsewhere). Double precision (conftest)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlsim.energy.bonded import HarmonicAngle, HarmonicAngleParams, PeriodicTorsion, PeriodicTorsionParams
from jmlsim.energy.replica_batch import from_components, to_components
from jmlsim.io.openmm_import import load_amber

HERE = os.path.dirname(__file__)
ALA = os.path.join(HERE, "data", "amber", "alanine-dipeptide-gbsa", "alanine-dipeptide")
WATER = os.path.join(HERE, "data", "amber", "waterbox", "watbox216")


def _replicas(system, n_replicas=5, spread=0.02, seed=0):
    """(R, N, 3) perturbed copies of the system's positions, nm."""
    rng = np.random.default_rng(seed)
    x = np.asarray(system.positions)[None] + spread * rng.normal(size=(n_replicas, system.n_atoms, 3))
    return jnp.asarray(x)


def _minus_gradient(term, params, x):
    return jax.jit(jax.vmap(lambda y: -jax.grad(lambda z: term.energy(params, z, None, None))(y)))(x)


@pytest.mark.parametrize("nonbonded,solvent", [("nocutoff", None), ("cutoff", None), ("nocutoff", "obc2"),
                                               ("cutoff", "obc2")])
def test_each_term_batched_forces_are_minus_the_gradient(nonbonded, solvent):
    system = load_amber(ALA + ".prmtop", ALA + ".crd", nonbonded=nonbonded, constraints="hbonds",
                        implicit_solvent=solvent)
    x = _replicas(system)
    checked = []
    for name, term in system.terms.items():
        if not hasattr(term, "batched_forces"):
            continue
        out = jax.jit(lambda p, y, term=term: term.batched_forces(p, to_components(y), False))(system.params[name], x)
        assert out is not None, name
        expected = _minus_gradient(term, system.params[name], x)
        scale = float(jnp.max(jnp.abs(expected)))
        np.testing.assert_allclose(np.asarray(from_components(out)), np.asarray(expected), atol=1e-11 * scale,
                                   err_msg=name)
        checked.append(name)
    assert set(checked) >= {"HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce"}
    assert ("GBSAOBCForce" in checked) == (solvent is not None)


@pytest.mark.parametrize("solvent", [None, "obc2"])
@pytest.mark.parametrize("params_batched", [False, True])
def test_system_batched_forces_equal_vmapped_forces(params_batched, solvent):
    system = load_amber(ALA + ".prmtop", ALA + ".crd", nonbonded="nocutoff", constraints="hbonds",
                        implicit_solvent=solvent)
    n_replicas = 4
    x = _replicas(system, n_replicas, seed=1)
    params = system.params
    if params_batched:  # each replica its own force field: every parameter scaled differently
        params = jax.tree_util.tree_map(
            lambda a: jnp.stack([jnp.asarray(a) * (1.0 + 0.05 * r) for r in range(n_replicas)]), params)
    expected = jax.jit(jax.vmap(system.forces, (0 if params_batched else None, 0, None, None)))(params, x, None, None)
    got = jax.jit(lambda p, y: system.batched_forces(p, y, None, None, params_batched))(params, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-10 * float(jnp.max(jnp.abs(expected))))
    # each replica alone gives its own row
    one = jax.jit(system.forces)(jax.tree_util.tree_map(lambda a: a[2], params) if params_batched else params, x[2],
                                 None, None)
    np.testing.assert_allclose(np.asarray(got[2]), np.asarray(one), atol=1e-10 * float(jnp.max(jnp.abs(one))))


def test_periodic_systems_fall_back_to_vmap():
    """The 216-water box (periodic, 648 atoms) takes no replica-minor path; the result is vmap's."""
    system = load_amber(WATER + ".prmtop", WATER + ".crd", nonbonded="cutoff", constraints="none")
    x = _replicas(system, 2, spread=0.002)
    box = jnp.broadcast_to(jnp.asarray(system.box), (2, 3, 3))
    nonbonded = system.terms["NonbondedForce"]
    assert nonbonded.batched_forces(system.params["NonbondedForce"], to_components(x), False, box) is None
    got = jax.jit(lambda y, b: system.batched_forces(system.params, y, b, None))(x, box)
    expected = jax.jit(jax.vmap(lambda y, b: system.forces(system.params, y, b, None)))(x, box)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_finite_differences_of_the_batched_torsion_and_angle():
    """Independent of the energies' autodiff: central differences of the energy along random directions."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(3, 6, 3)))
    torsion = PeriodicTorsion(atoms=np.array([[0, 1, 2, 3], [1, 2, 3, 4], [5, 1, 2, 3]]),
                              periodicity=np.array([1, 2, 3]))
    torsion_params = PeriodicTorsionParams(k=jnp.array([2.0, 5.0, 1.5]), phase=jnp.array([0.3, 3.1, -1.0]))
    angle = HarmonicAngle(atoms=np.array([[0, 1, 2], [1, 2, 3], [3, 4, 5]]))
    angle_params = HarmonicAngleParams(k=jnp.array([300.0, 400.0, 250.0]), angle=jnp.array([1.9, 2.0, 1.8]))
    for term, params in [(torsion, torsion_params), (angle, angle_params)]:
        forces = from_components(term.batched_forces(params, to_components(x), False))
        direction = jnp.asarray(rng.normal(size=x.shape))
        h = 1e-5
        energy = jax.jit(lambda y, term=term, params=params: term.energy(params, y, None, None))
        for r in range(x.shape[0]):
            e = lambda y: float(energy(y))
            numeric = (e(x[r] + h * direction[r]) - e(x[r] - h * direction[r])) / (2 * h)
            assert abs(numeric + float(jnp.sum(forces[r] * direction[r]))) < 1e-6 * (1 + abs(numeric))


def test_empty_terms_give_zero_forces():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 4, 3)))
    torsion = PeriodicTorsion(atoms=np.zeros((0, 4), np.int32), periodicity=np.zeros(0, np.int32))
    out = from_components(torsion.batched_forces(PeriodicTorsionParams(k=jnp.zeros(0), phase=jnp.zeros(0)),
                                                 to_components(x), False))
    assert out.shape == x.shape and float(jnp.max(jnp.abs(out))) == 0.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_replica_minor_shake_and_rattle_equal_each_replica_alone(dtype):
    """SHAKE/RATTLE of a replica batch (jmlsim.replica_constraints) against the one-system solver vmapped:
    positions, iteration counts (each replica stops on its own), velocities, and the implicit gradient."""
    from jmlsim import replica_constraints

    system = load_amber(ALA + ".prmtop", ALA + ".crd", nonbonded="nocutoff", constraints="hbonds")
    constraints = system.constraints
    masses = jnp.asarray(system.masses, dtype)
    rng = np.random.default_rng(6)
    start = jnp.broadcast_to(jnp.asarray(system.positions, dtype), (6, system.n_atoms, 3))
    reference = jax.jit(jax.vmap(lambda x: constraints._positions_one(x, x, masses)[0]))(start)
    # replicas displaced by different amounts need different iteration counts
    spread = jnp.asarray([1e-4, 1e-3, 3e-3, 1e-2, 3e-3, 1e-3], dtype)[:, None, None]
    new = reference + spread * jnp.asarray(rng.normal(size=reference.shape), dtype)
    assert replica_constraints.applies(constraints, new)
    got, iterations = jax.jit(lambda n, r: constraints.positions_with_info(n, r, masses))(new, reference)
    alone, alone_iterations = jax.jit(jax.vmap(lambda n, r: constraints._positions_one(n, r, masses)))(new, reference)
    atol = 1e-15 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(np.asarray(got), np.asarray(alone), atol=atol)
    np.testing.assert_array_equal(np.asarray(iterations), np.asarray(alone_iterations))
    assert len(set(np.asarray(iterations).tolist())) > 1
    assert float(jnp.max(jnp.abs(constraints.errors(got)))) < (1e-7 if dtype == np.float64 else 1e-6)

    velocities = jnp.asarray(rng.normal(size=new.shape), dtype)
    projected = jax.jit(lambda x, v: constraints.velocities(x, v, masses))(got, velocities)
    projected_alone = jax.jit(jax.vmap(lambda x, v: constraints._velocities_one(x, v, masses)))(got, velocities)
    np.testing.assert_allclose(np.asarray(projected), np.asarray(projected_alone), atol=1e-13 if dtype == np.float64
                               else 3e-6)
    if dtype == np.float64:
        weights = jnp.asarray(rng.normal(size=new.shape))
        gradient = jax.jit(jax.grad(lambda n: jnp.sum(weights * constraints.positions(n, reference, masses))))(new)
        gradient_alone = jax.jit(jax.grad(lambda n: jnp.sum(weights * jax.vmap(
            lambda a, b: constraints._positions_one(a, b, masses)[0])(n, reference))))(new)
        np.testing.assert_allclose(np.asarray(gradient), np.asarray(gradient_alone), atol=1e-10)
