"""Adaptive sampling: epochs of short batched runs, respawned where sampling is thin (the HTMD/ACEMD scheme).

Each epoch runs all R replicas for ``steps_per_epoch`` steps in one compiled program (a replica batch), keeping a
frame every ``report_interval`` steps. After the epoch every frame so far is featurized (backbone torsions as
sin/cos for peptides), clustered on a regular-space grid (deeptime; centres ``cluster_dmin`` apart), and each
replica is restarted from a frame of one of the R least-visited clusters with fresh Maxwell-Boltzmann velocities
(strategy ``least-visited``); strategy ``plain`` keeps every replica running (plain MD of the same total length,
the baseline). The run stops after ``epochs`` epochs, or earlier when no new cluster appeared for ``patience``
epochs (exploration has saturated), or when ``stop_at_basin`` (e.g. ``"alphaL"``) was reached.

Every replica-epoch is one trajectory segment (respawning breaks continuity), so the final Markov state model
(:func:`jmlsim.analysis.pipeline.analyze`) counts transitions within segments only: its reversible maximum-
likelihood estimate undoes the bias of where the segments were started.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np

from jmlsim.errors import InputError

STRATEGIES = ("least-visited", "plain")


@dataclasses.dataclass
class AdaptiveResult:
    """Frames of all segments and the bookkeeping of the run.

    positions: list of (frames, atoms, 3) nm per segment; phi_psi: list of (frames, 2) degrees per segment (None
    for non-peptides); features: list of (frames, d). total_steps counts MD steps summed over replicas.
    first_basin_total_steps: {basin: total steps when a frame first lay in it} (peptides).
    """

    positions: list
    features: list
    phi_psi: Optional[list]
    frame_ps: float
    epochs_run: int
    total_steps: int
    stopped: str
    clusters_per_epoch: list
    first_basin_total_steps: dict
    wall_s: float
    compile_s: float


def _respawn_fn(sim):
    """Compiled (state, positions (R, N, 3), key) -> state at those positions with Maxwell-Boltzmann velocities
    at each replica's temperature (projected onto the constraints) and fresh forces."""
    import jax
    import jax.numpy as jnp

    from jmlsim.ensemble import slot_kT
    from jmlsim.integrators.state import maxwell_boltzmann

    kT = jnp.asarray(slot_kT(sim))
    cons = sim.system.constraints
    force_fn = sim._batched_force_fn(sim.params)

    def respawn(state, positions, key, nbrs):
        positions = positions.astype(state.positions.dtype)
        keys = jax.random.split(key, positions.shape[0])
        v = jax.vmap(maxwell_boltzmann)(keys, state.masses, kT.astype(state.masses.dtype))
        if cons is not None:
            v = cons.velocities(positions, v, state.masses)
        f, nbrs = force_fn(positions, nbrs, state.box)
        return state._replace(positions=positions, velocities=v.astype(state.velocities.dtype), forces=f), nbrs
    return jax.jit(respawn)


def _segment_features(positions: np.ndarray, topology, peptide: bool):
    """(features (frames, d), phi_psi (frames, 2) or None) of one segment's positions (frames, atoms, 3)."""
    from jmlsim.analysis import featurize

    traj = featurize.from_positions(positions, topology)
    if peptide:
        return featurize.backbone_torsions(traj), featurize.phi_psi(traj)
    return featurize.heavy_atom_distances(traj), None


def _least_visited_starts(dtrajs: list, replicas: int, rng) -> list:
    """(segment, frame) start points for R replicas: one random frame from each of the R least-visited clusters
    (clusters cycle, least visited first, when there are fewer than R)."""
    labels = np.concatenate(dtrajs)
    where = np.concatenate([np.stack([np.full(len(d), s), np.arange(len(d))], 1) for s, d in enumerate(dtrajs)])
    counts = np.bincount(labels)
    # random tie-breaking among equally visited clusters
    order = np.lexsort((rng.random(len(counts)), counts))
    chosen = [order[r % len(order)] for r in range(replicas)]
    starts = []
    for c in chosen:
        members = np.flatnonzero(labels == c)
        starts.append(tuple(where[rng.choice(members)]))
    return starts


