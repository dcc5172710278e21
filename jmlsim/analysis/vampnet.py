"""VAMPnet (Mardt, Pasquali, Wu & Noé, Nat. Commun. 9, 5 (2018)) in Flax, trained on the VAMP-2 score with optax.

A lobe chi: R^d -> simplex^k (an MLP ending in softmax) maps each frame to k soft states; the same lobe is applied
to x_t and x_{t+lag}. Training maximizes the VAMP-2 score of the pair of feature batches,

    VAMP-2 = 1 + || C00^{-1/2} C0t Ctt^{-1/2} ||_F^2,

with the instantaneous/time-lagged covariances C of the *mean-free* outputs (the 1 counts the constant singular
function removed with the mean). Inverse square roots clamp eigenvalues below ``epsilon`` (the regularization
deeptime calls "regularize"), which keeps shapes static under jit. The score lies in [1, k].
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.errors import InputError


def _inv_sqrt(c, epsilon):
    w, v = jnp.linalg.eigh(c)
    return (v * (1.0 / jnp.sqrt(jnp.maximum(w, epsilon)))) @ v.T


def vamp2_score(chi0, chit, epsilon: float = 1e-6):
    """VAMP-2 score of paired outputs chi0, chit: (batch, k) -> scalar in [1, k] (up to regularization)."""
    chi0 = chi0 - jnp.mean(chi0, axis=0)
    chit = chit - jnp.mean(chit, axis=0)
    n = chi0.shape[0] - 1
    c00, ctt, c0t = chi0.T @ chi0 / n, chit.T @ chit / n, chi0.T @ chit / n
    k = _inv_sqrt(c00, epsilon) @ c0t @ _inv_sqrt(ctt, epsilon)
    return 1.0 + jnp.sum(k * k)


def koopman_eigenvalues(chi0, chit) -> np.ndarray:
    """Eigenvalues (descending modulus) of C00^{-1} C0t of the raw (not mean-free) soft states; with a partition of
    unity the first is 1, the rest give implied timescales -lag / ln|lambda|."""
    chi0, chit = np.asarray(chi0, np.float64), np.asarray(chit, np.float64)
    c00, c0t = chi0.T @ chi0, chi0.T @ chit
    lam = np.linalg.eigvals(np.linalg.pinv(c00) @ c0t)
    return lam[np.argsort(-np.abs(lam))]


def time_lagged_pairs(features: Sequence[np.ndarray], lag_frames: int) -> tuple:
    """(x_t, x_{t+lag}) stacked over trajectories: two (pairs, d) arrays."""
    features = [np.asarray(f, np.float32).reshape(len(f), -1) for f in features]
    usable = [f for f in features if len(f) > lag_frames]
    if lag_frames < 1 or not usable:
        raise InputError(f"lag {lag_frames} frames leaves no time-lagged pairs")
    return (np.concatenate([f[:-lag_frames] for f in usable]), np.concatenate([f[lag_frames:] for f in usable]))


def make_lobe(n_states: int, hidden: Sequence[int] = (32, 32)):
    """Flax module: (batch, d) features -> (batch, n_states) soft state memberships (softmax)."""
    import flax.linen as nn

    class Lobe(nn.Module):
        @nn.compact
        def __call__(self, x):
            for width in hidden:
                x = nn.elu(nn.Dense(width)(x))
            return nn.softmax(nn.Dense(n_states)(x), axis=-1)
    return Lobe()


@dataclasses.dataclass
class VAMPNet:
    """A trained VAMPnet: ``transform(x)`` gives soft states (frames, k); ``scores`` the training history."""

    lobe: object
    params: object
    lag_frames: int
    mean: np.ndarray  # feature standardization (d,)
    scale: np.ndarray
    train_scores: list
    valid_scores: list

    def transform(self, features) -> np.ndarray:
        x = (np.asarray(features, np.float32) - self.mean) / self.scale
        return np.asarray(self.lobe.apply(self.params, x))

    def score(self, features: Sequence[np.ndarray]) -> float:
        """VAMP-2 score on (held-out) feature trajectories."""
        x0, xt = time_lagged_pairs(features, self.lag_frames)
        return float(vamp2_score(jnp.asarray(self.transform(x0)), jnp.asarray(self.transform(xt))))

    def timescales(self, features: Sequence[np.ndarray], frame_ps: float = 1.0) -> np.ndarray:
        """Implied timescales (k - 1,) in ps from the Koopman matrix of the soft states."""
        x0, xt = time_lagged_pairs(features, self.lag_frames)
        lam = np.abs(koopman_eigenvalues(self.transform(x0), self.transform(xt)))[1:]
        return -self.lag_frames * frame_ps / np.log(np.clip(lam, 1e-12, 1 - 1e-12))


def train_vampnet(features: Sequence[np.ndarray], lag_frames: int, n_states: int = 3, hidden=(32, 32),
                  epochs: int = 20, batch_size: int = 1024, learning_rate: float = 3e-3, valid_fraction: float = 0.1,
                  seed: int = 0, epsilon: float = 1e-6) -> VAMPNet:
    """Train a VAMPnet on feature trajectories (frames_i, d) at ``lag_frames`` with Adam (optax).

    Pairs are shuffled and split into training and validation sets; the returned model carries the mean VAMP-2
    score per epoch for both.
    """
    import optax

    x0, xt = time_lagged_pairs(features, lag_frames)
    if n_states < 2:
        raise InputError("a VAMPnet needs at least two output states")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x0))
    n_valid = int(len(order) * valid_fraction)
    valid, train = order[:n_valid], order[n_valid:]
    batch_size = min(batch_size, len(train))
    if batch_size < 2 * n_states:
        raise InputError(f"too few time-lagged pairs ({len(train)}) to train a VAMPnet")
    both = np.concatenate([x0[train], xt[train]])
    mean, scale = both.mean(0), both.std(0) + 1e-6
    x0, xt = (x0 - mean) / scale, (xt - mean) / scale
    lobe = make_lobe(n_states, hidden)
    params = lobe.init(jax.random.PRNGKey(seed), jnp.zeros((1, x0.shape[1]), jnp.float32))
    opt = optax.adam(learning_rate)
    opt_state = opt.init(params)

    def loss(p, a, b):
        return -vamp2_score(lobe.apply(p, a), lobe.apply(p, b), epsilon)

    @jax.jit
    def step(p, s, a, b):
        value, grad = jax.value_and_grad(loss)(p, a, b)
        updates, s = opt.update(grad, s, p)
        return optax.apply_updates(p, updates), s, -value

    score_fn = jax.jit(lambda p, a, b: -loss(p, a, b))
    n_batches = max(len(train) // batch_size, 1)  # full batches only: one compiled shape
    train_scores, valid_scores = [], []
    for _ in range(epochs):
        perm = rng.permutation(train)
        scores = []
        for b in range(n_batches):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            params, opt_state, s = step(params, opt_state, jnp.asarray(x0[idx]), jnp.asarray(xt[idx]))
            scores.append(float(s))
        train_scores.append(float(np.mean(scores)))
        if n_valid >= 2 * n_states:
            valid_scores.append(float(score_fn(params, jnp.asarray(x0[valid]), jnp.asarray(xt[valid]))))
    return VAMPNet(lobe, params, lag_frames, mean, scale, train_scores, valid_scores)
