"""Many different small molecules in one batch: padded topologies give each molecule exactly its own energy."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import mdtraj
import numpy as np
import pytest

from jmlsim import molecule_batch as mb
from jmlsim.cli import main
from jmlsim.errors import InputError
from jmlsim.io.openmm_import import load_amber

HERE = os.path.dirname(__file__)
PEPTIDES = os.path.join(HERE, "data", "peptides")
ALA = os.path.join(HERE, "data", "amber", "alanine-dipeptide-gbsa", "alanine-dipeptide")


def own_energy_and_forces(system):
    x = jnp.asarray(system.positions, jnp.float64)
    p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), system.params)
    e, f = jax.jit(lambda p, x: (system.energy(p, x, None, None), system.forces(p, x, None, None)))(p, x)
    return float(e), np.asarray(f)


@pytest.fixture(scope="module")
def library():
    systems, names, skipped = mb.load_library(os.path.join(PEPTIDES, "library.txt"))
    ala = load_amber(ALA + ".prmtop", ALA + ".crd", nonbonded="nocutoff", constraints="none")
    return systems + [dataclasses.replace(ala, name="ala")], names + ["ala"], skipped


def test_each_padded_molecule_has_exactly_its_own_energy_and_forces(library):
    systems, names, skipped = library
    assert skipped == [] and len(set(s.n_atoms for s in systems)) == len(systems)  # all sizes differ
    batch = mb.batch_systems(systems, names)
    energies, forces = mb.molecule_energies(batch)  # double precision (conftest enables x64)
    for b, system in enumerate(systems):
        e, f = own_energy_and_forces(system)
        n = system.n_atoms
        assert abs(float(energies[b]) - e) < 1e-9 * max(1.0, abs(e)), names[b]
        np.testing.assert_allclose(np.asarray(forces[b, :n]), f, rtol=0, atol=1e-8)
        assert np.all(np.abs(np.asarray(forces[b, n:])) < 1e-15)  # padding atoms feel nothing
    assert batch.atom_mask.sum(1).tolist() == [s.n_atoms for s in systems]



@pytest.mark.slow
def test_batched_lbfgs_minimizes_each_molecule_as_it_would_be_alone(library):
    """One vmapped L-BFGS over the padded library stops each molecule where a lone L-BFGS of it stops."""
    from jmlsim.integrators import LangevinBAOAB
    from jmlsim.minimize import minimize
    from jmlsim.simulation import Simulation

    systems, names, _ = library
    batch = mb.batch_systems(systems, names)
    sim = mb.molecule_simulation(batch, 300.0, 0.001, seed=0, precision="double")
    out = minimize(sim, 10.0)
    assert all(out["converged"]) and max(out["max_force"]) < 10.0
    assert all(u1 < u0 - 10.0 for u0, u1 in zip(out["initial_potential"], out["final_potential"]))
    energies, forces = mb.molecule_energies(batch, sim.state.positions)
    np.testing.assert_allclose(np.asarray(energies), out["final_potential"], rtol=1e-9)
    for b, system in enumerate(systems):
        # the padding atoms feel no force and do not move
        np.testing.assert_array_equal(np.asarray(sim.state.positions[b, system.n_atoms:]),
                                      batch.positions[b, system.n_atoms:])
    for b in (0, len(systems) - 1):  # the smallest peptide and alanine dipeptide, each minimized alone
        system = systems[b]
        alone = Simulation(system, LangevinBAOAB(0.001, 300.0 * system.kB, 1.0), precision="double")
        lone = minimize(alone, 10.0)
        assert abs(lone["final_potential"] - out["final_potential"][b]) < 1e-3 * abs(lone["final_potential"]), names[b]
        # the same minimum; line searches amplify rounding differences along soft modes (methyl rotations)
        moved = np.asarray(sim.state.positions[b, :system.n_atoms]) - np.asarray(alone.state.positions)
        assert np.sqrt(np.mean(np.sum(moved**2, -1))) < 5e-3, names[b]

def test_implicit_solvent_padding_adds_no_descreening_or_surface_energy():
    ala = load_amber(ALA + ".prmtop", ALA + ".crd", nonbonded="nocutoff", constraints="none",
                     implicit_solvent="obc2")
    rng = np.random.default_rng(0)
    bent = dataclasses.replace(ala, positions=ala.positions + rng.normal(0, 0.01, ala.positions.shape))
    batch = mb.batch_systems([ala, bent], ["ala", "bent"])
    energies, forces = mb.molecule_energies(batch)
    for b, system in enumerate([ala, bent]):
        e, f = own_energy_and_forces(system)
        assert abs(float(energies[b]) - e) < 1e-9 * abs(e)
        np.testing.assert_allclose(np.asarray(forces[b, :22]), f, rtol=0, atol=1e-8)


@pytest.mark.slow
def test_a_batched_run_thermalizes_every_molecule_and_writes_its_own_trajectory(library, tmp_path):
    systems, names, _ = library
    batch = mb.batch_systems(systems, names)
    sim = mb.molecule_simulation(batch, 300.0, 0.001, friction=20.0, seed=3)
    paths = [str(tmp_path / f"{n}.h5") for n in names]
    reporter = mb.MoleculeTrajectoryReporter(paths, batch.topologies, batch.n_atoms)
    sim.run(300, 300, progress=False)  # let the MMFF-built starts relax
    temperatures = []

    class T:
        def report(self, frame):
            temperatures.append(frame.temperature)

    sim.run(3000, 50, [reporter, T()], progress=False)
    reporter.close()
    mean_t = np.mean(temperatures, axis=0)
    # dof counts real atoms only: padding atoms in the count would cool every molecule by n/(n+pad)
    np.testing.assert_allclose(mean_t, 300.0, atol=35.0)
    pad = np.asarray(sim.state.positions)[:, -1]
    np.testing.assert_allclose(pad, np.asarray(batch.positions)[:, -1], atol=1e-2)  # padding stays put
    for path, system in zip(paths, systems):
        traj = mdtraj.load(path)
        assert traj.n_frames == 60 and traj.n_atoms == system.n_atoms
        assert traj.topology.n_residues == system.topology.n_residues
        bonds = np.array([[a.index, b.index] for a, b in traj.topology.bonds])
        lengths = np.linalg.norm(traj.xyz[-1, bonds[:, 0]] - traj.xyz[-1, bonds[:, 1]], axis=1)
        assert lengths.max() < 0.2  # molecules stay whole (bonds are real bonds)


def test_bad_libraries_are_input_errors(tmp_path, capsys):
    listing = tmp_path / "lib.txt"
    listing.write_text(f"{PEPTIDES}/GA.pdb\nmissing.pdb\n")
    systems, names, skipped = mb.load_library(str(listing))
    assert names == ["GA"] and skipped[0]["name"] == "missing"
    (tmp_path / "bad.txt").write_text("a.prmtop\n")
    with pytest.raises(InputError, match="bad.txt:1"):
        mb.read_library(str(tmp_path / "bad.txt"))
    (tmp_path / "none.txt").write_text("missing.pdb\n")
    with pytest.raises(InputError, match="could be loaded"):
        mb.load_library(str(tmp_path / "none.txt"))
    with pytest.raises(InputError, match="does not exist"):
        mb.read_library(str(tmp_path / "nowhere"))
    ala = load_amber(ALA + ".prmtop", ALA + ".crd", nonbonded="nocutoff", constraints="hbonds")
    with pytest.raises(InputError, match="constraints"):
        mb.batch_systems([ala], ["ala"])
    for argv in (["--molecules", str(tmp_path / "none.txt")],
                 ["--molecules", f"{PEPTIDES}/library.txt", "--replicas", "2"],
                 ["--molecules", f"{PEPTIDES}/library.txt", "--pdb", "x.pdb"]):
        code = main(["simulate", *argv, "--steps", "10", "--out", str(tmp_path / "t.h5")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith("jmlsim: error:") and len(err) <= 2
    assert not list(tmp_path.glob("t*.h5"))


def test_cli_simulates_a_library_directory(tmp_path, capsys):
    out = tmp_path / "lib.h5"
    code = main(["simulate", "--molecules", f"{PEPTIDES}/library.txt", "--steps", "200", "--report-interval", "100",
                 "--constraints", "none", "--minimize", "--out", str(out), "--no-progress", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["replicas"] == 4 and [m["name"] for m in result["molecules"]] == ["GA", "AGS", "GGG", "KA"]
    assert result["minimization"]["converged"]
    for m in result["molecules"]:
        assert mdtraj.load(m["trajectory"]).n_frames == 2
        assert m["minimized_potential"] < m["initial_potential"] and m["minimized_max_force"] < 10.0
