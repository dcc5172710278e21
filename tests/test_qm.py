"""QM labels for new molecules: conformers, geometry sampling, GFN2-xTB / DFT labels, HDF5 output, `jmlsim qm`."""

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("rdkit")
# Only look for tblite: importing it here would load OpenMP before jmlsim.qm.engines can ask for one thread.
if importlib.util.find_spec("tblite") is None:
    pytest.skip("tblite is not installed", allow_module_level=True)

from jmlsim import units  # noqa: E402
from jmlsim.cli import main  # noqa: E402
from jmlsim.errors import InputError  # noqa: E402
from jmlsim.io.datasets import load_dataset  # noqa: E402
from jmlsim.qm import conformers, labels, sampling  # noqa: E402
from jmlsim.qm.engines import qm_energy_forces  # noqa: E402


def _bond_lengths(x, bonds):
    return np.linalg.norm(x[..., bonds[:, 0], :] - x[..., bonds[:, 1], :], axis=-1)


def _fd_forces(energy_fn, x, h):
    """Central-difference -dE/dx for every coordinate."""
    fd = np.zeros_like(x)
    for i in range(x.shape[0]):
        for c in range(3):
            d = np.zeros_like(x)
            d[i, c] = h
            fd[i, c] = -(energy_fn(x + d) - energy_fn(x - d)) / (2 * h)
    return fd


@pytest.fixture(scope="module")
def water():
    return conformers.from_smiles("O")


@pytest.fixture(scope="module")
def ethanol():
    return conformers.from_smiles("CCO", n_conformers=2, seed=3)


# ------------------------------------------------------------------------------------------- conformers

def test_conformers_from_smiles(ethanol):
    assert ethanol.n_atoms == 9 and ethanol.n_conformers == 2 and ethanol.force_field == "MMFF94"
    assert sorted(ethanol.atomic_numbers.tolist()) == [1] * 6 + [6, 6, 8]
    x = ethanol.conformer_positions()
    assert x.shape == (2, 9, 3)
    d = _bond_lengths(x, ethanol.bonds())
    assert np.all((d > 0.09) & (d < 0.16)), d  # nm: C-H ~0.109, O-H ~0.097, C-C ~0.151, C-O ~0.142
    # Optimised: MMFF forces vanish at the conformers.
    _, f = ethanol.force_fn()(x[0])
    assert np.abs(f).max() < 1.0  # kJ/mol/nm


def test_force_field_forces_are_minus_gradient(ethanol):
    ff = ethanol.force_fn()
    x = ethanol.conformer_positions()[0] + np.random.default_rng(0).normal(0, 0.005, (9, 3))
    _, f = ff(x)
    fd = _fd_forces(lambda y: ff(y)[0], x, 1e-5)
    np.testing.assert_allclose(f, fd, atol=1e-3 * np.abs(f).max())


def test_charged_and_radical_molecules():
    acetate = conformers.from_smiles("CC(=O)[O-]")
    assert acetate.charge == -1 and acetate.multiplicity == 1
    methyl = conformers.from_smiles("[CH3]")
    assert methyl.charge == 0 and methyl.multiplicity == 2


def test_sdf_records(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    path = tmp_path / "two.sdf"
    with Chem.SDWriter(str(path)) as w:
        for smi in ("O", "CO"):
            mol = Chem.AddHs(Chem.MolFromSmiles(smi))
            AllChem.EmbedMolecule(mol, randomSeed=1)
            mol.SetProp("_Name", smi)
            w.write(mol)
    mols = conformers.from_sdf(path)
    assert [m.name for m in mols] == ["O", "CO"] and [m.n_atoms for m in mols] == [3, 6]
    assert all(m.n_conformers == 1 for m in mols)
    assert [m.n_conformers for m in conformers.from_sdf(path, n_conformers=3)] == [3, 3]


def test_bad_inputs_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="SMILES"):
        conformers.from_smiles("C1CC(")
    with pytest.raises(InputError, match="no such file"):
        conformers.from_sdf(tmp_path / "missing.sdf")
    junk = tmp_path / "junk.sdf"
    junk.write_text("this is not\na molfile\n$$$$\n")
    with pytest.raises(InputError, match="junk.sdf"):
        conformers.from_sdf(junk)


# ------------------------------------------------------------------------------------------- sampling

