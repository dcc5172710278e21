"""Trajectory analysis (issue 7): featurization, MSM pipeline (deeptime), VAMPnet, plots, adaptive sampling, CLI.

Synthetic data with known kinetics make the checks exact: a Markov chain between alanine-dipeptide basins, written
as real alanine-dipeptide frames (torsions set by rotating the molecule), must come back from the pipeline with
the chain's stationary probabilities and its slowest implied timescale.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("deeptime")
mdtraj = pytest.importorskip("mdtraj")

from jmlsim.analysis import basins, featurize, msm, pipeline  # noqa: E402
from jmlsim.errors import InputError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALA = ROOT / "tests" / "data" / "amber" / "alanine-dipeptide-gbsa" / "alanine-dipeptide"

# basin centres (phi, psi) in degrees and a chain whose slowest process is the exchange with alpha_L
CENTRES = np.array([[-150.0, 155.0], [-70.0, -40.0], [65.0, 40.0]])
TRANSITIONS = np.array([[0.90, 0.095, 0.005],
                        [0.19, 0.80, 0.01],
                        [0.02, 0.02, 0.96]])


def _chain(T, n, rng, start=0):
    cum = np.cumsum(T, axis=1)
    s = np.empty(n, np.int64)
    s[0] = start
    u = rng.random(n)
    for i in range(1, n):
        s[i] = np.searchsorted(cum[s[i - 1]], u[i])
    return s


def _stationary(T):
    w, v = np.linalg.eig(T.T)
    pi = np.real(v[:, np.argmax(np.real(w))])
    return pi / pi.sum()


def _slowest_timescale(T, lag=1):
    lam = np.sort(np.abs(np.linalg.eigvals(T)))[::-1]
    return -lag / np.log(lam[1])


def _dihedral(x, quad):
    """Torsion (degrees) of atoms quad in frames x (..., atoms, 3), written out independently of mdtraj."""
    b0, b1, b2 = x[..., quad[0], :] - x[..., quad[1], :], x[..., quad[2], :] - x[..., quad[1], :], \
        x[..., quad[3], :] - x[..., quad[2], :]
    b1n = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - np.sum(b0 * b1n, -1, keepdims=True) * b1n
    w = b2 - np.sum(b2 * b1n, -1, keepdims=True) * b1n
    return np.degrees(np.arctan2(np.sum(np.cross(b1n, v) * w, -1), np.sum(v * w, -1)))


def _side(topology, a, b):
    """Atoms on b's side of bond a-b."""
    graph = {i: set() for i in range(topology.n_atoms)}
    for x, y in topology.bonds:
        graph[x.index].add(y.index)
        graph[y.index].add(x.index)
    seen, todo = {b}, [b]
    while todo:
        for n in graph[todo.pop()]:
            if n not in seen and n != a:
                seen.add(n)
                todo.append(n)
    return np.array(sorted(seen))


def _set_torsion(x, quad, target_deg, moving):
    """Frames x (F, atoms, 3) with ``moving`` atoms rotated about the quad's central bond (Rodrigues) so that the
    torsion becomes target_deg (F,)."""
    x = x.copy()
    axis = x[:, quad[2]] - x[:, quad[1]]
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    angle = np.radians(np.asarray(target_deg) - _dihedral(x, quad))[:, None, None]
    r = x[:, moving] - x[:, quad[2]][:, None]
    k = axis[:, None, :]
    rotated = (r * np.cos(angle) + np.cross(np.broadcast_to(k, r.shape), r) * np.sin(angle)
               + k * np.sum(k * r, -1, keepdims=True) * (1 - np.cos(angle)))
    x[:, moving] = rotated + x[:, quad[2]][:, None]
    return x


@pytest.fixture(scope="module")
def pdb():
    return mdtraj.load(str(ALA) + ".pdb")


