"""Force-field systems end to end: CLI contract, constrained dynamics, minimization, bad input."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from constraint_projection import all_pairs, dense_projection

from jmlsim import units
from jmlsim.integrators import LangevinBAOAB, NoseHooverChain, VelocityVerlet
from jmlsim.io import openmm_import as oi
from jmlsim.simulation import Simulation

HERE = os.path.dirname(__file__)
AMBER = os.path.join(HERE, "data", "amber")
ALA_GBSA = [os.path.join(AMBER, "alanine-dipeptide-gbsa", "alanine-dipeptide." + ext) for ext in ("prmtop", "crd")]
ALA_PME = [os.path.join(AMBER, "alanine-dipeptide-explicit", "alanine-dipeptide." + ext) for ext in ("prmtop", "crd")]
WATER = [os.path.join(AMBER, "waterbox", "watbox216." + ext) for ext in ("prmtop", "crd")]
GRO = [os.path.join(HERE, "data", "gromacs", "tip3p216." + ext) for ext in ("gro", "top")]


def run_cli(cwd, *args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "jmlsim", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def last_json(proc):
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jmlsim: error:"), proc.stderr
    return lines[0]


# -- CLI contract ----------------------------------------------------------------------------------------------
def test_energy_cli_terms_and_forces_match_openmm(tmp_path):
    from jmlsim.validation import openmm_reference_terms
    out = tmp_path / "f.npy"
    result = last_json(run_cli(tmp_path, "energy", "--prmtop", ALA_GBSA[0], "--inpcrd", ALA_GBSA[1],
                               "--implicit-solvent", "obc2", "--precision", "double", "--forces-out", out, "--json"))
    system, omm = oi.load_amber(*ALA_GBSA, implicit_solvent="obc2", return_openmm=True)
    reference = openmm_reference_terms(omm, system.positions)
    assert set(result["terms"]) == {"HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce",
                                    "NonbondedForce", "GBSAOBCForce"}
    for name, value in result["terms"].items():
        assert value == pytest.approx(reference[name][0], rel=1e-6, abs=1e-6), name
    assert result["total"] == pytest.approx(sum(v[0] for v in reference.values()), rel=1e-6)
    forces = np.load(out)
    ref_forces = sum(v[1] for v in reference.values())
    assert forces.shape == (22, 3)
    assert np.sqrt(np.mean((forces - ref_forces) ** 2)) < 1e-6 * np.sqrt(np.mean(ref_forces**2))


def test_gromacs_input_matches_openmm():
    from jmlsim.validation import compare_with_openmm
    system, omm = oi.load_gromacs(*GRO, return_openmm=True)
    assert system.n_atoms == 648 and system.constraints.waters.shape == (216, 3)
    for name, c in compare_with_openmm(omm, system).items():
        assert c.within(1e-5, 1e-3, 1e-4), (name, c)


@pytest.mark.slow
def test_simulate_cli_with_constraints_writes_trajectory(tmp_path):
    import mdtraj
    result = last_json(run_cli(tmp_path, "simulate", "--prmtop", WATER[0], "--inpcrd", WATER[1], "--cutoff", 0.8,
                               "--steps", 60, "--report-interval", 20, "--out", "w.h5", "--checkpoint", "w.npz",
                               "--no-progress", "--json"))
    for key in ("atoms", "steps", "replicas", "timestep_fs", "compile_s", "wall_s", "ns_per_day", "steps_per_s",
                "final_potential", "final_temperature_k", "trajectory"):
        assert key in result, key
    assert result["atoms"] == 648 and result["steps"] == 60 and result["timestep_fs"] == pytest.approx(2.0)
    traj = mdtraj.load(str(tmp_path / "w.h5"))
    assert traj.n_frames == 3 and traj.n_atoms == 648
    oh = mdtraj.compute_distances(traj, [[0, 1], [0, 2], [1, 2]])
    assert np.allclose(oh[:, :2], 0.09572, atol=1e-5) and np.allclose(oh[:, 2], 0.15136, atol=1e-5)  # AMBER TIP3P H-H
    resumed = last_json(run_cli(tmp_path, "simulate", "--prmtop", WATER[0], "--inpcrd", WATER[1], "--cutoff", 0.8,
                                "--steps", 80, "--report-interval", 20, "--out", "w.h5", "--checkpoint", "w.npz",
                                "--resume", "--no-progress", "--json"))
    assert resumed["steps"] == 80 and mdtraj.load(str(tmp_path / "w.h5")).n_frames == 4


@pytest.mark.slow
def test_minimize_cli_lowers_energy_and_keeps_constraints(tmp_path):
    result = last_json(run_cli(tmp_path, "minimize", "--prmtop", ALA_GBSA[0], "--inpcrd", ALA_GBSA[1],
                               "--max-steps", 50, "--json"))
    assert result["final_potential"] < result["initial_potential"]
    assert result["method"] == "lbfgs"


BAD = {
    "unknown-residue": lambda d: ["--pdb", _write(d / "u.pdb", _PDB_XYZ), "--forcefield", "amber14-all.xml"],
    "missing-bond-parameter": lambda d: ["--pdb", _write(d / "u.pdb", _PDB_XYZ + _CONECT), "--forcefield",
                                         _write(d / "ff.xml", _FF_NO_BONDS)],
    "missing-nonbonded-parameter": lambda d: ["--pdb", _write(d / "u.pdb", _PDB_XYZ + _CONECT), "--forcefield",
                                              _write(d / "ff.xml", _FF_NO_BONDS.replace(
                                                  '<Atom type="CX" charge="0" sigma="0.3" epsilon="0.1"/>', ""))],
    "truncated-prmtop": lambda d: ["--prmtop", _write(d / "t.prmtop", "".join(open(ALA_GBSA[0]).readlines()[:120])),
                                   "--inpcrd", ALA_GBSA[1]],
    "old-format-prmtop": lambda d: ["--prmtop", _write(d / "o.prmtop", "".join(
        line for line in open(ALA_GBSA[0]) if not line.startswith("%"))), "--inpcrd", ALA_GBSA[1]],
    "atom-count-mismatch": lambda d: ["--prmtop", ALA_GBSA[0], "--inpcrd", WATER[1]],
    "missing-file": lambda d: ["--prmtop", d / "none.prmtop", "--inpcrd", ALA_GBSA[1]],
    "pme-without-box": lambda d: ["--prmtop", ALA_GBSA[0], "--inpcrd", ALA_GBSA[1], "--nonbonded", "pme"],
    "cutoff-beyond-half-box": lambda d: ["--prmtop", WATER[0], "--inpcrd", WATER[1], "--cutoff", 1.2],
    "prmtop-without-inpcrd": lambda d: ["--prmtop", ALA_GBSA[0]],
}
EXPECT = {"unknown-residue": "XYZ", "missing-bond-parameter": "C1-C2", "missing-nonbonded-parameter": "CX",
          "truncated-prmtop": "t.prmtop", "old-format-prmtop": "o.prmtop", "missing-file": "none.prmtop"}

_PDB_XYZ = ("HETATM    1  C1  XYZ A   1       0.000   0.000   0.000  1.00  0.00           C\n"
            "HETATM    2  C2  XYZ A   1       1.500   0.000   0.000  1.00  0.00           C\n")
_CONECT = "CONECT    1    2\nCONECT    2    1\n"
_FF_NO_BONDS = """<ForceField>
 <AtomTypes><Type name="CX" class="CX" element="C" mass="12.01"/></AtomTypes>
 <Residues><Residue name="XYZ"><Atom name="C1" type="CX"/><Atom name="C2" type="CX"/>
  <Bond atomName1="C1" atomName2="C2"/></Residue></Residues>
 <HarmonicBondForce/>
 <NonbondedForce coulomb14scale="0.8333" lj14scale="0.5"><Atom type="CX" charge="0" sigma="0.3" epsilon="0.1"/>
 </NonbondedForce>
