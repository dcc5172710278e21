"""Fit the Fourier terms of one dihedral to a QM torsion scan, by gradients through jmlsim's energy.

Protocol (the usual one of torsion parametrization tools, here end to end in JAX):
  1. QM relaxed scan (:func:`jmlsim.fitting.scan.relax_qm`) gives geometries x_i^QM and energies E_i^QM.
  2. The target quadruple's existing periodic-torsion terms are replaced by a Fourier series
     sum_{n=1..6} k_n (1 + cos(n phi - phase_n)) held in a new term ``FittedTorsion`` (k kJ/mol, phase rad).
     With atom types (a prmtop) the same series replaces the terms of every quadruple with the same type
     sequence (a biaryl bond has four: C-C-C-C on either side of each ring), because that is what the exported
     frcmod line does when a force field is rebuilt from it: the fitted model and the exported one are the same.
  3. MM relaxed scan from the QM geometries (same restraint), giving x_i^MM.
  4. Fit k_n, phase_n with optax (Adam, several random restarts vmapped together) to minimise the variance
     of E^MM(params; x_i^MM) - E_i^QM over the scan (a constant offset is free), plus a small L2 penalty on k.
     The gradient flows through ``System.energy`` with respect to the parameter pytree.
  5. Re-relax under the fitted MM and score; steps 4-5 repeat a few rounds (geometries follow the parameters),
     keeping the round with the lowest re-relaxed RMSE.

RMSEs are the root-mean-square of (E^MM - E^QM) after removing their mean difference (the best constant
offset), reported in kcal/mol at the CLI border.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.energy.bonded import PeriodicTorsion, PeriodicTorsionParams
from jmlsim.errors import InputError
from jmlsim.fitting.scan import ScanResult, make_mm_relaxer

FITTED_TERM = "FittedTorsion"
PERIODICITIES = np.arange(1, 7, dtype=np.int32)


class FourierTerms(NamedTuple):
    """k (M,) kJ/mol and phase (M,) rad for periodicities 1..M."""

    k: jnp.ndarray
    phase: jnp.ndarray


def _same_quadruple(rows: np.ndarray, atoms: Sequence[int]) -> np.ndarray:
    a = np.asarray(atoms)
    return np.all(rows == a, axis=1) | np.all(rows == a[::-1], axis=1)


def existing_terms(system, atoms: Sequence[int]) -> list:
    """[(periodicity, k kJ/mol, phase rad)] of the periodic-torsion rows on exactly this quadruple."""
    found = []
    for name, term in system.terms.items():
        if isinstance(term, PeriodicTorsion) and len(term.atoms):
            mask = _same_quadruple(np.asarray(term.atoms), atoms)
            p = system.params[name]
            for idx in np.flatnonzero(mask):
                found.append((int(term.periodicity[idx]), float(p.k[idx]), float(p.phase[idx])))
    return found


def equivalent_quadruples(system, atoms: Sequence[int], atom_types: Optional[Sequence[str]]) -> np.ndarray:
    """(Q, 4) torsion quadruples whose atom-type sequence equals that of ``atoms`` (either direction), ``atoms``
    first; just ``atoms`` without types. These are the torsions one frcmod DIHE line sets."""
    atoms = tuple(int(a) for a in atoms)
    found = [atoms]
    if atom_types is not None:
        key = tuple(atom_types[a] for a in atoms)
        for term in system.terms.values():
            if isinstance(term, PeriodicTorsion) and len(term.atoms):
                for row in np.asarray(term.atoms).tolist():
                    names = tuple(atom_types[a] for a in row)
                    quad = tuple(row) if tuple(row) < tuple(row[::-1]) else tuple(row[::-1])
                    if (names == key or names[::-1] == key) and quad not in found and quad[::-1] not in found:
                        found.append(quad)
    return np.asarray(found, dtype=np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class SharedFourierTorsion:
    """One Fourier series (params k, phase of shape (M,), periodicities 1..M) on every quadruple of
    ``quadruples`` (Q, 4): E = sum_q sum_n k_n (1 + cos(n phi_q - phase_n)), kJ/mol."""

    quadruples: np.ndarray

    def energy(self, params: PeriodicTorsionParams, positions, box=None, nbrs=None):
        count = len(self.quadruples)
        rows = np.repeat(np.asarray(self.quadruples, np.int32), len(PERIODICITIES), axis=0)
        term = PeriodicTorsion(rows, np.tile(PERIODICITIES, count))
        return term.energy(PeriodicTorsionParams(k=jnp.tile(params.k, count), phase=jnp.tile(params.phase, count)),
                           positions)


def with_fitted_torsion(system, atoms: Sequence[int], terms: Optional[FourierTerms] = None,
                        quadruples: Optional[np.ndarray] = None):
    """A copy of ``system`` whose torsion rows on ``atoms`` (and on every quadruple of ``quadruples``, see
    :func:`equivalent_quadruples`) are zeroed and that has a ``FittedTorsion`` term (periodicities 1..6 shared by
    those quadruples) holding ``terms`` (zeros when None)."""
    if system.box is not None:
        raise InputError("torsion fitting needs a molecule in vacuum (the input is periodic)")
    quadruples = np.asarray([atoms] if quadruples is None else quadruples, dtype=np.int32).reshape(-1, 4)
    params = dict(system.params)
    for name, term in system.terms.items():
        if isinstance(term, PeriodicTorsion) and len(term.atoms):
            mask = np.any([_same_quadruple(np.asarray(term.atoms), q) for q in quadruples], axis=0)
            if mask.any():
                p = params[name]
                params[name] = PeriodicTorsionParams(k=np.where(mask, 0.0, np.asarray(p.k)), phase=p.phase)
    if terms is None:
        terms = FourierTerms(np.zeros(len(PERIODICITIES)), np.zeros(len(PERIODICITIES)))
    new_terms = dict(system.terms)
    new_terms[FITTED_TERM] = SharedFourierTorsion(quadruples)
    params[FITTED_TERM] = PeriodicTorsionParams(k=jnp.asarray(terms.k, jnp.float64),
                                                phase=jnp.asarray(terms.phase, jnp.float64))
    # jnp leaves: numpy leaves in a closure would be indexed by tracers inside the jitted fit.
    return dataclasses.replace(system, terms=new_terms, params=jax.tree_util.tree_map(jnp.asarray, params))


def original_fourier(system, atoms: Sequence[int]) -> FourierTerms:
    """The quadruple's current terms as a 1..6 Fourier series (several rows with one n are summed exactly)."""
    c = np.zeros(len(PERIODICITIES))
    s = np.zeros(len(PERIODICITIES))
    for n, k, phase in existing_terms(system, atoms):
        if not 1 <= n <= len(PERIODICITIES):
            raise InputError(f"dihedral {list(atoms)} has a periodicity-{n} term; only 1..6 can be refitted")
        # k (1 + cos(n phi - d)) = k + k cos d cos n phi + k sin d sin n phi; the constant is irrelevant here.
        c[n - 1] += k * np.cos(phase)
        s[n - 1] += k * np.sin(phase)
    return FourierTerms(np.hypot(c, s), np.arctan2(s, c))


