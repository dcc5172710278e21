"""Multi-host runs (jax.distributed): two local processes, 2 CPU devices each, shard 4 replicas of alanine dipeptide
with temperature replica exchange; the result must equal one process running the same replicas unsharded."""

import json
import os
import socket
import subprocess
import sys

import mdtraj
import numpy as np
import pytest

from jmlsim.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))
ALA = os.path.join(HERE, "data", "amber", "alanine-dipeptide-gbsa", "alanine-dipeptide")
COMMON = ["simulate", "--prmtop", ALA + ".prmtop", "--inpcrd", ALA + ".crd", "--replicas", "4", "--steps", "30",
          "--report-interval", "10", "--precision", "double", "--seed", "5", "--no-progress", "--json",
          "--temperatures", "300,330,360,400", "--exchange-interval", "10"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the CLI sets the per-process device count itself
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    port = _free_port()
    procs = []
    for pid in (1, 0):
        out = tmp_path / f"multi{pid}.dcd"
        cmd = [sys.executable, "-m", "jmlsim", *COMMON, "--devices", "4", "--coordinator", f"localhost:{port}",
               "--num-processes", "2", "--process-id", str(pid), "--out", str(out)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()))
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-2000:]
    worker_out, main_out = results[0][0], results[1][0]
    assert worker_out.strip() == ""  # only process 0 prints and writes
    assert not list(tmp_path.glob("multi1*"))
    assert main_out.count("\n") == 1  # stdout holds the JSON line alone (gloo's notes go to stderr)
    multi = json.loads(main_out)
    assert multi["processes"] == 2 and multi["devices"] == 4 and multi["replicas"] == 4

    single = _one_process_equals(COMMON, multi, tmp_path, "multi0")
    assert multi["exchange"]["accepted"] == single["exchange"]["accepted"]


