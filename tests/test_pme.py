"""Smooth PME against OpenMM's Reference platform (double precision).

The total periodic Coulomb energy of a charge set is rebuilt as a brute-force numpy direct sum
(erfc(alpha r)/r over minimum-image pairs inside the cutoff) + PMEReciprocal + self + neutralizing terms,
all with OpenMM's alpha and grid, and compared with a NonbondedForce (PME, epsilon 0, no exceptions).
"""

import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erfc

from jmlsim.energy.pme import (ONE_4PI_EPS0, PMEReciprocal, ewald_self_energy, neutralizing_energy,
                               pme_parameters)

openmm = pytest.importorskip("openmm")
app = pytest.importorskip("openmm.app")
unit = pytest.importorskip("openmm.unit")

DATA = os.path.join(os.path.dirname(__file__), "data", "amber")
CUTOFF = 0.9


@functools.lru_cache(maxsize=None)
def _amber(name, prmtop, crd):
    """(charges (N,), positions (N, 3) nm, box (3, 3) nm) of an Amber test system."""
    top = app.AmberPrmtopFile(os.path.join(DATA, name, prmtop))
    coords = app.AmberInpcrdFile(os.path.join(DATA, name, crd))
    system = top.createSystem(nonbondedMethod=app.PME, nonbondedCutoff=CUTOFF * unit.nanometer)
    nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    charges = np.array([nb.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
                        for i in range(nb.getNumParticles())])
    positions = np.array(coords.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    box = np.array([v.value_in_unit(unit.nanometer) for v in coords.getBoxVectors()])
    return charges, positions, box


def _waterbox():
    charges, positions, _ = _amber("waterbox", "watbox216.prmtop", "watbox216.crd")
    # watbox216.crd stores its box angles as 5156.6 "degrees" (90 rad): the box is the 18.774349 A cube.
    return charges, positions, np.eye(3) * 1.8774349


def _dhfr():
    return _amber("dhfr", "JAC.prmtop", "JAC.inpcrd")


def _openmm_pme(charges, positions, box, tolerance=5e-4, reciprocal_group=None):
    """OpenMM Reference PME Coulomb: (energy, forces (N, 3), alpha, grid); epsilon 0, no exceptions.

    With ``reciprocal_group`` set, energy and forces are those of the reciprocal-space part only.
    """
    system = openmm.System()
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.PME)
    nb.setCutoffDistance(CUTOFF)
    nb.setEwaldErrorTolerance(tolerance)
    nb.setUseDispersionCorrection(False)
    for q in charges:
        system.addParticle(1.0)
        nb.addParticle(float(q), 0.1, 0.0)
    groups = {0}
    if reciprocal_group is not None:
        nb.setReciprocalSpaceForceGroup(reciprocal_group)
        groups = {reciprocal_group}
    system.addForce(nb)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True, groups=groups)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    forces = np.array(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    alpha, nx, ny, nz = nb.getPMEParametersInContext(context)
    return energy, forces, alpha, (nx, ny, nz)


def _minimum_image(dr, box):
    """OpenMM's reduced-form minimum image (subtract c, then b, then a)."""
    for axis in (2, 1, 0):
        dr = dr - np.round(dr[..., axis] / box[axis, axis])[..., None] * box[axis]
    return dr


def _direct(charges, positions, box, alpha):
    """Brute-force real-space Ewald sum over all minimum-image pairs within the cutoff: (energy, forces)."""
    n = len(charges)
    i, j = np.triu_indices(n, 1)
    dr = _minimum_image(positions[i] - positions[j], box)
    r = np.linalg.norm(dr, axis=1)
    keep = r < CUTOFF
    i, j, dr, r = i[keep], j[keep], dr[keep], r[keep]
    qq = ONE_4PI_EPS0 * charges[i] * charges[j]
    energy = np.sum(qq * erfc(alpha * r) / r)
    # -dE/dr for erfc(alpha r)/r, projected on the pair direction.
    dedr = qq * (erfc(alpha * r) / r**2 + 2 * alpha / math.sqrt(math.pi) * np.exp(-(alpha * r) ** 2) / r)
    fij = (dedr / r)[:, None] * dr
    forces = np.zeros_like(positions)
    np.add.at(forces, i, fij)
    np.add.at(forces, j, -fij)
    return energy, forces


def _ewald_total(charges, positions, box, alpha, grid):
    """Direct (numpy) + reciprocal + self + neutralizing energy and forces, float64."""
    e_dir, f_dir = _direct(charges, positions, box, alpha)
    pme = PMEReciprocal(alpha, grid)
    q, x, b = jnp.asarray(charges), jnp.asarray(positions), jnp.asarray(box)
    e_rec, g_rec = jax.jit(jax.value_and_grad(pme.energy, argnums=1))(q, x, b)
    volume = box[0, 0] * box[1, 1] * box[2, 2]
    e_corr = ewald_self_energy(q, alpha) + neutralizing_energy(q, alpha, volume)
    return e_dir + float(e_rec) + float(e_corr), f_dir - np.asarray(g_rec)


# Reduced-form triclinic boxes (rows = lattice vectors, nm).
GENERAL_TRICLINIC = np.array([[2.4, 0.0, 0.0], [0.3, 2.3, 0.0], [-0.2, 0.25, 2.2]])
RHOMBIC_DODECAHEDRON = 2.6 * np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, math.sqrt(0.5)]])
TRUNCATED_OCTAHEDRON = 2.6 * np.array([[1.0, 0.0, 0.0], [1 / 3, 2 * math.sqrt(2) / 3, 0.0],
                                       [-1 / 3, math.sqrt(2) / 3, math.sqrt(6) / 3]])