def test_normal_modes_of_water(water):
    x0 = water.conformer_positions()[0]
    k, modes = sampling.normal_modes(sampling.hessian(water.force_fn(), x0), x0)
    assert k.shape == (3,) and modes.shape == (3, 3, 3)  # 3N - 6 vibrations, rigid motion projected out
    assert np.all(k > 1e4)  # bend and two stretches are stiff (kJ/mol/nm^2)
    rigid = sampling.rigid_body_basis(x0)
    assert rigid.shape == (9, 6)
    assert np.abs(rigid.T @ modes.reshape(3, 9).T).max() < 1e-10
    # A linear molecule has 5 rigid-body motions.
    co2 = np.array([[0, 0, -0.116], [0, 0, 0], [0, 0, 0.116]])
    assert sampling.rigid_body_basis(co2).shape == (9, 5)


def test_normal_mode_samples_follow_boltzmann(water):
    """At low temperature the harmonic samples' force-field energy rises by (3N - 6)/2 kT on average."""
    ff = water.force_fn()
    x0 = water.conformer_positions()[0]
    temperature = 30.0
    x = sampling.sample_normal_modes(ff, x0, 2000, temperature, seed=1, min_force_constant=0.0)
    e0 = ff(x0)[0]
    rise = np.mean([ff(xi)[0] - e0 for xi in x]) / units.kT_kj_per_mol(temperature)
    assert rise == pytest.approx(1.5, rel=0.08)


def test_md_samples_follow_boltzmann(water):
    """Langevin MD at low temperature: mean potential-energy rise (3N - 6)/2 kT (rigid motion costs nothing)."""
    ff = water.force_fn()
    x0 = water.conformer_positions()[0]
    temperature = 30.0
    x = sampling.sample_md(ff, x0, water.masses, 1500, temperature, seed=2, friction_per_ps=50.0,
                           equilibration_steps=500, stride=10)
    e0 = ff(x0)[0]
    rise = np.mean([ff(xi)[0] - e0 for xi in x]) / units.kT_kj_per_mol(temperature)
    assert rise == pytest.approx(1.5, rel=0.2)


@pytest.mark.parametrize("method", ["normal-modes", "md"])
def test_sampled_geometries_are_sane(ethanol, method):
    ff = ethanol.force_fn()
    x0 = ethanol.conformer_positions()[0]
    if method == "md":
        x = sampling.sample_md(ff, x0, ethanol.masses, 30, 300.0, seed=0, equilibration_steps=400, stride=40)
    else:
        x = sampling.sample_normal_modes(ff, x0, 30, 300.0, seed=0)
    assert x.shape == (30, 9, 3) and np.all(np.isfinite(x))
    bonds = ethanol.bonds()
    deviation = _bond_lengths(x, bonds) - _bond_lengths(x0, bonds)
    assert np.abs(deviation).max() < 0.025  # nm: bonds vibrate, never break
    assert 0.001 < np.sqrt(np.mean(deviation ** 2)) < 0.01  # ...but they do vibrate (~kT/k)
    # Frames differ from each other (not copies of the conformer).
    assert np.std(x - x.mean(axis=0), axis=0).mean() > 0.002


def _small_potential_dir(tmp_path):
    """An untrained small SchNet saved as a potential directory (elements H, C, O)."""
    jax = pytest.importorskip("jax")
    from jmlsim.potentials.architectures import build_model, model_config
    from jmlsim.potentials.potential import NeuralPotential, init_params

    module = build_model("schnet", 3, n_features=8, n_interactions=1, n_rbf=8)
    params = init_params(module, jax.random.PRNGKey(0), np.float64)
    pot = NeuralPotential(config=model_config(module), params=params, elements=(1, 6, 8),
                          shifts=np.array([-1000.0, -2000.0, -3000.0]), scale=50.0, cutoff=module.cutoff)
    pot.save(str(tmp_path / "pot"))
    return str(tmp_path / "pot"), pot


def test_sampling_on_a_neural_potential(water, tmp_path):
    path, pot = _small_potential_dir(tmp_path)
    ff = sampling.potential_force_fn(pot, water.atomic_numbers)
    x = water.conformer_positions()[0]
    e, f = ff(x)
    assert np.isfinite(e) and f.shape == (3, 3) and np.abs(f).max() > 0
    np.testing.assert_allclose(f, _fd_forces(lambda y: ff(y)[0], x, 1e-5), atol=1e-4 * np.abs(f).max() + 1e-6)
    frames = sampling.sample_md_potential(pot, water.atomic_numbers, x, water.masses, 3, 100.0, seed=0,
                                          equilibration_steps=50, stride=10)
    assert frames.shape == (3, 3, 3) and np.all(np.isfinite(frames))
    assert np.abs(frames - frames.mean(axis=0)).max() > 1e-4  # the frames moved
    with pytest.raises(InputError, match="does not know"):
        sampling.potential_force_fn(pot, np.array([7, 1, 1]))


