"""Constraints (CCMA-preconditioned SHAKE/RATTLE + SETTLE) against OpenMM's Reference platform, double precision.

Alanine dipeptide in TIP3P (749 rigid waters) with HBonds and AllBonds; DHFR (23558 atoms) for the float32
timing. Measured (2 shared CPU cores): positions agree with OpenMM to ~4e-9 nm, velocities to ~1e-7 nm/ps;
iterations of the general solve to the 1e-7 tolerance after a 0.005 nm Gaussian perturbation: HBonds 4,
AllBonds 6 (plain simultaneous SHAKE: 5 and 30 after 0.003 nm); DHFR AllBonds (slow test) 8 for a 2 fs step.
float32 positions()+velocities() on DHFR (HBonds + rigid water) about 2 ms jitted.
"""

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlsim.constraints import constraints_from_openmm, hydrogen_mass_repartition

openmm = pytest.importorskip("openmm")
app = pytest.importorskip("openmm.app")
unit = openmm.unit

DATA = os.path.join(os.path.dirname(__file__), "data", "amber")
ALA = os.path.join(DATA, "alanine-dipeptide-explicit", "alanine-dipeptide")
TOL_OMM = 1e-10


def _load(prefix, prmtop_name=None, crd_name=None):
    prmtop = app.AmberPrmtopFile(prmtop_name or prefix + ".prmtop")
    crd = app.AmberInpcrdFile(crd_name or prefix + ".crd")
    return prmtop, np.asarray(crd.getPositions().value_in_unit(unit.nanometer))


def _masses(system):
    return np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())])


def _context(system):
    return openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))


def _omm_positions(ctx, x):
    ctx.setPositions(x)
    ctx.applyConstraints(TOL_OMM)
    return ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)


def _omm_velocities(ctx, x, v):
    ctx.setPositions(x)
    ctx.setVelocities(v)
    ctx.applyVelocityConstraints(TOL_OMM)
    return ctx.getState(getVelocities=True).getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)


def _constraint_table(system):
    """All (i, j, d) constraints of an OpenMM system as arrays."""
    rows = [system.getConstraintParameters(k) for k in range(system.getNumConstraints())]
    ij = np.array([(r[0], r[1]) for r in rows])
    d = np.array([r[2].value_in_unit(unit.nanometer) for r in rows])
    return ij, d


@functools.lru_cache(maxsize=None)
def _setup(name):
    prmtop, x0 = _load(ALA)
    system = prmtop.createSystem(nonbondedMethod=app.PME, constraints=getattr(app, name), rigidWater=True)
    cons = constraints_from_openmm(system)
    ctx = _context(system)
    xc = _omm_positions(ctx, x0)  # a constrained starting point
    # Jitted once per system and reused (compiles dominate this file's run time).
    return dict(name=name, system=system, cons=cons, ctx=ctx, x=xc, m=_masses(system),
                pos=jax.jit(cons.positions_with_info), vel=jax.jit(cons.velocities))


@pytest.fixture(params=["HBonds", "AllBonds"])
def ala(request):
    return _setup(request.param)


def _relative_length_errors(system, x):
    ij, d = _constraint_table(system)
    return np.linalg.norm(x[ij[:, 0]] - x[ij[:, 1]], axis=1) / d - 1.0


def test_reads_openmm_constraints(ala):
    cons, system = ala["cons"], ala["system"]
    assert cons.n_constraints == system.getNumConstraints()
    assert cons.waters.shape == (749, 3)
    assert cons.pairs.shape[0] == (12 if ala["name"] == "HBonds" else 21)
    assert cons.water_oh == pytest.approx(0.09572) and cons.water_hh == pytest.approx(0.15136)
    m = ala["m"]
    assert np.all(m[cons.waters[:, 0]] > 15) and np.all(m[cons.waters[:, 1:]] < 1.1)  # O first


