"""CHARMM36's Custom* forces (harmonic impropers, 1-4 LJ pairs, NBFIX tabulated LJ) vs OpenMM Reference.

System: OpenMM's villin-in-water test.pdb (8867 atoms) with charmm36.xml + charmm36/water.xml, PME, cutoff
1.0 nm, HBonds; once plain (LJ truncated at the cutoff) and once with switchDistance 0.8 nm. Each OpenMM
force is isolated with a force group. Double precision throughout (conftest enables x64).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
from openmm import app, unit  # noqa: E402

from jmlsim import space  # noqa: E402
from jmlsim.energy.custom_forces import (  # noqa: E402
    HarmonicImproper,
    TabulatedLJ,
    TabulatedLJParams,
    term_from_custom_force,
)
from jmlsim.energy.nonbonded import exclusion_band  # noqa: E402
from jmlsim.neighbors import plan  # noqa: E402

KJ = unit.kilojoule_per_mole
FORCE_UNIT = unit.kilojoule_per_mole / unit.nanometer
CUTOFF = 1.0
VARIANTS = {"plain": None, "switched": 0.8}


def _reference_platform():
    return openmm.Platform.getPlatformByName("Reference")


def _evaluate(context, positions, groups=None):
    """(energy kJ/mol, forces (N, 3) kJ/mol/nm) of an OpenMM context, optionally of some force groups."""
    context.setPositions(positions)
    kwargs = {} if groups is None else {"groups": groups}
    state = context.getState(getEnergy=True, getForces=True, **kwargs)
    return state.getPotentialEnergy().value_in_unit(KJ), state.getForces(asNumpy=True).value_in_unit(FORCE_UNIT)


class Charmm:
    """One CHARMM36 system with a Reference context whose forces each sit in their own group."""

    def __init__(self, topology, switch_distance):
        self.switch_distance = switch_distance
        kwargs = {} if switch_distance is None else {"switchDistance": switch_distance * unit.nanometer}
        ff = app.ForceField("charmm36.xml", "charmm36/water.xml")
        self.system = ff.createSystem(topology, nonbondedMethod=app.PME, nonbondedCutoff=CUTOFF * unit.nanometer,
                                      constraints=app.HBonds, **kwargs)
        self.groups = {}
        for i, f in enumerate(self.system.getForces()):
            f.setForceGroup(i)
            self.groups[type(f).__name__] = i
        self.context = openmm.Context(self.system, openmm.VerletIntegrator(0.001), _reference_platform())
        self._cache = {}
        self._terms = {}

    def force(self, name):
        return self.system.getForce(self.groups[name])

    def lrc_force(self):
        """A copy of the CustomNonbondedForce with the long-range correction on."""
        force = openmm.XmlSerializer.clone(self.force("CustomNonbondedForce"))
        force.setUseLongRangeCorrection(True)
        force.setForceGroup(0)
        return force

    def term(self, name):
        """(term, params) of one Custom force ('lrc': the tabulated LJ with the long-range correction on),
        converted once so that compiled functions are reused across tests."""
        if name not in self._terms:
            force = self.lrc_force() if name == "lrc" else self.force(name)
            self._terms[name] = term_from_custom_force(force, periodic=True, triclinic=False)
        return self._terms[name]

    def reference(self, name, positions):
        key = (name, positions.tobytes())
        if key not in self._cache:
            self._cache[key] = _evaluate(self.context, positions, {self.groups[name]})
        return self._cache[key]


@pytest.fixture(scope="module")
def villin():
    """(topology, positions (N, 3) nm, box (3, 3) nm)."""
    pdb = app.PDBFile(os.path.join(os.path.dirname(app.__file__), "data", "test.pdb"))
    positions = np.array(pdb.positions.value_in_unit(unit.nanometer))
    box = np.array(pdb.topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    return pdb.topology, positions, box


_CHARMM = {}


@pytest.fixture(scope="module", params=list(VARIANTS))
def charmm(request, villin):
    if request.param not in _CHARMM:
        _CHARMM[request.param] = Charmm(villin[0], VARIANTS[request.param])
    return _CHARMM[request.param]


@pytest.fixture(scope="module")
def switched(villin):
    if "switched" not in _CHARMM:
        _CHARMM["switched"] = Charmm(villin[0], VARIANTS["switched"])
    return _CHARMM["switched"]


@pytest.fixture(scope="module")
def nbrs(villin):
    _, positions, box = villin
    _, nbrs = plan(jnp.asarray(positions), box, CUTOFF, skin=0.1)
    return nbrs


_JITTED = {}


def _jitted(term, what):
    """One compiled function per (term, kind): 'e' energy, 'vg' value-and-grad, 'forces' analytic forces."""
    key = (id(term), what)
    if key not in _JITTED:
        fn = {"e": term.energy, "vg": jax.value_and_grad(term.energy, argnums=1)}.get(what) or term.forces
        _JITTED[key] = (term, jax.jit(fn))
    return _JITTED[key][1]


def _args(params, positions, box, nbrs):
    return params, jnp.asarray(positions), None if box is None else jnp.asarray(box), nbrs


def _ours(term, params, positions, box, nbrs=None, analytic=False):
    """(energy, forces): forces from the analytic ``forces`` if asked, else -grad."""
    args = _args(params, positions, box, nbrs)
    if analytic:
        return float(_jitted(term, "e")(*args)), np.asarray(_jitted(term, "forces")(*args))
    e, g = _jitted(term, "vg")(*args)
    return float(e), -np.asarray(g)


def _energy(term, params, positions, box, nbrs=None):
    return float(_jitted(term, "e")(*_args(params, positions, box, nbrs)))


def _assert_close(e, f, e_ref, f_ref):
    assert abs(e - e_ref) <= max(1e-5 * abs(e_ref), 1e-3), (e, e_ref)
    rms_err = np.sqrt(np.mean((f - f_ref) ** 2))
    rms_ref = np.sqrt(np.mean(f_ref**2))
    assert rms_err < 1e-4 * rms_ref, (rms_err, rms_ref)


def _perturbed(positions, scale, seed):
    return positions + np.random.default_rng(seed).normal(scale=scale, size=positions.shape)


# -- dihedral convention ----------------------------------------------------------------------------
def test_dihedral_sign_matches_openmm_theta():
    """bonded.dihedral_values agrees with OpenMM's theta in sign, not only in theta^2 (a weighted sum of
    theta and its forces would expose a flipped torsion)."""
    from jmlsim.energy.bonded import dihedral_values

    rng = np.random.default_rng(0)
    n_torsions = 40
    positions = rng.normal(scale=0.15, size=(4 * n_torsions, 3))
    weights = rng.normal(size=n_torsions)
    system = openmm.System()
    for _ in range(len(positions)):
        system.addParticle(1.0)
    force = openmm.CustomTorsionForce("w*theta")
    force.addPerTorsionParameter("w")
    atoms = np.arange(4 * n_torsions).reshape(-1, 4)
    for t, quad in enumerate(atoms):
        force.addTorsion(*[int(a) for a in quad], [weights[t]])
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), _reference_platform())
    e_ref, f_ref = _evaluate(context, positions)

    def energy(x):
        return jnp.sum(weights * dihedral_values(x, atoms))

    e, g = jax.value_and_grad(energy)(jnp.asarray(positions))
    _assert_close(float(e), -np.asarray(g), e_ref, f_ref)
    assert abs(e_ref) > 0.5  # the check is not vacuous


# -- impropers and 1-4 pairs -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["CustomTorsionForce", "CustomBondForce"])
def test_bonded_custom_forces_match_openmm(switched, villin, name):
    _, positions, box = villin
    force = switched.force(name)
    term, params = switched.term(name)
    assert not term.periodic  # OpenMM's default for bond and torsion forces
    if name == "CustomTorsionForce":
        assert term.atoms.shape == (force.getNumTorsions(), 4) == (84, 4)
        *quad, (k, theta0) = force.getTorsionParameters(3)
        assert list(term.atoms[3]) == quad and params.k[3] == k and params.theta0[3] == theta0
    else:
        assert term.pairs.shape == (force.getNumBonds(), 2)
        i, j, (sigma, epsilon) = force.getBondParameters(5)
        assert list(term.pairs[5]) == [i, j] and params.sigma[5] == sigma and params.epsilon[5] == epsilon
    for seed, scale in enumerate([0.0, 0.02]):
        x = _perturbed(positions, scale, seed)
        e_ref, f_ref = switched.reference(name, x)
        e, f = _ours(term, params, x, box)
        _assert_close(e, f, e_ref, f_ref)


# -- tabulated LJ -------------------------------------------------------------------------------------
def test_tabulated_lj_configuration(charmm):
    force = charmm.force("CustomNonbondedForce")
    term, params = charmm.term("CustomNonbondedForce")
    assert isinstance(term, TabulatedLJ)
    assert term.cutoff == CUTOFF and term.periodic
    assert term.switch_distance == (0.8 if force.getUseSwitchingFunction() else None)
    assert term.lrc_weights is None  # charmm36.xml leaves the long-range correction off
    assert len(term.exclusions) == force.getNumExclusions() > 0
    n_types = params.acoef.shape[0]
    xsize, ysize, values = force.getTabulatedFunction(0).getFunctionParameters()
    assert (xsize, ysize) == (n_types, n_types)
    assert params.acoef[2, 5] == values[2 + xsize * 5]
    assert np.array_equal(term.types, [round(force.getParticleParameters(i)[0]) for i in range(term.n_atoms)])


def _native_or_perturbed(charmm, positions):
    """The switched system is checked at the native structure, the plain one slightly perturbed (within the
    neighbor list's skin)."""
    return positions if charmm.switch_distance is not None else _perturbed(positions, 0.005, seed=1)


def test_tabulated_lj_matches_openmm(charmm, villin, nbrs):
    """Energy and analytic forces vs OpenMM; for the switched system the analytic forces also equal -grad."""
    _, positions, box = villin
    term, params = charmm.term("CustomNonbondedForce")
    x = _native_or_perturbed(charmm, positions)
    e_ref, f_ref = charmm.reference("CustomNonbondedForce", x)
    e, f = _ours(term, params, x, box, nbrs, analytic=True)
    _assert_close(e, f, e_ref, f_ref)
    if charmm.switch_distance is not None:
        e_grad, f_grad = _ours(term, params, x, box, nbrs)
        assert abs(e_grad - e) < 1e-9 * abs(e)
        np.testing.assert_allclose(f, f_grad, rtol=0, atol=1e-9 * np.abs(f_grad).max())


def test_tabulated_lj_long_range_correction_matches_openmm(charmm, villin, nbrs):
    """OpenMM's CustomNonbondedForce with the long-range correction switched on (a one-force system)."""
    _, positions, box = villin
    force = charmm.lrc_force()
    system = openmm.System()
    for i in range(charmm.system.getNumParticles()):
        system.addParticle(charmm.system.getParticleMass(i))
    system.setDefaultPeriodicBoxVectors(*charmm.system.getDefaultPeriodicBoxVectors())
    system.addForce(openmm.XmlSerializer.clone(force))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), _reference_platform())
    x = _native_or_perturbed(charmm, positions)
    context.setPositions(x)
    e_ref = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
    e_off, _ = charmm.reference("CustomNonbondedForce", x)

    term, params = charmm.term("lrc")
    assert term.lrc_weights is not None
    np.testing.assert_allclose(term.lrc_weights.sum(), term.n_atoms * (term.n_atoms + 1) / 2)
    e = _energy(term, params, x, box, nbrs)
    assert abs(e - e_ref) <= 1e-5 * abs(e_ref), (e, e_ref)
    lrc = float(term.long_range_correction(params, jnp.asarray(box)))
    # OpenMM integrates the tail numerically (midpoint rule in single precision, converged to ~1e-5)
    assert lrc < -100.0 and abs(lrc - (e_ref - e_off)) < 2e-5 * abs(lrc), (lrc, e_ref - e_off)
    # 1/V dependence: a 1% larger box
    lrc_big = float(term.long_range_correction(params, jnp.asarray(box * 1.01)))
    np.testing.assert_allclose(lrc_big, lrc / 1.01**3, rtol=1e-12)


