"""Replica batches: per-replica temperatures and parameter sets, replica exchange, sharding over devices."""

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlsim import ensemble
from jmlsim.errors import InputError
from jmlsim.integrators import LangevinBAOAB
from jmlsim.io.openmm_import import load_amber
from jmlsim.simulation import Simulation
from jmlsim.system import System

HERE = os.path.dirname(__file__)
ALA = os.path.join(HERE, "data", "amber", "alanine-dipeptide-gbsa", "alanine-dipeptide")


@pytest.fixture(scope="module")
def alanine():
    """Alanine dipeptide in vacuum, HBonds constrained (the issue's benchmark system)."""
    return load_amber(ALA + ".prmtop", ALA + ".crd", nonbonded="nocutoff", constraints="hbonds")


# -- a one-particle double well: exact Boltzmann populations by quadrature --------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class DoubleWell:
    """U = h (x^2 - 1)^2 + tilt x + k/2 (y^2 + z^2) per particle (reduced units)."""

    def energy(self, params, positions, box, nbrs):
        x, yz = positions[:, 0], positions[:, 1:]
        return jnp.sum(params["h"] * (x * x - 1.0) ** 2 + params["tilt"] * x + 0.5 * params["k"] * jnp.sum(yz * yz, -1))


def double_well(start_x=1.0, h=4.0, tilt=0.5):
    return System(terms={"well": DoubleWell()}, params={"well": {"h": np.float64(h), "tilt": np.float64(tilt),
                                                                 "k": np.float64(4.0)}},
                  masses=np.ones(1), positions=np.array([[start_x, 0.0, 0.0]]), box=None, neighbor_cutoff=None,
                  kB=1.0, reduced_units=True, name="double-well")


def exact_right_population(kT, h=4.0, tilt=0.5):
    x = np.linspace(-3, 3, 200001)
    w = np.exp(-(h * (x * x - 1) ** 2 + tilt * x) / kT)
    return w[x > 0].sum() / w.sum()


class XRecorder:
    def __init__(self):
        self.x = []

    def report(self, frame):
        self.x.append(np.asarray(frame.positions)[:, 0, 0].copy())


# -- 1. a replica in a batch is the same replica run alone ------------------------------------------------------
def test_batched_replicas_equal_lone_runs_with_their_seeds_and_temperatures(alanine):
    temps = [300.0, 420.0]
    batch = ensemble.replica_simulation(alanine, temps, 0.002, seed=7, precision="double")
    batch.advance(60)
    for r, t in enumerate(temps):
        alone = Simulation(alanine, LangevinBAOAB(0.002, t * alanine.kB, 1.0), seed=7 + r, precision="double")
        alone.advance(60)
        np.testing.assert_allclose(np.asarray(batch.state.positions[r]), np.asarray(alone.state.positions),
                                   rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.asarray(batch.state.velocities[r]), np.asarray(alone.state.velocities),
                                   rtol=0, atol=1e-7)
    # and the replicas really are different trajectories
    assert np.max(np.abs(np.asarray(batch.state.positions[0] - batch.state.positions[1]))) > 1e-3


def test_a_blow_up_in_one_replica_names_its_step_and_keeps_the_batch_state(alanine):
    from jmlsim.errors import SimulationError
    batch = ensemble.replica_simulation(alanine, [300.0, 300.0, 300.0], 0.002, seed=5, precision="single")
    batch.advance(20)
    x = np.asarray(batch.state.positions).copy()
    x[1, 1] = x[1, 18] + 1e-4  # two carbons (no exclusion) overlap in replica 1 only: forces overflow
    batch.state = batch.state._replace(positions=jnp.asarray(x))
    with pytest.raises(SimulationError, match=r"at step 2[1-9]\b"):
        batch.advance(30)
    # the failed chunk is not kept: the batch still holds the state it was given
    np.testing.assert_array_equal(np.asarray(batch.state.positions), x)
    assert int(np.max(np.asarray(batch.state.step))) == 20