def canonical(terms: FourierTerms) -> FourierTerms:
    """k >= 0 and phase in [0, 360) degrees' worth of rad (k < 0 is the same term with phase + pi)."""
    k = np.asarray(terms.k, dtype=np.float64)
    phase = np.asarray(terms.phase, dtype=np.float64) + np.where(k < 0, np.pi, 0.0)
    return FourierTerms(np.abs(k), np.mod(phase, 2 * np.pi))


def profile_rmse(mm: np.ndarray, qm: np.ndarray) -> float:
    """RMS of (mm - qm) after removing the mean difference, in the input's unit."""
    d = np.asarray(mm, dtype=np.float64) - np.asarray(qm, dtype=np.float64)
    return float(np.sqrt(np.mean((d - d.mean()) ** 2)))


def energy_function(system):
    """(params, positions (N, 3)) -> kJ/mol for an open-boundary system."""
    def energy(params, x):
        return system.energy(params, x, None, None)

    return energy


def fit_objective(system, positions, qm_energies, l2: float = 1e-3):
    """loss(terms: FourierTerms) -> scalar, (kJ/mol)^2: offset-free variance of E^MM - E^QM over the scan
    points at fixed geometries ``positions`` (P, N, 3), plus l2 * sum k^2. ``system`` has a FittedTorsion term."""
    energy = energy_function(system)
    positions = jnp.asarray(positions)
    qm = jnp.asarray(qm_energies)

    def loss(terms: FourierTerms):
        params = dict(system.params)
        params[FITTED_TERM] = PeriodicTorsionParams(k=terms.k, phase=terms.phase)
        e = jax.vmap(lambda x: energy(params, x))(positions)
        d = e - qm
        d = d - jnp.mean(d)
        return jnp.mean(d * d) + l2 * jnp.sum(terms.k ** 2)

    return loss


def fit_fourier(system, positions, qm_energies, restarts: int = 8, steps: int = 1500, learning_rate: float = 0.05,
                l2: float = 1e-3, seed: int = 0, init: Optional[FourierTerms] = None):
    """Minimise :func:`fit_objective` with Adam from ``restarts`` random starts (vmapped; the first start is
    ``init`` when given). Returns (best FourierTerms canonicalised, best loss, all final losses (restarts,))."""
    import optax

    loss = fit_objective(system, positions, qm_energies, l2)
    m = len(PERIODICITIES)
    rng = np.random.default_rng(seed)
    k0 = rng.uniform(-4.0, 4.0, size=(restarts, m))
    phase0 = rng.uniform(-np.pi, np.pi, size=(restarts, m))
    if init is not None:
        k0[0], phase0[0] = np.asarray(init.k), np.asarray(init.phase)
    opt = optax.adam(learning_rate)

    def run(start):
        def body(carry, _):
            terms, state = carry
            value, grad = jax.value_and_grad(loss)(terms)
            updates, state = opt.update(grad, state, terms)
            return (optax.apply_updates(terms, updates), state), value

        (terms, _), _ = jax.lax.scan(body, (start, opt.init(start)), None, length=steps)
        return terms, loss(terms)

    starts = FourierTerms(jnp.asarray(k0), jnp.asarray(phase0))
    terms, losses = jax.jit(jax.vmap(run))(starts)
    losses = np.asarray(losses)
    best = int(np.nanargmin(losses))
    return canonical(FourierTerms(np.asarray(terms.k[best]), np.asarray(terms.phase[best]))), float(losses[best]), losses


