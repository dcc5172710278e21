"""Atom decomposition of one system over devices (jmlsim.decomposition): the rows of the neighbor-list pair sum
split over 4 CPU devices give the same forces, energies and trajectory as one device."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WATER = os.path.join(HERE, "data", "amber", "waterbox", "watbox216")
ALA = os.path.join(HERE, "data", "amber", "alanine-dipeptide-gbsa", "alanine-dipeptide")

SPLIT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jmlsim import units
    from jmlsim.decomposition import atom_mesh, splitting_rows
    from jmlsim.energy import nonbonded
    from jmlsim.integrators import LangevinBAOAB
    from jmlsim.io.openmm_import import load_amber
    from jmlsim.simulation import Simulation
    water = sys.argv[1]
    system = load_amber(water + ".prmtop", water + ".crd", nonbonded="pme", cutoff=0.8)
    kT = units.kT_kj_per_mol(300.0)
    out = {"n_devices": len(jax.devices())}

    # the pair term alone, 648 rows in blocks of 64 (so each device runs several blocks), analytic and autodiff
    sim = Simulation(system, LangevinBAOAB(0.002, kT, 1.0), kT=kT, precision="double", seed=1)
    term, params = system.terms["NonbondedForce"], sim.params["NonbondedForce"]
    x, box, nbrs = sim.state.positions, sim.state.box, sim.nbrs
    nonbonded.ROW_BLOCK = 64
    direct = lambda x: (term.direct_energy(params, x, box, nbrs), term.direct_forces(params, x, box, nbrs),
                        -jax.grad(term.direct_energy, argnums=1)(params, x, box, nbrs))
    one = jax.jit(direct)(x)
    # the run loop keeps the state replicated on the mesh's devices (Simulation.place)
    from jax.sharding import NamedSharding, PartitionSpec
    x, box, nbrs, params = jax.device_put((x, box, nbrs, params), NamedSharding(atom_mesh(4), PartitionSpec()))
    with splitting_rows(atom_mesh(4)):
        lowered = jax.jit(direct).lower(x)
        split = lowered.compile()(x)
    out["hlo_has_collective"] = "all-reduce" in lowered.compile().as_text()
    out["energy"] = [float(one[0]), float(split[0])]
    out["force_diff"] = float(jnp.max(jnp.abs(one[1] - split[1])))
    out["grad_diff"] = float(jnp.max(jnp.abs(one[2] - split[2])))
    out["force_scale"] = float(jnp.max(jnp.abs(one[1])))
    nonbonded.ROW_BLOCK = 1024

    # 30 MD steps of the whole system on one device and split over four
    runs = []
    for devices in (None, 4):
        sim = Simulation(system, LangevinBAOAB(0.002, kT, 1.0), kT=kT, precision="double", seed=1, devices=devices)
        sim.run(30, 10, progress=False)
        runs.append((np.asarray(sim.state.positions), float(sim.potential()),
                     len(sim.state.positions.sharding.device_set)))
    out["md_chunk_collective"] = all("all-reduce" in fn.as_text() for fn in sim._chunks.values())
    out["md_diff"] = float(np.max(np.abs(runs[0][0] - runs[1][0])))
    out["md_potential"] = [runs[0][1], runs[1][1]]
    out["md_devices"] = [runs[0][2], runs[1][2]]
    print(json.dumps(out))
""")


def _env():
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")


def test_pair_sum_split_over_devices_equals_one_device():
    out = subprocess.run([sys.executable, "-c", SPLIT, WATER], env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["n_devices"] == 4
    assert r["hlo_has_collective"]  # the split program gathers rows across devices
    assert r["energy"][0] == pytest.approx(r["energy"][1], rel=1e-12)
    assert r["force_diff"] < 1e-10 * r["force_scale"] and r["grad_diff"] < 1e-9 * r["force_scale"]
    assert r["md_devices"] == [1, 4] and r["md_chunk_collective"]
    assert r["md_diff"] < 1e-10
    assert r["md_potential"][0] == pytest.approx(r["md_potential"][1], rel=1e-12)


def _cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # the CLI asks for --devices host devices itself
    return subprocess.run([sys.executable, "-m", "jmlsim", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_cli_devices_without_replicas_splits_one_system(tmp_path):
    out = _cli("simulate", "--prmtop", WATER + ".prmtop", "--inpcrd", WATER + ".crd", "--cutoff", "0.8",
               "--steps", "20", "--report-interval", "10", "--devices", "2", "--no-progress", "--json",
               "--out", str(tmp_path / "w.dcd"))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2 and result["replicas"] == 1 and result["steps"] == 20
    assert (tmp_path / "w.dcd").exists()


def test_cli_devices_without_replicas_needs_a_cutoff(tmp_path):
    bad = _cli("simulate", "--prmtop", ALA + ".prmtop", "--inpcrd", ALA + ".crd", "--steps", "10",
               "--devices", "2", "--out", str(tmp_path / "a.dcd"))
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "needs a cutoff" in bad.stderr