def _frames_at(pdb, angles):
    """(frames, atoms, 3) alanine-dipeptide frames with the given (phi, psi) in degrees."""
    phi_q, psi_q = (q[0] for q in featurize.torsion_indices(pdb.topology))
    move_phi, move_psi = _side(pdb.topology, phi_q[1], phi_q[2]), _side(pdb.topology, psi_q[1], psi_q[2])
    angles = np.asarray(angles, np.float64)
    x = np.repeat(pdb.xyz[:1].astype(np.float64), len(angles), axis=0)
    x = _set_torsion(x, phi_q, angles[:, 0], move_phi)
    return _set_torsion(x, psi_q, angles[:, 1], move_psi).astype(np.float32)


@pytest.fixture(scope="module")
def synthetic_trajs(pdb):
    """Two alanine-dipeptide 'trajectories' following TRANSITIONS (one frame per 0.1 ps), 8 degree noise."""
    rng = np.random.default_rng(5)
    out = []
    for t in range(2):
        states = _chain(TRANSITIONS, 3000, rng, start=t)
        angles = CENTRES[states] + 8.0 * rng.standard_normal((len(states), 2))
        traj = mdtraj.Trajectory(_frames_at(pdb, angles), pdb.topology, time=0.1 * np.arange(len(states)))
        out.append((traj, states, angles))
    return out


# -- featurization ------------------------------------------------------------------------------------------

def test_phi_psi_matches_independent_dihedral_and_torsion_setter(pdb):
    phi_q, psi_q = (q[0] for q in featurize.torsion_indices(pdb.topology))
    x = _frames_at(pdb, [(-63.0, 141.0), (57.0, -38.0)])
    traj = mdtraj.Trajectory(x, pdb.topology)
    got = featurize.phi_psi(traj)
    np.testing.assert_allclose(got, [[-63.0, 141.0], [57.0, -38.0]], atol=0.05)
    np.testing.assert_allclose(got[:, 0], _dihedral(x.astype(np.float64), phi_q), atol=0.05)
    feats = featurize.backbone_torsions(traj)
    assert feats.shape == (2, 4)
    np.testing.assert_allclose(feats[:, :2] ** 2 + feats[:, 2:] ** 2, 1.0, atol=1e-6)
    np.testing.assert_allclose(np.degrees(np.arctan2(feats[:, 0], feats[:, 2])), got[:, 0], atol=0.05)
    # rotating the torsions leaves every bond length alone
    bonds = np.array([[a.index, b.index] for a, b in pdb.topology.bonds])
    d0 = np.linalg.norm(pdb.xyz[0][bonds[:, 0]] - pdb.xyz[0][bonds[:, 1]], axis=1)
    d1 = np.linalg.norm(x[1][bonds[:, 0]] - x[1][bonds[:, 1]], axis=1)
    np.testing.assert_allclose(d1, d0, atol=1e-5)


def test_contacts_and_distances(pdb):
    c = featurize.residue_contacts(pdb, cutoff_nm=None)
    assert c.shape == (1, 3) and np.all(c > 0)
    d = featurize.heavy_atom_distances(pdb)
    heavy = [a.index for a in pdb.topology.atoms if a.element.symbol != "H"]
    assert d.shape[1] == sum(1 for k, i in enumerate(heavy) for j in heavy[k + 1:] if j - i >= 3)
    i, j = heavy[0], next(j for j in heavy if j - heavy[0] >= 3)
    assert np.isclose(d[0, 0], np.linalg.norm(pdb.xyz[0, i] - pdb.xyz[0, j]), atol=1e-6)


def test_basins():
    idx = basins.basin_index(CENTRES[:, 0], CENTRES[:, 1])
    assert [basins.BASINS[i] for i in idx] == ["C7eq/beta", "alphaR", "alphaL"]
    assert basins.basin_name(-80.0, 70.0) == "C7eq/beta"  # C7eq
    assert basins.basin_name(75.0, -65.0) == "alphaL"  # C7ax counts with the left-handed region
    assert np.isclose(basins.circular_mean_deg([170.0, -170.0]) % 360, 180.0)


