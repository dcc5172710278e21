"""Neural-potential datasets, the NeuralPotential wrapper and training (tiny SchNet on 50 rMD17 ethanol frames)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlsim import units
from jmlsim.errors import InputError
from jmlsim.io import datasets
from jmlsim.io.datasets import QMDataset, element_shifts, load_hdf5, load_rmd17, save_hdf5
from jmlsim.potentials import training
from jmlsim.potentials.potential import NeuralPotential, load_potential, system_from_xyz

DATA = os.path.join(os.path.dirname(__file__), "data", "rmd17")
ETHANOL = os.path.join(DATA, "rmd17_ethanol_train_01.npz")
ASPIRIN = os.path.join(DATA, "rmd17_aspirin_train_01.npz")
HYPER = {"n_features": 16, "n_interactions": 1, "n_rbf": 16}
TRAIN_KW = dict(hyper=HYPER, epochs=10, batch_size=4, lr=1e-2, progress=False, seed=1)


@pytest.fixture(scope="module")
def ethanol():
    return load_rmd17(ETHANOL)


@pytest.fixture(scope="module")
def trained(ethanol, tmp_path_factory):
    """One uninterrupted 10-epoch run (40 training, 10 validation frames)."""
    out = str(tmp_path_factory.mktemp("train_a"))
    result = training.train("schnet", ethanol.subset(np.arange(40)), ethanol.subset(np.arange(40, 50)), out,
                            **TRAIN_KW)
    return out, result


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


# ---------------------------------------------------------------------------------------------- datasets

def test_rmd17_reading_converts_units(ethanol, tmp_path):
    raw = np.load(ETHANOL)
    assert ethanol.source == ETHANOL and len(ethanol) == raw["energies"].shape[0]
    np.testing.assert_array_equal(ethanol.atomic_numbers[0], raw["nuclear_charges"])
    np.testing.assert_allclose(ethanol.positions, raw["coords"] / 10.0, rtol=1e-15)  # Å -> nm
    np.testing.assert_allclose(ethanol.energy, raw["energies"] * 4.184, rtol=1e-15)  # kcal -> kJ
    np.testing.assert_allclose(ethanol.forces, raw["forces"] * 41.84, rtol=1e-15)  # kcal/Å -> kJ/nm
    assert ethanol.atom_mask.all() and ethanol.box is None and ethanol.elements == (1, 6, 8)
    # the original MD17 key names, energies as (F, 1)
    md17 = _write_npz(tmp_path / "md17.npz", z=raw["nuclear_charges"], R=raw["coords"][:5],
                      E=raw["energies"][:5, None], F=raw["forces"][:5])
    old = load_rmd17(md17)
    np.testing.assert_array_equal(old.positions, ethanol.positions[:5])
    np.testing.assert_array_equal(old.energy, ethanol.energy[:5])
    np.testing.assert_array_equal(old.forces, ethanol.forces[:5])


def test_bad_inputs_name_file_and_key(tmp_path):
    raw = dict(np.load(ETHANOL))
    good = {k: raw[k][:4] if k != "nuclear_charges" else raw[k] for k in
            ("nuclear_charges", "coords", "energies", "forces")}

    def fails(name, expect_key, **changes):
        arrays = {**good, **changes}
        arrays = {k: v for k, v in arrays.items() if v is not None}
        path = _write_npz(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(InputError) as err:
            load_rmd17(path)
        msg = str(err.value)
        assert path in msg and expect_key in msg and "\n" not in msg, msg

    fails("missing", "forces", forces=None)
    fails("frames", "energies", energies=good["energies"][:3])
    fails("atoms", "forces", forces=good["forces"][:, :8])
    fails("atoms_coords", "coords", coords=good["coords"][:, :8])
    fails("element", "nuclear_charges", nuclear_charges=np.array([6, 6, 8, 1, 1, 1, 1, 1, 119]))
    fails("element0", "nuclear_charges", nuclear_charges=np.array([6, 6, 8, 1, 1, 1, 1, 1, 0]))
    nan_e = good["energies"].copy()
    nan_e[2] = np.nan
    fails("nan", "energies", energies=nan_e)
    inf_f = good["forces"].copy()
    inf_f[1, 3, 2] = np.inf
    fails("inf", "forces", forces=inf_f)
    with pytest.raises(InputError, match="no such file"):
        load_rmd17(str(tmp_path / "absent.npz"))
    with pytest.raises(InputError, match="unknown dataset format"):
        datasets.load_dataset(str(tmp_path / "data.txt"))


def _mixed(ethanol):
    """3 ethanol and 2 aspirin frames, interleaved, padded to 21 atoms, with periodic boxes."""
    aspirin = load_rmd17(ASPIRIN).subset([0, 1])
    both = datasets.concatenate([ethanol.subset([0, 1, 2]), aspirin])
    both = both.subset([0, 3, 1, 4, 2])
    box = np.broadcast_to(np.diag([2.0, 2.1, 2.2]), (5, 3, 3)).copy()
    box[1, 1, 0] = 0.3
    return QMDataset(both.atomic_numbers, both.positions, both.energy, both.forces, both.atom_mask, box, "mixed")


def test_hdf5_round_trip_mixed_molecules(ethanol, tmp_path):
    data = _mixed(ethanol)
    assert data.max_atoms == 21 and list(data.n_atoms) == [9, 21, 9, 21, 9]
    path = str(tmp_path / "mixed.h5")
    save_hdf5(data, path)
    back = load_hdf5(path)
    assert back.source == path
    for key in ("atomic_numbers", "positions", "energy", "forces", "atom_mask", "box"):
        np.testing.assert_array_equal(getattr(back, key), getattr(data, key), err_msg=key)
    import h5py
    with h5py.File(path, "r") as h5:
        assert h5.attrs["energy_unit"] == "kJ/mol" and len(h5["molecules"]) == 2
    # a file in Å and kcal/mol is converted on reading
    with h5py.File(path, "r+") as h5:
        h5.attrs["length_unit"] = "angstrom"
        h5.attrs["energy_unit"] = "kcal/mol"
        h5.attrs["force_unit"] = "kcal/mol/angstrom"
    conv = load_hdf5(path)
    np.testing.assert_allclose(conv.positions, data.positions * 0.1, rtol=1e-15)
    np.testing.assert_allclose(conv.energy, data.energy * 4.184, rtol=1e-15)
    np.testing.assert_allclose(conv.forces, data.forces * 41.84, rtol=1e-15)
    with h5py.File(path, "r+") as h5:
        del h5["molecules/mol000000/forces"]
    with pytest.raises(InputError, match="mixed.h5: missing key 'molecules/mol000000/forces'"):
        load_hdf5(path)


def test_batches_fixed_shape_and_cover_every_frame(ethanol):
    data = ethanol.subset(np.arange(11))
    seen = []
    shapes = set()
    for batch in data.batches(4, shuffle=True, seed=3):
        shapes.add((batch.positions.shape, batch.energy.shape, batch.frame_mask.shape))
        seen.extend(batch.energy[batch.frame_mask].tolist())
    assert shapes == {((4, 9, 3), (4,), (4,))}
    assert sorted(seen) == sorted(data.energy.tolist())
    rest, held = data.split(0.1, seed=0)
    assert len(held) == 1 and len(rest) == 10
    assert sorted(rest.energy.tolist() + held.energy.tolist()) == sorted(data.energy.tolist())


def test_element_shifts_recover_synthetic_shifts():
    rng = np.random.default_rng(0)
    elements = (1, 6, 7, 8)
    true = np.array([-1313.0, -99000.0, -143000.0, -197000.0])
    frames, n = 60, 12
    z = np.zeros((frames, n), np.int32)
    mask = np.zeros((frames, n), bool)
    for f in range(frames):
        k = rng.integers(4, n + 1)
        z[f, :k] = rng.choice(elements, k)
        mask[f, :k] = True
    counts = np.stack([((z == e) & mask).sum(1) for e in elements], 1)
    energy = counts @ true + rng.normal(0, 0.5, frames)
    data = QMDataset(z, np.zeros((frames, n, 3)), energy, rng.normal(0, 300, (frames, n, 3)) * mask[..., None],
                     mask)
    shifts = element_shifts(data, elements)
    np.testing.assert_allclose(shifts, true, atol=1.0)
    scale = datasets.energy_scale(data, elements, shifts)
    assert 250 < scale < 350  # RMS of the force components
    with pytest.raises(InputError, match="does not know"):
        element_shifts(data, (1, 6, 8))


# ---------------------------------------------------------------------------------------------- training

def test_training_loss_decreases_and_compiles_once(trained):
    out, result = trained
    for key in ("epochs", "energy_mae_mev", "force_mae_mev_per_angstrom", "train_seconds"):
        assert key in result
    assert result["epochs"] == 10 and result["stopped"] == "epochs"
    assert result["train_step_compiles"] == 1
    with open(os.path.join(out, "log.csv")) as handle:
        header = handle.readline().strip().split(",")
        rows = [dict(zip(header, line.strip().split(","))) for line in handle]
    assert header == list(training.LOG_FIELDS) and [int(r["epoch"]) for r in rows] == list(range(1, 11))
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.5 * losses[0], losses
    assert float(rows[-1]["lr"]) < float(rows[0]["lr"])  # cosine decay
    assert os.path.getsize(os.path.join(out, "learning_curve.png")) > 1000
    assert json.load(open(os.path.join(out, "result.json")))["epochs"] == 10
    best_epoch = result["best_epoch"]
    valid = [float(r["valid_loss"]) for r in rows]
    assert valid[best_epoch - 1] == pytest.approx(min(valid), rel=1e-6)


def test_resume_continues_from_saved_epoch(ethanol, trained, tmp_path):
    out_a, result_a = trained
    out_b = str(tmp_path / "b")
    tr, va = ethanol.subset(np.arange(40)), ethanol.subset(np.arange(40, 50))
    first = training.train("schnet", tr, va, out_b, max_minutes=1e-9, **TRAIN_KW)
    assert first["stopped"] == "time" and first["epochs"] == 1
    second = training.train("schnet", tr, va, out_b, resume=True, **TRAIN_KW)
    assert second["epochs"] == 10 and second["stopped"] == "epochs"
    assert second["train_step_compiles"] == 0  # the compiled step is reused
    log_a = open(os.path.join(out_a, "log.csv")).read().splitlines()
    log_b = open(os.path.join(out_b, "log.csv")).read().splitlines()
    # identical losses and errors at every epoch (only the timing column differs)
    assert [line.rsplit(",", 1)[0] for line in log_b] == [line.rsplit(",", 1)[0] for line in log_a]
    a = load_potential(os.path.join(out_a, "model"))
    b = load_potential(os.path.join(out_b, "model"))
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    assert second["energy_mae_mev"] == result_a["energy_mae_mev"]
    # a resume with changed settings is refused
    with pytest.raises(InputError, match="checkpoint_last.msgpack: written with lr"):
        training.train("schnet", tr, va, out_b, resume=True, **{**TRAIN_KW, "lr": 1e-3})


def test_checkpoint_round_trip_is_exact(ethanol, trained, tmp_path):
    out, _ = trained
    pot = load_potential(os.path.join(out, "model"))
    assert pot.elements == (1, 6, 8) and pot.config["name"] == "schnet" and pot.cutoff == pot.module.cutoff
    cfg = json.load(open(os.path.join(out, "model", "config.json")))
    assert cfg["format"] == "jmlsim-potential-1" and cfg["metadata"]["training"]["model"] == "schnet"
    pot.save(str(tmp_path / "copy"))
    again = NeuralPotential.load(str(tmp_path / "copy"))
    r, z = ethanol.positions[:6], ethanol.atomic_numbers[:6]
    e1, f1 = pot.energy_and_forces_batch(r, z)
    e2, f2 = again.energy_and_forces_batch(r, z)
    np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))
    np.testing.assert_array_equal(np.asarray(f1), np.asarray(f2))
    for x, y in zip(jax.tree_util.tree_leaves(pot.params), jax.tree_util.tree_leaves(again.params)):
        assert x.dtype == y.dtype == np.float32
        np.testing.assert_array_equal(x, y)
    assert not [f for f in os.listdir(tmp_path / "copy") if f.startswith(".")]  # no temporary files left
    # single-structure and batched paths agree
    np.testing.assert_allclose(float(pot.energy(r[0], z[0])), float(e1[0]), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(pot.energy_batch(r, z)), np.asarray(e1), rtol=1e-12)
    # broken files give one-line InputErrors naming the file
    with open(tmp_path / "copy" / "params.msgpack", "wb") as handle:
        handle.write(b"\x00garbage")
    with pytest.raises(InputError, match="params.msgpack"):
        NeuralPotential.load(str(tmp_path / "copy"))
    with pytest.raises(InputError, match="pretrained"):
        load_potential(str(tmp_path / "no-such-model"))


def test_evaluate_units_match_hand_computation(ethanol, trained, tmp_path):
    out, _ = trained
    pot = load_potential(os.path.join(out, "model"))
    data = ethanol.subset(np.arange(100, 107))
    got = training.evaluate(pot, data, batch_size=4)
    energy, forces = pot.energy_and_forces_batch(data.positions, data.atomic_numbers)  # float64 positions
    de = np.asarray(energy) - data.energy  # kJ/mol
    df = (np.asarray(forces) - data.forces).ravel()  # kJ/mol/nm
    ev_per_kj = 1.0 / 96.48533212331002
    assert got["n"] == 7
    np.testing.assert_allclose(got["energy_mae_mev"], np.mean(np.abs(de)) * ev_per_kj * 1000, rtol=2e-4)
    np.testing.assert_allclose(got["energy_rmse_mev"], np.sqrt(np.mean(de**2)) * ev_per_kj * 1000, rtol=2e-4)
    # per Å = per nm / 10
    np.testing.assert_allclose(got["force_mae_mev_per_angstrom"], np.mean(np.abs(df)) * ev_per_kj * 100, rtol=2e-4)
    np.testing.assert_allclose(got["force_rmse_mev_per_angstrom"], np.sqrt(np.mean(df**2)) * ev_per_kj * 100,
                               rtol=2e-4)
    # the CLI helper reads the npz itself
    path = _write_npz(tmp_path / "eval.npz", nuclear_charges=data.atomic_numbers[0], coords=data.positions * 10,
                      energies=data.energy / 4.184, forces=data.forces / 41.84)
    files = training.evaluate_files(os.path.join(out, "model"), path, batch_size=4)
    np.testing.assert_allclose(files["force_mae_mev_per_angstrom"], got["force_mae_mev_per_angstrom"], rtol=1e-6)
    # an element the model does not know: one line naming the file and the key
    bad = _write_npz(tmp_path / "chlorine.npz", nuclear_charges=np.array([6, 6, 8, 1, 1, 1, 1, 1, 17]),
                     coords=data.positions * 10, energies=data.energy, forces=data.forces)
    with pytest.raises(InputError, match=r"chlorine.npz: nuclear_charges has element\(s\) \[17\]"):
        training.evaluate_files(os.path.join(out, "model"), bad)


def test_train_from_files_splits_validation(ethanol, tmp_path):
    raw = np.load(ETHANOL)
    path = _write_npz(tmp_path / "train.npz", **{k: raw[k][:42] if k != "nuclear_charges" else raw[k]
                                                  for k in ("nuclear_charges", "coords", "energies", "forces")})
    result = training.train_from_files(path, None, "schnet", str(tmp_path / "out"), **TRAIN_KW)
    settings = json.load(open(tmp_path / "out" / "model" / "config.json"))["metadata"]["training"]
    assert settings["train_frames"] == 40 and settings["valid_frames"] == 2  # 5% of 42, rounded
    assert result["epochs"] == 10 and result["train_step_compiles"] == 0  # same shapes: step reused


# ---------------------------------------------------------------------------------------------- simulations

def _small_potential(seed=0, dtype=jnp.float64):
    from jmlsim.potentials.architectures import build_model, model_config
    from jmlsim.potentials.potential import init_params

    module = build_model("schnet", 3, **HYPER)
    params = init_params(module, jax.random.PRNGKey(seed), dtype)
    return NeuralPotential(config=model_config(module), params=params, elements=(1, 6, 8),
                           shifts=np.array([-1000.0, -2000.0, -3000.0]), scale=500.0, cutoff=module.cutoff)


def test_energy_term_in_system_ml_mm(ethanol):
    from jmlsim.energy.bonded import HarmonicBond, HarmonicBondParams
    from jmlsim.system import System

    pot = _small_potential()
    rng = np.random.default_rng(1)
    mol = np.asarray(ethanol.positions[0])
    # 12 atoms: the ethanol (NN) at shuffled places among 3 MM atoms bonded to each other
    nn_idx = np.array([5, 0, 11, 2, 7, 9, 3, 10, 6])
    positions = rng.uniform(0, 0.6, (12, 3))
    positions[nn_idx] = mol
    term = pot.as_energy_term(nn_idx, ethanol.atomic_numbers[0])
    bonds = HarmonicBond(atoms=np.array([[1, 4], [4, 8]]))
    bond_params = HarmonicBondParams(k=jnp.array([1000.0, 2000.0]), length=jnp.array([0.12, 0.15]))
    system = System(terms={"nn": term, "bonds": bonds}, params={"nn": pot.params, "bonds": bond_params},
                    masses=np.ones(12), positions=positions, box=None, neighbor_cutoff=None,
                    kB=units.BOLTZMANN_KJ_PER_MOL_K)
    x = jnp.asarray(positions)
    energies = jax.jit(system.energy_terms)(system.params, x, None, None)
    np.testing.assert_allclose(float(energies["nn"]), float(pot.energy(mol, ethanol.atomic_numbers[0])), rtol=1e-12)
    forces = np.asarray(jax.jit(system.forces)(system.params, x, None, None))
    _, nn_forces = pot.energy_and_forces(mol, ethanol.atomic_numbers[0])
    mm_forces = -np.asarray(jax.grad(lambda y: bonds.energy(bond_params, y))(x))
    expected = mm_forces.copy()
    expected[nn_idx] += np.asarray(nn_forces)
    np.testing.assert_allclose(forces, expected, rtol=1e-10, atol=1e-8)
    # forces = -grad E by central finite differences of the total energy
    energy = jax.jit(lambda y: system.energy(system.params, y, None, None))
    h = 1e-6
    for atom, k in [(5, 0), (0, 1), (11, 2), (4, 0), (9, 1)]:
        d = np.zeros((12, 3))
        d[atom, k] = h
        fd = -(float(energy(x + d)) - float(energy(x - d))) / (2 * h)
        assert abs(fd - forces[atom, k]) < 1e-5 * max(1.0, np.sqrt(np.mean(forces**2))), (atom, k, fd, forces[atom, k])


def test_system_from_xyz_and_stress(ethanol, tmp_path):
    pot = _small_potential(seed=2)
    mol = ethanol.positions[3]
    lines = [str(len(mol)), "ethanol frame 3"]
    for z, r in zip(ethanol.atomic_numbers[3], mol * 10.0):
        lines.append(f"{ {1: 'H', 6: 'C', 8: 'O'}[int(z)]:2s} {r[0]:.10f} {r[1]:.10f} {r[2]:.10f}")
    path = tmp_path / "ethanol.xyz"
    path.write_text("\n".join(lines) + "\n")
    system = system_from_xyz(str(path), pot)
    np.testing.assert_allclose(system.positions, mol, atol=1e-11)
    assert system.box is None and system.n_atoms == 9
    np.testing.assert_allclose(system.masses[:3], [12.01, 12.01, 15.999], atol=0.01)
    e_sys = float(jax.jit(system.energy)(system.params, jnp.asarray(system.positions), None, None))
    np.testing.assert_allclose(e_sys, float(pot.energy(system.positions, ethanol.atomic_numbers[3])), rtol=1e-12)
    path.write_text("2\n\nXx 0 0 0\nH 0 0 1\n")
    with pytest.raises(InputError, match="ethanol.xyz: line 3: unknown element 'Xx'"):
        system_from_xyz(str(path), pot)

    # stress of a periodic copy: sigma V = dE/d(strain), checked by finite differences of a uniform scaling
    box = np.diag([1.1, 1.15, 1.2])
    z = ethanol.atomic_numbers[3]
    sigma = np.asarray(pot.stress(mol, z, box))
    vol = np.linalg.det(box)
    np.testing.assert_allclose(sigma, sigma.T, atol=1e-10)

    def scaled(eps, axis=None):
        f = np.eye(3) + (eps * np.eye(3) if axis is None else np.diag(np.eye(3)[axis] * eps))
        return float(pot.energy(mol @ f, z, box=box @ f))

    h = 1e-5
    np.testing.assert_allclose(np.trace(sigma) * vol, (scaled(h) - scaled(-h)) / (2 * h), rtol=1e-6)
    np.testing.assert_allclose(sigma[1, 1] * vol, (scaled(h, 1) - scaled(-h, 1)) / (2 * h), rtol=1e-6)
    assert abs(np.trace(sigma)) > 1e-3  # not trivially zero

    # the neighbor-list graph gives the all-pairs energy, and the term can use the System's list
    from jmlsim import neighbors
    _, nbrs = neighbors.plan(mol, box, pot.cutoff, 0.05)
    e_dense = float(pot.energy(mol, z, box=box))
    np.testing.assert_allclose(float(pot.energy(mol, z, box=box, nbrs=nbrs)), e_dense, rtol=1e-12)
    term = pot.as_energy_term(None, z, use_neighbor_list=True)
    e_term = jax.jit(term.energy)(pot.params, jnp.asarray(mol), jnp.asarray(box), nbrs)
    np.testing.assert_allclose(float(e_term), e_dense, rtol=1e-12)
    # float32 parameters and inputs give energies close to the float64 ones
    e32 = _float32(pot).energy(mol.astype(np.float32), z)
    np.testing.assert_allclose(float(e32), float(pot.energy(mol, z)), rtol=1e-6)


def _float32(pot):
    return pot.replace(params=jax.tree_util.tree_map(lambda p: p.astype(jnp.float32), pot.params))


def test_float32_energy_stays_float32(ethanol):
    pot = _float32(_small_potential(seed=4, dtype=jnp.float32))
    e, f = pot.energy_and_forces(ethanol.positions[0].astype(np.float32), ethanol.atomic_numbers[0])
    assert e.dtype == jnp.float32 and f.dtype == jnp.float32


def test_ase_calculator(ethanol):
    ase = pytest.importorskip("ase")
    from jmlsim.potentials.ase_calculator import make_calculator

    pot = _small_potential(seed=3)
    atoms = ase.Atoms(numbers=ethanol.atomic_numbers[0], positions=ethanol.positions[0] * 10.0)
    atoms.calc = make_calculator(pot)
    e, f = pot.energy_and_forces(ethanol.positions[0], ethanol.atomic_numbers[0])
    np.testing.assert_allclose(atoms.get_potential_energy(), float(e) / 96.48533212331002, rtol=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), np.asarray(f) / 964.8533212331002, rtol=1e-10)
