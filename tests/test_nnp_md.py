"""Molecular dynamics with neural potentials, the shipped pretrained models, and the ``jmlsim potential`` CLI.

MD runs use the shipped ``rmd17-ethanol`` model (a trained network: a random one has no sensible dynamics).
CLI calls go through ``jmlsim.cli.main`` in-process (a subprocess would pay JAX's start-up and compilation again).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlsim import units
from jmlsim.cli import main
from jmlsim.integrators import LangevinBAOAB, VelocityVerlet
from jmlsim.io.datasets import load_rmd17
from jmlsim.potentials import load_potential, system_from_xyz
from jmlsim.potentials.potential import available_pretrained
from jmlsim.simulation import Simulation

DATA = os.path.join(os.path.dirname(__file__), "data", "rmd17")
ETHANOL_TRAIN = os.path.join(DATA, "rmd17_ethanol_train_01.npz")
ETHANOL_TEST = os.path.join(DATA, "rmd17_ethanol_test_01.npz")
ASPIRIN_TEST = os.path.join(DATA, "rmd17_aspirin_test_01.npz")
KT_300 = units.BOLTZMANN_KJ_PER_MOL_K * 300.0
FS = 1e-3  # ps


def _write_xyz(path, z, positions_nm):
    symbols = {1: "H", 6: "C", 7: "N", 8: "O"}
    lines = [str(len(z)), "from rMD17"]
    lines += [f"{symbols[int(a)]} {x:.8f} {y:.8f} {w:.8f}" for a, (x, y, w) in zip(z, positions_nm * 10.0)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def ethanol_xyz(tmp_path_factory):
    data = load_rmd17(ETHANOL_TEST)
    return _write_xyz(tmp_path_factory.mktemp("xyz") / "ethanol.xyz", data.atomic_numbers[0], data.positions[0])


def _run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------- pretrained

def test_pretrained_models_are_shipped_small_and_documented():
    from jmlsim.potentials.potential import PRETRAINED_DIR

    assert {"rmd17-aspirin", "rmd17-ethanol"} <= set(available_pretrained())
    for name in ("rmd17-aspirin", "rmd17-ethanol"):
        folder = os.path.join(PRETRAINED_DIR, name)
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        assert size < 10e6, (name, size)
        text = open(os.path.join(folder, "TRAINING.md")).read()
        assert "jmlsim potential train" in text and "train_01" in text and "test_01" in text
        pot = load_potential(name)
        assert pot.metadata["training"]["train_source"].endswith("train_01.npz")  # never the test split


def test_evaluate_pretrained_by_name_on_the_test_split(capsys):
    code, out, err = _run_cli(capsys, "potential", "evaluate", "--model", "rmd17-ethanol", "--data", ETHANOL_TEST,
                              "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["n"] == 1000
    for key in ("energy_mae_mev", "force_mae_mev_per_angstrom", "energy_rmse_mev", "force_rmse_mev_per_angstrom"):
        assert np.isfinite(result[key]) and result[key] > 0
    # a trained model: well below the spread of the labels (ethanol's force components: ~1100 meV/Å RMS)
    assert result["force_mae_mev_per_angstrom"] < 150 and result["energy_mae_mev"] < 60, result
    assert result["energy_rmse_mev"] >= result["energy_mae_mev"]


# ---------------------------------------------------------------------------------------------- MD

def test_xyz_system_runs_langevin_and_verlet_and_writes_trajectories(ethanol_xyz, tmp_path):
    """Langevin (single precision) and velocity Verlet (double precision) runs of the shipped ethanol model from
    an XYZ file write readable trajectories; the NVE run (400 steps of 0.5 fs) conserves the total energy: it
    fluctuates by much less than the kinetic energy and does not drift."""
    mdtraj = pytest.importorskip("mdtraj")
    from jmlsim.reporters import TrajectoryReporter

    class Energies:
        def __init__(self):
            self.total, self.kinetic = [], []

        def report(self, frame):
            self.total.append(float(frame.potential + frame.kinetic))
            self.kinetic.append(float(frame.kinetic))

    system = system_from_xyz(ethanol_xyz, "rmd17-ethanol")
    assert system.n_atoms == 9 and system.box is None
    for name, integrator, precision, steps in (
            ("langevin", LangevinBAOAB(0.5 * FS, kT=KT_300, friction=10.0), "single", 200),
            ("verlet", VelocityVerlet(0.5 * FS), "double", 400)):
        sim = Simulation(system, integrator, kT=KT_300, seed=1, precision=precision)
        path = str(tmp_path / f"{name}.h5")
        reporter, energies = TrajectoryReporter(path, system.topology), Energies()
        timing = sim.run(steps, report_interval=20, reporters=[reporter, energies], progress=False)
        reporter.close()
        traj = mdtraj.load(path)
        assert traj.n_frames == steps // 20 and traj.n_atoms == 9
        assert np.all(np.isfinite(traj.xyz)) and timing["steps_per_s"] > 0
        # bonds stay bonds: the C-C distance stays within 0.12-0.20 nm
        d = np.linalg.norm(traj.xyz[:, 0] - traj.xyz[:, 1], axis=-1)
        assert np.all((d > 0.12) & (d < 0.20)), d
    totals, kinetic = np.array(energies.total), np.mean(energies.kinetic)
    assert kinetic > 1.0  # it moves (kJ/mol)
    assert np.std(totals) < 0.02 * kinetic, (np.std(totals), kinetic)
    assert abs(totals[-1] - totals[0]) < 0.02 * kinetic


def test_ml_mm_simulation_runs_and_forces_are_gradients():
    """The ethanol network on atoms 3..11 of a 14-atom System whose other atoms are held by harmonic bonds
    (one bonded to an NN atom): forces = -grad E by finite differences, and Langevin MD runs."""
    from jmlsim.energy.bonded import HarmonicBond, HarmonicBondParams
    from jmlsim.system import System

    jax.config.update("jax_enable_x64", True)
    pot = load_potential("rmd17-ethanol")
    pot = pot.replace(params=jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), pot.params))
    data = load_rmd17(ETHANOL_TEST)
    rng = np.random.default_rng(0)
    positions = np.concatenate([rng.uniform(-0.5, 0.5, (3, 3)) + [0.8, 0, 0], data.positions[5],
                                rng.uniform(-0.5, 0.5, (2, 3)) + [-0.8, 0, 0]])
    nn_idx = np.arange(3, 12)
    term = pot.as_energy_term(nn_idx, data.atomic_numbers[5])
    bonds = HarmonicBond(atoms=np.array([[0, 1], [1, 2], [12, 13], [13, 3]]))
    bond_params = HarmonicBondParams(k=jnp.full(4, 500.0), length=jnp.full(4, 0.3))
    system = System(terms={"nn": term, "bonds": bonds}, params={"nn": pot.params, "bonds": bond_params},
                    masses=np.concatenate([np.full(3, 12.0), system_masses(data.atomic_numbers[5]), np.full(2, 12.0)]),
                    positions=positions, box=None, neighbor_cutoff=None, kB=units.BOLTZMANN_KJ_PER_MOL_K)
    x = jnp.asarray(positions)
    forces = np.asarray(jax.jit(system.forces)(system.params, x, None, None))
    energy = jax.jit(lambda y: system.energy(system.params, y, None, None))
    h = 1e-6
    scale = np.sqrt(np.mean(forces**2))
    for atom, k in [(0, 0), (3, 1), (4, 2), (8, 0), (13, 1), (11, 2)]:
        d = np.zeros_like(positions)
        d[atom, k] = h
        fd = -(float(energy(x + d)) - float(energy(x - d))) / (2 * h)
        assert abs(fd - forces[atom, k]) < 1e-5 * scale, (atom, k, fd, forces[atom, k])
    sim = Simulation(system, LangevinBAOAB(0.5 * FS, kT=KT_300, friction=5.0), seed=0, precision="mixed")
    sim.run(100, report_interval=50, progress=False)
    assert np.all(np.isfinite(sim.frame().positions))


def system_masses(z):
    from openmm.app import element

    return np.array([element.Element.getByAtomicNumber(int(a)).mass._value for a in z])


# ---------------------------------------------------------------------------------------------- CLI

def _small_npz(path, frames=slice(0, 16), **changes):
    raw = dict(np.load(ETHANOL_TRAIN))
    arrays = {"nuclear_charges": raw["nuclear_charges"], "coords": raw["coords"][frames],
              "energies": raw["energies"][frames], "forces": raw["forces"][frames]}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


def test_cli_train_then_evaluate(tmp_path, capsys):
    train = _small_npz(tmp_path / "train.npz", slice(0, 24))
    valid = _small_npz(tmp_path / "valid.npz", slice(100, 108))
    out = tmp_path / "run"
    args = ["potential", "train", "--train", train, "--valid", valid, "--model", "schnet", "--hyper",
            '{"n_features": 8, "n_interactions": 1, "n_rbf": 8}', "--out", out, "--epochs", "2", "--batch-size", "8",
            "--max-frames", "16", "--no-progress", "--json"]
    code, stdout, err = _run_cli(capsys, *args)
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["epochs"] == 2 and result["train_frames"] == 16 and result["valid_frames"] == 8
    assert np.isfinite(result["energy_mae_mev"]) and np.isfinite(result["force_mae_mev_per_angstrom"])
    # no silent overwrite
    code, _, err = _run_cli(capsys, *args)
    assert code == 2 and err.startswith("jmlsim: error:") and "--overwrite" in err and err.count("\n") == 1
    # evaluate accepts the run directory or its model/ folder, and agrees with training's validation figures
    for model in (out, out / "model"):
        code, stdout, err = _run_cli(capsys, "potential", "evaluate", "--model", model, "--data", valid, "--json")
        assert code == 0, err
        ev = json.loads(stdout.strip().splitlines()[-1])
        assert ev["n"] == 8
        np.testing.assert_allclose(ev["force_mae_mev_per_angstrom"], result["force_mae_mev_per_angstrom"], rtol=1e-4)
        np.testing.assert_allclose(ev["energy_mae_mev"], result["energy_mae_mev"], rtol=1e-3)
    # an HDF5 copy of the validation set (jmlsim's layout, kJ/mol and nm) gives the same errors
    from jmlsim.io.datasets import save_hdf5
    h5 = str(tmp_path / "valid.h5")
    save_hdf5(load_rmd17(valid), h5)
    code, stdout, err = _run_cli(capsys, "potential", "evaluate", "--model", out, "--data", h5, "--json")
    assert code == 0, err
    np.testing.assert_allclose(json.loads(stdout.strip().splitlines()[-1])["force_mae_mev_per_angstrom"],
                               ev["force_mae_mev_per_angstrom"], rtol=1e-6)


@pytest.mark.parametrize("case", ["nan", "shape", "element", "missing", "no_file", "unknown_model"])
def test_cli_bad_input_exits_2_naming_file_and_key(tmp_path, capsys, case):
    raw = np.load(ETHANOL_TRAIN)
    if case == "nan":
        e = raw["energies"][:16].copy()
        e[3] = np.nan
        data, key = _small_npz(tmp_path / "nan.npz", energies=e), "energies"
    elif case == "shape":
        data, key = _small_npz(tmp_path / "shape.npz", forces=raw["forces"][:15]), "forces"
    elif case == "element":
        data, key = _small_npz(tmp_path / "element.npz", nuclear_charges=np.array([6, 6, 8, 1, 1, 1, 1, 1, 150])), \
            "nuclear_charges"
    elif case == "missing":
        data, key = _small_npz(tmp_path / "missing.npz", coords=None), "coords"
    elif case == "no_file":
        data, key = str(tmp_path / "absent.npz"), "no such file"
    else:
        data, key = _small_npz(tmp_path / "ok.npz"), "no-such-model"
    model = "no-such-model" if case == "unknown_model" else "rmd17-ethanol"
    code, _, err = _run_cli(capsys, "potential", "evaluate", "--model", model, "--data", data, "--json")
    assert code == 2 and err.startswith("jmlsim: error:") and err.count("\n") == 1, err
    assert key in err and (case in ("unknown_model",) or data in err), err
    if case in ("nan", "shape", "missing"):  # training refuses the same file
        code, _, err = _run_cli(capsys, "potential", "train", "--train", data, "--model", "schnet", "--out",
                                tmp_path / "out", "--no-progress")
        assert code == 2 and key in err and data in err, err


def test_evaluate_refuses_elements_the_model_lacks(tmp_path, capsys):
    """The ethanol model knows H, C, O: a frame with N (atomic number 7) is refused naming file and key."""
    data = _small_npz(tmp_path / "nitrogen.npz", nuclear_charges=np.array([6, 6, 7, 1, 1, 1, 1, 1, 1]))
    code, _, err = _run_cli(capsys, "potential", "evaluate", "--model", "rmd17-ethanol", "--data", data)
    assert code == 2 and data in err and "nuclear_charges" in err and "[7]" in err, err


# ---------------------------------------------------------------------------------------------- slow

@pytest.mark.slow
def test_aspirin_nve_with_shipped_model():
    """10 ps (20,000 steps of 0.5 fs) of NVE aspirin with the shipped model, mixed precision: stays finite, and
    the total energy drifts by < 0.5 kJ/mol/ps (benchmarks/nnp.py nve runs the full 100 ps)."""
    data = load_rmd17(ASPIRIN_TEST)
    pot = load_potential("rmd17-aspirin")
    from jmlsim.potentials.potential import system_from_xyz as build
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        import pathlib
        xyz = _write_xyz(pathlib.Path(tmp) / "aspirin.xyz", data.atomic_numbers[0], data.positions[0])
        system = build(xyz, pot)
    sim = Simulation(system, VelocityVerlet(0.5 * FS), kT=KT_300, seed=0, precision="mixed")
    totals = []
    for _ in range(20):
        potential = sim.advance(1000)
        frame = sim.frame(potential)
        totals.append(float(frame.potential + frame.kinetic))
    t = np.arange(1, 21) * 0.5  # ps
    slope = np.polyfit(t, totals, 1)[0]
    assert np.all(np.isfinite(totals)) and abs(slope) < 0.5, (slope, totals)


@pytest.mark.slow
def test_notebook_runs_at_small_size(tmp_path):
    """notebooks/nnp_ethanol.ipynb with the ``parameters`` cell made small: it trains, evaluates and runs MD."""
    import re

    from notebook_runner import images, run_notebook, stream_text

    nb = run_notebook("nnp_ethanol.ipynb", 'N_TRAIN = 40\nN_VALID = 8\nN_TEST = 50\nEPOCHS = 3\nARCH = "schnet"\n'
                      'HYPER = {"n_features": 16, "n_interactions": 1}\nMD_STEPS = 200\nTIMESTEP_FS = 0.5\n', tmp_path)
    text = stream_text(nb)
    for pattern in (r"test energy MAE: ([\d.]+) meV", r"test force MAE: ([\d.]+) meV/Å",
                    r"NVE drift: (-?[\d.]+) kJ/mol/ps"):
        match = re.search(pattern, text)
        assert match and np.isfinite(float(match.group(1))), (pattern, text)
    assert images(nb) == 3  # learning curve, parity, energy trace
    assert (tmp_path / "nnp_ethanol_run" / "model" / "params.msgpack").exists()
