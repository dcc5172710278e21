"""End-to-end tests of the ``jmlsim`` command, each call run as a subprocess (``python -m jmlsim``).

Contract: exit status 0 on success; 2 on bad input with exactly one ``jmlsim: error: ...`` line on stderr and no
traceback; with ``--json`` the last stdout line is one JSON object. Outputs are never overwritten without
``--overwrite``/``--resume``; a resumed run continues trajectory and log without gaps or duplicates.

Systems are small LJ fluids in reduced units (density 0.8) so each call takes seconds on a CPU.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

mdtraj = pytest.importorskip("mdtraj")

DENSITY = "0.8"
TIMESTEP_TAU = 0.005  # the CLI's LJ default
ARGON_EPS_OVER_KB = 119.8  # K, the CLI's mapping of reduced temperature onto argon
SIM_KEYS = {"atoms", "steps", "replicas", "timestep_fs", "compile_s", "wall_s", "ns_per_day", "steps_per_s",
            "final_potential", "final_temperature_k", "trajectory"}


# -- helpers ----------------------------------------------------------------------------------------------------
def _env() -> dict:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_ENABLE_X64", None)
    return env


def _cmd(args) -> list:
    return [sys.executable, "-m", "jmlsim", *[str(a) for a in args]]


def cli(cwd, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def cli_json(cwd, *args, timeout: float = 300) -> dict:
    """Run with --json, require exit 0, a clean stderr-free failure path and a JSON object as last stdout line."""
    proc = cli(cwd, *args, "--json", timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no stdout; stderr:\n{proc.stderr}"
    result = json.loads(lines[-1])
    assert isinstance(result, dict)
    return result


def assert_input_error(proc: subprocess.CompletedProcess) -> str:
    """Exit 2, exactly one stderr line 'jmlsim: error: ...', no traceback. Returns that line."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{proc.stderr}"
    assert lines[0].startswith("jmlsim: error:"), lines[0]
    assert len(lines[0]) > len("jmlsim: error:") + 3, "error message is empty"
    return lines[0]


def read_log(path) -> tuple[list, list]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows, f"{path} is empty"
    return rows[0], [row for row in rows[1:] if row]


def log_column(path, name: str, cast=float) -> list:
    header, body = read_log(path)
    col = header.index(name)
    return [cast(row[col]) for row in body]


