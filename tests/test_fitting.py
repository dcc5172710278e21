"""Force-field fitting (issue 6): QM engines, torsion scans and Fourier fits, export to OpenMM, reweighting,
gradients through trajectories, and the ``jmlsim fit`` command.

Fast tests use fixed geometries (the stored GFN2-xTB scan of alanine dipeptide phi, tests/data/fitting) or
synthetic configurations; the end-to-end fits (MM relaxations, MD resampling, live QM) are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlsim.cli import main
from jmlsim.energy.lennard_jones import LennardJonesParams
from jmlsim.errors import InputError
from jmlsim.fitting import export, reweighting as rw, scan as sc, torsions as tf, trajectory_gradients as tg

DATA = Path(__file__).resolve().parent / "data"
ALA = DATA / "amber" / "alanine-dipeptide-gbsa" / "alanine-dipeptide"
PRMTOP, CRD = str(ALA) + ".prmtop", str(ALA) + ".crd"
PHI, PSI = (4, 6, 8, 14), (6, 8, 14, 16)
PHI_SCAN = DATA / "fitting" / "ala2_phi_gfn2_hold_psi.npz"


@pytest.fixture(scope="module")
def ala():
    from jmlsim.io.openmm_import import load_amber

    return load_amber(PRMTOP, CRD, nonbonded="nocutoff", constraints="none", return_openmm=True)


@pytest.fixture(scope="module")
def phi_scan():
    with np.load(PHI_SCAN) as data:
        return sc.ScanResult(**{k: np.asarray(data[k]) for k in sc.ScanResult._fields})


# --- QM engines ---------------------------------------------------------------------------------------

WATER_Z = [8, 1, 1]
WATER_NM = np.array([[0.0, 0.0, 0.0], [0.0957, 0.0, 0.0], [-0.024, 0.0927, 0.0]])


def test_gfn2_forces_are_minus_energy_gradient():
    pytest.importorskip("tblite")
    from jmlsim.qm.engines import qm_energy_forces

    e, f = qm_energy_forces(WATER_Z, WATER_NM, "gfn2")
    assert f.shape == (3, 3) and np.isfinite(e)
    h = 1e-5
    for atom, axis in ((1, 0), (2, 1)):
        d = np.zeros((3, 3))
        d[atom, axis] = h
        fd = -(qm_energy_forces(WATER_Z, WATER_NM + d)[0] - qm_energy_forces(WATER_Z, WATER_NM - d)[0]) / (2 * h)
        assert abs(fd - f[atom, axis]) < 1e-3 * abs(f[atom, axis]) + 0.05
    # a stretched O-H bond raises the energy by a chemically sensible amount (tens of kJ/mol per 0.02 nm)
    stretched = WATER_NM.copy()
    stretched[1, 0] += 0.02
    assert 5.0 < qm_energy_forces(WATER_Z, stretched)[0] - e < 100.0


def test_qm_bad_input_is_input_error():
    from jmlsim.qm.engines import qm_energy_forces

    with pytest.raises(InputError, match="method"):
        qm_energy_forces(WATER_Z, WATER_NM, "hf")
    with pytest.raises(InputError, match="shape"):
        qm_energy_forces(WATER_Z, WATER_NM[:2])
    with pytest.raises(InputError, match="multiplicity"):
        qm_energy_forces(WATER_Z, WATER_NM, multiplicity=2)  # 10 electrons cannot be a doublet


# --- scan geometry ------------------------------------------------------------------------------------

def test_set_dihedral_moves_one_side_rigidly(ala):
    system, _ = ala
    moving = sc.moving_atoms(system, PHI)
    assert moving[8] and moving[14] and not moving[6] and not moving[4]
    x = sc.set_dihedral(system.positions, PHI, moving, np.deg2rad(123.0))
    assert np.isclose(np.rad2deg(sc.dihedral_angle(x, PHI)), 123.0, atol=1e-8)
    # distances within each side are unchanged
    for side in (moving, ~moving):
        idx = np.flatnonzero(side)
        d0 = np.linalg.norm(system.positions[idx, None] - system.positions[None, idx], axis=-1)
        d1 = np.linalg.norm(x[idx, None] - x[None, idx], axis=-1)
        assert np.allclose(d0, d1, atol=1e-12)


def test_check_dihedral_rejects_bad_quadruples(ala):
    system, _ = ala
    assert sc.check_dihedral(system, PHI) == PHI
    with pytest.raises(InputError, match="out of range"):
        sc.check_dihedral(system, (4, 6, 8, 22))
    with pytest.raises(InputError, match="not bonded in sequence"):
        sc.check_dihedral(system, (4, 6, 10, 14))
    with pytest.raises(InputError, match="distinct"):
        sc.check_dihedral(system, (4, 6, 6, 8))


# --- Fourier fit at fixed geometries ------------------------------------------------------------------

def _surrogate_energies(system, atoms, terms, positions):
    fitted = tf.with_fitted_torsion(system, atoms, terms)
    energy = jax.jit(tf.energy_function(fitted))
    return np.array([float(energy(fitted.params, x)) for x in positions])


def test_fourier_fit_recovers_known_terms(ala, phi_scan):
    """'QM' = MM with known phi terms at the stored scan geometries: the fit must find them again."""
    system, _ = ala
    true = tf.FourierTerms(np.array([1.5, 3.0, 0.0, 0.8, 0.0, 0.3]), np.array([0.3, np.pi, 0.0, 1.0, 0.0, 2.0]))
    target = _surrogate_energies(system, PHI, true, phi_scan.positions)
    base = tf.with_fitted_torsion(system, PHI)
    terms, loss, _ = tf.fit_fourier(base, phi_scan.positions, target, restarts=4, steps=1500, l2=0.0)
    assert loss < 1e-4
    # compare the torsion energy curves (the (k, phase) form has an equivalent sign flip)
    phi = np.linspace(-np.pi, np.pi, 73)
    n = tf.PERIODICITIES[:, None]
    curve = lambda t: np.sum(np.asarray(t.k)[:, None] * np.cos(n * phi - np.asarray(t.phase)[:, None]), 0)  # noqa
    assert np.max(np.abs(curve(terms) - curve(true))) < 0.02
    # and the starting terms are measurably wrong (the test can fail)
    before = tf.original_fourier(system, PHI)
    assert np.max(np.abs(curve(before) - curve(true))) > 1.0


def test_fit_objective_gradient_matches_finite_differences(ala, phi_scan):
    system, _ = ala
    base = tf.with_fitted_torsion(system, PHI)
    loss = jax.jit(tf.fit_objective(base, phi_scan.positions[::3], phi_scan.energies[::3], l2=1e-3))
    terms = tf.FourierTerms(jnp.array([0.7, -1.2, 0.4, 0.9, 0.1, -0.3]), jnp.array([0.2, 1.0, -2.0, 0.5, 3.0, 1.5]))
    grad = jax.grad(loss)(terms)
    # the loss carries QM total energies (~1e5 kJ/mol): its rounding noise (~2e-11) over 2h must stay well below
    # the tolerance, so h = 1e-4 (central-difference truncation ~h^2, measured 1e-7 here)
    h = 1e-4
    for field in ("k", "phase"):
        for i in (0, 1, 3, 5):
            def shifted(sign):
                arr = np.array(getattr(terms, field), dtype=np.float64)
                arr[i] += sign * h
                return terms._replace(**{field: jnp.asarray(arr)})
            fd = (float(loss(shifted(1))) - float(loss(shifted(-1)))) / (2 * h)
            assert abs(float(getattr(grad, field)[i]) - fd) < 1e-5 * max(1.0, abs(fd)), (field, i)


def test_profile_rmse_ignores_offset():
    qm = np.array([0.0, 1.0, 4.0, 2.0])
    assert tf.profile_rmse(qm + 7.5, qm) < 1e-12
    assert np.isclose(tf.profile_rmse(qm + np.array([1, -1, 1, -1]), qm), 1.0)


# --- export -------------------------------------------------------------------------------------------

def test_frcmod_round_trip_through_openmm_matches_jmlsim(ala, phi_scan, tmp_path):
    """frcmod written, read back, applied to OpenMM's System: OpenMM energies equal jmlsim's."""
    import copy

    system, omm = ala
    terms = tf.canonical(tf.FourierTerms(np.array([0.9, -2.1, 0.3, 1.1, 0.05, 0.4]),
                                         np.array([0.1, 2.0, -1.0, 3.0, 0.5, -2.5])))
    types = export.prmtop_atom_types(PRMTOP)
    path = tmp_path / "fit.frcmod"
    path.write_text(export.frcmod_text([types[a] for a in PHI], tf.PERIODICITIES, terms.k, terms.phase))
    entries = export.read_frcmod_dihedrals(str(path))
    assert list(entries) == [tuple(types[a] for a in PHI)]
    omm_fit = copy.deepcopy(omm)
    assert export.apply_frcmod(omm_fit, types, entries) == 1
    positions = phi_scan.positions[::4]
    ours = _surrogate_energies(system, PHI, terms, positions)
    theirs = export.openmm_energies(omm_fit, positions)
    assert np.max(np.abs(ours - theirs)) < 1e-4
    # the unmodified OpenMM system differs (so the comparison has teeth)
    assert np.max(np.abs(export.openmm_energies(omm, positions) - theirs)) > 1.0
    # serialized System XML reloads with the same energies
    import openmm as mm

    export.write_system_xml(omm_fit, str(tmp_path / "system.xml"))
    reloaded = mm.XmlSerializer.deserialize((tmp_path / "system.xml").read_text())
    assert np.allclose(export.openmm_energies(reloaded, positions), theirs, atol=1e-8)


# --- reweighting --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lj_samples():
    """Jittered fcc configurations of a 32-atom LJ fluid (rho 0.8, cutoff 1.6): fixed samples for reweighting."""
    from jmlsim.systems.lennard_jones_fluid import lennard_jones_fluid

    system = lennard_jones_fluid(32, 0.8, cutoff=1.6)
    rng = np.random.default_rng(3)
    x = system.positions[None] + 0.03 * rng.normal(size=(40,) + system.positions.shape)
    term, nbrs = system.terms["lennard_jones"], rw.all_pairs(32)
    params0 = LennardJonesParams(jnp.float64(1.0), jnp.float64(1.0))
    energy = jax.jit(jax.vmap(lambda xx: term.energy(params0, xx, jnp.asarray(system.box), nbrs)))
    samples = rw.Samples(x, system.box, np.asarray(energy(jnp.asarray(x))), params0)
    return term, nbrs, samples


def test_all_pairs_list_matches_direct_sum(lj_samples):
    term, nbrs, samples = lj_samples
    x, box = samples.positions[0], samples.box
    d = x[:, None] - x[None]
    d -= box[0, 0] * np.round(d / box[0, 0])
    rc = term.cutoff
    r = np.linalg.norm(d, axis=-1)[np.triu_indices(len(x), 1)]
    r = r[r < rc]
    u = 4 * (r ** -12 - r ** -6) - 4 * (rc ** -12 - rc ** -6)
    assert np.isclose(float(term.energy(samples.params, jnp.asarray(x), jnp.asarray(box), nbrs)), u.sum(), rtol=1e-10)


def test_reweighting_loss_gradient_matches_finite_differences(lj_samples):
    term, nbrs, samples = lj_samples
    loss = jax.jit(rw.make_loss(term, 1.5, [-4.0, 2.0], [0.05, 0.1], nbrs))
    theta = jnp.log(jnp.array([1.01, 0.97]))
    grad = jax.grad(lambda t: loss(t, samples)[0])(theta)
    h = 1e-6
    for i in range(2):
        e = np.zeros(2)
        e[i] = h
        fd = (float(loss(theta + e, samples)[0]) - float(loss(theta - e, samples)[0])) / (2 * h)
        assert abs(float(grad[i]) - fd) < 1e-5 * max(1.0, abs(fd))


def test_reweighting_at_sampling_params_is_plain_average(lj_samples):
    term, nbrs, samples = lj_samples
    avg, w, ess = rw.reweighted_averages(term, samples.params, samples, 1.5, nbrs)
    assert np.allclose(np.asarray(w), 1.0 / 40) and np.isclose(float(ess), 40.0)
    obs = jax.jit(jax.vmap(lambda x: rw.lj_observables(term, samples.params, x, jnp.asarray(samples.box), 1.5, nbrs)))
    direct = np.mean(np.asarray(obs(jnp.asarray(samples.positions))), axis=0)
    assert np.allclose(np.asarray(avg), direct)


class _FixedSampler:
    """A sampler that always returns the same configurations (energies recomputed at the requested params),
    so the optimizer and ESS logic run without MD."""

    def __init__(self, term, nbrs, samples, kT):
        self.term, self.nbrs, self.samples, self.kT, self.runs = term, nbrs, samples, kT, 0

    def sample(self, params, n_frames, every):
        self.runs += 1
        energies = self._energy(params, jnp.asarray(self.samples.positions))
        return self.samples._replace(energies=np.asarray(energies), params=params)

    def _energy(self, params, positions):
        if not hasattr(self, "_jit"):
            box = jnp.asarray(self.samples.box)
            self._jit = jax.jit(jax.vmap(lambda p, x: self.term.energy(p, x, box, self.nbrs), in_axes=(None, 0)))
        return self._jit(params, positions)


def test_reweighting_fit_recovers_known_parameters(lj_samples):
    """Targets = reweighted observables at known (sigma, epsilon); the fit starts 1-1.5 % away and must return.
    (On few jittered, non-Boltzmann configurations the two-observable map can have a second root a few % away,
    so the start stays local; the slow MD test below starts 4-10 % away with real samples.)"""
    term, nbrs, samples = lj_samples
    kT = 1.5
    truth = LennardJonesParams(jnp.float64(1.012), jnp.float64(0.985))
    targets = np.asarray(rw.reweighted_averages(term, truth, samples, kT, nbrs)[0])
    sampler = _FixedSampler(term, nbrs, samples, kT)
    start = LennardJonesParams(jnp.float64(1.02), jnp.float64(0.975))
    import optax

    out = rw.fit_observables(sampler, start, targets, [0.05, 0.1], iterations=120,
                             learning_rate=optax.cosine_decay_schedule(0.01, 120), n_frames=40, ess_fraction=0.3)
    assert abs(float(out["params"].sigma) - 1.012) < 2e-3
    assert abs(float(out["params"].epsilon) - 0.985) < 4e-3
    assert out["history"][-1][3] < 1e-3 * out["history"][0][3]


# --- gradients through trajectories -------------------------------------------------------------------

@pytest.fixture(scope="module")
def lj_trajectory():
    from jmlsim.energy.lennard_jones import LennardJones
    from jmlsim.systems.lennard_jones_fluid import lennard_jones_fluid

    system = lennard_jones_fluid(32, 0.8, cutoff=1.6)
    term = LennardJones(cutoff=1.6, switch_distance=1.3)  # smooth forces: finite differences stay meaningful
    ff, ef = tg.lj_force_and_energy(term, system.box, rw.all_pairs(32))
    rng = np.random.default_rng(1)
    x0 = jnp.asarray(system.positions + 0.02 * rng.normal(size=system.positions.shape))
    v0 = jnp.asarray(rng.normal(size=x0.shape))
    return ff, (lambda p, x, v: ef(p, x) / 32), system.masses, x0, v0


def test_trajectory_gradient_matches_finite_differences_and_checkpointing(lj_trajectory):
    ff, obs, masses, x0, v0 = lj_trajectory
    plain = jax.jit(tg.verlet_observable(ff, obs, masses, 0.005, 24))
    ck = jax.jit(tg.verlet_observable(ff, obs, masses, 0.005, 24, segment=6))
    p = LennardJonesParams(jnp.float64(1.0), jnp.float64(1.0))
    g_plain, g_ck = jax.grad(plain)(p, x0, v0), jax.grad(ck)(p, x0, v0)
    assert np.isclose(float(plain(p, x0, v0)), float(ck(p, x0, v0)), rtol=1e-12)
    for field in ("sigma", "epsilon"):
        assert np.isclose(float(getattr(g_plain, field)), float(getattr(g_ck, field)), rtol=1e-10)
        h = 1e-6
        up = p._replace(**{field: getattr(p, field) + h})
        down = p._replace(**{field: getattr(p, field) - h})
        fd = (float(plain(up, x0, v0)) - float(plain(down, x0, v0))) / (2 * h)
        assert abs(float(getattr(g_plain, field)) - fd) < 1e-5 * max(1.0, abs(fd)), field


def test_checkpointed_trajectory_gradient_uses_less_memory(lj_trajectory):
    ff, obs, masses, x0, v0 = lj_trajectory
    p = LennardJonesParams(jnp.float64(1.0), jnp.float64(1.0))
    plain = tg.gradient_memory_bytes(tg.verlet_observable(ff, obs, masses, 0.005, 64), p, x0, v0)
    ck = tg.gradient_memory_bytes(tg.verlet_observable(ff, obs, masses, 0.005, 64, segment=8), p, x0, v0)
    if plain < 0:
        pytest.skip("backend reports no memory analysis")
    assert ck < plain / 2.5  # stored carries: 64 steps vs 8 segment starts + 8 recomputed steps


# --- the command --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dihedral, message", [
    (["4", "6", "10", "14"], "not bonded in sequence"),
    (["4", "6", "8", "40"], "out of range"),
    (["4", "6", "8", "-1"], "at least 0"),
    (["4", "6", "8"], "expected 4 arguments"),
])
def test_fit_torsions_bad_dihedral_exits_2_with_one_line(dihedral, message, capsys):
    rc = main(["fit", "torsions", "--prmtop", PRMTOP, "--inpcrd", CRD, "--dihedral", *dihedral, "--json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("jmlsim: error:") and message in err[0]


def test_fit_torsions_rejects_mismatched_qm_scan(capsys):
    rc = main(["fit", "torsions", "--prmtop", PRMTOP, "--inpcrd", CRD, "--dihedral", *map(str, PSI),
               "--qm-scan", str(PHI_SCAN), "--json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "scans dihedral" in err[0]


@pytest.mark.slow
def test_fit_torsions_cli_on_stored_gfn2_scan(tmp_path, capsys):
    """Alanine dipeptide phi (psi held) against the stored GFN2-xTB scan: RMSE after <= 0.3 kcal/mol, outputs
    written, frcmod reproduces jmlsim's energies in OpenMM, existing outputs are not overwritten."""
    out = tmp_path / "fit"
    args = ["fit", "torsions", "--prmtop", PRMTOP, "--inpcrd", CRD, "--dihedral", *map(str, PHI),
            "--qm-scan", str(PHI_SCAN), "--out", str(out), "--no-progress", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["rmse_after_kcal_mol"] <= 0.3 < result["rmse_before_kcal_mol"]
    assert len(result["parameters"]) == 6 and result["held"] == [list(PSI)]
    assert result["openmm_max_abs_energy_diff_kj_mol"] < 1e-4
    for name in ("profile.png", "profile.csv", "fit.frcmod", "system.xml", "qm_scan.npz", "result.json"):
        assert (out / name).stat().st_size > 0
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err


FLURBIPROFEN = DATA / "fitting" / "flurbiprofen"
BIARYL = (4, 5, 8, 9)


def test_equivalent_quadruples_are_the_ones_an_frcmod_line_sets():
    """The biaryl ca-cp-cp-ca type sequence appears on four quadruples about the C6-C9 bond."""
    from jmlsim.io.openmm_import import load_amber

    prmtop = str(FLURBIPROFEN / "flurbiprofen.prmtop")
    system = load_amber(prmtop, str(FLURBIPROFEN / "flurbiprofen.inpcrd"), nonbonded="nocutoff",
                        constraints="none")
    types = export.prmtop_atom_types(prmtop)
    quads = tf.equivalent_quadruples(system, BIARYL, types)
    assert quads[0].tolist() == list(BIARYL)
    assert sorted(map(tuple, quads.tolist())) == [(4, 5, 8, 9), (4, 5, 8, 13), (6, 5, 8, 9), (6, 5, 8, 13)]
    assert tf.equivalent_quadruples(system, BIARYL, None).tolist() == [list(BIARYL)]


@pytest.mark.slow
def test_fit_biaryl_torsion_of_a_drug_like_ligand(tmp_path, capsys):
    """Flurbiprofen (GAFF2/AM1-BCC) biaryl torsion against its stored GFN2-xTB scan: the fit is shared by the four
    ca-cp-cp-ca quadruples, RMSE after <= 0.3 kcal/mol, and the frcmod gives OpenMM jmlsim's energies."""
    args = ["fit", "torsions", "--prmtop", str(FLURBIPROFEN / "flurbiprofen.prmtop"),
            "--inpcrd", str(FLURBIPROFEN / "flurbiprofen.inpcrd"), "--dihedral", *map(str, BIARYL),
            "--qm-scan", str(FLURBIPROFEN / "flurbiprofen_biaryl_gfn2.npz"), "--out", str(tmp_path / "fit"),
            "--no-progress", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["atom_types"] == ["ca", "cp", "cp", "ca"]
    assert len(result["fitted_quadruples"]) == 4 and result["frcmod_quadruples_changed"] == 4
    assert result["rmse_after_kcal_mol"] <= 0.3 < result["rmse_before_kcal_mol"]
    assert result["openmm_max_abs_energy_diff_kj_mol"] < 1e-4


@pytest.mark.slow
def test_live_gfn2_scan_small():
    """A coarse (60 degree) live GFN2-xTB scan of phi holding psi: relaxed, restrained, sensible barrier."""
    pytest.importorskip("tblite")
    from jmlsim.io.openmm_import import load_amber

    system = load_amber(PRMTOP, CRD, nonbonded="nocutoff", constraints="none")
    moving = sc.moving_atoms(system, PHI)
    fn = sc.qm_function(sc.atomic_numbers(system), "gfn2")
    psi0 = sc.dihedral_angle(system.positions, PSI)
    qm = sc.relax_qm(fn, system.positions, PHI, moving, sc.scan_targets(60.0), progress=False,
                     held=[PSI], held_targets=[psi0])
    assert np.all(np.abs(np.rad2deg(qm.angles - qm.targets)) < 2.0)
    assert 2.0 < np.ptp(qm.energies) / 4.184 < 40.0
    assert np.all(qm.max_force < 50.0)


@pytest.mark.slow
def test_reweighting_fit_with_md_resampling_recovers_parameters():
    """Targets from MD at (1, 1); start at (1.04, 0.9); the DiffTRe loop with resampling must come back."""
    from jmlsim.systems.lennard_jones_fluid import lennard_jones_fluid

    sampler = rw.LJSampler(lennard_jones_fluid(108, 0.8), 1.5, seed=1)
    truth = LennardJonesParams(jnp.float64(1.0), jnp.float64(1.0))
    ref = sampler.sample(truth, 400, 10)
    targets = np.asarray(rw.reweighted_averages(sampler.term, truth, ref, 1.5, sampler.nbrs)[0])
    out = rw.fit_observables(sampler, LennardJonesParams(jnp.float64(1.04), jnp.float64(0.9)), targets,
                             [0.05, 0.1], iterations=60, learning_rate=0.01)
    assert out["resamples"] >= 2
    assert abs(float(out["params"].sigma) - 1.0) < 0.02
    assert abs(float(out["params"].epsilon) - 1.0) < 0.04


@pytest.mark.slow
def test_notebook_executes(tmp_path):
    import nbclient
    import nbformat

    path = Path(__file__).resolve().parents[1] / "notebooks" / "torsion_fit.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "RMSE after" in text


def test_fit_observables_bad_input_exits_2(capsys):
    rc = main(["fit", "observables", "--lj", "20", "--target-energy", "-4", "--target-pressure", "1", "--json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cutoff" in err[0]


@pytest.mark.slow
def test_fit_observables_cli_runs(capsys):
    rc = main(["fit", "observables", "--lj", "108", "--target-energy", "-4.3", "--target-pressure", "3.8",
               "--sigma", "1.02", "--iterations", "3", "--steps", "500", "--no-progress", "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and out["iterations"] == 3 and out["resamples"] >= 1
    assert 0.9 < out["sigma"] < 1.1 and np.isfinite(out["loss"])
