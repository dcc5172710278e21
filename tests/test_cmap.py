"""CMAP torsion-torsion term vs OpenMM's CMAPTorsionForce (Reference platform, double precision).

System: the protein of OpenMM's villin test.pdb (water and ions removed), parameterized with CHARMM36
(8 maps) and Amber ff19SB (16 maps), 24 x 24 grids, 33 torsion pairs.
"""

import copy
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
from openmm import app, unit  # noqa: E402

from jmlsim.energy.cmap import CMAPParams, CMAPTorsion, cmap_from_openmm  # noqa: E402

KJ = unit.kilojoule_per_mole
FORCE_UNIT = unit.kilojoule_per_mole / unit.nanometer
FORCE_FIELDS = ["charmm36.xml", "amber19-all.xml"]


_SYSTEMS = {}


def _system(topology, force_field):
    """A fresh copy of the system (CHARMM36's createSystem takes seconds, so build it once)."""
    if force_field not in _SYSTEMS:
        _SYSTEMS[force_field] = app.ForceField(force_field).createSystem(topology, nonbondedMethod=app.NoCutoff)
    return copy.deepcopy(_SYSTEMS[force_field])


_JITTED = {}


def _energy_and_forces(term, params, positions):
    """(energy, forces) in kJ/mol and kJ/mol/nm; one compiled function per term (and input dtype)."""
    if id(term) not in _JITTED:
        _JITTED[id(term)] = (term, jax.jit(jax.value_and_grad(term.energy, argnums=1)))
    e, g = _JITTED[id(term)][1](params, jnp.asarray(positions), None, None)
    return float(e), -np.asarray(g)


@pytest.fixture(scope="module")
def protein():
    """Topology and positions (N, 3) nm of villin without water and ions."""
    pdb = app.PDBFile(os.path.join(os.path.dirname(app.__file__), "data", "test.pdb"))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.deleteWater()
    modeller.delete([r for r in modeller.topology.residues() if "CA" not in {a.name for a in r.atoms()}])
    return modeller.topology, np.array(modeller.positions.value_in_unit(unit.nanometer))


class Reference:
    """An OpenMM Reference context evaluating only the CMAPTorsionForce of a system."""

    def __init__(self, system):
        self.force = None
        for i, f in enumerate(system.getForces()):
            f.setForceGroup(i)
            if isinstance(f, openmm.CMAPTorsionForce):
                self.force, self.group = f, i
        assert self.force is not None and self.force.getNumTorsions() > 0
        self.context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                                      openmm.Platform.getPlatformByName("Reference"))

    def __call__(self, positions):
        self.context.setPositions(positions)
        state = self.context.getState(getEnergy=True, getForces=True, groups={self.group})
        return (state.getPotentialEnergy().value_in_unit(KJ),
                state.getForces(asNumpy=True).value_in_unit(FORCE_UNIT))


@pytest.fixture(scope="module", params=FORCE_FIELDS)
def setup(request, protein):
    topology, positions = protein
    system = _system(topology, request.param)
    ref = Reference(system)
    term, params = cmap_from_openmm(ref.force)
    return ref, term, params, positions


def _perturbed(positions, scale, seed):
    return positions + np.random.default_rng(seed).normal(scale=scale, size=positions.shape)


def _assert_matches(ref, term, params, positions):
    e_ref, f_ref = ref(positions)
    e, f = _energy_and_forces(term, params, positions)
    assert abs(e - e_ref) <= max(1e-5 * abs(e_ref), 1e-3), (e, e_ref)
    rms_err = np.sqrt(np.mean((f - f_ref) ** 2))
    rms_ref = np.sqrt(np.mean(f_ref**2))
    assert rms_err < 1e-4 * rms_ref, (rms_err, rms_ref)


def test_loaded_shapes(setup):
    ref, term, params, _ = setup
    force = ref.force
    assert term.atoms.shape == (force.getNumTorsions(), 8)
    assert params.grids.shape == (force.getNumMaps(), 24, 24)
    size, flat = force.getMapParameters(1)
    flat = np.asarray(flat.value_in_unit(KJ))
    # OpenMM's energy[i + size*j] is at phi = i*2pi/size, psi = j*2pi/size.
    assert np.asarray(params.grids)[1, 5, 7] == flat[5 + size * 7]


