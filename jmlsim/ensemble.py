"""Replica ensembles in one compiled program: temperature ladders and replica exchange (REMD).

A replica batch is a :class:`jmlsim.simulation.Simulation` with ``replicas=R``: every state array carries a
leading axis R and one compiled chunk steps all replicas (``vmap``), optionally sharded over devices along that
axis (``Simulation(devices=...)``). On top of that this module provides

* :func:`temperature_ladder` and :func:`replica_simulation` — R copies at R temperatures (each replica has its own
  Langevin thermostat temperature) and/or R force-field parameter sets;
* :class:`ReplicaExchange` — a Monte Carlo move between chunks that swaps configurations of neighbouring replicas
  (slots), temperature REMD and Hamiltonian REMD with one rule.

The exchange rule (Sugita & Okamoto 1999; Fukunishi et al. 2002 for Hamiltonian REMD): slots i, j hold
configurations x_i, x_j with reduced potentials beta_i U_i and beta_j U_j. Swapping is accepted with probability
min(1, exp(-Delta)),

    Delta = beta_i [U_i(x_j) - U_i(x_i)] + beta_j [U_j(x_i) - U_j(x_j)],

which reduces to (beta_i - beta_j)(U(x_j) - U(x_i)) when the slots differ only in temperature: a swap that brings
the lower-energy configuration into the colder slot is always accepted. Velocities are rescaled
by sqrt(T_new / T_old) so the kinetic part needs no acceptance term. At constant pressure (NPT replicas, each
with its own box) U is replaced by the enthalpy U + P V (Okabe et al. 2001) and the boxes travel with their
configurations. Neighbouring pairs (0,1), (2,3), ... and
(1,2), (3,4), ... are attempted alternately, which keeps the scheme reversible pair by pair.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import numpy as np

from jmlsim.distributed import to_host
from jmlsim.errors import InputError


def temperature_ladder(t_min: float, t_max: float, n: int) -> np.ndarray:
    """(n,) temperatures in K, geometric from t_min to t_max (equal exchange rates for a constant heat capacity)."""
    if n < 1:
        raise InputError(f"a temperature ladder needs at least one replica, got {n}")
    if not 0 < t_min <= t_max:
        raise InputError(f"temperature ladder needs 0 < t_min <= t_max, got {t_min:g}, {t_max:g}")
    if n == 1:
        return np.array([float(t_min)])
    return t_min * (t_max / t_min) ** (np.arange(n) / (n - 1))


# Fewest replicas per host device for which splitting a batch over the CPU's cores beats one device's own
# threads. Measured on a 2-core AMD EPYC (AVX2), alanine dipeptide in vacuum, 2 fs, with replica-minor forces and
# constraints (2026-12-02): ms per step on one device -> two, R=64 0.30 -> 0.83; R=256 1.15 -> 1.24; R=512
# 1.91 -> 2.16; R=1024 5.9 -> 4.3. (Before the replica-minor path two devices paid from 32 replicas per core.)
AUTO_SHARD_MIN_REPLICAS_PER_DEVICE = 512


def default_devices(replicas: Optional[int]) -> Optional[int]:
    """How many devices a replica batch is sharded over when the user does not say: on a CPU with several host
    devices (the CLI asks XLA for one per core), all of them when each gets at least
    :data:`AUTO_SHARD_MIN_REPLICAS_PER_DEVICE` replicas and R divides evenly; otherwise None (one device)."""
    if not replicas or jax.default_backend() != "cpu" or jax.process_count() > 1:
        return None
    n = jax.local_device_count()
    if n < 2 or replicas % n or replicas // n < AUTO_SHARD_MIN_REPLICAS_PER_DEVICE:
        return None
    return n


def replica_simulation(system, temperatures_k: Sequence[float], timestep_ps: float, friction: float = 1.0,
                       replica_params: Any = None, **simulation_kwargs):
    """A Langevin replica batch, replica r at ``temperatures_k[r]`` (and parameter set r of ``replica_params``).

    Returns a :class:`jmlsim.simulation.Simulation`; ``simulation_kwargs`` go to it (seed, precision, devices, ...).
    """
    from jmlsim.integrators import LangevinBAOAB
    from jmlsim.simulation import Simulation

    temperatures = np.asarray(temperatures_k, float).reshape(-1)
    if temperatures.size < 1 or not np.all(temperatures > 0):
        raise InputError("replica temperatures must be positive (at least one)")
    kT = tuple(float(t) * system.kB for t in temperatures)
    integrator = LangevinBAOAB(timestep_ps, kT if len(kT) > 1 else kT[0], friction)
    try:
        return Simulation(system, integrator, replicas=len(kT), replica_params=replica_params,
                          **simulation_kwargs)
    except ValueError as exc:  # mismatched per-replica settings are the user's input
        raise InputError(str(exc)) from None


def slot_kT(sim) -> np.ndarray:
    """(R,) thermostat kT of each replica slot (system energy unit)."""
    kT = getattr(sim.integrator, "kT", sim.kT)
    return np.broadcast_to(np.asarray(kT, float), (sim.replicas,)).copy()


def exchange_deltas(beta: np.ndarray, u_own: np.ndarray, u_cross: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Delta of each attempted pair (see the module docstring).

    beta: (R,) 1/kT per slot. u_own: (R,) U_s(x_s). u_cross: (R,) U_s(x_partner(s)), the slot's Hamiltonian at its
    partner's configuration (for slots in a pair; ignored otherwise). pairs: (P, 2) slot indices.
    Returns (P,) Delta; a pair is accepted with probability min(1, exp(-Delta)).
    """
    i, j = pairs[:, 0], pairs[:, 1]
    return beta[i] * (u_cross[i] - u_own[i]) + beta[j] * (u_cross[j] - u_own[j])