# ------------------------------------------------------------------------------------------- labels

def test_gfn2_forces_are_minus_gradient(water):
    x = sampling.sample_normal_modes(water.force_fn(), water.conformer_positions()[0], 1, 300.0, seed=5)
    lab = labels.label_frames(water.atomic_numbers, x, "gfn2")
    assert lab.energy.shape == (1,) and lab.forces.shape == (1, 3, 3) and not lab.failures
    fd = _fd_forces(lambda y: qm_energy_forces(water.atomic_numbers, y, "gfn2")[0], x[0], 1e-4)
    np.testing.assert_allclose(lab.forces[0], fd, atol=0.3)  # kJ/mol/nm, forces ~ hundreds
    assert np.abs(lab.forces[0]).max() > 10.0  # displaced: a real test, not zeros against zeros
    assert np.abs(lab.forces[0].sum(axis=0)).max() < 1e-6  # no net force


def test_gfn2_energy_is_invariant(water):
    x = water.conformer_positions()[0]
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = x @ q.T + np.array([0.3, -0.2, 0.1])
    e1, f1 = qm_energy_forces(water.atomic_numbers, x)
    e2, f2 = qm_energy_forces(water.atomic_numbers, moved)
    assert e1 == pytest.approx(e2, abs=1e-5)
    np.testing.assert_allclose(f1 @ q.T, f2, atol=1e-3)


def test_failed_frames_are_dropped_and_counted(water):
    x = np.repeat(water.conformer_positions()[:1], 4, axis=0)
    calls = []

    def flaky(z, pos, method, charge, multiplicity):
        calls.append(1)
        if len(calls) % 2 == 0:
            raise InputError("qm: SCF did not converge")
        return float(len(calls)), np.full((len(z), 3), 1.0)

    lab = labels.label_frames(water.atomic_numbers, x, engine=flaky)
    assert lab.energy.tolist() == [1.0, 3.0] and [i for i, _ in lab.failures] == [1, 3]

    def broken(*a, **k):
        raise InputError("qm: 11 electrons (charge 0) cannot have multiplicity 1")

    with pytest.raises(InputError, match="electrons"):
        labels.label_frames(water.atomic_numbers, x, engine=broken)


def test_parallel_workers_give_the_same_labels(water):
    x = sampling.sample_normal_modes(water.force_fn(), water.conformer_positions()[0], 4, 300.0, seed=9)
    serial = labels.label_frames(water.atomic_numbers, x, "gfn2")
    parallel = labels.label_frames(water.atomic_numbers, x, "gfn2", workers=2)
    np.testing.assert_allclose(parallel.energy, serial.energy, atol=1e-6)
    np.testing.assert_allclose(parallel.forces, serial.forces, atol=1e-5)
    assert len(set(np.round(serial.energy, 4))) == 4


def test_dft_forces_are_minus_gradient_h2():
    pytest.importorskip("pyscf")
    z = np.array([1, 1])
    x = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.080]])  # stretched: a force of ~hundreds kJ/mol/nm
    lab = labels.label_frames(z, x[None], "dft")
    h = 1e-4
    step = np.array([[0, 0, 0], [0, 0, h]])
    fd = -(qm_energy_forces(z, x + step, "dft")[0] - qm_energy_forces(z, x - step, "dft")[0]) / (2 * h)
    assert abs(lab.forces[0, 1, 2]) > 100.0
    assert lab.forces[0, 1, 2] == pytest.approx(fd, abs=0.5)
    np.testing.assert_allclose(lab.forces[0, 0], -lab.forces[0, 1], atol=1e-6)


@pytest.mark.slow
def test_dft_forces_are_minus_gradient_water(water):
    pytest.importorskip("pyscf")
    x = sampling.sample_normal_modes(water.force_fn(), water.conformer_positions()[0], 1, 300.0, seed=7)[0]
    _, f = qm_energy_forces(water.atomic_numbers, x, "dft")
    fd = _fd_forces(lambda y: qm_energy_forces(water.atomic_numbers, y, "dft")[0], x, 1e-4)
    np.testing.assert_allclose(f, fd, atol=1.0)


# ------------------------------------------------------------------------------------------- command