# -- deeptime wrappers and the pipeline -----------------------------------------------------------------------

def test_msm_recovers_known_chain():
    rng = np.random.default_rng(1)
    dtrajs = [_chain(TRANSITIONS, 20000, rng, start=s) for s in range(3)]
    model = msm.estimate_msm(dtrajs, 1)
    order = np.asarray(model.count_model.state_symbols)
    np.testing.assert_allclose(model.transition_matrix, TRANSITIONS[np.ix_(order, order)], atol=0.01)
    np.testing.assert_allclose(model.stationary_distribution, _stationary(TRANSITIONS)[order], atol=0.02)
    ts = msm.timescales_ps(model, 0.5)
    assert ts[0] == pytest.approx(0.5 * _slowest_timescale(TRANSITIONS), rel=0.1)
    # a Markov chain passes its own Chapman-Kolmogorov test
    ck = msm.ck_test(dtrajs, 1, 2, multiples=3)
    np.testing.assert_allclose(ck.predictions, ck.estimates, atol=0.02)
    its = msm.implied_timescales(dtrajs, [1, 2, 4], n_its=2)
    # for an exact Markov chain the implied timescale does not depend on the lag
    np.testing.assert_allclose(its.timescales_for_process(0), _slowest_timescale(TRANSITIONS), rtol=0.1)


def test_lag_checks():
    with pytest.raises(InputError, match="not shorter than the longest trajectory"):
        msm.check_lag([10, 20], 20)
    with pytest.raises(InputError, match="no trajectories"):
        pipeline.analyze([], 1.0, 1.0)
    with pytest.raises(InputError, match="not shorter"):
        pipeline.analyze([np.zeros((5, 2))], 0.1, 1.0)


def test_pipeline_finds_basins_probabilities_and_alpha_l_process(synthetic_trajs):
    trajs = [t for t, _, _ in synthetic_trajs]
    result = pipeline.analyze_trajectories(trajs, lag_ps=0.2, n_clusters=30)
    s = result.summary
    assert s["lag_frames"] == 2 and s["frame_ps"] == pytest.approx(0.1)
    states = {st["basin"]: st for st in s["metastable_states"]}
    assert set(states) == set(basins.BASINS)
    pi = _stationary(TRANSITIONS)
    for b, name in enumerate(basins.BASINS):
        assert states[name]["probability"] == pytest.approx(pi[b], abs=0.06)
        assert abs(states[name]["phi_deg"] - CENTRES[b, 0]) < 15 and abs(states[name]["psi_deg"] - CENTRES[b, 1]) < 15
    assert s["slowest_process"] == "alphaL"
    # mean first-passage time into alpha_L from C7eq/beta: solve the chain's own MFPT equations (0.1 ps per step)
    T = TRANSITIONS
    m = np.linalg.solve(np.eye(2) - T[:2, :2], np.ones(2))  # steps from states 0, 1 until state 2
    assert s["mfpt_into_alphaL_ps"] == pytest.approx(0.1 * m[0], rel=0.3)
    back = np.linalg.solve(np.eye(2) - T[1:, 1:], np.ones(2))  # steps from states 1, 2 until state 0
    assert s["mfpt_out_of_alphaL_ps"] == pytest.approx(0.1 * back[1], rel=0.3)
    # reweighted frames reproduce the MSM's basin probabilities
    w = np.concatenate(pipeline.frame_weights(result))
    labels = basins.basin_index(*np.concatenate(result.phi_psi).T)
    assert w.sum() == pytest.approx(1.0, abs=1e-6)
    for b in range(3):
        assert w[labels == b].sum() == pytest.approx(pi[b], abs=0.06)
    # the MSM's timescale equals the chain's (0.1 ps per step), within sampling error
    assert s["slowest_timescale_ps"] == pytest.approx(0.1 * _slowest_timescale(TRANSITIONS), rel=0.25)