def test_positions_match_openmm_apply_constraints(ala):
    """OpenMM's applyConstraints projects along the directions of the given positions: reference = new."""
    cons, system = ala["cons"], ala["system"]
    rng = np.random.default_rng(1)
    x = ala["x"] + rng.normal(0.0, 0.005, ala["x"].shape)
    ours, iterations = ala["pos"](jnp.asarray(x), jnp.asarray(x), jnp.asarray(ala["m"]))
    ours = np.asarray(ours)
    ref = _omm_positions(ala["ctx"], x)
    err_ours = np.abs(_relative_length_errors(system, ours)).max()
    err_omm = np.abs(_relative_length_errors(system, ref)).max()
    diff = np.abs(ours - ref).max()
    print(f"\n{ala['name']}: {int(iterations)} iterations; max rel. length error ours {err_ours:.1e}, "
          f"OpenMM {err_omm:.1e}; max |ours - OpenMM| = {diff:.1e} nm")
    assert np.abs(x - ref).max() > 1e-3  # the perturbation really needed correcting
    assert err_ours < 1.5 * cons.tolerance
    assert err_omm < 1e-6
    assert diff < 1e-5
    assert 0 < int(iterations) < 20


def test_positions_match_openmm_verlet_step(ala):
    """SHAKE semantics: with no forces, OpenMM's Verlet step is x' = constrain(x + v dt, reference = x)."""
    cons = ala["cons"]
    bare = openmm.System()
    for mass in ala["m"]:
        bare.addParticle(mass)
    ij, d = _constraint_table(ala["system"])
    for (i, j), dist in zip(ij, d):
        bare.addConstraint(int(i), int(j), dist)
    dt = 0.002
    integrator = openmm.VerletIntegrator(dt)
    integrator.setConstraintTolerance(TOL_OMM)
    ctx = openmm.Context(bare, integrator, openmm.Platform.getPlatformByName("Reference"))
    rng = np.random.default_rng(2)
    v = rng.normal(size=ala["x"].shape) * np.sqrt(0.0083145 * 300.0 / ala["m"])[:, None]
    ctx.setPositions(ala["x"])
    ctx.setVelocities(v)
    integrator.step(1)
    ref = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    ours, iterations = ala["pos"](jnp.asarray(ala["x"] + v * dt), jnp.asarray(ala["x"]), jnp.asarray(ala["m"]))
    diff = np.abs(np.asarray(ours) - ref).max()
    print(f"\n{ala['name']} Verlet step: {int(iterations)} iterations, max |ours - OpenMM| = {diff:.1e} nm")
    assert diff < 1e-6


def test_positions_conserve_momentum_and_angular_momentum(ala):
    """Constraint forces act along reference bonds: sum m dx = 0 and sum m r_ref x dx = 0 (about any point)."""
    cons, m = ala["cons"], ala["m"]
    rng = np.random.default_rng(3)
    ref = ala["x"]
    new = ref + rng.normal(0.0, 0.003, ref.shape)
    out = np.asarray(ala["pos"](jnp.asarray(new), jnp.asarray(ref), jnp.asarray(m))[0])
    dx = out - new
    mass_dx = m[:, None] * dx
    scale = np.abs(mass_dx).sum()
    assert np.abs(mass_dx.sum(0)).max() < 1e-8 * scale
    assert np.abs(np.cross(ref - ref.mean(0), mass_dx).sum(0)).max() < 1e-8 * scale
    assert np.abs(_relative_length_errors(ala["system"], out)).max() < 1.5 * cons.tolerance
    # Already-constrained input is a fixed point.
    same = np.asarray(ala["pos"](jnp.asarray(ref), jnp.asarray(ref), jnp.asarray(m))[0])
    assert np.abs(same - ref).max() < 1e-8