def run_adaptive(system, replicas: int, epochs: int, steps_per_epoch: int, temperature_k: float = 300.0,
                 timestep_ps: float = 0.002, report_interval: int = 50, strategy: str = "least-visited",
                 cluster_dmin: float = 0.5, patience: Optional[int] = None, stop_at_basin: Optional[str] = None,
                 seed: int = 0, friction: float = 1.0, progress: bool = True, sim=None,
                 segment_writer=None) -> AdaptiveResult:
    """Run adaptive sampling on ``system`` (see the module docstring). Returns an :class:`AdaptiveResult`.

    sim: an existing replica batch of the same system, R and temperature to reuse (its compiled chunk too); its
    state is reset to the system's start positions with the given seed. segment_writer(epoch, replica, positions,
    frame_ps) is called for each finished segment (e.g. to write files).
    """
    import jax
    import jax.numpy as jnp

    from jmlsim import ensemble
    from jmlsim.analysis import basins, msm
    from jmlsim.progress import ProgressBar

    if strategy not in STRATEGIES:
        raise InputError(f"unknown adaptive strategy {strategy!r} ({', '.join(STRATEGIES)})")
    if replicas < 1 or epochs < 1:
        raise InputError("adaptive sampling needs at least one replica and one epoch")
    if steps_per_epoch < report_interval or steps_per_epoch % report_interval:
        raise InputError(f"--steps-per-epoch {steps_per_epoch} must be a positive multiple of the report interval "
                         f"{report_interval}")
    topology = system.topology
    if topology is None:
        raise InputError("adaptive sampling needs a system with a chemical topology")
    try:
        from jmlsim.analysis.featurize import torsion_indices
        phi_idx, psi_idx = torsion_indices(topology)
        peptide = len(phi_idx) > 0 and len(psi_idx) > 0
    except Exception:
        peptide = False
    if stop_at_basin is not None and (not peptide or stop_at_basin not in basins.BASINS):
        raise InputError(f"stop basin {stop_at_basin!r} needs a peptide and one of {', '.join(basins.BASINS)}")
    if sim is None:
        sim = ensemble.replica_simulation(system, [temperature_k] * replicas, timestep_ps, friction=friction,
                                          seed=seed)
    elif sim.replicas != replicas:
        raise InputError(f"the given simulation has {sim.replicas} replicas, not {replicas}")
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    respawn = _respawn_fn(sim)
    start = np.broadcast_to(np.asarray(system.positions, np.float64), (replicas, system.n_atoms, 3))
    key, sub = jax.random.split(key)
    state = sim.state._replace(key=jax.vmap(jax.random.PRNGKey)(seed + jnp.arange(replicas)),
                               step=jnp.zeros_like(sim.state.step))
    state, nbrs = respawn(state, jnp.asarray(start), sub, sim.nbrs)
    if system.constraints is not None:  # constrain the start structure as Simulation does
        fixed = jax.jit(system.constraints.positions)(state.positions, state.positions, state.masses)
        state, nbrs = respawn(state, fixed, sub, nbrs)
    sim.state, sim.nbrs, _ = sim.place(state, nbrs)

    frame_ps = report_interval * timestep_ps
    chunks = steps_per_epoch // report_interval
    positions, features, torsions = [], [], [] if peptide else None
    clusters_per_epoch, first_basin = [], {}
    stopped = "epochs"
    total_steps = 0
    compile0, wall0 = sim.compile_seconds, time.perf_counter()
    bar = ProgressBar(epochs * steps_per_epoch, sim, enabled=progress)
    try:
        epoch = 0
        for epoch in range(1, epochs + 1):
            frames = []
            for c in range(chunks):
                sim.advance(report_interval)
                frames.append(np.asarray(jax.device_get(sim.state.positions), np.float64))
                bar.update(report_interval, None)
            frames = np.stack(frames, axis=1)  # (R, frames, atoms, 3)
            for r in range(replicas):
                f, t = _segment_features(frames[r], topology, peptide)
                positions.append(frames[r].astype(np.float32))
                features.append(f)
                if peptide:
                    torsions.append(t)
                    labels = basins.basin_index(t[:, 0], t[:, 1])
                    for b, name in enumerate(basins.BASINS):
                        hits = np.flatnonzero(labels == b)
                        if name not in first_basin and hits.size:
                            # total MD steps (all replicas) up to that frame: frames are taken in lockstep
                            steps = total_steps + (hits[0] + 1) * report_interval * replicas
                            first_basin[name] = min(first_basin.get(name, steps), steps)
                if segment_writer is not None:
                    segment_writer(epoch, r, frames[r], frame_ps)
            total_steps += steps_per_epoch * replicas
            _, dtrajs = msm.regular_space(features, cluster_dmin)
            clusters_per_epoch.append(int(max(d.max() for d in dtrajs) + 1))
            if stop_at_basin is not None and stop_at_basin in first_basin:
                stopped = f"reached {stop_at_basin}"
                break
            if patience is not None and len(clusters_per_epoch) > patience and \
                    clusters_per_epoch[-1] == clusters_per_epoch[-1 - patience]:
                stopped = f"no new cluster in {patience} epochs"
                break
            if epoch < epochs and strategy == "least-visited":
                # only the last `replicas` segments end where their replica is now; starts may be any frame
                starts = _least_visited_starts(dtrajs, replicas, rng)
                new = np.stack([positions[s][i] for s, i in starts]).astype(np.float64)
                key, sub = jax.random.split(key)
                state, nbrs = respawn(sim.state, jnp.asarray(new), sub, sim.nbrs)
                sim.state, sim.nbrs, _ = sim.place(state, nbrs)
    finally:
        bar.close()
    return AdaptiveResult(positions=positions, features=features, phi_psi=torsions, frame_ps=frame_ps,
                          epochs_run=epoch, total_steps=total_steps, stopped=stopped,
                          clusters_per_epoch=clusters_per_epoch, first_basin_total_steps=first_basin,
                          wall_s=time.perf_counter() - wall0, compile_s=sim.compile_seconds - compile0)


def default_lag_ps(result: AdaptiveResult) -> float:
    """A lag a quarter of a segment long, at least one frame (segments are the longest stretches without a
    respawn)."""
    shortest = min(len(p) for p in result.positions)
    return max(shortest // 4, 1) * result.frame_ps


def analyze(result: AdaptiveResult, lag_ps: Optional[float] = None, **kwargs):
    """The MSM pipeline (:func:`jmlsim.analysis.pipeline.analyze`) on the adaptive run's segments."""
    from jmlsim.analysis import pipeline

    lag = default_lag_ps(result) if lag_ps is None else lag_ps
    return pipeline.analyze(result.features, result.frame_ps, lag, phi_psi=result.phi_psi, **kwargs)