def _random_charges(box, seed=0, n=300, net_charge=0.7):
    """Random charges (summing to net_charge) at random positions, some outside the home cell."""
    rng = np.random.default_rng(seed)
    positions = rng.uniform(-0.3, 1.3, size=(n, 3)) @ box
    charges = rng.normal(0.0, 0.5, size=n)
    charges += (net_charge - charges.sum()) / n
    return charges, positions, box


def _compare(charges, positions, box, tolerance=5e-4):
    e_ref, f_ref, alpha, grid = _openmm_pme(charges, positions, box, tolerance)
    assert (alpha, grid) == pme_parameters(box, CUTOFF, tolerance)
    energy, forces = _ewald_total(charges, positions, box, alpha, grid)
    e_err = abs(energy - e_ref) / abs(e_ref)
    f_err = np.sqrt(np.mean((forces - f_ref) ** 2)) / np.sqrt(np.mean(f_ref**2))
    print(f"\n  E jmlsim {energy:.8f}  OpenMM {e_ref:.8f}  rel err {e_err:.2e}; force rel RMS err {f_err:.2e}"
          f"  (alpha {alpha:.4f}, grid {grid}, net charge {charges.sum():+.3f})")
    assert e_err < 1e-6
    assert f_err < 1e-5


@pytest.mark.parametrize("tolerance", [5e-4, 1e-5, 3e-3])
def test_pme_parameters_match_openmm(tolerance):
    for charges, positions, box in (_waterbox(), _dhfr()):
        _, _, alpha, grid = _openmm_pme(charges[:3], positions[:3], box, tolerance)
        ours = pme_parameters(box, CUTOFF, tolerance)
        assert ours[1] == grid
        assert ours[0] == alpha


def test_pme_parameters_fft_friendly():
    _, grid = pme_parameters(np.eye(3) * 6.1644723, CUTOFF, 1e-5, fft_friendly=True)
    assert grid == (160, 160, 160)  # the plain rule gives 151 (prime)


def test_water_box_matches_openmm():
    _compare(*_waterbox())


def test_water_box_tight_tolerance_matches_openmm():
    _compare(*_waterbox(), tolerance=1e-5)


def test_non_neutral_water_box_matches_openmm():
    charges, positions, box = _waterbox()
    charges = charges.copy()
    charges[:30] += 0.05  # net charge +1.5 e: exercises the neutralizing term
    _compare(charges, positions, box)


@pytest.mark.parametrize("box", [GENERAL_TRICLINIC, RHOMBIC_DODECAHEDRON], ids=["general", "dodecahedron"])
def test_triclinic_non_neutral_matches_openmm(box):
    _compare(*_random_charges(box))


def _total_jax(pme, alpha):
    def total(q, x, b):
        return (pme.energy(q, x, b) + ewald_self_energy(q, alpha)
                + neutralizing_energy(q, alpha, b[0, 0] * b[1, 1] * b[2, 2]))
    return total