def test_tabulated_lj_far_exclusions_equal_band(switched, villin, nbrs):
    """A narrow lookup band (most exclusions handled as explicitly subtracted far pairs) gives the same result."""
    _, positions, box = villin
    term, params = switched.term("CustomNonbondedForce")
    band, width, far = exclusion_band(term.n_atoms, term.exclusions, max_width=1)
    assert len(far) > 1000
    narrow = TabulatedLJ(n_atoms=term.n_atoms, types=term.types, exclusions=term.exclusions, band=band,
                         band_width=width, far_exclusions=far, cutoff=term.cutoff, periodic=True,
                         switch_distance=term.switch_distance)
    e_ref, f_ref = switched.reference("CustomNonbondedForce", positions)
    e, f = _ours(narrow, params, positions, box, nbrs, analytic=True)
    _assert_close(e, f, e_ref, f_ref)


def test_forces_match_finite_differences(switched, villin, nbrs):
    """Directional derivatives of each energy over a subset of atoms vs the forces (switched LJ: continuous)."""
    _, positions, box = villin
    rng = np.random.default_rng(4)
    subset = rng.choice(len(positions), size=12, replace=False)
    subset[:4] = [5, 19, 20, 21]  # atoms of an improper and of 1-4 pairs
    eps = 1e-5
    for name in ["CustomTorsionForce", "CustomBondForce", "CustomNonbondedForce"]:
        term, params = switched.term(name)
        list_ = nbrs if name == "CustomNonbondedForce" else None
        _, forces = _ours(term, params, positions, box, list_, analytic=hasattr(term, "forces"))
        for _ in range(2):
            d = np.zeros_like(positions)
            d[subset] = rng.normal(size=(len(subset), 3))
            d /= np.linalg.norm(d)
            fd = (_energy(term, params, positions + eps * d, box, list_)
                  - _energy(term, params, positions - eps * d, box, list_)) / (2 * eps)
            analytic = -float(np.sum(forces * d))
            scale = np.sqrt(np.sum(forces[subset] ** 2))
            assert abs(fd - analytic) < 1e-5 * scale, (name, fd, analytic, scale)


