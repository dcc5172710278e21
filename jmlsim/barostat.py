"""Monte Carlo barostat (isotropic or anisotropic), following OpenMM's MonteCarloBarostat algorithm.

Every ``frequency`` steps (``Simulation.run(..., barostat=B)`` calls ``B.attempt(sim)`` after each chunk):

1. draw a volume change dV uniformly in [-max_delta, +max_delta) (anisotropic: first pick one of x, y, z);
2. scale the box (isotropic: every lattice vector by s = (V'/V)^(1/3); anisotropic: the chosen Cartesian
   component of every lattice vector by V'/V) and move every molecule rigidly so that its *geometric centre*
   is scaled the same way (as OpenMM does, so constraint lengths are untouched);
3. accept with probability min(1, exp(-dW / kT)), dW = U' - U + P dV - N_mol kT ln(V'/V)
   (the NPT ensemble with molecule-centre scaling; N_mol counts molecules, not atoms);
4. adapt max_delta every >= 10 attempts towards 25-75 % acceptance (/1.1 below 25 %, *1.1 above 75 %, capped
   at 0.3 V), starting from 0.01 V, exactly like OpenMM.

Velocities are not scaled (OpenMM does not scale them either). Positions stay unwrapped: scaling the unwrapped
centre c + n.L gives s c + n.(s L), the same point modulo the new box, so no wrapping is needed.

Units: pressure in bar converted with 1 bar = 0.0602214076 kJ mol^-1 nm^-3 (10^5 Pa x 10^-27 m^3/nm^3 x N_A /
1000); for reduced-unit systems (``system.reduced_units``) ``pressure_bar`` is read as a reduced pressure
(epsilon / sigma^3) and ``temperature_k`` as a reduced temperature (kB = 1).

All energy work (old energy, trial scaling, trial neighbor list, trial energy and forces) is one compiled
function per (system, neighbor spec, dtypes), shared between barostats; the random numbers and the adaptive step live on the host in a
small mutable :class:`BarostatStats` held by the (frozen) barostat.

Replica batches (``Simulation(replicas=R)``): every replica has its own box and makes its own volume move at each
attempt, with its own random stream (seed + r, as the integrator's replica r uses seed + r), its own adaptive
max_delta and, for a temperature ladder, its own temperature; the trial energies of all replicas are one vmapped
call. Replica r of a batch therefore follows the same NPT chain as a lone run with seeds seed + r.
"""

from __future__ import annotations

import dataclasses
import math
import time
import weakref
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim import space
from jmlsim.distributed import to_host

BAR_TO_KJ_MOL_NM3 = 0.0602214076  # 1 bar = 1e5 J/m^3 = 1e-22 J/nm^3; x N_A / 1000 -> kJ/mol/nm^3
AMU_PER_NM3_TO_G_PER_CM3 = 1.66053906660e-3  # 1 amu = 1.66053906660e-24 g, 1 nm^3 = 1e-21 cm^3
MODES = ("isotropic", "anisotropic")

# Compiled trial functions, shared by all barostats: system -> {(neighbor spec, state dtype, force dtype): fn}.
# Weak keys, so a dropped system takes its compiled code with it.
_TRIALS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def acceptance_probability(delta_u: float, delta_v: float, volume: float, pressure: float, n_molecules: int,
                           kT: float) -> float:
    """Metropolis probability of a volume move (all in consistent units, e.g. kJ/mol, nm^3, kJ/mol/nm^3).

    delta_u: U(trial) - U(current). delta_v: V' - V. volume: V. pressure: P. n_molecules: N_mol.
    Returns min(1, exp(-dW/kT)) with dW = dU + P dV - N_mol kT ln(V'/V).
    """
    w = reduced_work(delta_u, delta_v, volume, pressure, n_molecules, kT)
    return 1.0 if w <= 0.0 else math.exp(-w)


