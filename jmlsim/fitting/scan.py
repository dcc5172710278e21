"""Dihedral scans: drive one dihedral over 360 degrees with restrained relaxation of everything else.

A scan point is a geometry whose dihedral (i, j, k, l) is held near a target angle by a stiff harmonic
restraint on the wrapped angle difference, ``E_r = 1/2 k_r wrap(phi - phi0)^2`` (k_r kJ/mol/rad^2), while all
other coordinates are relaxed. Profiles report the energy *without* the restraint, at the relaxed geometry,
together with the dihedral actually reached (a few tenths of a degree from the target at the default k_r).

Two relaxers share this restraint:
  * :func:`make_mm_relaxer` relaxes scan points under a jmlsim energy (scipy L-BFGS-B driving a jit-compiled
    value-and-gradient; params are an argument, so re-relaxing with fitted parameters reuses the compiled code).
  * :func:`relax_qm` walks the scan point by point under a QM engine (scipy L-BFGS-B on the host, since the
    QM engine is not JAX); each point starts from the previous relaxed geometry rotated onto the next target.

Units: nm, kJ/mol, rad (degrees only in names that say so).
"""

from __future__ import annotations

from collections import deque
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.energy.bonded import dihedral_values
from jmlsim.errors import InputError

RESTRAINT_KJ_PER_MOL_RAD2 = 5000.0
# L-BFGS-B's first step moves the variables by up to 1 (norm) along -grad; in units of 0.01 nm that is a
# gentle first move instead of an explosion that a QM SCF cannot converge on.
VARIABLE_UNIT_NM = 0.01


class ScanResult(NamedTuple):
    """positions (P, N, 3) nm; energies (P,) kJ/mol without restraint; angles (P,) rad reached;
    targets (P,) rad; max_force (P,) largest residual per-atom force norm, kJ/mol/nm (restraint included);
    held (H, 4) other dihedrals restrained at held_targets (H,) rad throughout the scan (H may be 0)."""

    positions: np.ndarray
    energies: np.ndarray
    angles: np.ndarray
    targets: np.ndarray
    max_force: np.ndarray
    held: np.ndarray = np.zeros((0, 4))
    held_targets: np.ndarray = np.zeros(0)


def single_threaded():
    """Context manager limiting BLAS/OpenMP pools to one thread: scipy's L-BFGS-B on a few hundred variables
    runs 2-6x slower with threaded BLAS spinning on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(1)


def bond_graph(system) -> list:
    """Adjacency list (N lists of neighbours) from the topology's bonds, else from bond terms and constraints."""
    n = system.n_atoms
    pairs = []
    if system.topology is not None and system.topology.n_bonds > 0:
        pairs = [(a.index, b.index) for a, b in system.topology.bonds]
    else:
        for term in system.terms.values():
            if term.__class__.__name__ == "HarmonicBond":
                pairs.extend(map(tuple, np.asarray(term.atoms)))
        if system.constraints is not None:
            pairs.extend(map(tuple, np.asarray(system.constraints.pairs)))
    graph = [set() for _ in range(n)]
    for a, b in pairs:
        graph[int(a)].add(int(b))
        graph[int(b)].add(int(a))
    return [sorted(g) for g in graph]


def check_dihedral(system, atoms: Sequence[int], source: str = "--dihedral") -> tuple:
    """Validate four 0-based atom indices that must be bonded in sequence i-j, j-k, k-l. Returns the tuple."""
    atoms = tuple(int(a) for a in atoms)
    n = system.n_atoms
    if len(atoms) != 4:
        raise InputError(f"{source}: need four atom indices, got {len(atoms)}")
    bad = [a for a in atoms if not 0 <= a < n]
    if bad:
        raise InputError(f"{source}: atom index {bad[0]} out of range (the system has {n} atoms, 0-based)")
    if len(set(atoms)) != 4:
        raise InputError(f"{source}: atom indices {list(atoms)} are not four distinct atoms")
    graph = bond_graph(system)
    for a, b in zip(atoms[:-1], atoms[1:]):
        if b not in graph[a]:
            raise InputError(f"{source}: atoms {list(atoms)} are not bonded in sequence ({a} and {b} are not bonded)")
    return atoms


def moving_atoms(system, atoms: Sequence[int]) -> np.ndarray:
    """Boolean (N,) mask of the atoms on the k side of the j-k bond (k and l included, j not).

    Raises InputError when j-k lies in a ring (the two sides are connected another way)."""
    graph = bond_graph(system)
    j, k = int(atoms[1]), int(atoms[2])
    side = np.zeros(system.n_atoms, dtype=bool)
    side[k] = True
    queue = deque([k])
    while queue:
        a = queue.popleft()
        for b in graph[a]:
            if a == k and b == j:
                continue
            if b == j:
                raise InputError(f"dihedral {list(atoms)}: bond {j}-{k} is in a ring; it cannot be scanned rigidly")
            if not side[b]:
                side[b] = True
                queue.append(b)
    return side