def test_coefficient_gradients_match_finite_differences(switched, villin, nbrs):
    """d E / d acoef and d E / d bcoef (pair sum plus long-range correction) vs central differences along a
    direction touching the most frequent type pairs; E is linear in the tables, so also E = grad . tables."""
    _, positions, box = villin
    term, params = switched.term("lrc")
    x, b = jnp.asarray(positions), jnp.asarray(box)
    grads = jax.jit(jax.grad(term.energy))(params, x, b, nbrs)  # arguments, not constants: no constant folding
    assert grads.acoef.shape == params.acoef.shape and grads.bcoef.shape == params.bcoef.shape
    counts = np.bincount(term.types, minlength=params.acoef.shape[0])
    common = np.argsort(counts)[::-1][:3]  # the most frequent types (water O, water H, ...)
    rng = np.random.default_rng(9)
    delta_a, delta_b = np.zeros(params.acoef.shape), np.zeros(params.bcoef.shape)
    for i in common:
        for j in common:
            assert grads.acoef[i, j] > 0 and grads.bcoef[i, j] < 0  # r^-12 and -r^-6 summed over pairs
            delta_a[i, j] = rng.normal() * abs(float(params.acoef[i, j])) + 1e-8
            delta_b[i, j] = rng.normal() * abs(float(params.bcoef[i, j])) + 1e-4
    h = 1e-3
    plus = TabulatedLJParams(params.acoef + h * delta_a, params.bcoef + h * delta_b)
    minus = TabulatedLJParams(params.acoef - h * delta_a, params.bcoef - h * delta_b)
    fd = (_energy(term, plus, x, b, nbrs) - _energy(term, minus, x, b, nbrs)) / (2 * h)
    analytic = float(jnp.sum(grads.acoef * delta_a) + jnp.sum(grads.bcoef * delta_b))
    assert abs(fd - analytic) < 1e-6 * abs(analytic), (fd, analytic)
    e = _energy(term, params, x, b, nbrs)
    linear = float(jnp.sum(grads.acoef * params.acoef) + jnp.sum(grads.bcoef * params.bcoef))
    np.testing.assert_allclose(linear, e, rtol=1e-10)
    # the long-range correction's share of d E / d acoef: weights * J12 / V * 2 pi N^2 / (N (N + 1) / 2)
    lrc_grad = jax.grad(lambda p: term.long_range_correction(p, b))(params)
    np.testing.assert_allclose(float(jnp.sum(lrc_grad.acoef * params.acoef) + jnp.sum(lrc_grad.bcoef * params.bcoef)),
                               float(term.long_range_correction(params, b)), rtol=1e-12)


