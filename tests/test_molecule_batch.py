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
from jmlsim.energy.replica_batch import to_components
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


@pytest.fixture(scope="module")
def constrained_library():
    systems, names, _ = mb.load_library(os.path.join(PEPTIDES, "library.txt"), constraints="hbonds")
    return systems, names, mb.batch_systems(systems, names)


def test_batched_constraints_project_each_molecule_as_its_own_constraints_do(constrained_library):
    """SHAKE and RATTLE on the padded batch (per-molecule pairs, lengths and CCMA preconditioners, padding rows
    between padding atoms) give each molecule what its own Constraints give it, to the solvers' tolerance."""
    systems, names, batch = constrained_library
    cons = batch.constraints
    counts = [s.constraints.pairs.shape[0] for s in systems]
    assert cons.n_constraints.tolist() == counts and len(set(counts)) > 1
    n_pad = batch.positions.shape[1]
    assert all(n_pad - s.n_atoms >= 2 * (max(counts) - c) for s, c in zip(systems, counts))
    rng = np.random.default_rng(1)
    x0 = jnp.asarray(batch.positions)
    masses = jnp.asarray(batch.masses)
    moved = x0 + 0.002 * rng.normal(size=x0.shape)
    v = jnp.asarray(rng.normal(size=x0.shape)) * jnp.sqrt(2.494 / masses)[..., None]  # thermal, 300 K
    fixed = np.asarray(cons.positions(moved, x0, masses))
    projected = np.asarray(cons.velocities(jnp.asarray(fixed), v, masses))
    assert np.abs(np.asarray(cons.errors(jnp.asarray(fixed)))).max() < 1e-7  # the tolerance; padding rows too
    for b, system in enumerate(systems):
        n = system.n_atoms
        own = system.constraints
        ref_x = np.asarray(own.positions(moved[b, :n], x0[b, :n], masses[b, :n]))
        # A molecule alone solves its H clusters exactly (jmlsim.constraint_clusters); the batch, whose pairs differ
        # per molecule, iterates to the tolerance (1e-7 of the length): the two agree to that tolerance.
        np.testing.assert_allclose(fixed[b, :n], ref_x, rtol=0, atol=2e-8, err_msg=names[b])
        ref_v = np.asarray(own.velocities(jnp.asarray(ref_x), v[b, :n], masses[b, :n]))
        np.testing.assert_allclose(projected[b, :n], ref_v, rtol=0, atol=2e-7, err_msg=names[b])  # 1e-7 x ~2 nm/ps
    # degrees of freedom of each molecule: 3 n - its own constraints
    sim = mb.molecule_simulation(batch, 300.0, 0.002, seed=0, precision="double")
    assert sim.dof.tolist() == [3 * s.n_atoms - c for s, c in zip(systems, counts)]


def test_constrained_library_runs_at_2_fs_with_its_bond_lengths_held(constrained_library):
    systems, names, batch = constrained_library
    sim = mb.molecule_simulation(batch, 300.0, 0.002, seed=3, precision="single")
    sim.advance(500)
    x = sim.state.positions
    assert np.all(np.isfinite(np.asarray(x)))
    assert np.abs(np.asarray(batch.constraints.errors(x))).max() < 2e-6
    # RATTLE: no relative velocity along any constrained bond (nm/ps, against thermal H speeds of ~2 nm/ps)
    v = np.asarray(sim.state.velocities, np.float64)
    xx = np.asarray(x, np.float64)
    for b, system in enumerate(systems):
        i, j = system.constraints.pairs.T
        d = xx[b, i] - xx[b, j]
        along = np.sum(d * (v[b, i] - v[b, j]), -1) / np.linalg.norm(d, axis=-1)
        assert np.abs(along).max() < 1e-3, names[b]

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