def test_velocities_match_openmm(ala):
    cons, m, x = ala["cons"], ala["m"], ala["x"]
    rng = np.random.default_rng(4)
    v = rng.normal(size=x.shape)
    ours = np.asarray(ala["vel"](jnp.asarray(x), jnp.asarray(v), jnp.asarray(m)))
    ref = _omm_velocities(ala["ctx"], x, v)
    ij, _ = _constraint_table(ala["system"])
    dr = x[ij[:, 0]] - x[ij[:, 1]]
    # d/dt |r_ij|^2 / 2 = r_ij . v_ij, relative to |r_ij| |v_ij| before projection.
    rate = np.abs(np.sum(dr * (ours[ij[:, 0]] - ours[ij[:, 1]]), axis=1))
    before = np.linalg.norm(dr, axis=1) * np.linalg.norm(v[ij[:, 0]] - v[ij[:, 1]], axis=1)
    diff = np.abs(ours - ref).max()
    print(f"\n{ala['name']}: max |v ours - v OpenMM| = {diff:.1e} nm/ps, max |d|r|^2/dt| / (|r||v|) = "
          f"{(rate / before).max():.1e}")
    assert diff < 1e-5
    assert (rate / before).max() < 1e-5
    assert np.abs((m[:, None] * (ours - v)).sum(0)).max() < 1e-8 * np.abs(m[:, None] * v).sum()