def test_tabulated_lj_no_cutoff_dense(switched, villin):
    """NoCutoff (dense N x N, no box) on the protein alone, with the switched system's tables and exclusions."""
    topology, positions, _ = villin
    full = switched.force("CustomNonbondedForce")
    n_protein = next(a.index for a in topology.atoms() if a.residue.name == "HOH")
    protein = set(range(n_protein))
    force = openmm.CustomNonbondedForce(full.getEnergyFunction())
    force.addPerParticleParameter("type")
    for k in range(full.getNumTabulatedFunctions()):
        force.addTabulatedFunction(full.getTabulatedFunctionName(k),
                                   openmm.XmlSerializer.clone(full.getTabulatedFunction(k)))
    for i in range(n_protein):
        force.addParticle(full.getParticleParameters(i))
    for k in range(full.getNumExclusions()):
        i, j = full.getExclusionParticles(k)
        if i in protein and j in protein:
            force.addExclusion(i, j)
    force.setNonbondedMethod(openmm.CustomNonbondedForce.NoCutoff)
    system = openmm.System()
    for _ in range(n_protein):
        system.addParticle(1.0)
    system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), _reference_platform())
    x = positions[:n_protein]
    e_ref, f_ref = _evaluate(context, x)
    term, params = term_from_custom_force(force, periodic=False, triclinic=False)
    assert term.cutoff is None and not term.periodic
    e, f = _ours(term, params, x, None, None, analytic=True)
    _assert_close(e, f, e_ref, f_ref)


