"""GBSA-OBC2 implicit solvent vs OpenMM's GBSAOBCForce (Reference platform, double precision).

Systems: alanine dipeptide (22 atoms, Amber prmtop with implicitSolvent=OBC2) with NoCutoff, CutoffNonPeriodic
and CutoffPeriodic in a small triclinic cell; the villin protein of OpenMM's test.pdb (582 atoms, amber99sb +
amber99_obc.xml, the OpenMM path that yields a GBSAOBCForce; amber14's implicit/obc2.xml makes a CustomGBForce)
with NoCutoff and CutoffNonPeriodic at 1.0 nm.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
from openmm import app, unit  # noqa: E402

from jmlsim.energy.gbsa_obc import GBSAOBC, GBSAOBCParams, gbsa_from_openmm  # noqa: E402

KJ = unit.kilojoule_per_mole
FORCE_UNIT = unit.kilojoule_per_mole / unit.nanometer
DATA = os.path.join(os.path.dirname(__file__), "data", "amber", "alanine-dipeptide-gbsa")
TRICLINIC_BOX = np.array([[1.5, 0.0, 0.0], [0.3, 1.4, 0.0], [-0.4, 0.5, 1.45]])  # nm, OpenMM reduced form


def _reference(system, positions, box=None, triclinic=False):
    """Our (term, params) imported from the system's only GBSAOBCForce, and that force's energy (kJ/mol) and
    forces (N, 3) kJ/mol/nm from OpenMM Reference. The import happens here while the System is alive: a
    force proxy does not keep its System's memory alive."""
    groups = [i for i, f in enumerate(system.getForces()) if isinstance(f, openmm.GBSAOBCForce)]
    assert len(groups) == 1, [type(f).__name__ for f in system.getForces()]
    for i, f in enumerate(system.getForces()):
        f.setForceGroup(i)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    if box is not None:
        context.setPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True, groups={groups[0]})
    term, params = gbsa_from_openmm(system.getForce(groups[0]), triclinic=triclinic)
    e_ref = state.getPotentialEnergy().value_in_unit(KJ)
    f_ref = np.asarray(state.getForces(asNumpy=True).value_in_unit(FORCE_UNIT))
    return term, params, e_ref, f_ref


_JITTED = {}


def _ours(term, params, positions, box=None):
    """Energy and forces = -grad(energy) from the JAX term; dtype follows the inputs. One jitted function
    per term (the term is kept in the cache so its id stays unique)."""
    if id(term) not in _JITTED:
        _JITTED[id(term)] = (term, jax.jit(jax.value_and_grad(term.energy, argnums=1)))
    box = None if box is None else jnp.asarray(box)
    e, g = _JITTED[id(term)][1](params, jnp.asarray(positions), box, None)
    return e, -g


def _assert_matches(term, params, positions, e_ref, f_ref, box=None):
    e, f = _ours(term, params, positions, box)
    e, f = float(e), np.asarray(f)
    assert abs(e - e_ref) < max(1e-5 * abs(e_ref), 1e-3), (e, e_ref)
    rms_err = np.sqrt(np.mean((f - f_ref) ** 2))
    rms_ref = np.sqrt(np.mean(f_ref**2))
    assert rms_err < 1e-4 * rms_ref, (rms_err, rms_ref)
    return e


@pytest.fixture(scope="module")
def alanine():
    """Prmtop and positions (N, 3) nm of alanine dipeptide."""
    prmtop = app.AmberPrmtopFile(os.path.join(DATA, "alanine-dipeptide.prmtop"))
    crd = app.AmberInpcrdFile(os.path.join(DATA, "alanine-dipeptide.crd"))
    return prmtop, np.asarray(crd.getPositions(asNumpy=True).value_in_unit(unit.nanometer))


def _alanine_system(prmtop, method, cutoff=1.0):
    return prmtop.createSystem(
        implicitSolvent=app.OBC2, nonbondedMethod=method, nonbondedCutoff=cutoff * unit.nanometer
    )