def _reciprocal_group_check(charges, positions, box, label):
    """OpenMM reports reciprocal space + self + neutralizing energy in the reciprocal force group."""
    e_ref, f_ref, alpha, grid = _openmm_pme(charges, positions, box, reciprocal_group=1)
    total = jax.jit(jax.value_and_grad(_total_jax(PMEReciprocal(alpha, grid), alpha), argnums=1))
    energy, grad = total(jnp.asarray(charges), jnp.asarray(positions), jnp.asarray(box))
    e_err = abs(float(energy) - e_ref) / abs(e_ref)
    f_err = np.sqrt(np.mean((-np.asarray(grad) - f_ref) ** 2)) / np.sqrt(np.mean(f_ref**2))
    print(f"\n  {label} reciprocal+self+neutralizing: E {float(energy):.6f} vs OpenMM {e_ref:.6f}"
          f" (rel {e_err:.2e}), force rel RMS err {f_err:.2e}, grid {grid}")
    assert e_err < 1e-6
    assert f_err < 1e-5
    # the analytic reciprocal forces (self and neutralizing terms do not depend on positions)
    pme = PMEReciprocal(alpha, grid)
    analytic = np.asarray(jax.jit(pme.forces)(jnp.asarray(charges), jnp.asarray(positions), jnp.asarray(box)))
    assert np.sqrt(np.mean((analytic - f_ref) ** 2)) / np.sqrt(np.mean(f_ref**2)) < 1e-5
    np.testing.assert_allclose(analytic, -np.asarray(grad), rtol=0, atol=1e-9 * np.abs(f_ref).max())


def test_analytic_forces_at_the_cell_edge_float32():
    """Atoms whose fractional coordinate rounds to exactly 1 in float32 (spline window at the grid's end)."""
    charges, positions, box = _random_charges(GENERAL_TRICLINIC, seed=5, n=40)
    positions = np.asarray(positions, np.float32)
    eps = np.float32(-1e-9)
    edge = np.array([[eps, 0.2, 0.3], [0.3, eps, 0.4], [0.5, 0.6, eps]], np.float32)  # fractional
    positions[:3] = edge @ np.asarray(box, np.float32)
    pme = PMEReciprocal(*pme_parameters(box, CUTOFF))
    args = (jnp.asarray(charges, jnp.float32), jnp.asarray(positions), jnp.asarray(box, jnp.float32))
    autodiff = -np.asarray(jax.jit(jax.grad(pme.energy, argnums=1))(*args))
    analytic = np.asarray(jax.jit(pme.forces)(*args))
    np.testing.assert_allclose(analytic, autodiff, rtol=0, atol=1e-4 * np.abs(autodiff).max())
    grid64 = np.asarray(jax.jit(pme.charge_grid)(*(jnp.asarray(a, jnp.float64) for a in args)))
    assert np.isclose(np.asarray(jax.jit(pme.charge_grid)(*args)).sum(), charges.sum(), atol=1e-4)
    assert np.isclose(grid64.sum(), charges.sum())


def test_truncated_octahedron_reciprocal_matches_openmm():
    # Only the reciprocal group is compared here: OpenMM 8.6's Reference voxel neighbour list misses some
    # direct-space pairs inside the cutoff in this box (its direct energy changes when every atom is
    # translated by the same vector), so the direct sums would not agree.
    _reciprocal_group_check(*_random_charges(TRUNCATED_OCTAHEDRON, seed=3), "truncated octahedron")


def test_reciprocal_part_alone_matches_openmm_dhfr():
    _reciprocal_group_check(*_dhfr(), "DHFR")