</ForceField>
"""


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_with_one_line(tmp_path, case):
    line = one_line_error(run_cli(tmp_path, "energy", *BAD[case](tmp_path), "--json", timeout=120))
    if case in EXPECT:
        assert EXPECT[case] in line, line


# -- dynamics with constraints ---------------------------------------------------------------------------------
@pytest.mark.parametrize("precision, offset_nm, max_drift", [("double", 0.0, 1e-3), ("single", 3.0, 5e-3)])
def test_nve_with_pme_and_constraints_conserves_energy(precision, offset_nm, max_drift):
    """Velocity Verlet (RATTLE/SETTLE), PME, 216 rigid waters, 1 fs: no drift, small noise. In single precision the
    box sits at 3-5 nm from the origin, where float32 rounds coordinates at ~5e-7 nm: SETTLE taking its centre of
    mass in absolute coordinates once heated this run by ~60 kJ/mol/ps (49 kJ/mol/ns per degree of freedom, energy
    std 19 kJ/mol); as displacements from the new positions it drifts like double precision does."""
    system = oi.load_amber(*WATER, cutoff=0.8)
    system = dataclasses.replace(system, positions=system.positions + offset_nm)  # periodic: the same physics
    kT = units.kT_kj_per_mol(300.0)
    sim = Simulation(system, VelocityVerlet(0.001), kT=kT, precision=precision, skin=0.1)
    energies = []
    for _ in range(20):
        pot = sim.advance(25)
        frame = sim.frame(pot)
        energies.append(float(pot) + float(frame.kinetic))
    energies = np.array(energies)
    t = np.arange(len(energies)) * 25 * 0.001
    slope = np.polyfit(t, energies, 1)[0]  # kJ/mol/ps
    dof = sim.dof
    assert dof == 3 * 648 - 3 * 216 - 3
    assert abs(slope) / dof < max_drift, slope  # kJ/mol/ps per degree of freedom
    assert np.std(energies) < 2.0, np.std(energies)
    errors = np.asarray(sim.integrator.constraints.errors(sim.state.positions))
    assert np.max(np.abs(errors)) < (1e-6 if precision == "double" else 1e-5)


@pytest.mark.slow
def test_langevin_with_constraints_samples_the_temperature():
    """LangevinMiddle-type BAOAB with SETTLE: <T> over 3N - constraints degrees of freedom is the bath's."""
    system = oi.load_amber(*WATER, cutoff=0.8)
    kT = units.kT_kj_per_mol(300.0)
    sim = Simulation(system, LangevinBAOAB(0.002, kT, 10.0), kT=kT, precision="single", skin=0.1, seed=3)
    sim.advance(150)
    temps = []
    for _ in range(15):
        sim.advance(20)
        temps.append(float(sim.frame().temperature))
    mean, err = np.mean(temps), np.std(temps) / np.sqrt(len(temps) / 2)
    assert abs(mean - 300.0) < max(4 * err, 6.0), (mean, err)