def _one_process_equals(args, multi: dict, tmp_path, multi_stem: str, top: str = ALA + ".pdb") -> dict:
    """Run ``args`` in one process (unsharded) and check that the multi-process run's temperatures and per-replica
    DCD frames equal it; returns the one-process JSON."""
    single = subprocess.run([sys.executable, "-m", "jmlsim", *args, "--out", str(tmp_path / "single.dcd")],
                            capture_output=True, text=True, env=_env(), timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    single = json.loads(single.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(multi["final_temperatures_k"], single["final_temperatures_k"], rtol=1e-9)
    for r in range(4):
        a = mdtraj.load(str(tmp_path / f"{multi_stem}_r{r}.dcd"), top=top)
        b = mdtraj.load(str(tmp_path / f"single_r{r}.dcd"), top=top)
        assert a.n_frames == b.n_frames == 3
        np.testing.assert_allclose(a.xyz, b.xyz, atol=1e-5)  # DCD stores float32 Angstrom
    return single


@pytest.mark.parametrize("extra, message", [
    (["--coordinator", "localhost:1234", "--process-id", "0"], "missing --num-processes"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
    (["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "2"], "below --num-processes"),
    (["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "0", "--devices", "3"],
     "do not divide"),
])
def test_bad_multi_process_flags(tmp_path, capsys, extra, message):
    argv = [a for a in COMMON if a != "--json"] + ["--out", str(tmp_path / "t.dcd")] + extra
    if "--devices" not in extra:
        argv += ["--devices", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def _two_processes(args, tmp_path, name):
    """Run the CLI in two processes (2 CPU devices each, 4 replicas sharded); returns process 0's JSON."""
    port = _free_port()
    procs = []
    for pid in (1, 0):
        cmd = [sys.executable, "-m", "jmlsim", *args, "--devices", "4", "--coordinator", f"localhost:{port}",
               "--num-processes", "2", "--process-id", str(pid), "--out", str(tmp_path / name)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()))
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-2000:]
    return json.loads(results[1][0])


@pytest.mark.slow
def test_two_processes_checkpoint_and_resume_equal_one_uninterrupted_run(tmp_path):
    """Every process gathers the sharded state into the checkpoint process 0 writes, every process resumes from
    it, and the resumed replicas equal one process running all 30 steps at once."""
    base = [a for a in COMMON if a not in ("--steps", "30")]
    ckpt = ["--checkpoint", str(tmp_path / "multi.npz")]
    first = _two_processes(base + ["--steps", "20"] + ckpt, tmp_path, "multi.dcd")
    assert first["steps"] == 20 and (tmp_path / "multi.npz").exists()
    resumed = _two_processes(base + ["--steps", "30", "--resume"] + ckpt, tmp_path, "multi.dcd")
    assert resumed["steps"] == 30 and resumed["steps_run"] == 10
    single = _one_process_equals(base + ["--steps", "30"], resumed, tmp_path, "multi")
    assert resumed["exchange"]["accepted"] == single["exchange"]["accepted"]


@pytest.mark.slow
def test_two_processes_minimize_and_barostat_equal_one(tmp_path):
    """NPT replicas of the 216-water box, minimized first, in two processes: every process minimizes the start
    (process 0's result is broadcast), the Monte Carlo barostat's per-replica trials run sharded, and boxes,
    densities and frames equal one process running the same replicas unsharded."""
    water = os.path.join(HERE, "data", "amber", "waterbox", "watbox216")
    args = ["simulate", "--prmtop", water + ".prmtop", "--inpcrd", water + ".crd", "--cutoff", "0.8",
            "--replicas", "4", "--steps", "30", "--report-interval", "10", "--precision", "double", "--seed", "3",
            "--no-progress", "--json", "--temperatures", "290,300,310,320", "--minimize",
            "--pressure", "1", "--barostat-interval", "5"]
    multi = _two_processes(args, tmp_path, "multi.dcd")
    assert multi["processes"] == 2 and multi["barostat_acceptance"] > 0
    single = _one_process_equals(args, multi, tmp_path, "multi", top=water + ".pdb")
    np.testing.assert_allclose(multi["final_box_nm"], single["final_box_nm"], rtol=1e-12)
    np.testing.assert_allclose(multi["final_density_g_per_cm3"], single["final_density_g_per_cm3"], rtol=1e-12)
    assert len(set(np.round(np.asarray(single["final_box_nm"])[:, 0, 0], 9))) > 1  # the replicas' boxes moved apart


@pytest.mark.slow
def test_two_processes_run_a_minimized_molecule_library_as_one(tmp_path):
    """A library of 4 peptides (HBonds, 2 fs), each minimized in the vmapped L-BFGS and simulated, sharded one
    molecule per device over two processes: process 0 writes every molecule's trajectory, equal to one process."""
    library = os.path.join(HERE, "data", "peptides", "library.txt")
    args = ["simulate", "--molecules", library, "--steps", "30", "--report-interval", "10", "--precision", "double",
            "--seed", "2", "--minimize", "--no-progress", "--json"]
    multi = _two_processes(args, tmp_path, "multi.h5")
    assert multi["processes"] == 2 and multi["devices"] == 4 and multi["minimization"]["iterations"] > 0
    # the reference: one process with the same 4 devices. (Unsharded, the batched kernels round differently, and
    # the minimizer's line searches amplify that into end points 5e-3 kJ/mol apart; the MD itself is checked
    # sharded against unsharded in test_ensemble.)
    single = subprocess.run([sys.executable, "-m", "jmlsim", *args, "--devices", "4", "--out",
                             str(tmp_path / "single.h5")], capture_output=True, text=True, env=_env(), timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    single = json.loads(single.stdout.strip().splitlines()[-1])
    assert [m["name"] for m in multi["molecules"]] == [m["name"] for m in single["molecules"]]
    for a, b in zip(multi["molecules"], single["molecules"]):
        assert a["minimized_potential"] == pytest.approx(b["minimized_potential"], rel=1e-12)
        np.testing.assert_allclose(mdtraj.load(a["trajectory"]).xyz, mdtraj.load(b["trajectory"]).xyz, atol=1e-7)