def test_tica_and_vamp_find_the_slow_coordinate():
    rng = np.random.default_rng(2)
    slow = _chain(np.array([[0.99, 0.01], [0.01, 0.99]]), 6000, rng)
    x = np.stack([rng.standard_normal(6000), slow + 0.2 * rng.standard_normal(6000), rng.standard_normal(6000)], 1)
    for fn in (msm.tica, msm.vamp):
        model, proj = fn([x], 5, dim=1)
        assert abs(np.corrcoef(proj[0][:, 0], slow)[0, 1]) > 0.9
    _, dtrajs = msm.regular_space([x[:, 1:2]], dmin=0.5)
    assert 2 <= max(d.max() for d in dtrajs) + 1 <= 10


# -- VAMPnet ---------------------------------------------------------------------------------------------------

def test_vamp2_score_matches_deeptime():
    import jax.numpy as jnp
    from deeptime.decomposition import VAMP

    from jmlsim.analysis import vampnet

    rng = np.random.default_rng(3)
    s = _chain(TRANSITIONS, 4000, rng)
    feat = np.stack([CENTRES[s, 0] / 100 + 0.3 * rng.standard_normal(len(s)), rng.standard_normal(len(s)),
                     (s == 2) + 0.5 * rng.standard_normal(len(s))], 1)
    ref = VAMP(lagtime=3).fit(feat).fetch_model().score(2)
    ours = float(vampnet.vamp2_score(jnp.asarray(feat[:-3]), jnp.asarray(feat[3:])))
    assert ours == pytest.approx(ref, rel=1e-4)


@pytest.mark.slow
def test_vampnet_learns_hidden_two_state_kinetics():
    from jmlsim.analysis import vampnet

    rng = np.random.default_rng(4)
    p = 0.02
    s = _chain(np.array([[1 - p, p], [p, 1 - p]]), 8000, rng)
    x = np.stack([np.where(s == 1, 1.0, -1.0) + 0.3 * rng.standard_normal(len(s)), rng.standard_normal(len(s))], 1)
    net = vampnet.train_vampnet([x[:6000]], 1, n_states=2, hidden=(16,), epochs=15, batch_size=500, seed=0)
    best = 1 + (1 - 2 * p) ** 2  # perfect state identification
    assert net.train_scores[-1] > net.train_scores[0] or net.train_scores[0] > best - 0.05
    held_out = net.score([x[6000:]])
    assert best - 0.05 < held_out <= 2.0 + 1e-4
    t = net.timescales([x[6000:]])[0]
    assert t == pytest.approx(-1.0 / np.log(1 - 2 * p), rel=0.3)


# -- plots --------------------------------------------------------------------------------------------------------

def test_free_energy_of_a_gaussian_is_quadratic():
    from jmlsim.analysis import plots

    rng = np.random.default_rng(6)
    T = 300.0
    kT = plots.KB_KJ_PER_MOL_K * T
    x, y = rng.standard_normal((2, 400000))
    f, xe, ye = plots.free_energy_2d(x, y, T, bins=21, range_=[[-2.1, 2.1], [-2.1, 2.1]])
    xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
    expected = kT * 0.5 * (xc[:, None] ** 2 + yc[None, :] ** 2)
    inner = (np.abs(xc[:, None]) < 1.3) & (np.abs(yc[None, :]) < 1.3)
    np.testing.assert_allclose(f[inner], (expected - expected.min())[inner], atol=0.15 * kT + 0.05)


# -- adaptive respawning (logic only; the full driver is in the slow set) ------------------------------------------

def test_least_visited_starts_pick_rare_clusters():
    from jmlsim.adaptive import _least_visited_starts

    dtrajs = [np.array([0] * 50 + [1] * 3), np.array([0] * 40 + [2] * 1 + [1] * 2)]
    rng = np.random.default_rng(0)
    starts = _least_visited_starts(dtrajs, 2, rng)
    labels = [dtrajs[s][i] for s, i in starts]
    assert labels == [2, 1]  # cluster 2 seen once, cluster 1 five times, cluster 0 ninety times
    starts = _least_visited_starts(dtrajs, 4, rng)
    assert [dtrajs[s][i] for s, i in starts] == [2, 1, 0, 2]