@dataclasses.dataclass
class ExchangeStats:
    """Bookkeeping of a replica-exchange run. Slots are thermodynamic states (temperatures/parameter sets), walkers
    are the configurations that started in each slot and wander between them.

    attempts, accepted: (R-1,) per neighbouring pair (s, s+1). probability_sum: (R-1,) sum of min(1, exp(-Delta)),
    a lower-variance estimate of the acceptance rate. walker_at_slot: (R,) which walker sits in each slot now.
    round_trips: walkers' completed trips slot 0 -> slot R-1 -> slot 0. history: (step, walker_at_slot) per attempt.
    """

    attempts: np.ndarray
    accepted: np.ndarray
    probability_sum: np.ndarray
    walker_at_slot: np.ndarray
    round_trips: int = 0
    history: list = dataclasses.field(default_factory=list)
    # per walker: 0 = slot 0 not visited yet, 1 = visited slot 0, 2 = then visited slot R-1 (a trip is half done)
    _trip_stage: Optional[np.ndarray] = None

    @classmethod
    def empty(cls, replicas: int) -> "ExchangeStats":
        stage = np.zeros(replicas, np.int8)
        stage[0] = 1
        return cls(np.zeros(max(replicas - 1, 0), np.int64), np.zeros(max(replicas - 1, 0), np.int64),
                   np.zeros(max(replicas - 1, 0)), np.arange(replicas), _trip_stage=stage)

    def acceptance(self) -> np.ndarray:
        """(R-1,) accepted / attempted per neighbouring pair (nan where never attempted)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.attempts > 0, self.accepted / np.maximum(self.attempts, 1), np.nan)

    def _record(self, step: int) -> None:
        top = len(self.walker_at_slot) - 1
        bottom_walker, top_walker = self.walker_at_slot[0], self.walker_at_slot[top]
        if top > 0:
            if self._trip_stage[top_walker] == 1:
                self._trip_stage[top_walker] = 2
            if self._trip_stage[bottom_walker] == 2:
                self.round_trips += 1
            self._trip_stage[bottom_walker] = 1
        self.history.append((int(step), self.walker_at_slot.copy()))

    def summary(self) -> dict:
        """JSON-able figures: per-pair acceptance (measured and mean min(1, e^-Delta)), round trips."""
        acc = self.acceptance()
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = np.where(self.attempts > 0, self.probability_sum / np.maximum(self.attempts, 1), np.nan)
        finite = acc[np.isfinite(acc)]
        return {"attempts": self.attempts.tolist(), "accepted": self.accepted.tolist(),
                "acceptance": [None if not np.isfinite(a) else float(a) for a in acc],
                "mean_acceptance_probability": [None if not np.isfinite(a) else float(a) for a in expected],
                "mean_acceptance": float(np.mean(finite)) if finite.size else None,
                "round_trips": int(self.round_trips)}


class ReplicaExchange:
    """Replica exchange between neighbouring slots every ``frequency`` steps; pass it to ``Simulation.run(moves=[...])``.

    Temperature REMD when the replicas differ in thermostat temperature, Hamiltonian REMD when the simulation
    carries per-replica parameter sets (``replica_params``), or both at once: the rule is the same.
    pressure: for NPT replicas (each with its own box, e.g. under a Monte Carlo barostat), the pressure in the
    system's units (kJ/mol/nm^3; see :meth:`jmlsim.barostat.MonteCarloBarostat.pressure`): the energies of the
    exchange test become enthalpies U + P V, and a swap moves each configuration together with its box.
    """

    def __init__(self, frequency: int, seed: int = 0, pressure: Optional[float] = None):
        if frequency < 1:
            raise InputError(f"exchange interval must be at least 1 step, got {frequency}")
        self.frequency = int(frequency)
        self.pressure = pressure
        self.rng = np.random.default_rng(seed)
        self.stats: Optional[ExchangeStats] = None
        self.n_attempts = 0
        self._fns: dict = {}

    # -- checkpoints ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Host-side state (random stream, attempt parity, statistics and walker history) as JSON-ready data, so
        a run resumed from a checkpoint makes the exchanges the uninterrupted run makes."""
        st = self.stats
        stats = None if st is None else {
            "attempts": st.attempts.tolist(), "accepted": st.accepted.tolist(),
            "probability_sum": st.probability_sum.tolist(), "walker_at_slot": st.walker_at_slot.tolist(),
            "round_trips": int(st.round_trips), "trip_stage": st._trip_stage.tolist(),
            "history": [[int(step), walkers.tolist()] for step, walkers in st.history]}
        return {"rng": self.rng.bit_generator.state, "n_attempts": self.n_attempts, "stats": stats}

    def load_state_dict(self, data: dict) -> None:
        """Restore what :meth:`state_dict` wrote (ValueError when it is malformed)."""
        try:
            self.rng.bit_generator.state = data["rng"]
            self.n_attempts = int(data["n_attempts"])
            d = data["stats"]
            self.stats = None if d is None else ExchangeStats(
                np.asarray(d["attempts"], np.int64), np.asarray(d["accepted"], np.int64),
                np.asarray(d["probability_sum"], float), np.asarray(d["walker_at_slot"], np.int64),
                int(d["round_trips"]), [(int(step), np.asarray(w, np.int64)) for step, w in d["history"]],
                np.asarray(d["trip_stage"], np.int8))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed replica-exchange state ({type(exc).__name__}: {exc})") from None

    # -- compiled pieces (one per neighbor-list spec, as the run loop's chunks) ----------------------------
    def _cross_energy_fn(self, sim):
        key = ("cross", sim.spec)
        if key not in self._fns:
            def cross(params, state, nbrs, partner):
                moved = state._replace(positions=state.positions[partner],
                                       box=None if state.box is None else state.box[partner])
                nb = None if nbrs is None else jax.tree_util.tree_map(lambda a: a[partner], nbrs)
                return sim._energy(params, moved, nb)
            self._fns[key] = jax.jit(cross)
        return self._fns[key]

    def _swap_fn(self, sim):
        key = ("swap", sim.spec)
        if key not in self._fns:
            recompute = sim.params_batched  # a configuration entering a slot with other parameters needs new forces

            def swap(params, state, nbrs, perm, velocity_scale):
                take = lambda a: a[perm]
                new = state._replace(positions=take(state.positions),
                                     box=None if state.box is None else take(state.box),
                                     velocities=take(state.velocities) * velocity_scale[:, None, None].astype(
                                         state.velocities.dtype),
                                     forces=take(state.forces),
                                     thermostat=jax.tree_util.tree_map(take, state.thermostat))
                nb = None if nbrs is None else jax.tree_util.tree_map(take, nbrs)
                if recompute:
                    f, nb = sim._batched_force_fn(params)(new.positions, nb, new.box)
                    new = new._replace(forces=f)
                return new, nb
            self._fns[key] = jax.jit(swap)
        return self._fns[key]

    # -- the move -----------------------------------------------------------------------------------------
    def attempt(self, sim) -> np.ndarray:
        """Attempt swaps on alternating neighbour pairs; updates ``sim.state``. Returns the accepted mask (P,)."""
        R = sim.replicas
        if R is None:
            raise InputError("replica exchange needs a replica batch (replicas >= 2)")
        if self.stats is None:
            self.stats = ExchangeStats.empty(R)
        parity = self.n_attempts % 2
        self.n_attempts += 1
        first = np.arange(parity, R - 1, 2)
        if first.size == 0:
            return np.zeros(0, bool)
        pairs = np.stack([first, first + 1], axis=1)
        partner = np.arange(R)
        partner[pairs[:, 0]], partner[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
        kT = slot_kT(sim)
        beta = 1.0 / kT
        u_own = np.asarray(sim.potential(), float)
        if sim.params_batched:
            u_cross = to_host(self._cross_energy_fn(sim)(sim.params, sim.state, sim.nbrs, partner)).astype(float)
        else:  # one Hamiltonian: U_s(x_partner) is the partner's own energy
            u_cross = u_own[partner]
        if self.pressure is not None:  # NPT: enthalpies H = U + P V, each configuration with its own box
            if sim.state.box is None:
                raise InputError("replica exchange at constant pressure needs periodic replicas")
            pv = self.pressure * np.abs(np.linalg.det(np.asarray(to_host(sim.state.box), float)))
            u_own, u_cross = u_own + pv, u_cross + pv[partner]
        delta = exchange_deltas(beta, u_own, u_cross, pairs)
        probability = np.exp(-np.maximum(delta, 0.0))  # min(1, e^-Delta) without overflow
        accepted = self.rng.random(len(pairs)) < probability
        stats = self.stats
        stats.attempts[first] += 1
        stats.accepted[first] += accepted
        stats.probability_sum[first] += probability
        if np.any(accepted):
            perm = np.arange(R)
            for (i, j), ok in zip(pairs, accepted):
                if ok:
                    perm[i], perm[j] = j, i
            # a configuration arriving from slot perm[s] keeps its kinetic temperature ratio: v * sqrt(T_s / T_from)
            scale = np.sqrt(kT / kT[perm])
            state, nbrs = self._swap_fn(sim)(sim.params, sim.state, sim.nbrs, perm, scale)
            sim.state, sim.nbrs, _ = sim.place(state, nbrs)
            stats.walker_at_slot = stats.walker_at_slot[perm]
        stats._record(sim.step)
        return accepted
