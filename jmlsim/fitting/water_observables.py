"""Fit a rigid water model's oxygen Lennard-Jones parameters to its NPT density and heat of vaporization by
trajectory reweighting (DiffTRe-style; see :mod:`jmlsim.fitting.reweighting` for the LJ-fluid version).

An NPT trajectory sampled at theta_0 = (sigma_O, epsilon_O) stores frames (positions x_k, box b_k). Averages at
nearby theta = (sigma_O, epsilon_O) follow from importance weights

    w_k(theta) = softmax_k( -[U_theta(x_k, b_k) - U_theta0(x_k, b_k)] / kT ),   <O>_theta ~ sum_k w_k O_theta(x_k, b_k).

In the isothermal-isobaric ensemble each frame carries the Boltzmann factor exp(-(U + pV) / kT); the pV term is
the same at theta and theta_0 for the same stored (x_k, b_k), so only the energy difference enters. The
energies U_theta are jmlsim's own (the System's terms, the NonbondedForce with PME, dispersion correction
included), evaluated in double precision, so the weights and averages are differentiable in theta.

Observables, per frame (shapes (K,)):
  * density rho_k = M / V_k in g/cm^3 (M: total mass in amu, V_k = |det b_k| in nm^3);
  * potential energy per molecule U_k / N_mol, kJ/mol;
  * the oxygen-oxygen RDF g_k(r) (:func:`oxygen_rdf`, (K, B)), reweighted by :func:`reweighted_rdf`;
  * heat of vaporization dH_vap = -<U> / N_mol + R T, kJ/mol. This is the usual estimate for a *rigid*
    non-polarizable model: the gas-phase molecule has no intermolecular energy and, being rigid, no
    intramolecular energy either (TIP3P's bond and angle terms are held at their minimum by SETTLE, so they
    contribute zero), the gas is ideal (pV_gas = RT, pV_liquid neglected) and no polarization or quantum
    corrections are applied.

The fit (:func:`fit_water`) runs Adam (optax) on theta = log(sigma_O, epsilon_O) against
loss = sum_j ((<O_j> - target_j) / scale_j)^2; when the effective sample size ESS = 1 / sum_k w_k^2 falls below
a fraction of K it draws fresh frames at the current parameters, continuing the same Markov chain (the
compiled MD chunk and barostat trial take the parameters as an argument, so nothing recompiles).

Practical limit: in the 216-water box the frame-to-frame spread of dU/d(log sigma_O) is large, so one step
of ~0.2 % in sigma_O (with ~1 % in epsilon_O) already takes the ESS of 100 frames to 20-35 %. Travel per sample
is ESS-limited; many short samples with a low threshold (0.3) go further per MD picosecond than long ones, and
the Adam steps are scaled per parameter (``step_scales``) so sigma_O moves in small steps and epsilon_O in
larger ones. Gradients use forward mode (two parameters; see :func:`value_and_grad_forward`).

Units: nm, ps, kJ/mol, amu, K; densities in g/cm^3 (names say so at the borders).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.barostat import AMU_PER_NM3_TO_G_PER_CM3
from jmlsim.errors import InputError

TERM = "NonbondedForce"
R_KJ_PER_MOL_K = 0.00831446261815324
PARAMETER_NAMES = ("sigma_nm", "epsilon_kj_mol", "charge_magnitude_e")  # theta_lin, in this order
OBSERVABLES = ("density_g_cm3", "u_per_molecule_kj_mol", "dhvap_kj_mol")
EXPERIMENT_300K = {"density_g_cm3": 0.997, "dhvap_kj_mol": 44.0}  # water, ~298-300 K, 1 bar
DEFAULT_SCALES = {"density_g_cm3": 0.005, "u_per_molecule_kj_mol": 0.25, "dhvap_kj_mol": 0.25}


class WaterFrames(NamedTuple):
    """Stored NPT frames. positions (K, N, 3) nm (unwrapped molecules); boxes (K, 3, 3) nm; energies (K,) kJ/mol
    at the sampling parameters, recomputed in double precision by :meth:`WaterModel.energies`; params (P,) the
    sampling (sigma_O nm, epsilon_O kJ/mol[, |q_O| e])."""

    positions: np.ndarray
    boxes: np.ndarray
    energies: np.ndarray
    params: np.ndarray


def oxygen_mask(system) -> np.ndarray:
    """(N,) bool: the atoms whose LJ parameters are fitted -- every non-hydrogen (mass > 4 amu) atom.

    Raises InputError when the system is not a box of 3-site waters (one heavy atom per three atoms, the
    hydrogens without LJ well depth), which is what the heat-of-vaporization formula assumes."""
    masses = np.asarray(system.masses)
    heavy = masses > 4.0
    n_mol = int(heavy.sum())
    params = system.params.get(TERM)
    if params is None or n_mol == 0 or 3 * n_mol != system.n_atoms:
        raise InputError(f"expected a box of 3-site waters with a {TERM}; got {system.n_atoms} atoms, "
                         f"{n_mol} heavy")
    if np.any(np.asarray(params.epsilon)[~heavy] != 0.0):
        raise InputError("water hydrogens carry Lennard-Jones well depth: not a TIP3P-like model")
    sig, eps = np.asarray(params.sigma)[heavy], np.asarray(params.epsilon)[heavy]
    if np.ptp(sig) > 0 or np.ptp(eps) > 0:
        raise InputError("the water oxygens do not share one sigma/epsilon")
    return heavy


def with_oxygen_lj(params, mask: np.ndarray, sigma, epsilon):
    """NonbondedParams with sigma (nm) and epsilon (kJ/mol) of the ``mask`` atoms replaced (differentiable)."""
    m = jnp.asarray(mask)
    sig = jnp.asarray(params.sigma)
    eps = jnp.asarray(params.epsilon)
    return params._replace(sigma=jnp.where(m, jnp.asarray(sigma, sig.dtype), sig),
                           epsilon=jnp.where(m, jnp.asarray(epsilon, eps.dtype), eps))


def with_water_charges(params, mask: np.ndarray, charge_magnitude):
    """NonbondedParams with the ``mask`` (oxygen) charges set to -charge_magnitude (e) and every other (hydrogen)
    charge to +charge_magnitude / 2, so each molecule stays neutral (differentiable). Exception charge products
    are left alone: in a rigid 3-site water every intramolecular pair is an exclusion (product 0)."""
    m = jnp.asarray(mask)
    q = jnp.asarray(params.charge)
    c = jnp.asarray(charge_magnitude, q.dtype)
    return params._replace(charge=jnp.where(m, -c, 0.5 * c))


def with_water_parameters(params, mask: np.ndarray, theta_lin):
    """NonbondedParams at theta_lin = (sigma_O nm, epsilon_O kJ/mol[, |q_O| e]): LJ always, charges when the
    third entry is present (its length is static under jit)."""
    params = with_oxygen_lj(params, mask, theta_lin[0], theta_lin[1])
    if len(theta_lin) == 3:
        params = with_water_charges(params, mask, theta_lin[2])
    return params


def block_average(x, n_blocks: int = 10) -> tuple[float, float]:
    """(mean, standard error from ``n_blocks`` contiguous block means) of a time series x (T,)."""
    x = np.asarray(x, np.float64)
    n_blocks = max(2, min(n_blocks, len(x)))
    blocks = np.array([b.mean() for b in np.array_split(x, n_blocks)])
    return float(x.mean()), float(blocks.std(ddof=1) / math.sqrt(n_blocks))


class WaterModel:
    """Reweighting energies of a water box (a jmlsim System from ``load_amber``) as a function of the oxygen
    (sigma, epsilon).

    energies(theta_lin (P,), positions (K, N, 3), boxes (K, 3, 3)) -> (K,) kJ/mol is jitted, double precision,
    differentiable in theta_lin, and evaluates the frames ``batch_size`` at a time (``lax.map``). theta_lin is
    (sigma_O nm, epsilon_O kJ/mol), or with ``fit_charge`` also |q_O| in e (the hydrogens carry +|q_O|/2). Pairs come
    from the dense all-pairs path of the NonbondedForce (no neighbor list: the box changes from frame to frame,
    and a 648-atom box is small enough), which gives the same energy as the listed sum.
    """

    def __init__(self, system, temperature_k: float = 300.0, batch_size: int = 8, fit_charge: bool = False):
        jax.config.update("jax_enable_x64", True)
        if system.box is None or TERM not in system.terms or not system.terms[TERM].periodic:
            raise InputError("the water box must be periodic")
        self.system = system
        self.temperature_k = float(temperature_k)
        self.kT = R_KJ_PER_MOL_K * self.temperature_k
        self.mask = oxygen_mask(system)
        self.n_molecules = int(self.mask.sum())
        self.total_mass_amu = float(np.sum(system.masses))
        self.batch_size = int(batch_size)
        heavy = int(np.flatnonzero(self.mask)[0])
        p = system.params[TERM]
        self.reference = np.array([float(p.sigma[heavy]), float(p.epsilon[heavy])])  # as loaded (nm, kJ/mol)
        if fit_charge:
            charges = np.asarray(p.charge, np.float64)
            q_o = charges[self.mask]
            if np.ptp(q_o) > 1e-6 or q_o[0] >= 0 or np.max(np.abs(charges[~self.mask] + 0.5 * q_o[0])) > 1e-4:
                raise InputError("charge fitting needs a water with one negative oxygen charge q_O and hydrogens "
                                 "at -q_O/2")
            self.reference = np.append(self.reference, -float(q_o[0]))
        self.params64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64)
                                               if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
                                               else jnp.asarray(a), system.params)
        self.energies = jax.jit(self._energies)

    def params_at(self, theta_lin, base=None) -> dict:
        """The System's parameter dict at theta_lin (2,) or (3,) (see the class docstring)."""
        base = self.params64 if base is None else base
        return {**base, TERM: with_water_parameters(base[TERM], self.mask, theta_lin)}

    def frame_energy(self, theta_lin, x, box):
        """U (scalar, kJ/mol) of one frame x (N, 3), box (3, 3) at theta_lin = (sigma_O, epsilon_O[, |q_O|])."""
        return self.system.energy(self.params_at(theta_lin), x, box, None)

    def _energies(self, theta_lin, positions, boxes):
        theta_lin = jnp.asarray(theta_lin, jnp.float64)
        return jax.lax.map(lambda xb: self.frame_energy(theta_lin, xb[0], xb[1]),
                           (jnp.asarray(positions, jnp.float64), jnp.asarray(boxes, jnp.float64)),
                           batch_size=self.batch_size)

    def densities(self, boxes):
        """(K,) g/cm^3 from boxes (K, 3, 3) nm."""
        volume = jnp.abs(jnp.linalg.det(jnp.asarray(boxes)))
        return self.total_mass_amu / volume * AMU_PER_NM3_TO_G_PER_CM3

    def frames(self, theta_lin, positions, boxes) -> WaterFrames:
        """Package positions/boxes sampled at theta_lin with their double-precision energies."""
        positions = np.asarray(positions, np.float64)
        boxes = np.asarray(boxes, np.float64)
        theta_lin = np.asarray(theta_lin, np.float64)
        energies = np.asarray(self.energies(jnp.asarray(theta_lin), positions, boxes))
        return WaterFrames(positions, boxes, energies, theta_lin)