def test_float32(switched, villin, nbrs):
    """float32 inputs give float32 results close to float64."""
    _, positions, box = villin
    for name in ["CustomTorsionForce", "CustomBondForce", "CustomNonbondedForce"]:
        term, params = switched.term(name)
        list_ = nbrs if name == "CustomNonbondedForce" else None
        e64, f64 = _ours(term, params, positions, box, list_)
        p32 = type(params)(*[jnp.asarray(a, jnp.float32) for a in params])
        e32, g32 = jax.jit(jax.value_and_grad(term.energy, argnums=1))(
            p32, jnp.asarray(positions, jnp.float32), jnp.asarray(box, jnp.float32), list_)
        assert e32.dtype == jnp.float32 and g32.dtype == jnp.float32
        assert abs(float(e32) - e64) < 1e-4 * abs(e64), (name, float(e32), e64)
        rms = np.sqrt(np.mean(f64**2))
        assert np.sqrt(np.mean((-np.asarray(g32, np.float64) - f64) ** 2)) < 1e-3 * rms, name


# -- unsupported forces --------------------------------------------------------------------------------
def test_unsupported_expression_raises_clear_error():
    torsion = openmm.CustomTorsionForce("k*(1 + cos(theta - theta0))")
    torsion.addPerTorsionParameter("k")
    torsion.addPerTorsionParameter("theta0")
    with pytest.raises(ValueError, match=r"CustomTorsionForce.*k\*\(1 \+ cos\(theta - theta0\)\)") as info:
        term_from_custom_force(torsion, periodic=False, triclinic=False)
    assert "\n" not in str(info.value)

    nonbonded = openmm.CustomNonbondedForce("4*eps*((sig/r)^12-(sig/r)^6); sig=0.5*(sig1+sig2); eps=sqrt(eps1*eps2)")
    with pytest.raises(ValueError, match="CustomNonbondedForce"):
        term_from_custom_force(nonbonded, periodic=True, triclinic=False)

    with pytest.raises(ValueError, match="CustomAngleForce"):
        term_from_custom_force(openmm.CustomAngleForce("k*(theta-theta0)^2"), periodic=False, triclinic=False)


def test_whitespace_and_semicolon_are_ignored_and_asymmetric_tables_rejected():
    improper = openmm.CustomTorsionForce(" k * ( theta - theta0 ) ^ 2 ;")
    improper.addPerTorsionParameter("theta0")  # OpenMM allows either parameter order
    improper.addPerTorsionParameter("k")
    improper.addTorsion(0, 1, 2, 3, [0.1, 300.0])
    term, params = term_from_custom_force(improper, periodic=False, triclinic=False)
    assert isinstance(term, HarmonicImproper)
    assert float(params.k[0]) == 300.0 and float(params.theta0[0]) == 0.1

    force = openmm.CustomNonbondedForce("acoef(type1, type2)/r^12 - bcoef(type1, type2)/r^6;")
    force.addPerParticleParameter("type")
    force.addTabulatedFunction("acoef", openmm.Discrete2DFunction(2, 2, [1.0, 2.0, 3.0, 4.0]))
    force.addTabulatedFunction("bcoef", openmm.Discrete2DFunction(2, 2, [1.0, 2.0, 2.0, 4.0]))
    force.addParticle([0])
    with pytest.raises(ValueError, match="acoef table is not symmetric"):
        term_from_custom_force(force, periodic=False, triclinic=False)
    assert TabulatedLJParams._fields == ("acoef", "bcoef")