@pytest.mark.slow
def test_per_replica_parameter_sets_equal_lone_runs_with_those_parameters(alanine):
    scale = np.array([1.0, 0.5])
    params = jax.tree_util.tree_map(lambda a: np.stack([np.asarray(a)] * 2), alanine.params)
    torsions = params["PeriodicTorsionForce"]
    params["PeriodicTorsionForce"] = torsions._replace(k=torsions.k * scale[:, None])
    batch = ensemble.replica_simulation(alanine, [300.0, 300.0], 0.002, replica_params=params, seed=3,
                                        precision="double")
    batch.advance(40)
    for r in range(2):
        solo_params = jax.tree_util.tree_map(lambda a: a[r], params)
        solo = Simulation(dataclasses.replace(alanine, params=solo_params),
                          LangevinBAOAB(0.002, 300.0 * alanine.kB, 1.0), seed=3 + r, precision="double")
        solo.advance(40)
        np.testing.assert_allclose(np.asarray(batch.state.positions[r]), np.asarray(solo.state.positions),
                                   rtol=0, atol=1e-9)


def test_mismatched_per_replica_settings_are_input_errors(alanine):
    params = jax.tree_util.tree_map(lambda a: np.stack([np.asarray(a)] * 3), alanine.params)
    with pytest.raises(InputError, match="leading axis"):
        ensemble.replica_simulation(alanine, [300.0, 310.0], 0.002, replica_params=params)
    with pytest.raises(InputError, match="positive"):
        ensemble.replica_simulation(alanine, [300.0, -1.0], 0.002)
    with pytest.raises(InputError):
        ensemble.temperature_ladder(300, 400, 0)
    with pytest.raises(InputError):
        ensemble.ReplicaExchange(0)
    with pytest.raises(ValueError, match="replicas"):
        Simulation(alanine, LangevinBAOAB(0.002, (2.5, 2.6), 1.0), replicas=3)


