"""The analysis pipeline: features -> TICA -> k-means -> MSM -> PCCA+ -> a JSON-able summary.

Used by ``jmlsim analyze msm``, the adaptive-sampling driver and the notebook. For peptides the features are
backbone torsions (sin, cos) and every metastable state is reported with the (phi, psi) of its centre (the first
residue's torsions, degrees), the basin it lies in, and its stationary probability; the slowest process is named
after the basin its eigenvector separates most sharply.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from jmlsim.analysis import basins, msm as msm_mod
from jmlsim.errors import InputError


@dataclasses.dataclass
class MSMResult:
    """Everything the pipeline estimated. Lag and timescales in ps; dtrajs index k-means clusters."""

    frame_ps: float
    lag_frames: int
    features: list  # (frames_i, d)
    projected: list  # TICA coordinates (frames_i, k)
    dtrajs: list
    msm: object  # deeptime MarkovStateModel (largest connected set)
    pcca: object  # deeptime PCCAModel
    phi_psi: Optional[list]  # (frames_i, 2) degrees, or None for non-peptides
    summary: dict


def _slowest_process_basin(model, state_phi_psi: np.ndarray) -> tuple:
    """(basin name, |correlation|) of the basin indicator most correlated (under pi) with the 2nd eigenvector."""
    pi = model.stationary_distribution
    psi2 = model.eigenvectors_right(2)[:, 1]
    labels = basins.basin_index(state_phi_psi[:, 0], state_phi_psi[:, 1])
    best, best_corr = None, 0.0
    for b, name in enumerate(basins.BASINS):
        ind = (labels == b).astype(float)
        p = np.sum(pi * ind)
        if p <= 0 or p >= 1:
            continue
        cov = np.sum(pi * (ind - p) * (psi2 - np.sum(pi * psi2)))
        corr = abs(cov) / np.sqrt(p * (1 - p) * np.sum(pi * (psi2 - np.sum(pi * psi2)) ** 2))
        if corr > best_corr:
            best, best_corr = name, float(corr)
    return best, best_corr


def analyze(features: Sequence[np.ndarray], frame_ps: float, lag_ps: float, n_clusters: int = 64,
            n_metastable: int = 3, tica_dim: int = 4, phi_psi: Optional[Sequence[np.ndarray]] = None,
            seed: int = 0, n_timescales: int = 5) -> MSMResult:
    """Run the pipeline on feature trajectories (frames_i, d) spaced ``frame_ps`` apart, lag ``lag_ps``.

    phi_psi: optional (frames_i, 2) torsions in degrees per trajectory, for the peptide summary.
    Raises InputError for an empty list, a lag not shorter than the longest trajectory, or too few frames.
    """
    features = [np.asarray(f, np.float64).reshape(len(f), -1) for f in features]
    if not features:
        raise InputError("no trajectories given")
    if not frame_ps > 0:
        raise InputError(f"frame spacing must be positive, got {frame_ps} ps")
    lag_frames = max(int(round(lag_ps / frame_ps)), 1)
    lengths = [len(f) for f in features]
    msm_mod.check_lag(lengths, lag_frames, frame_ps)
    n_frames = int(sum(lengths))
    n_clusters = min(n_clusters, max(n_frames // 10, n_metastable + 1))
    _, projected = msm_mod.tica(features, lag_frames, dim=min(tica_dim, features[0].shape[1]))
    _, dtrajs = msm_mod.kmeans(projected, n_clusters, seed=seed)
    model = msm_mod.estimate_msm(dtrajs, lag_frames)
    n_sets = min(n_metastable, model.n_states)
    pc = msm_mod.pcca(model, n_sets)
    pi = model.stationary_distribution
    symbols = model.count_model.state_symbols  # cluster index of each MSM state
    coarse_pi = np.asarray(pc.coarse_grained_stationary_probability)
    timescales = msm_mod.timescales_ps(model, frame_ps, min(n_timescales, model.n_states - 1))
    summary = {"n_trajectories": len(features), "n_frames": n_frames, "frame_ps": frame_ps,
               "lag_ps": lag_frames * frame_ps, "lag_frames": lag_frames, "n_microstates": int(model.n_states),
               "n_clusters": int(n_clusters),
               "active_fraction": float(model.count_model.selected_count_fraction),
               "timescales_ps": timescales.tolist(),
               "slowest_timescale_ps": float(timescales[0]) if len(timescales) else None}
    states = []
    if phi_psi is not None:
        angles = np.concatenate([np.asarray(a, np.float64).reshape(-1, 2) for a in phi_psi])
        labels = np.concatenate(dtrajs)
        # microstate centres in phi/psi: circular means of their frames
        centre = np.full((model.n_states, 2), np.nan)
        for s, c in enumerate(symbols):
            members = angles[labels == c]
            centre[s] = basins.circular_mean_deg(members, axis=0)
        weights = pi[:, None] * pc.memberships  # (states, sets)
        for k in range(n_sets):
            phi_c = float(basins.circular_mean_deg(centre[:, 0], weights[:, k]))
            psi_c = float(basins.circular_mean_deg(centre[:, 1], weights[:, k]))
            states.append({"phi_deg": phi_c, "psi_deg": psi_c, "basin": basins.basin_name(phi_c, psi_c),
                           "probability": float(coarse_pi[k])})
        # the same basins straight from the MSM: stationary weight of the microstates whose centres lie in each
        micro_basin = basins.basin_index(centre[:, 0], centre[:, 1])
        summary["basin_probabilities"] = {name: float(pi[micro_basin == b].sum())
                                          for b, name in enumerate(basins.BASINS)}
        beta, left = np.flatnonzero(micro_basin == 0), np.flatnonzero(micro_basin == 2)
        if beta.size and left.size:  # mean first-passage times (deeptime returns frames, lag included)
            summary["mfpt_into_alphaL_ps"] = float(model.mfpt(beta, left)) * frame_ps
            summary["mfpt_out_of_alphaL_ps"] = float(model.mfpt(left, beta)) * frame_ps
        name, corr = _slowest_process_basin(model, centre)
        summary["slowest_process"] = name
        summary["slowest_process_correlation"] = corr
    else:
        for k in range(n_sets):
            states.append({"probability": float(coarse_pi[k])})
    summary["metastable_states"] = sorted(states, key=lambda s: -s["probability"])
    return MSMResult(frame_ps, lag_frames, features, projected, dtrajs, model, pc,
                     None if phi_psi is None else list(phi_psi), summary)


def frame_weights(result: MSMResult) -> list:
    """Per-frame weights pi(s) / N(s) (frames_i,) that reweight the sampled frames to the MSM's equilibrium (0 for
    frames outside the active set): histograms of adaptively sampled data need them to show free energies."""
    model = result.msm
    counts = np.bincount(np.concatenate(result.dtrajs), minlength=int(max(d.max() for d in result.dtrajs)) + 1)
    per_cluster = np.zeros(len(counts))
    symbols = np.asarray(model.count_model.state_symbols)
    per_cluster[symbols] = model.stationary_distribution / np.maximum(counts[symbols], 1)
    return [per_cluster[d] for d in result.dtrajs]


def analyze_trajectories(trajs, lag_ps: float, frame_ps: Optional[float] = None, **kwargs) -> MSMResult:
    """The pipeline on mdtraj trajectories: torsion features for peptides, heavy-atom distances otherwise."""
    from jmlsim.analysis import featurize

    if not trajs:
        raise InputError("no trajectories given")
    if frame_ps is None:
        frame_ps = float(trajs[0].timestep) if trajs[0].n_frames > 1 else 1.0
        if not np.isfinite(frame_ps) or frame_ps <= 0:
            raise InputError("cannot read the frame spacing from the trajectory times; give it explicitly")
    feats = [featurize.default_features(t)[0] for t in trajs]
    try:
        torsions = [featurize.phi_psi(t) for t in trajs]
    except InputError:  # not a peptide: no phi/psi summary
        torsions = None
    return analyze(feats, frame_ps, lag_ps, phi_psi=torsions, **kwargs)