# -- periodic and triclinic paths on a small synthetic system -----------------------------------------
def test_triclinic_periodic_small_system():
    """A triclinic box: the tabulated LJ (cutoff, switch, long-range correction, exclusions near and far in
    index) and periodic torsion/pair forces whose atoms straddle the box faces, vs OpenMM."""
    rng = np.random.default_rng(12)
    box = np.array([[3.0, 0.0, 0.0], [0.8, 2.9, 0.0], [-0.6, 0.9, 3.1]])
    grid = np.stack(np.meshgrid(*[np.arange(6)] * 3, indexing="ij"), -1).reshape(-1, 3)
    frac = (grid + 0.5 + rng.uniform(-0.15, 0.15, grid.shape)) / 6.0
    positions = frac @ box  # 216 particles, no clashes
    n = len(positions)
    n_types = 3
    sig = rng.uniform(0.25, 0.35, (n_types, n_types))
    eps = rng.uniform(0.2, 0.8, (n_types, n_types))
    sig, eps = 0.5 * (sig + sig.T), 0.5 * (eps + eps.T)
    acoef, bcoef = 4 * eps * sig**12, 4 * eps * sig**6
    types = rng.integers(0, n_types, n)
    distances = np.linalg.norm(_minimum_image(positions[:, None] - positions[None], box), axis=-1)
    close = np.argwhere(np.triu(distances < 0.6, 1))
    exclusions = close[rng.choice(len(close), 150, replace=False)]
    assert np.max(np.abs(exclusions[:, 1] - exclusions[:, 0])) > 64  # some go through the far list

    nb = openmm.CustomNonbondedForce("acoef(type1, type2)/r^12 - bcoef(type1, type2)/r^6;")
    nb.addPerParticleParameter("type")
    nb.addTabulatedFunction("acoef", openmm.Discrete2DFunction(n_types, n_types, acoef.T.reshape(-1).tolist()))
    nb.addTabulatedFunction("bcoef", openmm.Discrete2DFunction(n_types, n_types, bcoef.T.reshape(-1).tolist()))
    for t in types:
        nb.addParticle([float(t)])
    for i, j in exclusions:
        nb.addExclusion(int(i), int(j))
    nb.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
    nb.setCutoffDistance(0.9)
    nb.setUseSwitchingFunction(True)
    nb.setSwitchingDistance(0.7)
    nb.setUseLongRangeCorrection(True)
    # torsions and pairs between neighbours across the periodic boundaries
    chains = [np.argsort(distances[a])[:4] for a in range(0, n, 9)]  # an atom and its 3 nearest neighbours
    torsion = openmm.CustomTorsionForce("k*(theta-theta0)^2")
    torsion.addPerTorsionParameter("k")
    torsion.addPerTorsionParameter("theta0")
    pair = openmm.CustomBondForce("4*epsilon*((sigma/r)^12-(sigma/r)^6)")
    pair.addPerBondParameter("sigma")
    pair.addPerBondParameter("epsilon")
    for c in chains:
        torsion.addTorsion(*[int(a) for a in c], [rng.uniform(10, 100), rng.uniform(-1, 1)])
        pair.addBond(int(c[0]), int(c[3]), [0.3, 0.5])
    torsion.setUsesPeriodicBoundaryConditions(True)
    pair.setUsesPeriodicBoundaryConditions(True)

    system = openmm.System()
    for _ in range(n):
        system.addParticle(1.0)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    for group, force in enumerate([nb, torsion, pair]):
        force.setForceGroup(group)
        system.addForce(force)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), _reference_platform())
    _, nbrs = plan(jnp.asarray(positions), box, 0.9, skin=0.1)
    straddling = 0
    for group, force in enumerate([nb, torsion, pair]):
        e_ref, f_ref = _evaluate(context, positions, {group})
        term, params = term_from_custom_force(force, periodic=True, triclinic=True)
        assert term.triclinic and term.periodic
        if group == 0:
            assert len(term.far_exclusions) > 0
            e, f = _ours(term, params, positions, box, nbrs, analytic=True)
        else:
            e, f = _ours(term, params, positions, box)
            atoms = term.atoms if group == 1 else term.pairs
            straddling += int(np.sum(np.linalg.norm(positions[atoms[:, 0]] - positions[atoms[:, -1]], axis=-1) > 1.0))
        _assert_close(e, f, e_ref, f_ref)
    assert straddling > 0  # some terms only make sense through periodic images


def _minimum_image(dr, box):
    return np.asarray(space.minimum_image(jnp.asarray(dr), jnp.asarray(box), True))