@pytest.fixture(scope="module")
def villin():
    """Positions (N, 3) nm of villin (water and ions removed) and, per cutoff (None or 1.0 nm), the
    reference tuple of ``_reference``."""
    pdb = app.PDBFile(os.path.join(os.path.dirname(app.__file__), "data", "test.pdb"))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.deleteWater()
    modeller.delete([r for r in modeller.topology.residues() if len(list(r.atoms())) == 1])  # ions
    x = np.asarray(modeller.positions.value_in_unit(unit.nanometer))
    ff = app.ForceField("amber99sb.xml", "amber99_obc.xml")
    cases = {}
    for method, cutoff in [(app.NoCutoff, None), (app.CutoffNonPeriodic, 1.0)]:
        system = ff.createSystem(modeller.topology, nonbondedMethod=method, nonbondedCutoff=1.0 * unit.nanometer)
        cases[cutoff] = _reference(system, x)
    return x, cases


def test_alanine_no_cutoff_matches_openmm(alanine):
    prmtop, x = alanine
    term, params, e_ref, f_ref = _reference(_alanine_system(prmtop, app.NoCutoff), x)
    assert term.cutoff is None and not term.periodic
    assert term.surface_area_energy == pytest.approx(2.25936)
    assert params.charge.shape == params.radius.shape == params.scale.shape == (x.shape[0],)
    _assert_matches(term, params, x, e_ref, f_ref)


def test_alanine_cutoff_nonperiodic_matches_openmm(alanine):
    # 0.5 nm is shorter than the molecule, so the cutoff changes both Born radii and pair sums.
    prmtop, x = alanine
    term, params, e_ref, f_ref = _reference(_alanine_system(prmtop, app.CutoffNonPeriodic, 0.5), x)
    assert term.cutoff == pytest.approx(0.5) and not term.periodic
    _assert_matches(term, params, x, e_ref, f_ref)
    e_full, _ = _ours(GBSAOBC(solvent_dielectric=term.solvent_dielectric), params, x)
    assert abs(float(e_full) - e_ref) > 1.0  # the cutoff really matters here


def test_alanine_cutoff_periodic_triclinic_matches_openmm(alanine):
    # A 1.4-1.5 nm triclinic cell with a 0.7 nm cutoff: periodic images of the 0.9 nm molecule interact.
    prmtop, x = alanine
    system = _alanine_system(prmtop, app.CutoffNonPeriodic, 0.7)
    for f in system.getForces():
        if isinstance(f, (openmm.GBSAOBCForce, openmm.NonbondedForce)):
            f.setNonbondedMethod(f.CutoffPeriodic)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in TRICLINIC_BOX])
    term, params, e_ref, f_ref = _reference(system, x, TRICLINIC_BOX, triclinic=True)
    assert term.periodic and term.cutoff == pytest.approx(0.7)
    e = _assert_matches(term, params, x, e_ref, f_ref, TRICLINIC_BOX)
    e_open, _ = _ours(GBSAOBC(solvent_dielectric=term.solvent_dielectric, cutoff=0.7), params, x)
    assert abs(float(e_open) - e_ref) > 1e-2  # images contribute
    # moving atoms by whole lattice vectors changes nothing
    shifts = np.random.default_rng(2).integers(-2, 3, size=(x.shape[0], 3)) @ TRICLINIC_BOX
    e_shifted, _ = _ours(term, params, x + shifts, TRICLINIC_BOX)
    assert float(e_shifted) == pytest.approx(e, rel=1e-10)


def test_alanine_custom_dielectrics_and_surface_energy(alanine):
    prmtop, x = alanine
    system = _alanine_system(prmtop, app.NoCutoff)
    force = [f for f in system.getForces() if isinstance(f, openmm.GBSAOBCForce)][0]
    force.setSoluteDielectric(2.0)
    force.setSolventDielectric(60.0)
    force.setSurfaceAreaEnergy(5.0)
    term, params, e_ref, f_ref = _reference(system, x)
    assert (term.solute_dielectric, term.solvent_dielectric, term.surface_area_energy) == (2.0, 60.0, 5.0)
    _assert_matches(term, params, x, e_ref, f_ref)