def reweighted_averages(model: WaterModel, theta_lin, frames: WaterFrames):
    """(averages (3,) [density g/cm^3, U/N_mol kJ/mol, dH_vap kJ/mol], weights (K,), ESS) at theta_lin.

    theta_lin: (P,) (sigma_O nm, epsilon_O kJ/mol[, |q_O| e]). Differentiable in theta_lin (weights and U_theta both
    depend on it). At theta_lin = frames.params the weights are uniform and ESS = K."""
    theta_lin = jnp.asarray(theta_lin, jnp.float64)
    u = model.energies(theta_lin, frames.positions, frames.boxes)
    w = jax.nn.softmax(-(u - jnp.asarray(frames.energies)) / model.kT)
    rho = model.densities(frames.boxes)
    u_mol = w @ u / model.n_molecules
    dhvap = -u_mol + model.kT  # R T per mole of molecules (kT is per mole here: kJ/mol)
    return jnp.stack([w @ rho, u_mol, dhvap]), w, 1.0 / jnp.sum(w * w)


def oxygen_rdf(model: WaterModel, positions, boxes, r_max_nm: float = 0.8, n_bins: int = 80):
    """Per-frame oxygen-oxygen radial distribution functions.

    positions (K, N, 3) nm, boxes (K, 3, 3) nm. Returns (r (B,) bin centres in nm, g (K, B)), each frame normalized
    by its own volume: g_k(r) = n_k(r) / (M (M - 1) / 2 * 4 pi / 3 (r_hi^3 - r_lo^3) / V_k) for M oxygens.
    Distances are minimum-image (mdtraj), so r_max_nm must stay below half the shortest box width.
    g does not depend on the parameters: its reweighted average :func:`reweighted_rdf` depends on them through
    the weights alone."""
    import mdtraj

    positions = np.asarray(positions, np.float64)
    boxes = np.asarray(boxes, np.float64)
    half_width = 0.5 * np.min(np.abs(np.linalg.det(boxes)) / np.max(np.linalg.norm(
        np.cross(boxes[:, [1, 2, 0]], boxes[:, [2, 0, 1]]), axis=-1), axis=-1))
    if not 0 < r_max_nm <= half_width:
        raise InputError(f"RDF range {r_max_nm} nm must be positive and at most half the box width "
                         f"({half_width:.3f} nm)")
    oxygens = np.flatnonzero(model.mask)
    m = len(oxygens)
    top = mdtraj.Topology()
    residue = top.add_residue("HOH", top.add_chain())
    for _ in range(m):
        top.add_atom("O", mdtraj.element.oxygen, residue)
    traj = mdtraj.Trajectory(positions[:, oxygens].astype(np.float32), top)
    traj.unitcell_vectors = boxes.astype(np.float32)
    i, j = np.triu_indices(m, 1)
    d = mdtraj.compute_distances(traj, np.stack([i, j], axis=1), periodic=True).astype(np.float64)  # (K, P)
    edges = np.linspace(0.0, r_max_nm, n_bins + 1)
    # per-frame histograms without a Python loop over frames: offset each frame's bins by k * n_bins
    bins = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, n_bins)  # n_bins: beyond r_max
    k = np.arange(len(d))[:, None]
    counts = np.bincount((k * (n_bins + 1) + bins).ravel(), minlength=len(d) * (n_bins + 1))
    counts = counts.reshape(len(d), n_bins + 1)[:, :n_bins]
    shell = 4.0 * np.pi / 3.0 * (edges[1:] ** 3 - edges[:-1] ** 3)
    volumes = np.abs(np.linalg.det(boxes))
    g = counts / (0.5 * m * (m - 1) * shell[None, :] / volumes[:, None])
    return 0.5 * (edges[1:] + edges[:-1]), g


