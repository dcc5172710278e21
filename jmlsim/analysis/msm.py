"""Dimensionality reduction, clustering and Markov state models: thin, checked wrappers around deeptime.

Nothing here re-implements estimation; the wrappers fix conventions and turn bad input into InputError:
feature trajectories are lists of (frames_i, d) float arrays, discrete trajectories lists of (frames_i,) int
arrays, lag times are in *frames* (callers convert ps <-> frames with the frame spacing).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from jmlsim.errors import InputError


def check_lag(lengths: Sequence[int], lag_frames: int, frame_ps: Optional[float] = None) -> None:
    """InputError unless at least one trajectory is longer than the lag (a pair (x_t, x_t+lag) must exist)."""
    if lag_frames < 1:
        raise InputError(f"lag must be at least one frame, got {lag_frames}")
    longest = max(lengths) if len(lengths) else 0
    if lag_frames >= longest:
        unit = "" if frame_ps is None else f" ({lag_frames * frame_ps:g} ps)"
        raise InputError(f"lag of {lag_frames} frames{unit} is not shorter than the longest trajectory "
                         f"({longest} frames)")


def _as_list(data) -> list:
    data = [np.asarray(x, np.float64) for x in (data if isinstance(data, (list, tuple)) else [data])]
    return [x.reshape(len(x), -1) for x in data]


def tica(features, lag_frames: int, dim: Optional[int] = None, var_cutoff: Optional[float] = None):
    """TICA (kinetic-map scaled). Returns (deeptime CovarianceKoopmanModel, projected list (frames_i, dim))."""
    from deeptime.decomposition import TICA

    data = _as_list(features)
    check_lag([len(x) for x in data], lag_frames)
    usable = [x for x in data if len(x) > lag_frames]
    model = TICA(lagtime=lag_frames, dim=dim, var_cutoff=var_cutoff, scaling="kinetic_map").fit(usable).fetch_model()
    return model, [model.transform(x) for x in data]


def vamp(features, lag_frames: int, dim: Optional[int] = None):
    """VAMP (non-reversible TICA). Returns (deeptime CovarianceKoopmanModel, projected list)."""
    from deeptime.decomposition import VAMP

    data = _as_list(features)
    check_lag([len(x) for x in data], lag_frames)
    usable = [x for x in data if len(x) > lag_frames]
    model = VAMP(lagtime=lag_frames, dim=dim).fit(usable).fetch_model()
    return model, [model.transform(x) for x in data]


def kmeans(data, n_clusters: int, seed: int = 0, max_iter: int = 100):
    """k-means++ on all frames. Returns (deeptime ClusterModel, dtrajs)."""
    from deeptime.clustering import KMeans

    data = _as_list(data)
    frames = np.concatenate(data)
    if n_clusters < 1 or n_clusters > len(frames):
        raise InputError(f"cannot make {n_clusters} clusters from {len(frames)} frames")
    est = KMeans(n_clusters=n_clusters, max_iter=max_iter, init_strategy="kmeans++", fixed_seed=int(seed) + 1)
    model = est.fit(frames).fetch_model()
    return model, [model.transform(x).astype(np.int64) for x in data]


def regular_space(data, dmin: float, max_centers: int = 1000):
    """Regular-space clustering: centres at least ``dmin`` apart. Returns (deeptime ClusterModel, dtrajs)."""
    from deeptime.clustering import RegularSpace

    data = _as_list(data)
    model = RegularSpace(dmin=dmin, max_centers=max_centers).fit(np.concatenate(data)).fetch_model()
    return model, [model.transform(x).astype(np.int64) for x in data]


def estimate_msm(dtrajs, lag_frames: int, reversible: bool = True):
    """Maximum-likelihood MSM on the largest connected set (sliding-window counts).

    Returns a deeptime MarkovStateModel; ``msm.count_model.state_symbols`` maps its states to cluster indices.
    """
    from deeptime.markov import TransitionCountEstimator
    from deeptime.markov.msm import MaximumLikelihoodMSM

    dtrajs = [np.asarray(d, np.int64) for d in dtrajs]
    check_lag([len(d) for d in dtrajs], lag_frames)
    counts = TransitionCountEstimator(lagtime=lag_frames, count_mode="sliding").fit(dtrajs).fetch_model()
    counts = counts.submodel_largest()
    if counts.n_states < 2:
        raise InputError(f"at lag {lag_frames} frames the trajectories connect fewer than two states")
    return MaximumLikelihoodMSM(reversible=reversible, lagtime=lag_frames).fit(counts).fetch_model()


def implied_timescales(dtrajs, lags_frames: Sequence[int], n_its: int = 4, reversible: bool = True):
    """deeptime ImpliedTimescales (timescales in frames) for MSMs estimated at each lag that fits the data."""
    from deeptime.util.validation import implied_timescales as its

    longest = max(len(d) for d in dtrajs)
    lags = [int(l) for l in lags_frames if 1 <= l < longest]
    if not lags:
        raise InputError(f"no lag time shorter than the longest trajectory ({longest} frames)")
    return its([estimate_msm(dtrajs, lag, reversible) for lag in lags], n_its=n_its)


def ck_test(dtrajs, lag_frames: int, n_sets: int, multiples: int = 4, reversible: bool = True):
    """Chapman-Kolmogorov test of the MSM at ``lag_frames`` against MSMs estimated at k * lag, k = 1..multiples
    (those that fit the data), on ``n_sets`` PCCA+ sets. Returns deeptime's ChapmanKolmogorovTest."""
    longest = max(len(d) for d in dtrajs)
    lags = [k * lag_frames for k in range(1, multiples + 1) if k * lag_frames < longest]
    check_lag([len(d) for d in dtrajs], lag_frames)
    models = [estimate_msm(dtrajs, lag, reversible) for lag in lags]
    # deeptime maps every model onto the test model's states; it raises if a longer-lag model lost some of them
    return models[0].ck_test(models, n_metastable_sets=n_sets)


def pcca(msm, n_sets: int):
    """PCCA+ fuzzy memberships into ``n_sets`` metastable sets (deeptime PCCAModel)."""
    if not 2 <= n_sets <= msm.n_states:
        raise InputError(f"PCCA+ needs 2 <= sets <= {msm.n_states} states, got {n_sets}")
    return msm.pcca(n_sets)


def timescales_ps(msm, frame_ps: float, k: Optional[int] = None) -> np.ndarray:
    """Implied timescales t_i = -lag / ln|lambda_i| of the MSM, in ps."""
    return np.asarray(msm.timescales(k), np.float64) * frame_ps