def reduced_work(delta_u: float, delta_v: float, volume: float, pressure: float, n_molecules: int,
                 kT: float) -> float:
    """dW / kT = (dU + P dV - N_mol kT ln((V + dV) / V)) / kT (dimensionless)."""
    return (delta_u + pressure * delta_v) / kT - n_molecules * math.log((volume + delta_v) / volume)


def molecule_ids(system) -> np.ndarray:
    """(N,) contiguous molecule ids 0..M-1 for the barostat.

    ``system.molecules`` when set; otherwise every atom is its own molecule, except that atoms joined by
    constraints (bonds and rigid waters) are merged, so a move never stretches a constraint.
    """
    n = system.n_atoms
    if system.molecules is not None:
        ids = np.asarray(system.molecules)
        if ids.shape != (n,):
            raise ValueError(f"system.molecules has shape {ids.shape}, expected ({n},)")
        return np.unique(ids, return_inverse=True)[1].astype(np.int32).reshape(n)
    from jmlsim.io.openmm_import import connected_components

    cons = system.constraints
    links = np.zeros((0, 2), np.int64)
    if cons is not None:
        waters = np.asarray(cons.waters).reshape(-1, 3)
        links = np.concatenate([np.asarray(cons.pairs).reshape(-1, 2), waters[:, [0, 1]], waters[:, [0, 2]]])
    return connected_components(n, links)


def molecule_centres(positions, molecules: np.ndarray, n_molecules: int):
    """Geometric centres (M, 3) of the molecules; positions (N, 3) unwrapped, molecules (N,) ids 0..M-1."""
    counts = np.bincount(molecules, minlength=n_molecules).astype(np.float64)
    sums = jax.ops.segment_sum(positions, jnp.asarray(molecules), num_segments=n_molecules)
    return sums / jnp.asarray(counts, positions.dtype)[:, None]


def scale_molecules(positions, molecules: np.ndarray, n_molecules: int, scale):
    """Move each molecule rigidly so its geometric centre c becomes c * scale (component-wise).

    positions (N, 3) nm (unwrapped, molecules whole); scale (3,) or scalar. Returns (N, 3).
    """
    scale = jnp.asarray(scale, positions.dtype)
    centres = molecule_centres(positions, molecules, n_molecules)
    return positions + (centres * (scale - 1.0))[jnp.asarray(molecules)]


def density(masses, box) -> float:
    """Mass density in g/cm^3 from masses (N,) amu and a box (3, 3) nm."""
    return float(np.sum(np.asarray(masses)) / abs(np.linalg.det(np.asarray(box))) * AMU_PER_NM3_TO_G_PER_CM3)


@dataclasses.dataclass
class BarostatStats:
    """Host-side mutable state of a barostat: counters, adaptive step, random stream, compiled functions.

    attempts, accepted: totals over the barostat's life. max_delta: current maximum volume change, nm^3
    (anisotropic: (3,), one per axis). window_attempts/window_accepted: counters since the last adaptation
    (per axis when anisotropic). last: details of the latest trial (delta_v, volume, delta_u, work (dW/kT),
    probability, accepted, axis, n_molecules, potential = U of the state left behind). compile_seconds: time this barostat spent compiling trial functions
    (they are cached per system and neighbor spec, and shared between barostats).
    """

    rng: np.random.Generator
    attempts: int = 0
    accepted: int = 0
    max_delta: Optional[np.ndarray] = None
    window_attempts: Optional[np.ndarray] = None
    window_accepted: Optional[np.ndarray] = None
    last: dict = dataclasses.field(default_factory=dict)
    compile_seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.attempts if self.attempts else 0.0