def reweighted_rdf(model: WaterModel, theta_lin, frames: WaterFrames, g_frames):
    """(B,) reweighted RDF at theta_lin (sigma_O nm, epsilon_O kJ/mol) from per-frame g_frames (K, B) of
    :func:`oxygen_rdf`: sum_k w_k(theta) g_k. Differentiable in theta_lin through the weights."""
    _, w, _ = reweighted_averages(model, theta_lin, frames)
    return w @ jnp.asarray(g_frames, jnp.float64)


def to_theta(theta_lin) -> jnp.ndarray:
    """log(sigma_O, epsilon_O): the optimizer's coordinates."""
    return jnp.log(jnp.asarray(theta_lin, jnp.float64))


def from_theta(theta) -> jnp.ndarray:
    return jnp.exp(theta)


def observable_indices(names: Sequence[str]) -> list[int]:
    bad = [n for n in names if n not in OBSERVABLES]
    if bad or not names:
        raise InputError(f"unknown observable {bad[0] if bad else '(none)'!r} (choose from {', '.join(OBSERVABLES)})")
    return [OBSERVABLES.index(n) for n in names]


def make_loss(model: WaterModel, targets: dict, scales: Optional[dict] = None) -> Callable:
    """loss(theta (P,) log params, frames) -> (scalar, (averages (3,), ESS)) for ``targets`` {observable: value}
    (names from OBSERVABLES), each term ((<O> - target) / scale)^2 (scales default to DEFAULT_SCALES)."""
    names = list(targets)
    idx = jnp.asarray(observable_indices(names))
    scales = {**DEFAULT_SCALES, **(scales or {})}
    t = jnp.asarray([targets[n] for n in names], jnp.float64)
    s = jnp.asarray([scales[n] for n in names], jnp.float64)

    def loss(theta, frames):
        avg, _, ess = reweighted_averages(model, from_theta(theta), frames)
        return jnp.sum(((avg[idx] - t) / s) ** 2), (avg, ess)

    return loss