# -- 2. the exchange rule keeps each temperature's distribution (detailed balance) ---------------------------
def test_exchange_rule_preserves_each_temperatures_boltzmann_distribution():
    """Exact samples of a 3-D harmonic well at four temperatures stay exact after an exchange sweep.

    U/kT of an exact sample is Gamma(3/2)-distributed, so <U>_T = 3/2 kT per slot. A rule with the wrong sign or
    a missing beta would move energy between slots; the correct one leaves every slot's mean (and variance) alone.
    """
    rng = np.random.default_rng(0)
    kT = np.array([1.0, 1.4, 2.0, 2.8])
    n = 200_000
    u = rng.gamma(1.5, 1.0, size=(n, 4)) * kT  # U of exact samples, per slot
    for parity in (0, 1, 0, 1):
        first = np.arange(parity, 3, 2)
        pairs = np.stack([first, first + 1], 1)
        partner = np.arange(4)
        partner[pairs[:, 0]], partner[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
        delta = np.stack([ensemble.exchange_deltas(1 / kT, row, row[partner], pairs) for row in u[:2000]])
        # vectorised over samples for the rest (same formula): check the helper on the first 2000 rows
        i, j = pairs[:, 0], pairs[:, 1]
        full = (1 / kT[i]) * (u[:, j] - u[:, i]) + (1 / kT[j]) * (u[:, i] - u[:, j])
        np.testing.assert_allclose(delta, full[:2000])
        accept = rng.random(full.shape) < np.exp(-np.maximum(full, 0))
        for col, (a, b) in enumerate(pairs):
            ui, uj = u[:, a].copy(), u[:, b].copy()
            u[:, a] = np.where(accept[:, col], uj, ui)
            u[:, b] = np.where(accept[:, col], ui, uj)
    mean = u.mean(0) / kT
    var = u.var(0) / kT**2
    np.testing.assert_allclose(mean, 1.5, atol=0.02)  # standard error ~0.003
    np.testing.assert_allclose(var, 1.5, atol=0.05)


@pytest.mark.slow
def test_temperature_remd_samples_the_right_populations_of_a_double_well():
    """All walkers start in the upper well; without exchange the coldest replica stays there (P(x>0) ~ 1), with
    exchange every slot must reproduce its exact Boltzmann population."""
    kTs = (0.4, 0.7, 1.2, 2.0)
    system = double_well()
    sim = Simulation(system, LangevinBAOAB(0.02, kTs, 2.0), replicas=4, seed=11, precision="double")
    exchange = ensemble.ReplicaExchange(25, seed=5)
    recorder = XRecorder()
    sim.run(1000, 25, moves=[exchange], progress=False)  # equilibrate
    sim.run(60_000, 25, [recorder], moves=[exchange], progress=False)
    x = np.array(recorder.x)
    populations = (x > 0).mean(0)
    exact = np.array([exact_right_population(k) for k in kTs])
    assert exact[0] < 0.15  # the cold slot should mostly sit in the lower (left) well
    np.testing.assert_allclose(populations, exact, atol=0.05)
    stats = exchange.stats.summary()
    assert all(0.2 < a < 1.0 for a in stats["acceptance"])
    assert stats["round_trips"] > 5

    plain = Simulation(system, LangevinBAOAB(0.02, kTs, 2.0), replicas=4, seed=11, precision="double")
    plain_x = XRecorder()
    plain.run(20_000, 25, [plain_x], progress=False)
    assert (np.array(plain_x.x)[:, 0] > 0).mean() > exact[0] + 0.3  # stuck: what exchange fixes



def test_exchange_state_in_a_checkpoint_continues_the_same_exchanges(tmp_path):
    """A REMD run resumed from a checkpoint with the exchange state (stream, parity, statistics, walker history)
    makes the exchanges of the uninterrupted run; a fresh exchange object would not."""
    from jmlsim import checkpoint as ckpt

    kTs = (0.4, 0.7, 1.2, 2.0)
    path = str(tmp_path / "remd.npz")

    def fresh():
        return (Simulation(double_well(), LangevinBAOAB(0.02, kTs, 2.0), replicas=4, seed=11, precision="double"),
                ensemble.ReplicaExchange(10, seed=5))
    sim, exchange = fresh()
    sim.run(300, 50, moves=[exchange], progress=False)
    ckpt.save(path, sim, {"exchange": json.loads(json.dumps(exchange.state_dict()))})
    sim.run(300, 50, moves=[exchange], progress=False)
    resumed, resumed_exchange = fresh()
    resumed_exchange.load_state_dict(ckpt.load(path, resumed)["exchange"])
    resumed.run(300, 50, moves=[resumed_exchange], progress=False)
    np.testing.assert_allclose(np.asarray(resumed.state.positions), np.asarray(sim.state.positions), atol=1e-12)
    assert resumed_exchange.stats.summary() == exchange.stats.summary()
    assert [(s, w.tolist()) for s, w in resumed_exchange.stats.history] == \
        [(s, w.tolist()) for s, w in exchange.stats.history]
    forgetful, forgetful_exchange = fresh()
    ckpt.load(path, forgetful)
    forgetful.run(300, 50, moves=[forgetful_exchange], progress=False)
    assert forgetful_exchange.stats.walker_at_slot.tolist() != exchange.stats.walker_at_slot.tolist() or \
        not np.allclose(np.asarray(forgetful.state.positions), np.asarray(sim.state.positions))
    with pytest.raises(ValueError, match="malformed"):
        resumed_exchange.load_state_dict({"rng": resumed_exchange.rng.bit_generator.state})

# -- 3. REMD on alanine dipeptide -----------------------------------------------------------------------------
@pytest.mark.slow
def test_alanine_dipeptide_remd_acceptance_matches_the_energy_overlap(alanine):
    temps = ensemble.temperature_ladder(300.0, 400.0, 4)
    sim = ensemble.replica_simulation(alanine, temps, 0.002, seed=2)
    exchange = ensemble.ReplicaExchange(20, seed=1)
    sim.run(6000, 500, moves=[exchange], progress=False)
    stats = exchange.stats
    acc = stats.acceptance()
    assert np.all((acc > 0.2) & (acc < 0.98)), acc
    # measured acceptance agrees with the mean Metropolis probability within binomial error (4 sigma)
    expected = stats.probability_sum / stats.attempts
    sigma = np.sqrt(expected * (1 - expected) / stats.attempts)
    assert np.all(np.abs(acc - expected) < 4 * sigma + 0.02), (acc, expected)
    # velocity rescaling keeps every slot at its own temperature on average
    assert stats.walker_at_slot.tolist() != list(range(4)) or stats.accepted.sum() > 0


@pytest.mark.slow
def test_hamiltonian_exchange_recomputes_forces_and_accepts_identical_hamiltonians(alanine):
    params = jax.tree_util.tree_map(lambda a: np.stack([np.asarray(a)] * 4), alanine.params)
    sim = ensemble.replica_simulation(alanine, [300.0] * 4, 0.002, replica_params=params, seed=4)
    exchange = ensemble.ReplicaExchange(10, seed=0)
    sim.run(60, 60, moves=[exchange], progress=False)
    assert np.all(exchange.stats.accepted == exchange.stats.attempts)  # Delta = 0 for identical Hamiltonians

    lam = np.array([1.0, 0.8, 0.6, 0.4])
    torsions = params["PeriodicTorsionForce"]
    params["PeriodicTorsionForce"] = torsions._replace(k=torsions.k * lam[:, None])
    sim = ensemble.replica_simulation(alanine, [300.0] * 4, 0.002, replica_params=params, seed=4)
    exchange = ensemble.ReplicaExchange(10, seed=0)
    sim.run(200, 100, moves=[exchange], progress=False)
    assert exchange.stats.accepted.sum() > 0
    # after the swaps each slot's forces belong to its own parameter set at its current configuration
    for r in range(4):
        p = jax.tree_util.tree_map(lambda a: jnp.asarray(a[r], jnp.float32), params)
        f = alanine.forces(p, sim.state.positions[r], None, None)
        np.testing.assert_allclose(np.asarray(sim.state.forces[r]), np.asarray(f), rtol=1e-4, atol=1e-2)


# -- 4. sharding over devices ---------------------------------------------------------------------------------
SHARDED = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jmlsim import ensemble
    from jmlsim.io.openmm_import import load_amber
    ala = sys.argv[1]
    system = load_amber(ala + ".prmtop", ala + ".crd", nonbonded="nocutoff", constraints="hbonds")
    temps = ensemble.temperature_ladder(300.0, 420.0, 8)
    runs = []
    for devices in (None, 4):
        sim = ensemble.replica_simulation(system, temps, 0.002, seed=5, precision="double", devices=devices)
        exchange = ensemble.ReplicaExchange(25, seed=3)
        sim.run(100, 50, moves=[exchange], progress=False)
        runs.append((np.asarray(sim.state.positions), len(sim.state.positions.sharding.device_set),
                     exchange.stats.accepted.tolist()))
    print(json.dumps({"devices": [r[1] for r in runs], "max_diff": float(np.max(np.abs(runs[0][0] - runs[1][0]))),
                      "accepted": [r[2] for r in runs], "n_devices": len(jax.devices())}))
""")


def test_sharded_replicas_equal_the_unsharded_run():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SHARDED, ALA], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["n_devices"] == 4
    assert result["devices"] == [1, 4]  # the sharded state really lives on four devices
    assert result["accepted"][0] == result["accepted"][1]
    assert result["max_diff"] < 1e-9


def test_default_devices_shard_only_batches_large_enough_for_every_core(monkeypatch):
    monkeypatch.setattr(jax, "local_device_count", lambda: 2)
    per = ensemble.AUTO_SHARD_MIN_REPLICAS_PER_DEVICE
    assert ensemble.default_devices(2 * per) == 2 and ensemble.default_devices(8 * per) == 2
    assert ensemble.default_devices(2 * per - 2) is None  # too few per core: one device's own threads are faster
    assert ensemble.default_devices(2 * per + 1) is None  # not divisible
    assert ensemble.default_devices(None) is None and ensemble.default_devices(1) is None
    monkeypatch.setattr(jax, "local_device_count", lambda: 1)
    assert ensemble.default_devices(8 * per) is None


def test_cli_shards_a_large_batch_over_the_cores_by_default(tmp_path):
    """simulate --replicas R without --devices: one host device per core, the batch sharded when large enough."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    R = 2 * ensemble.AUTO_SHARD_MIN_REPLICAS_PER_DEVICE
    out = subprocess.run([sys.executable, "-m", "jmlsim", "simulate", "--prmtop", ALA + ".prmtop", "--inpcrd",
                          ALA + ".crd", "--replicas", str(R), "--steps", "10", "--report-interval", "10",
                          "--no-progress", "--json", "--out", str(tmp_path / "r.dcd")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    cores = os.cpu_count() or 1
    expected = cores if cores > 1 and R % cores == 0 and R // cores >= ensemble.AUTO_SHARD_MIN_REPLICAS_PER_DEVICE \
        else None
    assert result.get("devices") == expected and result["replicas"] == R
    assert len(result["trajectory"]) == R


# -- NPT replica exchange: enthalpies in the test, boxes travel with their configurations -------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class _NoEnergy:
    def energy(self, params, positions, box, nbrs):
        return 0.0 * jnp.sum(positions)


def test_npt_exchange_uses_enthalpies_and_swaps_boxes():
    """With U = 0 the exchange of slots at beta_0, beta_1 holding volumes V_0, V_1 is accepted with probability
    min(1, exp(-(beta_0 - beta_1) P (V_1 - V_0))); an accepted swap moves each configuration with its box."""
    kB = 0.00831446261815324
    system = System(terms={"zero": _NoEnergy()}, params={"zero": ()}, masses=np.full(4, 10.0),
                    positions=np.random.default_rng(0).random((4, 3)), box=np.eye(3) * 2.0, neighbor_cutoff=None,
                    kB=kB)
    temps = (300.0, 600.0)
    sim = ensemble.replica_simulation(system, list(temps), 0.001, seed=0, precision="double")
    beta = 1.0 / (kB * np.asarray(temps))
    pressure = 0.5  # kJ/mol/nm^3
    exchange = ensemble.ReplicaExchange(1, seed=5, pressure=pressure)
    rng = np.random.default_rng(1)
    outcomes = set()
    for attempt in range(40):
        sides = 1.5 + rng.random(2)  # cubic boxes of different volumes
        boxes = np.stack([np.eye(3) * a for a in sides])
        sim.state = sim.state._replace(box=jnp.asarray(boxes), positions=sim.state.positions + 0.0)
        x_before = np.asarray(sim.state.positions).copy()
        before = exchange.stats.probability_sum.copy() if exchange.stats is not None else np.zeros(1)
        accepted = exchange.attempt(sim)
        if attempt % 2:  # odd attempts try the pair (1, 2), which two replicas do not have
            continue
        v = sides**3
        expected = min(1.0, math.exp(-(beta[0] - beta[1]) * pressure * (v[1] - v[0])))
        assert exchange.stats.probability_sum[0] - before[0] == pytest.approx(expected, rel=1e-9)
        after_boxes, after_x = np.asarray(sim.state.box), np.asarray(sim.state.positions)
        if accepted[0]:
            np.testing.assert_array_equal(after_boxes, boxes[::-1])
            np.testing.assert_array_equal(after_x, x_before[::-1])
        else:
            np.testing.assert_array_equal(after_boxes, boxes)
        outcomes.add(bool(accepted[0]))
    assert outcomes == {True, False}