@dataclasses.dataclass(frozen=True, eq=False)
class MonteCarloBarostat:
    """Monte Carlo barostat for a :class:`jmlsim.simulation.Simulation` with a periodic box (one system or a
    replica batch).

    pressure_bar: target pressure, bar. temperature_k: the temperature of the acceptance test, K (should
    match the thermostat's); for a replica batch also a sequence of R per-replica temperatures.
    frequency: steps between attempts. mode: 'isotropic' (all lattice vectors scaled together) or 'anisotropic'
    (one of x, y, z scaled per attempt, like MonteCarloAnisotropicBarostat).
    seed: seed of the barostat's own random stream. initial_max_delta: starting maximum volume change, nm^3
    (default 0.01 V, as OpenMM). adapt: adjust max_delta towards 25-75 % acceptance.
    The mutable part (counters, max_delta, random stream) is ``stats`` (a :class:`BarostatStats`). In a replica
    batch ``replica_stats[r]`` holds replica r's stream, step and last trial, and ``stats`` counts the trials of
    all replicas together (attempts grows by R per attempt).
    """

    pressure_bar: float
    temperature_k: Any
    frequency: int = 25
    mode: str = "isotropic"
    seed: int = 0
    initial_max_delta: Optional[float] = None
    adapt: bool = True
    stats: BarostatStats = dataclasses.field(init=False, repr=False, compare=False)
    replica_stats: Optional[list] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown barostat mode {self.mode!r} (choose {', '.join(MODES)})")
        if not self.frequency >= 1:
            raise ValueError(f"barostat frequency must be >= 1, got {self.frequency}")
        if not (math.isfinite(self.pressure_bar) and np.all(np.asarray(self.temperature_k, float) > 0)):
            raise ValueError("barostat needs a finite pressure and a positive temperature")
        object.__setattr__(self, "stats", BarostatStats(rng=np.random.default_rng(self.seed)))
        object.__setattr__(self, "replica_stats", None)

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The host-side state (counters, adaptive steps, random streams) as JSON-ready data, for checkpoints:
        a resumed run continues the same chain of volume moves."""
        def one(st: BarostatStats) -> dict:
            arrays = {k: None if getattr(st, k) is None else np.asarray(getattr(st, k)).tolist()
                      for k in ("max_delta", "window_attempts", "window_accepted")}
            return {"attempts": st.attempts, "accepted": st.accepted, "rng": st.rng.bit_generator.state, **arrays}
        return {"stats": one(self.stats),
                "replicas": None if self.replica_stats is None else [one(st) for st in self.replica_stats]}

    def load_state_dict(self, data: dict) -> None:
        """Restore what :meth:`state_dict` wrote (ValueError when it does not fit this barostat)."""
        def one(st: BarostatStats, d: dict) -> None:
            st.attempts, st.accepted = int(d["attempts"]), int(d["accepted"])
            st.rng.bit_generator.state = d["rng"]
            for k, dtype in (("max_delta", float), ("window_attempts", int), ("window_accepted", int)):
                setattr(st, k, None if d[k] is None else np.asarray(d[k], dtype))
            if st.max_delta is not None and len(st.max_delta) != (3 if self.mode == "anisotropic" else 1):
                raise ValueError(f"barostat state is for another mode than {self.mode!r}")
        try:
            one(self.stats, data["stats"])
            replicas = data.get("replicas")
            if replicas is None:
                object.__setattr__(self, "replica_stats", None)
            else:
                stats = [BarostatStats(rng=np.random.default_rng(self.seed + r)) for r in range(len(replicas))]
                for st, d in zip(stats, replicas):
                    one(st, d)
                object.__setattr__(self, "replica_stats", stats)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed barostat state ({type(exc).__name__}: {exc})") from None

    # -- host-side pieces -----------------------------------------------------------------------------
    @property
    def max_delta(self):
        return self.stats.max_delta

    def pressure(self, system) -> float:
        """Target pressure in the system's units (kJ/mol/nm^3, or reduced)."""
        return self.pressure_bar * (1.0 if system.reduced_units else BAR_TO_KJ_MOL_NM3)

    def kT(self, system, replica: Optional[int] = None) -> float:
        """kB T of the acceptance test: of replica ``replica`` when the temperatures are per replica (a single
        temperature serves every replica)."""
        t = np.asarray(self.temperature_k, float)
        if t.ndim:
            if replica is None:
                raise ValueError("per-replica barostat temperatures need a replica batch")
            t = t[replica]
        return system.kB * float(t)

    def _init_step(self, st: BarostatStats, volume: float) -> None:
        if st.max_delta is None:
            start = 0.01 * volume if self.initial_max_delta is None else float(self.initial_max_delta)
            k = 3 if self.mode == "anisotropic" else 1
            st.max_delta = np.full(k, start)
            st.window_attempts = np.zeros(k, int)
            st.window_accepted = np.zeros(k, int)

    def _adapt(self, st: BarostatStats, slot: int, volume: float) -> None:
        """OpenMM's rule: after >= 10 attempts, shrink by 1.1 below 25 % acceptance, grow above 75 %."""
        n, acc = st.window_attempts[slot], st.window_accepted[slot]
        if not self.adapt or n < 10:
            return
        if acc < 0.25 * n:
            st.max_delta[slot] /= 1.1
        elif acc > 0.75 * n:
            st.max_delta[slot] = min(st.max_delta[slot] * 1.1, 0.3 * volume)
        else:
            return
        st.window_attempts[slot] = 0
        st.window_accepted[slot] = 0

    def _draw(self, st: BarostatStats, box: np.ndarray, cutoff: Optional[float]) -> dict:
        """Host-side start of one volume move of one system: the random draws (always two per attempt, plus the
        axis, so the stream does not depend on the outcome) and the trial scaling. Returns the trial's details:
        volume, delta_v, new_volume, slot, axis, uniform, scale (3,), and ``possible`` (False when the trial
        box cannot hold the cutoff or has no volume: it is rejected without an energy evaluation, where OpenMM
        would raise)."""
        volume = abs(float(np.linalg.det(box)))
        self._init_step(st, volume)
        slot = int(st.rng.integers(3)) if self.mode == "anisotropic" else 0
        delta_v = float(st.max_delta[slot]) * 2.0 * (st.rng.random() - 0.5)
        uniform = st.rng.random()
        new_volume = volume + delta_v
        scale = np.ones(3)
        ratio = max(new_volume, 0.0) / volume
        if self.mode == "isotropic":
            scale[:] = ratio ** (1.0 / 3.0)
        else:
            scale[slot] = ratio
        possible = new_volume > 0 and (cutoff is None or 0.5 * np.min(space.widths(box * scale[None, :])) >= cutoff)
        return dict(volume=volume, delta_v=delta_v, new_volume=new_volume, slot=slot,
                    axis=slot if self.mode == "anisotropic" else None, uniform=uniform, scale=scale, possible=possible)

    def _decide(self, st: BarostatStats, trial: dict, u_old: float, u_new: float, pressure: float, n_molecules: int,
                kT: float) -> bool:
        """Metropolis decision of a drawn trial with its energies; records it in ``st`` and adapts the step."""
        delta_u = u_new - u_old
        if not trial["possible"] or not math.isfinite(delta_u):
            work = math.inf
        else:
            work = reduced_work(delta_u, trial["delta_v"], trial["volume"], pressure, n_molecules, kT)
        probability = 0.0 if not math.isfinite(work) else (1.0 if work <= 0 else math.exp(-work))
        accepted = bool(trial["uniform"] < probability)
        details = dict(delta_v=trial["delta_v"], volume=trial["volume"], axis=trial["axis"],
                       delta_u=delta_u if trial["possible"] else math.inf, work=work, probability=probability,
                       accepted=accepted, n_molecules=n_molecules)
        if trial["possible"]:
            # potential: the energy of the state the simulation is left in (saves the run loop a re-evaluation)
            details["potential"] = u_new if accepted else u_old
        st.last = details
        slot = trial["slot"]
        st.attempts += 1
        st.accepted += int(accepted)
        st.window_attempts[slot] += 1
        st.window_accepted[slot] += int(accepted)
        self._adapt(st, slot, trial["new_volume"] if accepted else trial["volume"])
        return accepted

    def _trial_fn(self, sim, params, positions, box, nbrs, scale):
        """The compiled trial function for this simulation's current neighbor spec (cached).

        trial(params, positions, box, nbrs, scale) -> (U_old, U_new, positions', box', forces', nbrs',
        old list overflowed, new list overflowed); for a replica batch every input and output carries the replica
        axis (params only when they are per replica) and the overflow flags are reduced over replicas.
        """
        batched = sim.replicas is not None
        key = (sim.spec, jnp.dtype(sim.dtype).name, jnp.dtype(sim.force_dtype).name, batched,
               batched and sim.params_batched)
        cache = _TRIALS.setdefault(sim.system, {})
        if key in cache:
            return cache[key]
        sys_, spec, fdt, sdt = sim.system, sim.spec, sim.force_dtype, sim.dtype
        mol = molecule_ids(sys_)
        n_mol = int(mol.max()) + 1

        def trial(params, x, box, nbrs, scale):
            xf, boxf = x.astype(fdt), box.astype(fdt)
            nb_old = nbrs if spec is None else spec.update(nbrs, xf, boxf)
            u_old = sys_.energy(params, xf, boxf, nb_old, precise=x)
            x_new = scale_molecules(x, mol, n_mol, scale)
            box_new = box * scale.astype(box.dtype)[None, :]  # scales Cartesian components: stays reduced form
            xnf, bnf = x_new.astype(fdt), box_new.astype(fdt)
            # A fresh list at the trial box: the old one's reference positions and cell grid belong to the old box.
            nb_new = None if spec is None else spec.build(xnf, bnf, nb_old)
            u_new = sys_.energy(params, xnf, bnf, nb_new, precise=x_new)
            f_new = sys_.forces(params, xnf, bnf, nb_new, precise=x_new).astype(sdt)
            no = jnp.zeros((), bool)
            over_old = no if spec is None else nb_old.overflow
            over_new = no if spec is None else nb_new.overflow
            return u_old, u_new, x_new, box_new, f_new, nb_new, over_old, over_new

        if batched:
            one = trial
            axes = (0 if sim.params_batched else None, 0, 0, None if spec is None else 0, 0)

            def trial(params, x, box, nbrs, scale):
                out = jax.vmap(one, axes)(params, x, box, nbrs, scale)
                return out[:6] + (jnp.any(out[6]), jnp.any(out[7]))
        t0 = time.perf_counter()
        fn = jax.jit(trial).lower(params, positions, box, nbrs, scale).compile()
        dt = time.perf_counter() - t0
        self.stats.compile_seconds += dt
        sim.compile_seconds += dt  # so Simulation.run's steps_per_s excludes it
        cache[key] = fn
        return fn

    def _n_molecules(self, sim) -> int:
        cache = _TRIALS.setdefault(sim.system, {})
        if "n_molecules" not in cache:
            cache["n_molecules"] = int(molecule_ids(sim.system).max()) + 1
        return cache["n_molecules"]

    def _evaluate(self, sim, scale: np.ndarray, boxes: np.ndarray):
        """Run the compiled trial at ``scale`` ((3,) or (R, 3)), regrowing the neighbor list until neither list
        overflows; ``boxes`` (host, (3, 3) or (R, 3, 3)) are the current boxes. Returns the trial's outputs."""
        state = sim.state
        scale_j = sim.put(jnp.asarray(scale, sim.dtype))
        for _ in range(10):
            fn = self._trial_fn(sim, sim.params, state.positions, state.box, sim.nbrs, scale_j)
            out = fn(sim.params, state.positions, state.box, sim.nbrs, scale_j)
            if not (bool(out[6]) or bool(out[7])):
                return out
            # Enlarge the list (or re-plan the cell grid for the smaller trial box) and redo the trial.
            # (regrown plans the cell grid for the smallest of all boxes, so either outcome fits it)
            trial_boxes = boxes * np.asarray(scale)[..., None, :]
            sim.spec = sim.spec.regrown(to_host(out[5]), np.concatenate([boxes.reshape(-1, 3, 3),
                                                                          trial_boxes.reshape(-1, 3, 3)]))
            sim.regrowths += 1
            sim.nbrs = sim._rebuild(state)
        raise RuntimeError("barostat: neighbor list kept overflowing at the trial box")

    # -- the move -------------------------------------------------------------------------------------
    def attempt(self, sim) -> bool:
        """One volume move on ``sim`` (updates sim.state and sim.nbrs when accepted). Returns True if accepted
        (for a replica batch: True if any replica's move was accepted)."""
        state = sim.state
        if state.box is None:
            raise ValueError("a barostat needs a periodic box")
        if sim.replicas is not None:
            return self._attempt_replicas(sim)
        if np.ndim(self.temperature_k):
            raise ValueError("per-replica barostat temperatures need a replica batch")
        sys_ = sim.system
        box = np.asarray(state.box, dtype=np.float64)
        trial = self._draw(self.stats, box, sys_.neighbor_cutoff)
        u_old = u_new = math.nan
        if trial["possible"]:
            u_old, u_new, x_new, box_new, f_new, nb_new, _, _ = self._evaluate(sim, trial["scale"], box)
            u_old, u_new = float(u_old), float(u_new)
        accepted = self._decide(self.stats, trial, u_old, u_new, self.pressure(sys_), self._n_molecules(sim),
                                self.kT(sys_))
        if accepted:
            sim.state = state._replace(positions=x_new, box=box_new, forces=f_new)
            sim.nbrs = nb_new
        return accepted

    def _attempt_replicas(self, sim) -> bool:
        """One volume move per replica of a batch; each replica is decided on its own."""
        R = sim.replicas
        if np.ndim(self.temperature_k) and np.shape(self.temperature_k) != (R,):
            raise ValueError(f"barostat has {np.size(self.temperature_k)} per-replica temperatures but replicas={R}")
        if self.replica_stats is None:
            # replica r draws from the stream of seed + r, as the integrator's replica r does
            object.__setattr__(self, "replica_stats",
                               [BarostatStats(rng=np.random.default_rng(self.seed + r)) for r in range(R)])
        sys_ = sim.system
        boxes = np.asarray(to_host(sim.state.box), dtype=np.float64)  # (R, 3, 3)
        trials = [self._draw(st, b, sys_.neighbor_cutoff) for st, b in zip(self.replica_stats, boxes)]
        # impossible trials are evaluated at scale 1 (their outcome is a rejection whatever the energies)
        scale = np.stack([t["scale"] if t["possible"] else np.ones(3) for t in trials])
        u_old, u_new, x_new, box_new, f_new, nb_new, _, _ = self._evaluate(sim, scale, boxes)
        u_old, u_new = np.asarray(to_host(u_old), float), np.asarray(to_host(u_new), float)
        pressure, n_mol = self.pressure(sys_), self._n_molecules(sim)
        accepted = np.array([self._decide(st, t, u_old[r], u_new[r], pressure, n_mol, self.kT(sys_, r))
                             for r, (st, t) in enumerate(zip(self.replica_stats, trials))])
        self.stats.attempts += R
        self.stats.accepted += int(accepted.sum())
        self.stats.last = {"accepted": accepted.tolist(), "n_molecules": n_mol,
                           "potential": np.where(accepted, u_new, u_old).tolist()}
        if accepted.any():
            take = sim.put(jnp.asarray(accepted))

            def pick(new, old):
                return jnp.where(take.reshape((R,) + (1,) * (old.ndim - 1)), new, old)
            state = sim.state
            state = state._replace(positions=pick(x_new, state.positions), box=pick(box_new, state.box),
                                   forces=pick(f_new, state.forces))
            nbrs = None if sim.nbrs is None else jax.tree_util.tree_map(pick, nb_new, sim.nbrs)
            sim.state, sim.nbrs, _ = sim.place(state, nbrs)
        return bool(accepted.any())