def dihedral_angle(positions, atoms) -> float:
    """The IUPAC dihedral of one (4,) quadruple, rad, for (N, 3) positions."""
    return float(dihedral_values(jnp.asarray(positions), np.asarray(atoms).reshape(1, 4))[0])


def set_dihedral(positions: np.ndarray, atoms: Sequence[int], moving: np.ndarray, target: float) -> np.ndarray:
    """Rigidly rotate the ``moving`` atoms about the j-k axis so that the dihedral becomes ``target`` (rad)."""
    x = np.asarray(positions, dtype=np.float64).copy()
    j, k = int(atoms[1]), int(atoms[2])
    delta = target - dihedral_angle(x, atoms)
    axis = x[k] - x[j]
    axis = axis / np.linalg.norm(axis)
    c, s = np.cos(delta), np.sin(delta)
    # Rodrigues' rotation; with this dihedral convention a right-handed turn about j->k raises phi by delta.
    r = x[moving] - x[k]
    r = r * c + np.cross(axis, r) * s + np.outer(r @ axis, axis) * (1 - c)
    x[moving] = r + x[k]
    return x


def scan_targets(step_deg: float, start: float = -180.0) -> np.ndarray:
    """Target angles (P,) in rad: start, start + step, ... below start + 360 (degrees in)."""
    if not (np.isfinite(step_deg) and 0 < step_deg <= 180):
        raise InputError(f"--step-deg must lie in (0, 180], got {step_deg}")
    return np.deg2rad(np.arange(start, start + 360.0 - 1e-9, step_deg))


def restraint_energy(positions, atoms, target, k_restraint: float = RESTRAINT_KJ_PER_MOL_RAD2):
    """sum 1/2 k_r wrap(phi - target)^2, kJ/mol (JAX, differentiable); atoms (R, 4) or (4,), target (R,) or ()."""
    phi = dihedral_values(positions, np.asarray(atoms).reshape(-1, 4))
    target = jnp.reshape(target, (-1,))
    d = jnp.arctan2(jnp.sin(phi - target), jnp.cos(phi - target))
    return 0.5 * k_restraint * jnp.sum(d * d)


def _with_held(atoms, held, held_targets):
    """(R, 4) restrained quadruples (the scanned one first) and a function target -> (R,) targets."""
    held = np.zeros((0, 4), np.int32) if held is None else np.asarray(held, np.int32).reshape(-1, 4)
    held_targets = np.zeros(0) if held_targets is None else np.asarray(held_targets, np.float64).reshape(-1)
    if len(held) != len(held_targets):
        raise ValueError("held and held_targets differ in length")
    all_atoms = np.concatenate([np.asarray(atoms, np.int32).reshape(1, 4), held])
    return all_atoms, held, held_targets, lambda t: np.concatenate([[t], held_targets])


def make_mm_relaxer(energy_fn: Callable, atoms: Sequence[int], iterations: int = 2000, gtol: float = 0.05,
                    k_restraint: float = RESTRAINT_KJ_PER_MOL_RAD2, held=None, held_targets=None):
    """``relax(params, x0 (P, N, 3), targets (P,)) -> ScanResult`` under ``energy_fn(params, x)``.

    Each point is minimised by scipy's L-BFGS-B on a jit-compiled value-and-gradient (compiled once; params
    are an argument, so fitted parameters reuse it). optax's L-BFGS inside a vmapped lax.scan was tried
    first: its zoom line search took ~100 s to compile and converged worse at a fixed iteration count.
    gtol: stop when the largest gradient component is below this, kJ/mol/nm."""
    from scipy.optimize import minimize

    atoms = np.asarray(atoms, dtype=np.int32)
    all_atoms, held, held_targets, all_targets = _with_held(atoms, held, held_targets)

    def objective(params, x, target):
        return energy_fn(params, x) + restraint_energy(x, all_atoms, target, k_restraint)

    value_and_grad = jax.jit(jax.value_and_grad(objective, argnums=1))
    energy = jax.jit(energy_fn)

    def relax(params, x0, targets) -> ScanResult:
        params = jax.tree_util.tree_map(jnp.asarray, params)
        out_x, out_e, out_phi, out_f = [], [], [], []
        for start, target in zip(np.asarray(x0, dtype=np.float64), np.asarray(targets, dtype=np.float64)):
            shape = start.shape

            def fun(flat, target=jnp.asarray(all_targets(target))):
                v, g = value_and_grad(params, jnp.asarray(flat.reshape(shape) * VARIABLE_UNIT_NM), target)
                return float(v), np.asarray(g, dtype=np.float64).ravel() * VARIABLE_UNIT_NM

            with single_threaded():
                res = minimize(fun, start.ravel() / VARIABLE_UNIT_NM, jac=True, method="L-BFGS-B",
                               options={"maxiter": iterations, "gtol": gtol * VARIABLE_UNIT_NM, "ftol": 1e-15,
                                        "maxcor": 20})
            x = res.x.reshape(shape) * VARIABLE_UNIT_NM
            out_x.append(x)
            out_e.append(float(energy(params, jnp.asarray(x))))
            out_phi.append(dihedral_angle(x, atoms))
            out_f.append(float(np.max(np.linalg.norm(res.jac.reshape(shape), axis=-1))))
        return ScanResult(np.stack(out_x), np.asarray(out_e), np.asarray(out_phi), np.asarray(targets),
                          np.asarray(out_f), held, held_targets)

    return relax