def test_villin_matches_openmm(villin):
    x, cases = villin
    energies = {}
    for cutoff, (term, params, e_ref, f_ref) in cases.items():
        assert term.cutoff == cutoff and not term.periodic
        energies[cutoff] = _assert_matches(term, params, x, e_ref, f_ref)
    # villin is ~3 nm across, so the 1 nm cutoff changes the answer substantially
    assert abs(energies[None] - energies[1.0]) > 100.0


def test_forces_match_finite_differences(alanine):
    prmtop, x = alanine
    rng = np.random.default_rng(0)
    h = 1e-5  # nm
    for method, cutoff in [(app.NoCutoff, 1.0), (app.CutoffNonPeriodic, 0.5)]:
        term, params, _, _ = _reference(_alanine_system(prmtop, method, cutoff), x)
        _, f = _ours(term, params, x)
        f = np.asarray(f)
        # all displaced copies in one batched, jitted call
        picks = [(rng.integers(x.shape[0]), rng.integers(3)) for _ in range(12)]
        batch = np.repeat(x[None], 2 * len(picks), axis=0)
        for m, (i, k) in enumerate(picks):
            batch[2 * m, i, k] += h
            batch[2 * m + 1, i, k] -= h
        e = np.asarray(jax.jit(jax.vmap(lambda pos: term.energy(params, pos, None, None)))(jnp.asarray(batch)))
        for m, (i, k) in enumerate(picks):
            fd = -(e[2 * m] - e[2 * m + 1]) / (2 * h)
            assert abs(fd - f[i, k]) < 1e-6 * np.abs(f).max() + 1e-5, (i, k, fd, f[i, k])


def test_parameter_gradients_match_finite_differences(alanine):
    prmtop, x = alanine
    term, params, _, _ = _reference(_alanine_system(prmtop, app.NoCutoff), x)
    energy = jax.jit(lambda p: term.energy(p, jnp.asarray(x), None, None))
    grads = jax.grad(energy)(params)
    rng = np.random.default_rng(1)
    for name, h in [("charge", 1e-5), ("radius", 1e-6), ("scale", 1e-5)]:
        g = np.asarray(getattr(grads, name))
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
        base = np.asarray(getattr(params, name))
        for i in rng.choice(x.shape[0], 6, replace=False):
            plus, minus = base.copy(), base.copy()
            plus[i] += h
            minus[i] -= h
            ep = float(energy(params._replace(**{name: jnp.asarray(plus)})))
            em = float(energy(params._replace(**{name: jnp.asarray(minus)})))
            fd = (ep - em) / (2 * h)
            assert abs(fd - g[i]) < 1e-5 * np.abs(g).max() + 1e-6, (name, i, fd, g[i])


def test_float32_agrees_with_float64(villin):
    x, cases = villin
    term, params, e_ref, f_ref = cases[1.0]
    params32 = GBSAOBCParams(*[jnp.asarray(a, dtype=jnp.float32) for a in params])
    e32, f32 = _ours(term, params32, jnp.asarray(x, dtype=jnp.float32))
    assert e32.dtype == jnp.float32 and f32.dtype == jnp.float32
    assert abs(float(e32) - e_ref) < 1e-4 * abs(e_ref)
    f32 = np.asarray(f32, dtype=np.float64)
    assert np.sqrt(np.mean((f32 - f_ref) ** 2)) < 1e-4 * np.sqrt(np.mean(f_ref**2))


def test_vmap_matches_single_evaluations(alanine):
    prmtop, x = alanine
    term, params, _, _ = _reference(_alanine_system(prmtop, app.NoCutoff), x)
    batch = jnp.stack([jnp.asarray(x), jnp.asarray(x) * 1.01])
    single = jax.jit(lambda pos: term.energy(params, pos, None, None))
    energies = jax.vmap(single)(batch)
    for b in range(2):
        assert float(energies[b]) == pytest.approx(float(single(batch[b])), rel=1e-12)
    assert float(energies[0]) != pytest.approx(float(energies[1]), rel=1e-6)


def test_periodic_requires_cutoff():
    with pytest.raises(ValueError):
        GBSAOBC(periodic=True)