def digest(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def checkpoint_metadata(path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(data["metadata"].tobytes().decode())


def topology(n_atoms: int):
    top = mdtraj.Topology()
    chain = top.add_chain()
    for i in range(n_atoms):
        top.add_atom("LJ", mdtraj.element.argon, top.add_residue("LJ", chain, resSeq=i + 1))
    return top


def lj_reference(n_atoms: int, density: float, cutoff: float = 2.5):
    """Independent NumPy energy and forces of the CLI's start structure (truncated and shifted LJ, min image)."""
    from jmlsim.systems.lennard_jones_fluid import lattice_positions

    box = (n_atoms / density) ** (1.0 / 3.0)
    x = lattice_positions(n_atoms, box).astype(np.float64)
    d = x[:, None, :] - x[None, :, :]
    d -= box * np.round(d / box)
    r2 = np.sum(d * d, axis=-1)
    np.fill_diagonal(r2, np.inf)
    inside = r2 < cutoff * cutoff
    inv6 = np.where(inside, 1.0 / r2**3, 0.0)
    shift = 4.0 * (cutoff**-12 - cutoff**-6)
    energy = 0.5 * np.sum(np.where(inside, 4.0 * (inv6 * inv6 - inv6) - shift, 0.0))
    fscale = np.where(inside, (48.0 * inv6 * inv6 - 24.0 * inv6) / r2, 0.0)
    forces = np.sum(fscale[:, :, None] * d, axis=1)
    return energy, forces


# -- shared runs ------------------------------------------------------------------------------------------------
SEED = 7
N_SIM, STEPS_SIM, INTERVAL_SIM = 256, 200, 50


@pytest.fixture(scope="module")
def h5_run(tmp_path_factory):
    """One plain HDF5 run with a checkpoint: (dir, json result)."""
    d = tmp_path_factory.mktemp("h5run")
    result = cli_json(d, "simulate", "--lj", N_SIM, "--density", DENSITY, "--steps", STEPS_SIM,
                      "--report-interval", INTERVAL_SIM, "--seed", SEED, "--out", "traj.h5",
                      "--checkpoint", "ck.npz", "--no-progress")
    return d, result


# -- 1. energy --------------------------------------------------------------------------------------------------
def test_energy_json_matches_reference_and_forces_obey_newton(tmp_path):
    # 300 atoms do not fill an fcc lattice: the start structure has vacancies, so forces are far from zero.
    n = 300
    result = cli_json(tmp_path, "energy", "--lj", n, "--density", DENSITY, "--forces-out", "f.npy")
    assert {"atoms", "terms", "total"} <= set(result)
    assert result["atoms"] == n
    assert isinstance(result["terms"], dict) and result["terms"]
    assert result["total"] == pytest.approx(sum(result["terms"].values()), rel=1e-9, abs=1e-9)

    ref_energy, ref_forces = lj_reference(n, float(DENSITY))
    assert result["total"] == pytest.approx(ref_energy, rel=1e-5)

    forces = np.load(tmp_path / "f.npy")
    assert forces.shape == (n, 3)
    assert np.all(np.isfinite(forces))
    scale = np.max(np.abs(forces))
    assert scale > 1.0, "test system should have substantial forces"
    np.testing.assert_allclose(forces, ref_forces, atol=1e-4 * scale)
    # Newton's third law: the net force vanishes up to float32 round-off.
    assert np.all(np.abs(forces.sum(axis=0)) < 1e-4 * scale * np.sqrt(n)), forces.sum(axis=0)


# -- 2. simulate: JSON, trajectory, log ----------------------------------------------------------------------
def test_simulate_json_trajectory_and_log(h5_run):
    d, result = h5_run
    assert SIM_KEYS <= set(result), SIM_KEYS - set(result)
    assert result["atoms"] == N_SIM
    assert result["steps"] == STEPS_SIM
    assert result["replicas"] == 1
    assert result["trajectory"] == "traj.h5"
    for key in ("compile_s", "wall_s", "ns_per_day", "steps_per_s", "timestep_fs", "final_potential",
                "final_temperature_k"):
        assert isinstance(result[key], (int, float)) and np.isfinite(result[key]), key
    assert result["steps_per_s"] > 0 and result["ns_per_day"] > 0 and result["wall_s"] > 0
    assert result["compile_s"] >= 0
    # ns/day follows from steps/s and the timestep: steps/s * fs/step * 86400 s/day * 1e-6 ns/fs.
    assert result["ns_per_day"] == pytest.approx(result["steps_per_s"] * result["timestep_fs"] * 0.0864, rel=1e-6)

    n_frames = STEPS_SIM // INTERVAL_SIM
    traj = mdtraj.load(str(d / "traj.h5"))
    assert traj.n_atoms == N_SIM
    assert traj.n_frames == n_frames
    assert np.all(np.isfinite(traj.xyz))
    np.testing.assert_allclose(traj.time, TIMESTEP_TAU * INTERVAL_SIM * np.arange(1, n_frames + 1), rtol=1e-5)
    # the atoms moved: the last frame is not the start lattice
    assert not np.allclose(traj.xyz[0], traj.xyz[-1])

    header, body = read_log(d / "traj.csv")
    assert len(body) == n_frames
    steps = log_column(d / "traj.csv", "step", int)
    assert steps == [INTERVAL_SIM * (i + 1) for i in range(n_frames)]
    # the JSON's final values are the last logged ones
    assert result["final_potential"] == pytest.approx(log_column(d / "traj.csv", "potential_eps")[-1], rel=1e-6)
    assert result["final_temperature_k"] == pytest.approx(
        log_column(d / "traj.csv", "temperature_reduced")[-1] * ARGON_EPS_OVER_KB, rel=1e-4)
    assert 0.3 < result["final_temperature_k"] / ARGON_EPS_OVER_KB < 2.0  # thermostatted towards T* = 1

    meta = checkpoint_metadata(d / "ck.npz")
    assert meta["step"] == STEPS_SIM and meta["frames"] == n_frames


@pytest.mark.parametrize("ext", ["dcd", "xtc"])
def test_simulate_dcd_xtc_match_hdf5(tmp_path, h5_run, ext):
    d, _ = h5_run
    out = f"traj.{ext}"
    result = cli_json(tmp_path, "simulate", "--lj", N_SIM, "--density", DENSITY, "--steps", STEPS_SIM,
                      "--report-interval", INTERVAL_SIM, "--seed", SEED, "--out", out, "--no-progress")
    assert result["trajectory"] == out
    n_frames = STEPS_SIM // INTERVAL_SIM
    reference = mdtraj.load(str(d / "traj.h5"))
    traj = mdtraj.load(str(tmp_path / out), top=topology(N_SIM))
    assert traj.n_frames == n_frames
    assert traj.n_atoms == N_SIM
    # XTC stores coordinates to 1e-3; DCD in float32
    np.testing.assert_allclose(traj.xyz[-1], reference.xyz[-1], atol=1e-3)
    np.testing.assert_allclose(traj.xyz, reference.xyz, atol=1e-3)
    assert len(read_log(tmp_path / "traj.csv")[1]) == n_frames


# -- 3. replicas ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("integrator", ["langevin", "verlet"])
def test_replicas_write_independent_trajectories(tmp_path, integrator):
    n_frames = 2
    result = cli_json(tmp_path, "simulate", "--lj", N_SIM, "--density", DENSITY, "--steps", 100,
                      "--report-interval", 50, "--replicas", 2, "--integrator", integrator, "--out", "traj.h5",
                      "--no-progress")
    assert result["replicas"] == 2
    assert result["steps"] == 100
    assert sorted(result["trajectory"]) == ["traj_r0.h5", "traj_r1.h5"]
    assert not (tmp_path / "traj.h5").exists()
    t0 = mdtraj.load(str(tmp_path / "traj_r0.h5"))
    t1 = mdtraj.load(str(tmp_path / "traj_r1.h5"))
    assert t0.n_frames == t1.n_frames == n_frames
    assert t0.n_atoms == t1.n_atoms == N_SIM
    # independent random streams: the replicas diverge (they start from the same lattice)
    assert np.max(np.abs(t0.xyz[-1] - t1.xyz[-1])) > 1e-2
    header, body = read_log(tmp_path / "traj.csv")
    assert "replica" in header
    replicas = log_column(tmp_path / "traj.csv", "replica", int)
    steps = log_column(tmp_path / "traj.csv", "step", int)
    assert sorted(zip(steps, replicas)) == [(50, 0), (50, 1), (100, 0), (100, 1)]
    potentials = log_column(tmp_path / "traj.csv", "potential_eps")
    assert potentials[-1] != potentials[-2]


# -- 4. crash (SIGKILL) and resume -----------------------------------------------------------------------------
def test_resume_after_sigkill(tmp_path):
    interval = 50
    args = ["simulate", "--lj", 500, "--density", DENSITY, "--steps", 200000, "--report-interval", interval,
            "--checkpoint", "ck.npz", "--out", "traj.h5", "--no-progress"]
    ck, traj_path, log_path = tmp_path / "ck.npz", tmp_path / "traj.h5", tmp_path / "traj.csv"
    proc = subprocess.Popen(_cmd(args), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 150
        while True:
            assert proc.poll() is None, f"run ended early ({proc.returncode}): {proc.stderr.read().decode()}"
            if ck.exists() and log_path.exists():
                with open(log_path) as handle:
                    if sum(1 for line in handle if line.strip()) >= 5:  # header + 4 rows
                        break
            assert time.monotonic() < deadline, "no checkpoint / log rows within the time limit"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    meta = checkpoint_metadata(ck)
    ck_step, ck_frames = int(meta["step"]), int(meta["frames"])
    assert ck_step > 0 and ck_step % interval == 0
    assert ck_frames == ck_step // interval
    before = mdtraj.load(str(traj_path))
    assert before.n_frames >= ck_frames  # frames are flushed before the checkpoint is written
    kept_xyz = before.xyz[:ck_frames].copy()

    target = ck_step + 300
    result = cli_json(tmp_path, *args[:args.index("--steps") + 1], target,
                      *args[args.index("--steps") + 2:], "--resume")
    assert result["steps"] == target
    n_frames = target // interval
    traj = mdtraj.load(str(traj_path))
    assert traj.n_frames == n_frames
    dt = np.diff(traj.time)
    np.testing.assert_allclose(dt, interval * TIMESTEP_TAU, rtol=1e-5)  # no gaps, no duplicates
    np.testing.assert_allclose(traj.time, interval * TIMESTEP_TAU * np.arange(1, n_frames + 1), rtol=1e-5)
    np.testing.assert_array_equal(traj.xyz[:ck_frames], kept_xyz)  # frames up to the checkpoint kept as they were
    assert np.all(np.isfinite(traj.xyz))

    steps = log_column(log_path, "step", int)
    assert steps == [interval * (i + 1) for i in range(n_frames)]
    assert len(set(steps)) == len(steps)
    assert checkpoint_metadata(ck)["step"] == target


# -- 5. exact resume --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("ext", ["h5", "dcd", "xtc"])
def test_resume_is_exact(tmp_path, ext):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    out = f"traj.{ext}"
    common = ["--lj", N_SIM, "--density", DENSITY, "--report-interval", 100, "--seed", 3, "--no-progress"]
    ra = cli_json(a, "simulate", *common, "--steps", 400, "--checkpoint", "a.npz", "--out", out)
    rb1 = cli_json(b, "simulate", *common, "--steps", 200, "--checkpoint", "b.npz", "--out", out)
    assert rb1["steps"] == 200
    rb = cli_json(b, "simulate", *common, "--steps", 400, "--checkpoint", "b.npz", "--out", out, "--resume")
    assert ra["steps"] == rb["steps"] == 400

    top = {}
    if ext != "h5":  # DCD and XTC carry no topology
        from jmlsim.io.trajectory import generic_topology
        top = {"top": generic_topology(N_SIM)}
    ta, tb = mdtraj.load(str(a / out), **top), mdtraj.load(str(b / out), **top)
    assert ta.n_frames == tb.n_frames == 4
    if ext != "dcd":  # DCD stores no times
        np.testing.assert_allclose(tb.time, ta.time)
    np.testing.assert_allclose(tb.xyz, ta.xyz, atol=1e-5, rtol=0)
    np.testing.assert_allclose(tb.xyz[-1], ta.xyz[-1], atol=1e-5, rtol=0)
    assert rb["final_potential"] == pytest.approx(ra["final_potential"], rel=1e-5)
    assert log_column(b / "traj.csv", "step", int) == log_column(a / "traj.csv", "step", int) == [100, 200, 300, 400]
    np.testing.assert_allclose(log_column(b / "traj.csv", "potential_eps"),
                               log_column(a / "traj.csv", "potential_eps"), rtol=1e-5)


# -- 6. bad input -----------------------------------------------------------------------------------------------
SIM = ["simulate", "--density", DENSITY, "--steps", 10, "--no-progress"]


@pytest.mark.parametrize("args", [
    pytest.param(["simulate", "--lj", 0, "--density", DENSITY, "--steps", 10], id="lj-zero"),
    pytest.param(["simulate", "--lj", -5, "--density", DENSITY, "--steps", 10], id="lj-negative"),
    pytest.param(["simulate", "--lj", 256, "--density", DENSITY, "--steps", -1], id="steps-negative"),
    pytest.param(["simulate", "--lj", 256, "--density", "nan", "--steps", 10], id="density-nan"),
    pytest.param(["simulate", "--lj", 256, "--density", "inf", "--steps", 10], id="density-inf"),
    pytest.param(["simulate", "--lj", 256, "--density", -1, "--steps", 10], id="density-negative"),
    pytest.param(["simulate", "--lj", 256, "--density", DENSITY, "--steps", 10, "--out", "/nonexistent_dir/x.h5"],
                 id="out-missing-dir"),
    pytest.param(["simulate", "--lj", 256, "--density", DENSITY, "--steps", 10, "--out", "afile.txt/x.h5"],
                 id="out-under-a-file"),
    pytest.param(["simulate", "--lj", 256, "--density", DENSITY, "--steps", 10, "--log", "afile.txt/x.csv"],
                 id="log-under-a-file"),
    pytest.param(["simulate", "--lj", 256, "--density", DENSITY, "--steps", 10, "--checkpoint", "afile.txt/c.npz"],
                 id="checkpoint-under-a-file"),
    pytest.param(["simulate", "--lj", 256, "--density", DENSITY, "--steps", 10, "--out", "x.pdbx"],
                 id="unknown-extension"),
    pytest.param(["simulate", "--lj", 256, "--density", DENSITY, "--steps", 10, "--resume"],
                 id="resume-without-checkpoint"),
    pytest.param(["simulate", "--lj", 256, "--density", DENSITY, "--steps", 10, "--checkpoint", "none.npz",
                  "--resume"], id="resume-missing-checkpoint"),
    pytest.param(["simulate", "--steps", 10], id="simulate-no-system"),
    pytest.param(["energy"], id="energy-no-system"),
    pytest.param(["minimize"], id="minimize-no-system"),
    pytest.param(["energy", "--lj", 256], id="lj-without-density"),
    # 32 atoms at density 0.8: half the box (1.71) is shorter than the cutoff (2.5); a short skin is tolerated
    pytest.param(["energy", "--lj", 32, "--density", DENSITY], id="energy-box-too-small"),
    pytest.param(["simulate", "--lj", 32, "--density", DENSITY, "--steps", 10], id="simulate-box-too-small"),
    pytest.param(["energy", "--lj", 256, "--density", DENSITY, "--forces-out", "afile.txt/f.npy"],
                 id="forces-out-under-a-file"),
    pytest.param([], id="no-command"),
    pytest.param(["simulate", "--lj", 256, "--density", DENSITY], id="steps-missing"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args):
    (tmp_path / "afile.txt").write_text("not a directory\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = cli(tmp_path, *args)
    assert_input_error(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a failed run left files behind"


def test_unwritable_directory(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("permissions are not enforced for root")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        proc = cli(tmp_path, "simulate", "--lj", 256, "--density", DENSITY, "--steps", 10, "--out", "ro/x.h5")
        assert_input_error(proc)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def _copy_outputs(src, dst):
    for name in ("traj.h5", "traj.csv", "ck.npz"):
        shutil.copy2(src / name, dst / name)


@pytest.mark.parametrize("damage", ["random-bytes", "truncated", "empty"])
def test_resume_with_corrupt_checkpoint_touches_nothing(tmp_path, h5_run, damage):
    src, _ = h5_run
    _copy_outputs(src, tmp_path)
    ck = tmp_path / "ck.npz"
    if damage == "random-bytes":
        ck.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "truncated":
        data = ck.read_bytes()
        ck.write_bytes(data[: len(data) // 2])
    else:
        ck.write_bytes(b"")
    sums = {name: digest(tmp_path / name) for name in ("traj.h5", "traj.csv", "ck.npz")}
    proc = cli(tmp_path, "simulate", "--lj", N_SIM, "--density", DENSITY, "--steps", 400, "--report-interval",
               INTERVAL_SIM, "--out", "traj.h5", "--checkpoint", "ck.npz", "--resume", "--no-progress")
    assert_input_error(proc)
    assert {name: digest(tmp_path / name) for name in sums} == sums, "files changed by a failed resume"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(sums)


def test_resume_with_checkpoint_of_another_system_touches_nothing(tmp_path, h5_run):
    src, _ = h5_run
    _copy_outputs(src, tmp_path)
    sums = {name: digest(tmp_path / name) for name in ("traj.h5", "traj.csv", "ck.npz")}
    proc = cli(tmp_path, "simulate", "--lj", 500, "--density", DENSITY, "--steps", 400, "--report-interval",
               INTERVAL_SIM, "--out", "traj.h5", "--checkpoint", "ck.npz", "--resume", "--no-progress")
    assert_input_error(proc)
    assert {name: digest(tmp_path / name) for name in sums} == sums


@pytest.mark.parametrize("existing", ["traj.h5", "traj.csv", "ck.npz"])
def test_existing_output_is_not_overwritten(tmp_path, h5_run, existing):
    src, _ = h5_run
    shutil.copy2(src / existing, tmp_path / existing)
    before = digest(tmp_path / existing)
    proc = cli(tmp_path, "simulate", "--lj", N_SIM, "--density", DENSITY, "--steps", 10, "--out", "traj.h5",
               "--checkpoint", "ck.npz", "--no-progress")
    assert_input_error(proc)
    assert digest(tmp_path / existing) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing], "a refused run created other files"


@pytest.mark.slow
def test_overwrite_replaces_existing_output(tmp_path, h5_run):
    src, _ = h5_run
    _copy_outputs(src, tmp_path)
    result = cli_json(tmp_path, "simulate", "--lj", N_SIM, "--density", DENSITY, "--steps", 100,
                      "--report-interval", 100, "--out", "traj.h5", "--checkpoint", "ck.npz", "--overwrite",
                      "--no-progress")
    assert result["steps"] == 100
    assert mdtraj.load(str(tmp_path / "traj.h5")).n_frames == 1
    assert log_column(tmp_path / "traj.csv", "step", int) == [100]
    assert checkpoint_metadata(tmp_path / "ck.npz")["step"] == 100


# -- 7. minimize ------------------------------------------------------------------------------------------------
def test_minimize_lowers_energy(tmp_path):
    # 200 atoms sit on a 6x6x6 simple cubic lattice with 16 vacancies, not at a minimum (256 or 500 atoms would
    # be a perfect fcc lattice, already a minimum with zero forces, where there is nothing to test).
    n = 200
    result = cli_json(tmp_path, "minimize", "--lj", n, "--density", DENSITY)
    assert result["atoms"] == n
    for key in ("initial_potential", "final_potential", "max_force", "converged", "steps"):
        assert key in result, key
    ref_energy, ref_forces = lj_reference(n, float(DENSITY))
    initial_max_force = float(np.max(np.linalg.norm(ref_forces, axis=-1)))
    assert initial_max_force > 1.0
    assert result["initial_potential"] == pytest.approx(ref_energy, rel=1e-5)
    assert np.isfinite(result["final_potential"]) and np.isfinite(result["max_force"])
    assert result["final_potential"] < result["initial_potential"] - 1.0
    assert result["converged"] is True or result["max_force"] < initial_max_force
    if result["converged"]:
        assert result["max_force"] < 1e-2  # the LJ default tolerance
    assert result["max_force"] < initial_max_force


@pytest.fixture(scope="module")
def minimize_300(tmp_path_factory):
    d = tmp_path_factory.mktemp("min300")
    return cli(d, "minimize", "--lj", 300, "--density", DENSITY, "--json")


def test_minimize_never_reports_success_with_non_finite_result(minimize_300):
    proc = minimize_300
    if proc.returncode == 0:
        result = json.loads(proc.stdout.splitlines()[-1])
        assert np.isfinite(result["final_potential"]) and np.isfinite(result["max_force"]), result
        assert result["final_potential"] < result["initial_potential"]
    else:  # an internal failure: exit 1, one clean error line, no JSON claiming a result
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("jmlsim: error:"), proc.stderr
        assert proc.stdout.strip() == ""


def test_minimize_from_vacancy_lattice_converges(minimize_300):
    proc = minimize_300
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert np.isfinite(result["final_potential"])
    assert result["final_potential"] < result["initial_potential"]


def test_simulate_with_a_pretrained_neural_potential(tmp_path, capsys):
    """``simulate --potential NAME --xyz F``: a shipped rMD17 model drives MD of the molecule in an XYZ file."""
    import mdtraj

    from jmlsim.cli import main

    data = np.load(os.path.join(os.path.dirname(__file__), "data", "rmd17", "rmd17_ethanol_test_01.npz"))
    symbols = {1: "H", 6: "C", 8: "O"}
    xyz = tmp_path / "ethanol.xyz"
    xyz.write_text(f"{len(data['nuclear_charges'])}\nethanol, Angstrom\n" + "".join(
        f"{symbols[int(z)]} {x:.6f} {y:.6f} {w:.6f}\n" for z, (x, y, w) in zip(data["nuclear_charges"], data["coords"][0])))
    out = tmp_path / "eth.h5"
    assert main(["simulate", "--potential", "rmd17-ethanol", "--xyz", str(xyz), "--steps", "100", "--timestep", "0.5",
                 "--report-interval", "50", "--out", str(out), "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["atoms"] == 9 and np.isfinite(result["final_potential"])
    traj = mdtraj.load(str(out))
    assert traj.n_frames == 2 and traj.n_atoms == 9
    assert main(["simulate", "--potential", "rmd17-ethanol", "--steps", "10", "--out", str(tmp_path / "x.h5")]) == 2
    assert "--xyz" in capsys.readouterr().err