def relax_qm(qm_fn: Callable, start: np.ndarray, atoms: Sequence[int], moving: np.ndarray, targets: np.ndarray,
             k_restraint: float = RESTRAINT_KJ_PER_MOL_RAD2, max_iterations: int = 300, gtol: float = 1.0,
             progress: bool = True, held=None, held_targets=None) -> ScanResult:
    """Relaxed scan under a QM engine. qm_fn(positions (N, 3) nm) -> (energy kJ/mol, forces (N, 3) kJ/mol/nm).

    Points are relaxed in order of the targets, each from the previous result rotated onto its target (the
    usual continuation scan). gtol: L-BFGS-B stop on the largest gradient component, kJ/mol/nm."""
    from scipy.optimize import minimize

    atoms = np.asarray(atoms, dtype=np.int32)
    all_atoms, held, held_targets, all_targets = _with_held(atoms, held, held_targets)
    restraint = jax.jit(jax.value_and_grad(lambda x, t: restraint_energy(x, all_atoms, t, k_restraint)))
    shape = np.asarray(start).shape
    bar = None
    if progress:
        import sys

        from tqdm import tqdm
        bar = tqdm(total=len(targets), unit="point", desc="QM scan", file=sys.stderr, dynamic_ncols=True)
    out_x, out_e, out_phi, out_f = [], [], [], []
    x = np.asarray(start, dtype=np.float64)
    for target in targets:
        x0 = set_dihedral(x, atoms, moving, float(target))
        offset = qm_fn(x0)[0]  # subtract a reference so L-BFGS-B's relative tolerances see O(1-100) numbers

        def fun(flat, target=jnp.asarray(all_targets(target)), offset=offset):
            xx = flat.reshape(shape) * VARIABLE_UNIT_NM
            e, f = qm_fn(xx)
            er, gr = restraint(jnp.asarray(xx), target)
            return e - offset + float(er), (-f + np.asarray(gr)).ravel() * VARIABLE_UNIT_NM

        with single_threaded():
            res = minimize(fun, x0.ravel() / VARIABLE_UNIT_NM, jac=True, method="L-BFGS-B",
                           options={"maxiter": max_iterations, "gtol": gtol * VARIABLE_UNIT_NM, "ftol": 1e-12})
        x = res.x.reshape(shape) * VARIABLE_UNIT_NM
        e, f = qm_fn(x)
        _, gr = restraint(jnp.asarray(x), jnp.asarray(all_targets(target)))
        out_x.append(x)
        out_e.append(e)
        out_phi.append(dihedral_angle(x, atoms))
        out_f.append(float(np.max(np.linalg.norm(f - np.asarray(gr), axis=-1))))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return ScanResult(np.stack(out_x), np.asarray(out_e), np.asarray(out_phi), np.asarray(targets),
                      np.asarray(out_f), held, held_targets)


def qm_function(numbers, method: str, charge: int = 0, multiplicity: int = 1) -> Callable:
    """positions -> (energy kJ/mol, forces kJ/mol/nm) for one of :mod:`jmlsim.qm.engines`' methods."""
    from jmlsim.qm.engines import qm_energy_forces

    numbers = np.asarray(numbers)

    def fn(positions):
        return qm_energy_forces(numbers, positions, method=method, charge=charge, multiplicity=multiplicity)

    return fn


def atomic_numbers(system) -> Optional[np.ndarray]:
    """(N,) atomic numbers from the system's topology; InputError if an atom has no element."""
    if system.topology is None:
        raise InputError("the system has no topology, so its elements (needed for QM) are unknown")
    numbers = []
    for atom in system.topology.atoms:
        if atom.element is None or atom.element.atomic_number < 1:
            raise InputError(f"atom {atom.index} ({atom.name}) has no element, so QM cannot treat it")
        numbers.append(atom.element.atomic_number)
    return np.asarray(numbers)