def test_gradients_match_finite_differences():
    """d(reciprocal + self + neutralizing)/d(charges, positions, box) against central differences."""
    charges, positions, box = _random_charges(GENERAL_TRICLINIC, seed=1, n=60, net_charge=-0.4)
    alpha, grid = pme_parameters(box, CUTOFF)
    total = jax.jit(_total_jax(PMEReciprocal(alpha, grid), alpha))
    q, x, b = jnp.asarray(charges), jnp.asarray(positions), jnp.asarray(box)
    gq, gx, gb = jax.grad(total, argnums=(0, 1, 2))(q, x, b)
    h = 1e-5
    rng = np.random.default_rng(2)
    for atom in rng.choice(len(charges), 5, replace=False):
        dq = jnp.zeros_like(q).at[atom].set(h)
        fd = (total(q + dq, x, b) - total(q - dq, x, b)) / (2 * h)
        assert float(gq[atom]) == pytest.approx(float(fd), rel=1e-6, abs=1e-6)
        for d in range(3):
            dx = jnp.zeros_like(x).at[atom, d].set(h)
            fd = (total(q, x + dx, b) - total(q, x - dx, b)) / (2 * h)
            assert float(gx[atom, d]) == pytest.approx(float(fd), rel=1e-5, abs=1e-5)
    # Box derivative: scale the lower-triangular entries (the reduced form stays valid).
    for r, c in [(0, 0), (1, 1), (2, 2), (1, 0), (2, 0), (2, 1)]:
        db = jnp.zeros_like(b).at[r, c].set(h)
        fd = (total(q, x, b + db) - total(q, x, b - db)) / (2 * h)
        assert float(gb[r, c]) == pytest.approx(float(fd), rel=1e-5, abs=1e-5)


def test_charge_gradient_is_potential_and_translation_invariant():
    """Physics checks: E_rec is quadratic in q (q . dE/dq = 2E) and forces sum to ~0 for a neutral set."""
    charges, positions, box = _waterbox()
    alpha, grid = pme_parameters(box, CUTOFF)
    pme = PMEReciprocal(alpha, grid)
    q, x, b = jnp.asarray(charges), jnp.asarray(positions), jnp.asarray(box)
    energy = jax.jit(pme.energy)(q, x, b)
    gq, gx = jax.jit(jax.grad(pme.energy, argnums=(0, 1)))(q, x, b)
    assert float(jnp.dot(q, gq)) == pytest.approx(2 * float(energy), rel=1e-10)
    # B-spline PME does not conserve momentum exactly; the net force stays small next to typical forces.
    assert float(jnp.linalg.norm(gx.sum(0))) < 1e-3 * float(jnp.sqrt(jnp.mean(gx**2))) * len(charges)
    # A shift by a whole lattice vector is a symmetry.
    shifted = jax.jit(pme.energy)(q, x + b[1] - 2 * b[2], b)
    assert float(shifted) == pytest.approx(float(energy), rel=1e-10)


def test_float32_close_to_float64():
    charges, positions, box = _waterbox()
    alpha, grid = pme_parameters(box, CUTOFF)
    pme = PMEReciprocal(alpha, grid)
    args64 = [jnp.asarray(a, jnp.float64) for a in (charges, positions, box)]
    args32 = [jnp.asarray(a, jnp.float32) for a in (charges, positions, box)]
    f = jax.jit(jax.value_and_grad(pme.energy, argnums=1))
    e64, g64 = f(*args64)
    e32, g32 = f(*args32)
    assert e32.dtype == jnp.float32 and g32.dtype == jnp.float32
    assert float(e32) == pytest.approx(float(e64), rel=1e-4)
    assert float(jnp.sqrt(jnp.mean((g32 - g64) ** 2) / jnp.mean(g64**2))) < 1e-4


def test_dhfr_float32_timing():
    """Prints the time of one jitted float32 energy + position gradient on DHFR (23,558 atoms)."""
    charges, positions, box = _dhfr()
    alpha, grid = pme_parameters(box, CUTOFF)
    pme = PMEReciprocal(alpha, grid)
    f = jax.jit(jax.value_and_grad(pme.energy, argnums=1))
    args = [jnp.asarray(a, jnp.float32) for a in (charges, positions, box)]
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    compile_s = time.perf_counter() - t0
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        energy, grad = jax.block_until_ready(f(*args))
    per_call = (time.perf_counter() - t0) / reps
    print(f"\n  DHFR PME reciprocal float32 energy+grad: {per_call * 1e3:.1f} ms/call"
          f" (first call incl. compile {compile_s:.2f} s; {len(charges)} atoms, grid {grid},"
          f" backend {jax.default_backend()})")
    assert np.isfinite(float(energy)) and bool(jnp.all(jnp.isfinite(grad)))