def test_matches_openmm_native_and_perturbed(setup):
    """Native structure, then larger and larger random displacements so (phi, psi) visit the whole map."""
    ref, term, params, positions = setup
    size = params.grids.shape[-1]
    cells = set()
    for k, scale in enumerate([0.0, 0.01, 0.05, 0.2, 0.2, 0.2]):
        x = _perturbed(positions, scale, seed=k)
        _assert_matches(ref, term, params, x)
        phi, psi = term.angles(jnp.asarray(x))
        s = np.floor(np.mod(np.asarray(phi), 2 * np.pi) / (2 * np.pi / size)).astype(int)
        t = np.floor(np.mod(np.asarray(psi), 2 * np.pi) / (2 * np.pi / size)).astype(int)
        cells.update(zip(s.tolist(), t.tolist()))
    # The comparison must have covered a good part of the grid, including the wrap-around cells.
    assert len(cells) > 100, len(cells)
    assert any(c[0] == size - 1 for c in cells) or any(c[1] == size - 1 for c in cells)


def test_forces_match_finite_differences(setup):
    _, term, params, positions = setup
    x = _perturbed(positions, 0.03, seed=11)
    _, forces = _energy_and_forces(term, params, x)
    grad = -forces
    rng = np.random.default_rng(3)
    # Small steps: the bicubic patches are only C1 across cell edges, so a long step could straddle one.
    eps = 1e-6
    directions = [rng.normal(size=x.shape) for _ in range(4)]  # random directions over all atoms
    for atom in np.unique(term.atoms)[::17]:  # single coordinates of atoms that take part
        for axis in range(3):
            d = np.zeros(x.shape)
            d[atom, axis] = 1.0
            directions.append(d)
    scale = np.sqrt(np.sum(grad**2))
    for d in directions:
        d = d / np.linalg.norm(d)
        fd = (_energy_and_forces(term, params, x + eps * d)[0]
              - _energy_and_forces(term, params, x - eps * d)[0]) / (2 * eps)
        analytic = float(np.sum(grad * d))
        assert abs(fd - analytic) < 1e-6 * scale, (fd, analytic, scale)


def test_grid_gradient_finite_differences_and_openmm(setup):
    """d E / d grids: vs central differences in our code, and vs OpenMM with a changed map (E is linear in
    the grid, so OpenMM's energy change equals grad . delta exactly)."""
    ref, term, params, positions = setup
    x = _perturbed(positions, 0.1, seed=5)
    value_and_grad = jax.jit(jax.value_and_grad(lambda g: term.energy(CMAPParams(g), jnp.asarray(x), None, None)))
    grid_grad = np.asarray(value_and_grad(params.grids)[1])

    def energy(g):
        return value_and_grad(g)[0]

    assert grid_grad.shape == params.grids.shape
    # Each torsion pair's weights form a partition of unity over the grid (constant maps are reproduced).
    assert np.isclose(grid_grad.sum(), term.atoms.shape[0], rtol=1e-10)
    rng = np.random.default_rng(7)
    grids = params.grids
    eps = 1e-3
    used = np.unique(term.map_index)
    picks = [np.unravel_index(np.argmax(np.abs(grid_grad)), grid_grad.shape)]  # a node next to a torsion
    picks += [(rng.choice(used), rng.integers(grids.shape[1]), rng.integers(grids.shape[2])) for _ in range(5)]
    assert np.abs(grid_grad[picks[0]]) > 0.1
    for idx in picks:
        idx = tuple(int(i) for i in idx)
        fd = (float(energy(grids.at[idx].add(eps))) - float(energy(grids.at[idx].add(-eps)))) / (2 * eps)
        assert abs(fd - grid_grad[idx]) < 1e-8, (idx, fd, grid_grad[idx])
    # OpenMM with map m replaced by grid + delta.
    m = int(term.map_index[0])
    delta = rng.normal(scale=2.0, size=grids.shape[1:])
    e0, _ = ref(x)
    size, flat = ref.force.getMapParameters(m)
    original = np.asarray(flat.value_in_unit(KJ))
    try:
        new = np.asarray(grids[m]) + delta
        ref.force.setMapParameters(m, size, new.T.reshape(-1).tolist())  # back to OpenMM's i + size*j order
        ref.force.updateParametersInContext(ref.context)
        e1, _ = ref(x)
    finally:
        ref.force.setMapParameters(m, size, original.tolist())
        ref.force.updateParametersInContext(ref.context)
    predicted = float(np.sum(grid_grad[m] * delta))
    assert abs((e1 - e0) - predicted) < 1e-6 * max(1.0, abs(predicted)), (e1 - e0, predicted)