def test_gradients_are_finite_and_match_finite_differences():
    """Implicit (custom_root / custom_linear_solve) gradients vs central differences; AllBonds + SETTLE."""
    ala = _setup("AllBonds")
    cons = dataclasses.replace(ala["cons"], tolerance=1e-13)
    m = jnp.asarray(ala["m"])
    rng = np.random.default_rng(5)
    ref = jnp.asarray(ala["x"])
    new = ref + rng.normal(0.0, 0.003, ref.shape)
    v = jnp.asarray(rng.normal(size=ref.shape))
    w = jnp.asarray(rng.normal(size=ref.shape))
    direction = jnp.asarray(rng.normal(size=ref.shape))

    def loss(new, ref, v):
        x = cons.positions(new, ref, m)
        return jnp.sum(w * x ** 2) + jnp.sum(w * cons.velocities(x, v, m) ** 2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(new, ref, v)
    loss = jax.jit(loss)
    h = 1e-6
    for k, g in enumerate(grads):
        assert not bool(jnp.any(jnp.isnan(g))), k
        args = [new, ref, v]
        plus, minus = list(args), list(args)
        plus[k] = args[k] + h * direction
        minus[k] = args[k] - h * direction
        fd = (loss(*plus) - loss(*minus)) / (2 * h)
        ad = jnp.sum(g * direction)
        assert abs(float(fd - ad)) < 1e-5 * (abs(float(ad)) + 1.0), (k, float(fd), float(ad))


def test_replica_axis_and_float32():
    ala = _setup("AllBonds")
    cons, m = ala["cons"], ala["m"]
    rng = np.random.default_rng(6)
    ref = np.stack([ala["x"], ala["x"] + 0.01])
    new = ref + rng.normal(0.0, 0.003, ref.shape)
    v = rng.normal(size=ref.shape)
    pos, vel = jax.jit(cons.positions), jax.jit(cons.velocities)
    batched = np.asarray(pos(jnp.asarray(new), jnp.asarray(ref), jnp.asarray(m)))
    batched_v = np.asarray(vel(jnp.asarray(batched), jnp.asarray(v), jnp.asarray(np.stack([m, m]))))
    for r in range(2):
        single = np.asarray(ala["pos"](jnp.asarray(new[r]), jnp.asarray(ref[r]), jnp.asarray(m))[0])
        single_v = np.asarray(ala["vel"](jnp.asarray(single), jnp.asarray(v[r]), jnp.asarray(m)))
        assert np.abs(batched[r] - single).max() < 1e-12
        assert np.abs(batched_v[r] - single_v).max() < 1e-12
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    out32 = pos(f32(new), f32(ref), f32(m))
    v32 = vel(out32, f32(v), f32(m))
    assert out32.dtype == jnp.float32 and v32.dtype == jnp.float32
    assert np.abs(np.asarray(out32, np.float64) - batched).max() < 1e-5
    assert np.abs(_relative_length_errors(ala["system"], np.asarray(out32[0], np.float64))).max() < 1e-4
    assert np.abs(np.asarray(v32, np.float64) - batched_v).max() < 1e-4


def test_plain_shake_without_preconditioner_converges_slower(ala):
    cons = ala["cons"]
    jacobi = dataclasses.replace(cons, coupling=None)
    rng = np.random.default_rng(7)
    new = jnp.asarray(ala["x"] + rng.normal(0.0, 0.003, ala["x"].shape))
    args = (new, jnp.asarray(ala["x"]), jnp.asarray(ala["m"]))
    out_ccma, it_ccma = ala["pos"](*args)
    out_jacobi, it_jacobi = jax.jit(jacobi.positions_with_info)(*args)
    print(f"\n{ala['name']}: CCMA {int(it_ccma)} iterations, plain simultaneous SHAKE {int(it_jacobi)}")
    assert np.abs(np.asarray(out_ccma) - np.asarray(out_jacobi)).max() < 1e-6
    assert int(it_ccma) <= int(it_jacobi) < jacobi.max_iterations


def test_coupling_matrix_is_the_inverse_of_the_sparse_coupling():
    """Untruncated preconditioner: symmetric, and its inverse has unit diagonal and is nonzero only for
    constraints sharing an atom; with angles from positions instead of the force field it works as well."""
    ala = _setup("AllBonds")
    full = constraints_from_openmm(ala["system"], threshold=0.0)
    n = full.pairs.shape[0]
    p = np.zeros((n, n))
    np.add.at(p, (full.coupling.rows, full.coupling.cols), full.coupling.values)
    assert np.abs(p - p.T).max() < 1e-12
    coupling = np.linalg.inv(p)
    a, b = full.pairs[:, 0], full.pairs[:, 1]
    shares = (a[:, None] == a) | (a[:, None] == b) | (b[:, None] == a) | (b[:, None] == b)
    assert np.abs(np.diag(coupling) - 1.0).max() < 1e-10
    assert np.abs(coupling[~shares]).max() < 1e-10
    assert np.abs(coupling[shares & ~np.eye(n, dtype=bool)]).min() > 1e-3
    geometric = constraints_from_openmm(ala["system"], positions=ala["x"])
    rng = np.random.default_rng(9)
    new = jnp.asarray(ala["x"] + rng.normal(0.0, 0.003, ala["x"].shape))
    out, iterations = jax.jit(geometric.positions_with_info)(new, jnp.asarray(ala["x"]), jnp.asarray(ala["m"]))
    expected, _ = ala["pos"](new, jnp.asarray(ala["x"]), jnp.asarray(ala["m"]))
    assert np.abs(np.asarray(out) - np.asarray(expected)).max() < 1e-6
    assert int(iterations) < 10


@pytest.mark.parametrize("rigid_water", [True, False])
@pytest.mark.parametrize("hydrogen_mass", [3.0, 4.0])
def test_hydrogen_mass_repartition_matches_openmm(rigid_water, hydrogen_mass):
    prmtop, _ = _load(ALA)
    plain = prmtop.createSystem(constraints=app.HBonds, rigidWater=rigid_water)
    heavy = prmtop.createSystem(constraints=app.HBonds, rigidWater=rigid_water,
                                hydrogenMass=hydrogen_mass * unit.amu)
    bonds = np.array([(a.index, b.index) for a, b in prmtop.topology.bonds()])
    hydrogens = np.array([a.element is not None and a.element.symbol == "H" for a in prmtop.topology.atoms()])
    m0, expected = _masses(plain), _masses(heavy)
    for kwargs in ({}, {"hydrogens": hydrogens}):
        got = hydrogen_mass_repartition(m0, bonds, hydrogen_mass, skip_water=rigid_water, **kwargs)
        assert np.abs(got - expected).max() < 1e-10
        got_jax = hydrogen_mass_repartition(jnp.asarray(m0), bonds, hydrogen_mass, skip_water=rigid_water, **kwargs)
        assert np.abs(np.asarray(got_jax) - expected).max() < 1e-10
    assert np.sum(expected != m0) > (10 if rigid_water else 1000)
    assert got.sum() == pytest.approx(m0.sum(), abs=1e-9)


def test_dhfr_float32_timing():
    prmtop, x0 = _load(None, os.path.join(DATA, "dhfr", "JAC.prmtop"), os.path.join(DATA, "dhfr", "JAC.inpcrd"))
    system = prmtop.createSystem(nonbondedMethod=app.PME, constraints=app.HBonds, rigidWater=True)
    t0 = time.perf_counter()
    cons = constraints_from_openmm(system)
    build = time.perf_counter() - t0
    m = _masses(system)
    xc = _omm_positions(_context(system), x0)
    rng = np.random.default_rng(8)
    v = rng.normal(size=x0.shape) * np.sqrt(0.0083145 * 300.0 / m)[:, None]
    dt = 0.002

    @jax.jit
    def step(x, v, m):
        new, iterations = cons.positions_with_info(x + v * dt, x, m)
        return new, cons.velocities(new, (new - x) / dt, m), iterations

    args = tuple(jnp.asarray(a, jnp.float32) for a in (xc, v, m))
    new, v_new, iterations = jax.block_until_ready(step(*args))
    t0 = time.perf_counter()
    n_rep = 10
    for _ in range(n_rep):
        jax.block_until_ready(step(*args))
    elapsed = (time.perf_counter() - t0) / n_rep
    errors = np.abs(cons.errors(np.asarray(new, np.float64))).max()
    print(f"\nDHFR HBonds + rigid water ({cons.pairs.shape[0]} bonds, {cons.waters.shape[0]} waters): build "
          f"{build:.2f} s; float32 jitted positions()+velocities() {elapsed * 1e3:.2f} ms; "
          f"{int(iterations)} iterations; max rel. length error {errors:.1e}")
    assert cons.n_constraints == system.getNumConstraints()
    assert errors < 1e-4


@pytest.mark.slow
def test_dhfr_allbonds_iterations():
    """AllBonds couples the whole protein (2523 constraints in one cluster): report CCMA iterations."""
    prmtop, x0 = _load(None, os.path.join(DATA, "dhfr", "JAC.prmtop"), os.path.join(DATA, "dhfr", "JAC.inpcrd"))
    system = prmtop.createSystem(nonbondedMethod=app.PME, constraints=app.AllBonds, rigidWater=True)
    t0 = time.perf_counter()
    cons = constraints_from_openmm(system)
    build = time.perf_counter() - t0
    m = _masses(system)
    xc = _omm_positions(_context(system), x0)
    rng = np.random.default_rng(10)
    v = rng.normal(size=x0.shape) * np.sqrt(0.0083145 * 300.0 / m)[:, None]
    v = np.asarray(cons.velocities(jnp.asarray(xc), jnp.asarray(v), jnp.asarray(m)))  # thermal, constrained
    pos = jax.jit(cons.positions_with_info)
    for dtype in (jnp.float64, jnp.float32):
        for dt in (0.002, 0.004):
            new, iterations = pos(*(jnp.asarray(a, dtype) for a in (xc + v * dt, xc, m)))
            errors = np.abs(cons.errors(np.asarray(new, np.float64))).max()
            print(f"\nDHFR AllBonds {jnp.dtype(dtype).name} dt={dt}: {int(iterations)} iterations, max rel. "
                  f"error {errors:.1e} (build {build:.2f} s, {cons.coupling.values.size} preconditioner entries)")
            assert errors < (1.5e-7 if dtype == jnp.float64 else 1e-4)
