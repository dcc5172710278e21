"""Fit force-field parameters to ensemble averages by trajectory reweighting (DiffTRe, Thaler & Zavadlav 2021).

Samples x_k (k = 1..K) drawn at parameters theta_0 give averages at nearby theta by importance weights

    w_k(theta) = softmax_k( -(U_theta(x_k) - U_theta0(x_k)) / kT ),   <O>_theta ~ sum_k w_k O_theta(x_k),

which are differentiable in theta through jmlsim's energy, so an optax optimizer follows the gradient of
``loss = sum_j ((<O_j> - target_j) / scale_j)^2``. When the effective sample size ESS = 1 / sum_k w_k^2 falls
below a fraction of K the estimate degrades, and the loop draws fresh samples at the current theta (continuing
the same Markov chain, whose compiled step takes theta as an argument, so nothing recompiles).

Here the model is the Lennard-Jones fluid (reduced units, sigma/epsilon as the two parameters), and the
observables are the potential energy per particle and the virial pressure P = (N kT + W/3) / V. Parameters
are optimised in log space (they stay positive, and relative steps suit both).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.energy.lennard_jones import LennardJonesParams
from jmlsim.neighbors import NeighborList

TERM = "lennard_jones"


class Samples(NamedTuple):
    """positions (K, N, 3); box (3, 3); energies (K,) at the sampling params; params the sampling params."""

    positions: np.ndarray
    box: np.ndarray
    energies: np.ndarray
    params: LennardJonesParams


def all_pairs(n_atoms: int) -> NeighborList:
    """A full neighbor list holding every other atom (row i: all j != i), for small reweighting systems."""
    idx = np.array([[j for j in range(n_atoms) if j != i] for i in range(n_atoms)], dtype=np.int32)
    zero = jnp.zeros((), jnp.int32)
    return NeighborList(jnp.asarray(idx), jnp.zeros((n_atoms, 3)), jnp.zeros((), bool),
                        jnp.asarray(n_atoms - 1, jnp.int32), zero, zero)


def lj_observables(term, params: LennardJonesParams, positions, box, kT: float, nbrs) -> jnp.ndarray:
    """(2,) = [U/N, pressure] of one configuration (reduced units; pressure with the ideal-gas term at kT)."""
    n = positions.shape[0]
    volume = jnp.abs(jnp.linalg.det(box))
    u = term.energy(params, positions, box, nbrs)
    w = term.virial(params, positions, box, nbrs)
    return jnp.stack([u / n, (n * kT + w / 3.0) / volume])


def reweighted_averages(term, params: LennardJonesParams, samples: Samples, kT: float, nbrs):
    """(averages (2,), weights (K,), ESS) of :func:`lj_observables` at ``params`` from ``samples``."""
    box = jnp.asarray(samples.box)

    def one(x):
        return term.energy(params, x, box, nbrs), lj_observables(term, params, x, box, kT, nbrs)

    u, obs = jax.vmap(one)(jnp.asarray(samples.positions))
    w = jax.nn.softmax(-(u - jnp.asarray(samples.energies)) / kT)
    return w @ obs, w, 1.0 / jnp.sum(w * w)


def to_theta(params: LennardJonesParams) -> jnp.ndarray:
    return jnp.log(jnp.stack([jnp.asarray(params.sigma, jnp.float64), jnp.asarray(params.epsilon, jnp.float64)]))


def from_theta(theta) -> LennardJonesParams:
    return LennardJonesParams(sigma=jnp.exp(theta[0]), epsilon=jnp.exp(theta[1]))


def make_loss(term, kT: float, targets, scales, nbrs) -> Callable:
    """loss(theta (2,) log params, samples) -> (scalar, (averages, ESS))."""
    targets = jnp.asarray(targets, jnp.float64)
    scales = jnp.asarray(scales, jnp.float64)

    def loss(theta, samples):
        avg, _, ess = reweighted_averages(term, from_theta(theta), samples, kT, nbrs)
        return jnp.sum(((avg - targets) / scales) ** 2), (avg, ess)

    return loss


class LJSampler:
    """Langevin sampling of an LJ fluid (reduced units, double precision) whose parameters can change between
    runs without recompiling (they are an argument of the compiled chunk). Each call continues the chain."""

    def __init__(self, system, kT: float, timestep: float = 0.005, friction: float = 1.0, seed: int = 0,
                 equilibration: int = 2000):
        from jmlsim.integrators import LangevinBAOAB
        from jmlsim.simulation import Simulation

        self.system, self.kT, self.equilibration = system, kT, equilibration
        self.sim = Simulation(system, LangevinBAOAB(timestep, kT=kT, friction=friction), seed=seed,
                              precision="double")
        self.nbrs = all_pairs(system.n_atoms)
        self.term = system.terms[TERM]
        self._energy = jax.jit(jax.vmap(lambda p, x, b: self.term.energy(p, x, b, self.nbrs), in_axes=(None, 0, None)))
        self.runs = 0

    def sample(self, params: LennardJonesParams, n_frames: int, every: int, equilibration: Optional[int] = None,
               progress: bool = False) -> Samples:
        """n_frames configurations every ``every`` steps at ``params`` after ``equilibration`` steps."""
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        self.sim.params = {**self.sim.params, TERM: params}
        eq = self.equilibration if equilibration is None else equilibration
        if eq:
            self.sim.run(eq, eq, progress=False)
        frames = []

        class Collect:
            def report(self, frame):
                frames.append(np.asarray(frame.positions))

        self.sim.run(n_frames * every, every, [Collect()], progress=progress)
        positions = np.stack(frames[-n_frames:])
        box = np.asarray(jax.device_get(self.sim.state.box))
        energies = np.asarray(self._energy(params, jnp.asarray(positions), jnp.asarray(box)))
        self.runs += 1
        return Samples(positions, box, energies, params)


def fit_observables(sampler: LJSampler, start: LennardJonesParams, targets, scales, iterations: int = 40,
                    learning_rate: float = 0.02, n_frames: int = 100, every: int = 20,
                    ess_fraction: float = 0.5, tolerance: float = 0.0, log=None) -> dict:
    """Adam on log(sigma), log(epsilon) to match [U/N, P] ``targets`` (reduced), resampling when
    ESS < ess_fraction * n_frames. Stops early when the reweighted loss falls below ``tolerance``.

    Returns {'params': final LennardJonesParams, 'history': [(iteration, sigma, epsilon, loss, U/N, P, ESS,
    resampled)], 'resamples': int}. learning_rate: a float or an optax schedule."""
    import optax

    loss_fn = make_loss(sampler.term, sampler.kT, targets, scales, sampler.nbrs)
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    opt = optax.adam(learning_rate)
    theta = to_theta(start)
    state = opt.init(theta)
    samples, history, resamples = None, [], 0
    for it in range(iterations):
        resampled = False
        if samples is None:
            samples, resampled = sampler.sample(from_theta(theta), n_frames, every), True
        (value, (avg, ess)), grad = value_and_grad(theta, samples)
        if float(ess) < ess_fraction * n_frames:
            samples, resampled = sampler.sample(from_theta(theta), n_frames, every), True
            (value, (avg, ess)), grad = value_and_grad(theta, samples)
        resamples += int(resampled)
        p = from_theta(theta)
        history.append((it, float(p.sigma), float(p.epsilon), float(value), float(avg[0]), float(avg[1]),
                        float(ess), resampled))
        if log is not None:
            log(f"iter {it}: sigma {float(p.sigma):.4f} epsilon {float(p.epsilon):.4f} loss {float(value):.3g} "
                f"U/N {float(avg[0]):.4f} P {float(avg[1]):.4f} ESS {float(ess):.1f}{' (resampled)' if resampled else ''}")
        if float(value) < tolerance:
            break
        updates, state = opt.update(grad, state, theta)
        theta = optax.apply_updates(theta, updates)
    return {"params": from_theta(theta), "history": history, "resamples": resamples}


def lj_system_with(system, params: LennardJonesParams):
    """A copy of an LJ-fluid System holding ``params``."""
    return dataclasses.replace(system, params={**system.params, TERM: params})