def test_float32_agrees_with_float64(setup):
    _, term, params, positions = setup
    for scale in (0.0, 0.05):
        x = _perturbed(positions, scale, seed=21)
        e64, f64 = _energy_and_forces(term, params, x)
        p32 = CMAPParams(params.grids.astype(jnp.float32))
        e32, f32 = _energy_and_forces(term, p32, x.astype(np.float32))
        assert f32.dtype == np.float32
        assert abs(e32 - e64) < 1e-4 * max(abs(e64), 1.0), (e32, e64)
        rms = np.sqrt(np.mean(f64**2))
        assert np.sqrt(np.mean((f32 - f64) ** 2)) < 1e-4 * rms


def test_vmap_over_configurations(setup):
    _, term, params, positions = setup
    batch = np.stack([_perturbed(positions, 0.05, seed=s) for s in range(3)])
    batched = jax.jit(jax.vmap(lambda p: term.energy(params, p, None, None)))(jnp.asarray(batch))
    single = [_energy_and_forces(term, params, b)[0] for b in batch]
    np.testing.assert_allclose(np.asarray(batched), single, rtol=1e-12)


def test_mixed_map_sizes(protein):
    """Maps of different sizes (tuple of grids) vs OpenMM: CHARMM maps 0 and 1 (24 x 24) around a random
    10 x 10 map, so one size group holds the non-adjacent maps 0 and 2."""
    topology, positions = protein
    system = _system(topology, "charmm36.xml")
    source = next(f for f in system.getForces() if isinstance(f, openmm.CMAPTorsionForce))
    rng = np.random.default_rng(2)
    force = openmm.CMAPTorsionForce()
    size0, flat0 = source.getMapParameters(0)
    force.addMap(size0, flat0)
    force.addMap(10, rng.normal(scale=3.0, size=100).tolist())
    force.addMap(*source.getMapParameters(1))
    for t in range(source.getNumTorsions()):
        _, *atoms = source.getTorsionParameters(t)
        force.addTorsion(t % 3, *atoms)
    for f in reversed(range(system.getNumForces())):
        system.removeForce(f)
    system.addForce(force)
    ref = Reference(system)
    term, params = cmap_from_openmm(force)
    assert isinstance(params.grids, tuple) and [g.shape[0] for g in params.grids] == [24, 10, 24]
    for k, scale in enumerate([0.0, 0.2]):
        _assert_matches(ref, term, params, _perturbed(positions, scale, seed=30 + k))
    grad = jax.jit(jax.grad(lambda g: term.energy(CMAPParams(g), jnp.asarray(positions), None, None)))(params.grids)
    assert [g.shape for g in grad] == [g.shape for g in params.grids]
    for g in grad:
        assert np.isclose(float(jnp.sum(g)), term.atoms.shape[0] / 3, rtol=1e-10)


def test_empty_and_bad_inputs():
    term = CMAPTorsion(atoms=np.zeros((0, 8), int), map_index=np.zeros((0,), int))
    assert float(term.energy(CMAPParams(jnp.zeros((1, 24, 24))), jnp.zeros((3, 3)), None, None)) == 0.0
    with pytest.raises(ValueError):
        CMAPTorsion(atoms=np.zeros((2, 8), int), map_index=np.zeros((3,), int))