def test_nose_hoover_with_constraints_conserves_extended_energy():
    system = oi.load_amber(*ALA_GBSA, implicit_solvent="obc2")
    kT = units.kT_kj_per_mol(300.0)
    integ = NoseHooverChain(0.001, kT, 0.1)
    sim = Simulation(system, integ, kT=kT, precision="double")
    conserved = []
    for _ in range(10):
        pot = sim.advance(50)
        conserved.append(float(sim.integrator.conserved_energy(sim.state, pot)))
    assert np.ptp(conserved) < 0.5, conserved


def _surface_forces(constraints, positions, forces):
    """Forces with their components along every constraint gradient removed (dense numpy, unit masses): an
    independent check of the minimizer's projected forces. (N, 3) -> (N, 3)."""
    x = np.asarray(positions, float)
    return dense_projection(all_pairs(constraints), x, forces, np.ones(x.shape[0]))


def _minimize_to(system, tolerance, max_steps, precision="double"):
    from jmlsim.minimize import minimize
    kT = units.kT_kj_per_mol(300.0)
    sim = Simulation(system, LangevinBAOAB(0.002, kT, 1.0), kT=kT, precision=precision, skin=0.1)
    return sim, minimize(sim, tolerance=tolerance, max_steps=max_steps)


@pytest.mark.slow
def test_lbfgs_minimization_converges_on_the_constraint_surface():
    """Alanine dipeptide (GBSA, HBonds) minimized to 1 kJ/mol/nm: every iterate lies on the constraint surface, so the
    result holds the constraints and its forces, less their components along the constraints, are below the
    tolerance (checked here by a dense least-squares projection)."""
    system = oi.load_amber(*ALA_GBSA, constraints="hbonds")
    sim, result = _minimize_to(system, 1.0, 3000)
    assert result["converged"] and result["max_force"] < 1.0, result
    x = np.asarray(sim.state.positions)
    assert np.max(np.abs(np.asarray(sim.integrator.constraints.errors(x)))) < 1e-7  # SHAKE's tolerance
    surface = np.linalg.norm(_surface_forces(sim.integrator.constraints, x, sim.state.forces), axis=-1)
    assert surface.max() < 1.0 and result["final_potential"] < result["initial_potential"] - 20.0