def test_batched_implicit_solvent_forces_equal_the_vmapped_ones():
    """GBSA of a molecule batch runs replica-minor (the per-molecule surface masks travel as (N, B)); the other terms,
    whose index arrays differ per molecule, stay under vmap. The whole equals the vmapped per-molecule forces."""
    ala = load_amber(ALA + ".prmtop", ALA + ".crd", nonbonded="nocutoff", constraints="none",
                     implicit_solvent="obc2")
    rng = np.random.default_rng(1)
    bent = dataclasses.replace(ala, positions=ala.positions + rng.normal(0, 0.01, ala.positions.shape))
    batch = mb.batch_systems([ala, bent, ala], ["ala", "bent", "ala-masked"])
    params = batch.params
    mask = np.asarray(params["GBSAOBCForce"]["topology"]["surface_mask"]).copy()
    mask[2, :5] = False  # a third molecule whose first atoms get no surface term: masks differ per molecule
    params["GBSAOBCForce"]["topology"]["surface_mask"] = jnp.asarray(mask)
    system, x = batch.system, jnp.asarray(batch.positions)
    gbsa = system.terms["GBSAOBCForce"]
    assert gbsa.batched_forces(params["GBSAOBCForce"], to_components(x), True) is not None
    assert system.terms["HarmonicBondForce"].batched_forces(params["HarmonicBondForce"], to_components(x),
                                                             True) is None
    got = jax.jit(lambda p, y: system.batched_forces(p, y, None, None, True))(params, x)
    expected = jax.jit(jax.vmap(lambda p, y: system.forces(p, y, None, None)))(params, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0,
                               atol=1e-10 * float(jnp.max(jnp.abs(expected))))
    assert not np.allclose(np.asarray(got[0]), np.asarray(got[2]))  # the mask made a difference


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
    c = ala.constraints
    wet = dataclasses.replace(ala, constraints=dataclasses.replace(c, waters=np.array([[0, 1, 2]]), water_oh=0.1,
                                                                  water_hh=0.15))
    with pytest.raises(InputError, match="rigid waters"):
        mb.batch_systems([ala, wet], ["ala", "wet"])
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
                 "--minimize", "--out", str(out), "--no-progress", "--json"])  # HBonds (the default), 2 fs
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["replicas"] == 4 and [m["name"] for m in result["molecules"]] == ["GA", "AGS", "GGG", "KA"]
    assert result["timestep_fs"] == 2.0 and result["minimization"]["iterations"] > 0
    systems, _, _ = mb.load_library(os.path.join(PEPTIDES, "library.txt"), constraints="hbonds")
    for m, system in zip(result["molecules"], systems):
        traj = mdtraj.load(m["trajectory"])
        assert traj.n_frames == 2 and traj.unitcell_vectors is None  # open boundaries: no (zero) unit cell
        # staged penalties relax what the final SHAKE projection strains (one 2e5 stage alone left 8-28 kJ/mol/nm;
        # the staged search measured 1.8-8.8 against the tolerance of 10)
        assert m["minimized_potential"] < m["initial_potential"] - 50.0 and m["minimized_max_force"] < 15.0
        # every bond to hydrogen keeps its constrained length in the written frames
        pairs, lengths = system.constraints.pairs, system.constraints.distances
        np.testing.assert_allclose(mdtraj.compute_distances(traj, pairs), np.broadcast_to(lengths, (2, len(lengths))),
                                   rtol=1e-4)


def test_cli_library_checkpoint_and_resume_continue_the_same_run(tmp_path, capsys):
    """A library run stopped at a checkpoint and resumed writes the frames an uninterrupted run writes; a checkpoint
    of another library is refused with one line."""
    common = ["simulate", "--molecules", f"{PEPTIDES}/library.txt", "--report-interval", "20", "--no-progress",
              "--json", "--seed", "4"]
    assert main(common + ["--steps", "40", "--out", str(tmp_path / "straight.h5")]) == 0
    part = common + ["--out", str(tmp_path / "part.h5"), "--checkpoint", str(tmp_path / "lib.npz")]
    assert main(part + ["--steps", "20"]) == 0
    capsys.readouterr()
    assert main(part + ["--steps", "40", "--resume"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["steps"] == 40 and result["steps_run"] == 20
    for name in ("GA", "AGS", "GGG", "KA"):
        straight = mdtraj.load(str(tmp_path / f"straight_{name}.h5"))
        resumed = mdtraj.load(str(tmp_path / f"part_{name}.h5"))
        assert resumed.n_frames == straight.n_frames == 2
        np.testing.assert_allclose(resumed.xyz, straight.xyz, rtol=0, atol=1e-5)
    (tmp_path / "two.txt").write_text(f"{PEPTIDES}/GA.pdb\n{PEPTIDES}/KA.pdb\n")
    code = main(["simulate", "--molecules", str(tmp_path / "two.txt"), "--steps", "40", "--out",
                 str(tmp_path / "part.h5"), "--checkpoint", str(tmp_path / "lib.npz"), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "holds the molecules" in err[-1]