def value_and_grad_forward(loss: Callable) -> Callable:
    """Like ``jax.value_and_grad(loss, has_aux=True)`` for loss(theta (P,), frames) -> (scalar, aux), by forward
    mode: with P = 2 parameters, P tangents through the K frame energies cost ~2.5x less than the reverse pass."""
    def with_value(theta, frames):
        value, aux = loss(theta, frames)
        return value, (value, aux)

    jac = jax.jacfwd(with_value, has_aux=True)

    def value_and_grad(theta, frames):
        grad, (value, aux) = jac(theta, frames)
        return (value, aux), grad
    return value_and_grad


class WaterSampler:
    """NPT sampling of the water box (Langevin BAOAB + Monte Carlo barostat, rigid water) whose oxygen LJ
    parameters can change between runs without recompiling. Each call continues the same chain.

    timestep ps, friction 1/ps, barostat_frequency steps. precision: Simulation precision ('mixed' default:
    double-precision state, single-precision forces). Frames record positions and box every ``every`` steps.
    """

    def __init__(self, model: WaterModel, pressure_bar: float = 1.0, timestep: float = 0.002,
                 friction: float = 1.0, seed: int = 0, precision: str = "mixed", barostat_frequency: int = 25,
                 skin: float = 0.2):
        from jmlsim.barostat import MonteCarloBarostat
        from jmlsim.integrators import LangevinBAOAB
        from jmlsim.simulation import Simulation

        self.model = model
        kT = model.kT
        self.timestep = timestep
        self.sim = Simulation(model.system, LangevinBAOAB(timestep, kT, friction), kT=kT, precision=precision,
                              skin=skin, seed=seed)
        self.barostat = MonteCarloBarostat(pressure_bar=pressure_bar, temperature_k=model.temperature_k,
                                           frequency=barostat_frequency, seed=seed + 1)
        self.theta_lin = np.asarray(model.reference, np.float64)
        self.runs = 0
        self.steps = 0
        self.md_seconds = 0.0

    def set_parameters(self, theta_lin) -> None:
        """Oxygen (sigma nm, epsilon kJ/mol[, |q_O| e]) for the following steps."""
        theta_lin = np.asarray(theta_lin, np.float64)
        base = self.sim.params
        nb = with_water_parameters(base[TERM], self.model.mask, theta_lin)
        nb = jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, jnp.asarray(b).dtype), nb, base[TERM])
        self.sim.params = {**base, TERM: nb}
        self.theta_lin = theta_lin

    def run(self, n_steps: int, every: int, collect: bool) -> tuple[list, list, list]:
        """Advance n_steps; with ``collect`` return (positions, boxes, densities) every ``every`` steps."""
        pos, boxes, rho = [], [], []
        model = self.model

        class Collect:
            def report(self, frame):
                if collect:
                    pos.append(np.asarray(frame.positions, np.float64))
                    boxes.append(np.asarray(frame.box, np.float64))
                    rho.append(float(model.densities(frame.box[None])[0]))

        t0 = time.perf_counter()
        if n_steps > 0:
            self.sim.run(n_steps, every, [Collect()], progress=False, barostat=self.barostat)
        self.md_seconds += time.perf_counter() - t0
        self.steps += n_steps
        return pos, boxes, rho

    def sample(self, theta_lin, n_frames: int, every: int, equilibration: int) -> WaterFrames:
        """``equilibration`` steps then n_frames frames every ``every`` steps at theta_lin (sigma_O, epsilon_O)."""
        self.set_parameters(theta_lin)
        self.run(equilibration, max(equilibration, 1), collect=False)
        pos, boxes, _ = self.run(n_frames * every, every, collect=True)
        self.runs += 1
        return self.model.frames(self.theta_lin, np.stack(pos[-n_frames:]), np.stack(boxes[-n_frames:]))

    def density_run(self, theta_lin, equilibration: int, production: int, every: int = 25) -> dict:
        """Plain NPT estimate at theta_lin: density and dH_vap means with block standard errors (10 blocks).

        Returns {'density_g_cm3', 'density_se', 'dhvap_kj_mol', 'dhvap_se', 'n_frames', 'production_ps'}."""
        self.set_parameters(theta_lin)
        self.run(equilibration, max(equilibration, 1), collect=False)
        pos, boxes, rho = self.run(production, every, collect=True)
        u = np.asarray(self.model.energies(jnp.asarray(self.theta_lin), np.stack(pos), np.stack(boxes)))
        dh = -u / self.model.n_molecules + self.model.kT
        rho_m, rho_se = block_average(rho)
        dh_m, dh_se = block_average(dh)
        return {"density_g_cm3": rho_m, "density_se": rho_se, "dhvap_kj_mol": dh_m, "dhvap_se": dh_se,
                "n_frames": len(rho), "production_ps": production * self.timestep}