class TorsionFitResult(NamedTuple):
    """Everything a caller reports or plots. Energies kJ/mol; angles rad; terms FourierTerms (kJ/mol, rad)."""

    atoms: tuple
    qm: ScanResult
    mm_before: ScanResult
    mm_after: ScanResult
    terms_before: FourierTerms
    terms_after: FourierTerms
    rmse_before: float
    rmse_after: float
    rounds: list  # [(round, fit loss, re-relaxed RMSE kJ/mol)]
    system: object  # the fitted System (FittedTorsion term holds terms_after)
    quadruples: np.ndarray  # (Q, 4) the torsions sharing the fitted series (atoms first)


def fit_torsion(system, atoms: Sequence[int], qm: ScanResult, rounds: int = 3, restarts: int = 8,
                steps: int = 1500, relax_iterations: int = 2000, seed: int = 0, log=None,
                atom_types: Optional[Sequence[str]] = None) -> TorsionFitResult:
    """Fit the dihedral ``atoms`` of ``system`` (open boundaries, float64 advised) to the QM scan ``qm``; with
    ``atom_types`` the fitted series is shared by every quadruple of the same types (see the module docstring)."""
    atoms = tuple(int(a) for a in atoms)
    quadruples = equivalent_quadruples(system, atoms, atom_types)
    before = original_fourier(system, atoms)
    fitted = with_fitted_torsion(system, atoms, before, quadruples)
    relax = make_mm_relaxer(energy_function(fitted), atoms, iterations=relax_iterations, held=qm.held,
                            held_targets=qm.held_targets)
    mm_before = relax(fitted.params, qm.positions, qm.targets)
    rmse_before = profile_rmse(mm_before.energies, qm.energies)
    best = (np.inf, before, mm_before)
    geometries, init, history = mm_before.positions, before, []
    for r in range(rounds):
        terms, value, _ = fit_fourier(fitted, geometries, qm.energies, restarts=restarts, steps=steps,
                                      seed=seed + r, init=init)
        params = dict(fitted.params)
        params[FITTED_TERM] = PeriodicTorsionParams(k=jnp.asarray(terms.k), phase=jnp.asarray(terms.phase))
        mm = relax(params, qm.positions, qm.targets)
        rmse = profile_rmse(mm.energies, qm.energies)
        history.append((r, value, rmse))
        if log is not None:
            log(f"round {r}: fit loss {value:.4g} (kJ/mol)^2, re-relaxed RMSE {rmse:.4g} kJ/mol")
        if rmse < best[0]:
            best = (rmse, terms, mm)
        geometries, init = mm.positions, terms
    rmse_after, terms_after, mm_after = best
    return TorsionFitResult(atoms, qm, mm_before, mm_after, before, terms_after, rmse_before, rmse_after, history,
                            with_fitted_torsion(system, atoms, terms_after, quadruples), quadruples)


def plot_profiles(result: TorsionFitResult, path: str, title: str = "") -> None:
    """PNG of the QM, MM-before and MM-after relaxed profiles (kcal/mol, each shifted to its best offset
    against QM, QM's minimum at 0) against the dihedral reached (degrees)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jmlsim.units import KCAL_PER_KJ

    qm = (result.qm.energies - result.qm.energies.min()) * KCAL_PER_KJ
    fig, ax = plt.subplots(figsize=(6, 4))
    order = np.argsort(result.qm.targets)
    deg = np.rad2deg(result.qm.targets[order])
    ax.plot(deg, qm[order], "k-o", ms=3, label="QM")
    for scan, label, style in ((result.mm_before, f"MM before (RMSE {result.rmse_before * KCAL_PER_KJ:.2f})", "--s"),
                               (result.mm_after, f"MM fitted (RMSE {result.rmse_after * KCAL_PER_KJ:.2f})", "-^")):
        mm = scan.energies * KCAL_PER_KJ
        mm = mm - np.mean(mm - qm)
        ax.plot(deg, mm[order], style, ms=3, label=label)
    ax.set_xlabel("dihedral (deg)")
    ax.set_ylabel("relative energy (kcal/mol)")
    ax.set_xlim(-180, 180)
    ax.set_title(title or f"dihedral {list(result.atoms)}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