def test_lbfgs_minimization_of_rigid_water_converges():
    """The 216-water box (SETTLE, mixed precision) minimized to OpenMM's default tolerance, 10 kJ/mol/nm, on the
    constraint surface (the penalty search that came before it stopped at 10.3 kJ/mol/nm after 2,000 iterations in
    double precision)."""
    system = oi.load_amber(*WATER, cutoff=0.8)
    sim, result = _minimize_to(system, 10.0, 2000, precision="mixed")  # float32 forces, float64 positions
    assert result["converged"] and result["final_potential"] < result["initial_potential"] - 2000.0, result
    x = np.asarray(sim.state.positions)
    assert np.max(np.abs(np.asarray(sim.integrator.constraints.errors(x)))) < 1e-8  # SETTLE: exact
    surface = np.linalg.norm(_surface_forces(sim.integrator.constraints, x, sim.state.forces), axis=-1)
    assert surface.max() < 10.0


@pytest.mark.slow
def test_simulate_cli_pressure(tmp_path):
    result = last_json(run_cli(tmp_path, "simulate", "--prmtop", WATER[0], "--inpcrd", WATER[1], "--cutoff", 0.8,
                               "--steps", 100, "--pressure", 1.0, "--out", "p.h5", "--no-progress", "--json"))
    assert result["pressure_bar"] == 1.0 and 0.8 < result["final_density_g_per_cm3"] < 1.2
    line = one_line_error(run_cli(tmp_path, "simulate", "--prmtop", ALA_GBSA[0], "--inpcrd", ALA_GBSA[1],
                                  "--steps", 10, "--pressure", 1.0, "--out", "q.h5", "--json"))
    assert "periodic" in line


@pytest.mark.slow
def test_simulate_cli_pressure_with_replicas(tmp_path):
    """NPT replicas from the command line: a box, density and trajectory per replica."""
    import mdtraj

    result = last_json(run_cli(tmp_path, "simulate", "--prmtop", WATER[0], "--inpcrd", WATER[1], "--cutoff", 0.8,
                               "--steps", 100, "--pressure", 1.0, "--barostat-interval", 10, "--replicas", 2,
                               "--out", "p.h5", "--no-progress", "--json"))
    assert result["replicas"] == 2 and len(result["final_density_g_per_cm3"]) == 2
    assert np.asarray(result["final_box_nm"]).shape == (2, 3, 3) and 0 < result["barostat_acceptance"] <= 1
    for r, path in enumerate(result["trajectory"]):
        traj = mdtraj.load(str(tmp_path / path))
        np.testing.assert_allclose(traj.unitcell_vectors[-1],
                                   np.asarray(result["final_box_nm"][r]), rtol=1e-5)


@pytest.mark.slow
def test_simulate_cli_npt_replica_exchange(tmp_path):
    result = last_json(run_cli(tmp_path, "simulate", "--prmtop", WATER[0], "--inpcrd", WATER[1], "--cutoff", 0.8,
                               "--steps", 60, "--pressure", 1.0, "--barostat-interval", 10, "--replicas", 2,
                               "--temperature-max", 310, "--exchange-interval", 20, "--out", "x.h5", "--no-progress",
                               "--json"))
    assert result["exchange"]["attempts"][0] >= 1 and len(result["final_density_g_per_cm3"]) == 2