def fit_water(sampler: WaterSampler, start, targets: dict, scales: Optional[dict] = None, iterations: int = 40,
              learning_rate=0.01, n_frames: int = 100, every: int = 50, equilibration: int = 2000,
              first_equilibration: Optional[int] = None, ess_fraction: float = 0.5, max_resamples: int = 100,
              tolerance: float = 0.0, log=None, frames: Optional[WaterFrames] = None,
              step_scales: Optional[Sequence[float]] = None, resample_every: Optional[int] = None) -> dict:
    """Adam on log(sigma_O), log(epsilon_O) towards ``targets`` ({observable: value}, names from OBSERVABLES),
    resampling (``equilibration`` steps, then n_frames every ``every`` steps, continuing the chain) whenever
    ESS < ess_fraction * n_frames. start: (sigma_O nm, epsilon_O kJ/mol). learning_rate: a float or an optax
    schedule. Stops after ``iterations`` gradient steps, or when the loss drops below ``tolerance`` on a fresh
    sample, or when ``max_resamples`` further samples would be needed. ``frames``: a first sample to start
    from (drawn at ``start``) instead of sampling one. step_scales: factors on Adam's steps in (log sigma,
    log epsilon[, log |q_O|]; default all 1): the density reacts ~5x more strongly to sigma than to epsilon,
    and the ESS as well, so a smaller sigma step lets both parameters travel at a similar pace between
    resamples. When the loop stops
    for lack of resamples, the returned parameters are the last ones evaluated (with adequate ESS).
    resample_every: also draw a fresh sample after this many iterations on one sample (while resamples remain),
    so the parameters do not settle on one short sample's statistical noise.

    Returns {'params': (P,) final (sigma_O, epsilon_O[, |q_O|]), 'history': [dict per iteration: iteration,
    sigma_nm, epsilon_kj_mol, (charge_magnitude_e), loss, density_g_cm3, u_per_molecule_kj_mol, dhvap_kj_mol,
    ess, resampled, ess_before_resample (None unless the ESS triggered it), elapsed_s], 'resamples': int,
    'samples': int, 'md_steps': int, 'wall_s': float}."""
    import optax

    t0 = time.perf_counter()
    model = sampler.model
    loss_fn = make_loss(model, targets, scales)
    value_and_grad = jax.jit(value_and_grad_forward(loss_fn))
    theta = to_theta(start)
    step_scales = np.ones(len(theta)) if step_scales is None else np.asarray(step_scales, np.float64)
    if step_scales.shape != theta.shape:
        raise InputError(f"step_scales has {step_scales.size} entries for {theta.size} parameters")
    opt = optax.chain(optax.adam(learning_rate), optax.scale(jnp.asarray(step_scales)))
    state = opt.init(theta)
    names = PARAMETER_NAMES[:len(theta)]
    history, samples = [], 0 if frames is None else 1
    first_eq = equilibration if first_equilibration is None else first_equilibration
    since_sample = 0
    for it in range(iterations):
        resampled = False
        stale = resample_every is not None and since_sample >= resample_every and samples - 1 < max_resamples
        if frames is None or stale:
            frames = sampler.sample(np.asarray(from_theta(theta)), n_frames, every,
                                    first_eq if frames is None else equilibration)
            samples, resampled = samples + 1, True
        (value, (avg, ess)), grad = value_and_grad(theta, frames)
        trigger = None
        if float(ess) < ess_fraction * len(frames.energies):
            trigger = float(ess)
            if samples - 1 >= max_resamples:
                theta = to_theta([history[-1][n] for n in names]) if history else theta
                break
            frames = sampler.sample(np.asarray(from_theta(theta)), n_frames, every, equilibration)
            samples, resampled = samples + 1, True
            (value, (avg, ess)), grad = value_and_grad(theta, frames)
        since_sample = 0 if resampled else since_sample + 1
        p = np.asarray(from_theta(theta))
        row = {"iteration": it, **{n: float(v) for n, v in zip(names, p)}, "loss": float(value),
               **{name: float(avg[i]) for i, name in enumerate(OBSERVABLES)}, "ess": float(ess),
               "resampled": resampled, "ess_before_resample": trigger, "elapsed_s": time.perf_counter() - t0}
        history.append(row)
        if log is not None:
            note = "" if trigger is None else f", ESS was {trigger:.1f}"
            note = f"  (resampled{note})" if resampled else ""
            charge = f"  q_O -{p[2]:.4f} e" if len(p) == 3 else ""
            log(f"iter {it:3d}: sigma_O {p[0]:.5f} nm  epsilon_O {p[1]:.4f} kJ/mol{charge}  loss {float(value):8.3f}  "
                f"density {row['density_g_cm3']:.4f} g/cm3  dHvap {row['dhvap_kj_mol']:.2f} kJ/mol  "
                f"ESS {float(ess):6.1f}/{len(frames.energies)}{note}")
        if resampled and float(value) < tolerance:
            break
        updates, state = opt.update(grad, state, theta)
        theta = optax.apply_updates(theta, updates)
    return {"params": np.asarray(from_theta(theta)), "history": history, "resamples": max(samples - 1, 0),
            "samples": samples, "md_steps": sampler.steps, "wall_s": time.perf_counter() - t0}