# -- the command ---------------------------------------------------------------------------------------------------

def _jmlsim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "jmlsim", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def written_trajs(synthetic_trajs, tmp_path_factory):
    d = tmp_path_factory.mktemp("msm")
    paths = []
    for k, (traj, _, _) in enumerate(synthetic_trajs):
        path = d / f"t{k}.xtc"
        traj.save_xtc(str(path))
        paths.append(path)
    synthetic_trajs[0][0][0].save_pdb(str(d / "top.pdb"))
    return d, paths


def test_cli_analyze_msm(written_trajs):
    d, paths = written_trajs
    out = d / "out"
    proc = _jmlsim("analyze", "msm", *paths, "--top", d / "top.pdb", "--lag-ps", "0.2", "--clusters", "30",
                   "--states", 3, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {s["basin"] for s in result["metastable_states"]} == set(basins.BASINS)
    assert result["slowest_process"] == "alphaL"
    assert result["slowest_timescale_ps"] == pytest.approx(0.1 * _slowest_timescale(TRANSITIONS), rel=0.25)
    for name in ("summary.json", "fes.png", "implied_timescales.png", "ck_test.png"):
        assert (out / name).stat().st_size > 0
    again = _jmlsim("analyze", "msm", *paths, "--top", d / "top.pdb", "--out", out, "--json")
    assert again.returncode == 2 and "exists" in again.stderr


@pytest.mark.parametrize("case", ["lag", "empty", "missing"])
def test_cli_bad_input_is_one_line_exit_2(written_trajs, case):
    d, paths = written_trajs
    args = {"lag": ["analyze", "msm", *paths, "--top", d / "top.pdb", "--lag-ps", "500"],
            "empty": ["analyze", "msm", "--top", d / "top.pdb", "--json"],
            "missing": ["analyze", "msm", d / "nope.xtc", "--top", d / "top.pdb"]}[case]
    proc = _jmlsim(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jmlsim: error:"), proc.stderr
    assert {"lag": "longest trajectory", "empty": "no trajectories", "missing": "does not exist"}[case] in lines[0]


# -- adaptive sampling on alanine dipeptide ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def alanine():
    from jmlsim.io.openmm_import import load_amber

    return load_amber(str(ALA) + ".prmtop", str(ALA) + ".crd", nonbonded="nocutoff", constraints="hbonds")


@pytest.mark.slow
def test_respawn_places_frames_with_forces_and_constrained_thermal_velocities(alanine):
    import jax
    import jax.numpy as jnp

    from jmlsim import ensemble
    from jmlsim.adaptive import _respawn_fn

    R, T = 8, 300.0
    sim = ensemble.replica_simulation(alanine, [T] * R, 0.002, seed=1)
    rng = np.random.default_rng(0)
    angles = CENTRES[np.arange(R) % 3] + 10.0 * rng.standard_normal((R, 2))
    frames = _frames_at(mdtraj.load(str(ALA) + ".pdb"), angles).astype(np.float64)
    state, _ = _respawn_fn(sim)(sim.state, jnp.asarray(frames), jax.random.PRNGKey(3), sim.nbrs)
    np.testing.assert_allclose(np.asarray(state.positions), frames, atol=1e-6)
    f_ref = np.stack([np.asarray(alanine.forces(sim.params, jnp.asarray(x, jnp.float32), None, None)) for x in frames])
    np.testing.assert_allclose(np.asarray(state.forces), f_ref, rtol=1e-4, atol=1e-2)
    v = np.asarray(state.velocities)
    # H-bond constraints: no relative velocity along any constrained bond
    pairs = np.asarray(alanine.constraints.pairs if hasattr(alanine.constraints, "pairs") else
                       [(a.index, b.index) for a, b in alanine.topology.bonds
                        if "H" in (a.element.symbol, b.element.symbol)])
    d = frames[:, pairs[:, 0]] - frames[:, pairs[:, 1]]
    dv = v[:, pairs[:, 0]] - v[:, pairs[:, 1]]
    assert np.max(np.abs(np.sum(d * dv, -1))) < 1e-3
    m = np.asarray(state.masses)
    ke = 0.5 * np.sum(m[..., None] * v * v)
    dof = R * (3 * alanine.n_atoms - alanine.n_constraints)
    t_measured = 2 * ke / (dof * alanine.kB)
    assert abs(t_measured - T) < 4 * T * np.sqrt(2.0 / dof)


@pytest.mark.slow
def test_adaptive_driver_and_cli_round_trip(alanine, tmp_path):
    from jmlsim import adaptive

    segments = []
    run = adaptive.run_adaptive(alanine, 4, 2, 100, 300.0, report_interval=10, seed=2, progress=False,
                                segment_writer=lambda e, r, x, dt: segments.append((e, r, x.copy())))
    assert run.total_steps == 4 * 2 * 100 and run.epochs_run == 2
    assert len(run.positions) == 8 and all(len(p) == 10 for p in run.positions)
    assert [(e, r) for e, r, _ in segments] == [(e, r) for e in (1, 2) for r in range(4)]
    # epoch 2 starts from respawned frames: its first frames lie near stored epoch-1 frames, not (in general)
    # where each replica ended
    first = np.stack([x[0] for e, r, x in segments if e == 2])
    pool = np.concatenate([x for e, r, x in segments if e == 1])
    nearest = np.min(np.linalg.norm((first[:, None] - pool[None]).reshape(4, len(pool), -1), axis=-1), axis=1)
    assert np.all(nearest < 0.3)
    out = tmp_path / "ad"
    proc = _jmlsim("adaptive", "--prmtop", str(ALA) + ".prmtop", "--inpcrd", str(ALA) + ".crd", "--replicas", 4,
                   "--epochs", 2, "--steps-per-epoch", 200, "--report-interval", 10, "--clusters", 8, "--out", out,
                   "--no-progress", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["total_steps"] == 4 * 2 * 200
    assert result["metastable_states"] and all({"phi_deg", "psi_deg", "probability"} <= set(s)
                                               for s in result["metastable_states"])
    assert sum(s["probability"] for s in result["metastable_states"]) == pytest.approx(1.0, abs=1e-6)
    assert result["slowest_timescale_ps"] > 0
    xtcs = sorted((out / "trajectories").glob("*.xtc"))
    assert len(xtcs) == 8
    back = _jmlsim("analyze", "msm", *xtcs, "--top", out / "topology.pdb", "--lag-ps", "0.04", "--clusters", 8,
                   "--json")
    assert back.returncode == 0, back.stderr
    again = _jmlsim("adaptive", "--prmtop", str(ALA) + ".prmtop", "--inpcrd", str(ALA) + ".crd", "--replicas", 4,
                    "--epochs", 1, "--steps-per-epoch", 200, "--out", out, "--json")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_notebook_runs_at_small_size(tmp_path):
    from notebook_runner import run_notebook, stream_text

    nb = run_notebook("msm_alanine.ipynb", "TEMPERATURE_K = 400.0\nREPLICAS = 8\nEPOCHS = 2\nSTEPS_PER_EPOCH = 400\n"
                      "REPORT_INTERVAL = 20\nLAG_PS = 0.08\nN_CLUSTERS = 12\nVAMPNET_EPOCHS = 2\nSEED = 0\n",
                      tmp_path, env={"JMLSIM_ALANINE": str(ALA)})
    text = stream_text(nb)
    assert "total MD steps: 6400" in text
    assert "slowest implied timescale" in text and "VAMPnet slowest timescale" in text