def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_label_writes_dataset_in_internal_units(tmp_path, capsys):
    out = tmp_path / "water.h5"
    code, stdout, err = _run(["qm", "label", "--smiles", "O", "--out", str(out), "--samples", "4",
                              "--conformers", "2", "--seed", "3", "--no-progress", "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["n_frames"] == 8 and result["n_atoms"] == 3 and result["method"] == "gfn2"
    assert result["out"] == str(out) and result["wall_s"] > 0
    data = load_dataset(str(out))
    assert len(data) == 8 and data.max_atoms == 3 and data.box is None
    assert sorted(data.atomic_numbers[0].tolist()) == [1, 1, 8]
    # Units: positions in nm (O-H ~0.096 nm), energies and forces agree with a fresh kJ/mol, kJ/mol/nm call.
    z = data.atomic_numbers[0]
    oxygen = int(np.flatnonzero(z == 8)[0])
    oh = np.linalg.norm(data.positions[:, z == 1] - data.positions[:, [oxygen]], axis=-1)
    assert np.all((oh > 0.085) & (oh < 0.11))
    for i in (0, 7):
        e, f = qm_energy_forces(z, data.positions[i])
        assert data.energy[i] == pytest.approx(e, abs=1e-6)
        np.testing.assert_allclose(data.forces[i], f, atol=1e-6)
    assert len(set(np.round(data.energy, 6))) == 8  # every frame is a distinct geometry

    # An existing output is kept unless --overwrite.
    code, _, err = _run(["qm", "label", "--smiles", "O", "--out", str(out), "--samples", "1", "--no-progress"],
                        capsys)
    assert code == 2 and "exists" in err


def test_cli_label_md_and_sdf(tmp_path, capsys):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    sdf = tmp_path / "mix.sdf"
    with Chem.SDWriter(str(sdf)) as w:
        for smi in ("O", "C"):
            mol = Chem.AddHs(Chem.MolFromSmiles(smi))
            AllChem.EmbedMolecule(mol, randomSeed=1)
            w.write(mol)
    out = tmp_path / "mix.h5"
    code, stdout, err = _run(["qm", "label", "--sdf", str(sdf), "--out", str(out), "--samples", "3",
                              "--sampling", "md", "--temperature", "200", "--no-progress", "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["n_frames"] == 6 and result["n_atoms"] == 5
    data = load_dataset(str(out))
    assert data.max_atoms == 5 and data.n_atoms.tolist() == [3, 3, 3, 5, 5, 5]
    assert np.all(data.forces[:3, 3:] == 0) and not data.atom_mask[:3, 3:].any()  # water padded to 5 atoms


@pytest.mark.slow  # compiles a network and an MD loop (~10 s on a quiet 2-core machine)
def test_cli_label_samples_on_a_potential(tmp_path, capsys):
    path, _ = _small_potential_dir(tmp_path)
    out = tmp_path / "nn.h5"
    code, stdout, err = _run(["qm", "label", "--smiles", "O", "--out", str(out), "--samples", "2", "--sampling",
                              "md", "--potential", path, "--temperature", "50", "--no-progress", "--json"], capsys)
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["n_frames"] == 2 and result["sampling_energy"] == path
    assert len(load_dataset(str(out))) == 2
    code, _, err = _run(["qm", "label", "--smiles", "N", "--out", str(tmp_path / "n.h5"), "--potential", path,
                         "--no-progress"], capsys)
    assert code == 2 and "does not know" in err  # nitrogen is not one of the model's elements


@pytest.mark.parametrize("argv, message", [
    (["--smiles", "C1CC("], "SMILES"),
    (["--sdf", "{tmp}/missing.sdf"], "no such file"),
    (["--sdf", "{tmp}/junk.sdf"], "junk.sdf"),
    (["--smiles", "O", "--method", "ccsd"], "method"),
    (["--smiles", "O", "--samples", "0"], "samples"),
    (["--smiles", "O", "--out", "{tmp}/x.npz"], "HDF5"),
    (["--smiles", "O", "--out", "{tmp}/nodir/x.h5"], "does not exist"),
    (["--out", "{tmp}/x.h5"], "--smiles"),
    (["--smiles", "O", "--potential", "{tmp}/no-model"], "no-model"),
])
def test_cli_bad_input_exits_2(tmp_path, capsys, argv, message):
    (tmp_path / "junk.sdf").write_text("not a molfile\n$$$$\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out.h5")]
    code, stdout, err = _run(["qm", "label", *argv, "--no-progress"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jmlsim: error:") and message in lines[0], err
    assert not (tmp_path / "out.h5").exists()