# -- CLI handler (its parser is in jmlsim.commands.fit, which imports this module lazily) -------------------
def cmd_fit_water(args) -> None:
    """Handler of ``jmlsim fit water`` (prints a summary, or one JSON object with --json)."""
    jax.config.update("jax_enable_x64", True)
    from jmlsim.cli import _emit
    from jmlsim.io.openmm_import import load_amber

    t0 = time.perf_counter()
    for path in (args.prmtop, args.inpcrd):
        if not os.path.isfile(path):
            raise InputError(f"no such file: {path}")
    if not 0 < args.ess_fraction < 1:
        raise InputError(f"--ess-fraction must lie in (0, 1), got {args.ess_fraction}")
    for name in ("sigma_scale", "epsilon_scale", "charge_scale", "charge_step_ratio", "cutoff", "temperature",
                 "target_density", "learning_rate", "epsilon_step_ratio"):
        if getattr(args, name) <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.equilibration_ps < 0 or args.verify_ps < 0:
        raise InputError("--equilibration-ps and --verify-ps must not be negative")
    system = load_amber(args.prmtop, args.inpcrd, nonbonded="pme", cutoff=args.cutoff, constraints="hbonds")
    model = WaterModel(system, args.temperature, fit_charge=args.fit_charge)
    sampler = WaterSampler(model, pressure_bar=args.pressure, seed=args.seed)
    targets = {"density_g_cm3": args.target_density}
    if args.target_dhvap is not None:
        targets["dhvap_kj_mol"] = args.target_dhvap
    scales = [args.sigma_scale, args.epsilon_scale] + ([args.charge_scale] if args.fit_charge else [])
    start = model.reference * np.array(scales)
    step_scales = [1.0, args.epsilon_step_ratio] + ([args.charge_step_ratio] if args.fit_charge else [])
    log = None if args.no_progress else (lambda msg: print(f"jmlsim fit: {msg}", file=sys.stderr))
    eq = int(round(args.equilibration_ps / sampler.timestep))
    out = fit_water(sampler, start, targets, iterations=args.iterations, learning_rate=args.learning_rate,
                    n_frames=args.frames, every=args.every, equilibration=eq, first_equilibration=2 * eq,
                    ess_fraction=args.ess_fraction, max_resamples=args.max_resamples,
                    step_scales=step_scales, resample_every=args.resample_every, log=log)
    last = out["history"][-1]
    def named(values):
        return {n: float(v) for n, v in zip(PARAMETER_NAMES, values)}

    result = {"start": named(start), "fitted": named(out["params"]), "reference": named(model.reference),
              "targets": targets, "reweighted": {k: last[k] for k in OBSERVABLES}, "loss": last["loss"],
              "ess": last["ess"], "iterations": len(out["history"]), "resamples": out["resamples"]}
    if args.verify_ps > 0:
        n = int(round(args.verify_ps / sampler.timestep))
        result["verify"] = sampler.density_run(out["params"], eq, n)
    result["wall_s"] = time.perf_counter() - t0
    _emit(args, result)
