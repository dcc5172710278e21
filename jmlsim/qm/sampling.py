"""Geometries around a conformer for QM labelling: harmonic normal-mode displacements or Langevin MD.

Both samplers take the force field as a function ``positions (N, 3) nm -> (energy kJ/mol, forces (N, 3)
kJ/mol/nm)`` (e.g. :meth:`jmlsim.qm.conformers.Molecule.force_fn`, MMFF94 through RDKit, or a trained neural
potential through :func:`potential_force_fn`; a QM engine works as well) and return (S, N, 3) positions in nm.

Normal modes. The Hessian comes from central differences of the forces (6N force calls). Translations and
rotations are projected out exactly: the Hessian is restricted to the orthogonal complement of the rigid-body
displacements (5 for a linear molecule, 6 otherwise). Displacements are drawn from the classical Boltzmann
distribution of that harmonic energy, ``x = x0 + sum_i q_i u_i`` with ``q_i ~ Normal(0, kT / k_i)``, where
(k_i, u_i) are the eigenpairs of the projected Cartesian Hessian. The classical configurational distribution
does not depend on the masses, so no mass weighting is needed. Soft modes (torsions, k_i near zero) and negative
curvature (a conformer that is not quite a minimum) would give unbounded harmonic amplitudes; k_i is raised to
at least ``min_force_constant`` (default 2000 kJ/mol/nm^2: at 300 K a soft mode moves at most ~0.035 nm RMS).

Molecular dynamics. Langevin dynamics in the BAOAB splitting (Leimkuhler & Matthews 2013). On the force field
(:func:`sample_md`) it runs in NumPy on the host: RDKit's force field is a C++ call per step, so there is nothing
for JAX to compile, and QM labelling dominates the cost by orders of magnitude (MMFF94 steps take tens of
microseconds). On a neural potential (:func:`sample_md_potential`) it is jmlsim's own
:class:`jmlsim.integrators.LangevinBAOAB` in a jitted ``lax.scan`` of ``stride`` steps per frame. After
``equilibration_steps`` a frame is kept every ``stride`` steps; each frame is re-centred on its centre of mass.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from jmlsim import units

ForceFn = Callable[[np.ndarray], tuple]

DEFAULT_MIN_FORCE_CONSTANT = 2000.0  # kJ/mol/nm^2


def potential_force_fn(potential, atomic_numbers: np.ndarray) -> ForceFn:
    """A trained :class:`jmlsim.potentials.potential.NeuralPotential` as a sampler's force function.

    The species are looked up once (InputError for an element the model does not know); each call is one jitted
    energy-and-forces evaluation, returned as (float kJ/mol, (N, 3) float64 kJ/mol/nm).
    """
    import jax.numpy as jnp

    z = np.asarray(atomic_numbers, np.int32)
    potential.species(z, source="molecule")  # validates the elements before any sampling
    dtype = jnp.asarray(np.zeros(1)).dtype  # float64 when JAX runs in x64, else float32

    def energy_forces(positions_nm: np.ndarray) -> tuple:
        e, f = potential.energy_and_forces(jnp.asarray(positions_nm, dtype), z)
        return float(e), np.asarray(f, np.float64)

    return energy_forces


def hessian(force_fn: ForceFn, positions_nm: np.ndarray, step_nm: float = 1e-4) -> np.ndarray:
    """(3N, 3N) Hessian in kJ/mol/nm^2 by central differences of the forces, symmetrised."""
    x0 = np.asarray(positions_nm, np.float64)
    n3 = x0.size
    h = np.empty((n3, n3))
    for j in range(n3):  # 6N force calls: the force field is an opaque host function
        dx = np.zeros(n3)
        dx[j] = step_nm
        f_plus = np.asarray(force_fn(x0 + dx.reshape(x0.shape))[1]).ravel()
        f_minus = np.asarray(force_fn(x0 - dx.reshape(x0.shape))[1]).ravel()
        h[:, j] = -(f_plus - f_minus) / (2.0 * step_nm)
    return 0.5 * (h + h.T)


def rigid_body_basis(positions_nm: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """(3N, R) orthonormal basis of infinitesimal translations and rotations (R = 6, or 5 if linear, 3 for one
    atom)."""
    x = np.asarray(positions_nm, np.float64)
    n = x.shape[0]
    centred = x - x.mean(axis=0)
    vectors = []
    for axis in np.eye(3):
        vectors.append(np.tile(axis, n))  # translation
        vectors.append(np.cross(axis, centred).ravel())  # rotation about the centroid
    b = np.stack(vectors, axis=1)
    u, s, _ = np.linalg.svd(b, full_matrices=False)
    return u[:, s > tol * max(s.max(), 1.0)]


def normal_modes(hess: np.ndarray, positions_nm: np.ndarray) -> tuple:
    """Vibrational force constants and modes of a Cartesian Hessian with rigid-body motion projected out.

    Returns (k (M,) kJ/mol/nm^2 ascending, modes (M, N, 3) unit-norm), M = 3N - 6 (3N - 5 if linear).
    """
    x = np.asarray(positions_nm, np.float64)
    rigid = rigid_body_basis(x)
    # Orthonormal complement of the rigid-body space: QR of [rigid | I] gives the rigid columns first, then it.
    q_full, _ = np.linalg.qr(np.concatenate([rigid, np.eye(x.size)], axis=1))
    complement = q_full[:, rigid.shape[1]:x.size]
    k, v = np.linalg.eigh(complement.T @ hess @ complement)
    modes = (complement @ v).T.reshape(-1, *x.shape)
    return k, modes


def sample_normal_modes(force_fn: ForceFn, positions_nm: np.ndarray, n_samples: int, temperature_k: float,
                        seed: int = 0, min_force_constant: float = DEFAULT_MIN_FORCE_CONSTANT) -> np.ndarray:
    """(S, N, 3) nm: classical harmonic Boltzmann samples around ``positions_nm`` (see the module docstring)."""
    x0 = np.asarray(positions_nm, np.float64)
    if x0.shape[0] < 2:
        return np.repeat(x0[None], n_samples, axis=0)
    k, modes = normal_modes(hessian(force_fn, x0), x0)
    k_used = np.maximum(np.abs(k), min_force_constant)
    sigma = np.sqrt(units.kT_kj_per_mol(temperature_k) / k_used)  # (M,) nm
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n_samples, k.shape[0])) * sigma
    return x0[None] + np.einsum("sm,mnc->snc", q, modes)


def sample_md(force_fn: ForceFn, positions_nm: np.ndarray, masses_amu: np.ndarray, n_samples: int,
              temperature_k: float, seed: int = 0, timestep_fs: float = 0.5, friction_per_ps: float = 10.0,
              equilibration_steps: int = 2000, stride: int = 100) -> np.ndarray:
    """(S, N, 3) nm: frames of BAOAB Langevin dynamics on ``force_fn`` (see the module docstring).

    masses_amu: (N,). The defaults (0.5 fs, 10/ps, 1 ps equilibration, a frame every 50 fs) keep bonds to
    hydrogen stable without constraints and decorrelate frames within a few strides.
    """
    rng = np.random.default_rng(seed)
    x = np.array(positions_nm, np.float64)
    m = np.asarray(masses_amu, np.float64)[:, None]
    kT = units.kT_kj_per_mol(temperature_k)
    dt = timestep_fs * units.PS_PER_FS
    c1 = np.exp(-friction_per_ps * dt)
    c2 = np.sqrt((1.0 - c1 * c1) * kT / m)  # nm/ps
    v = rng.standard_normal(x.shape) * np.sqrt(kT / m)
    _, f = force_fn(x)
    frames = np.empty((n_samples,) + x.shape)
    total = equilibration_steps + n_samples * stride
    kept = 0
    for step in range(1, total + 1):  # host loop: the force field is an RDKit C++ call per step
        v += 0.5 * dt * f / m  # B
        x += 0.5 * dt * v  # A
        v = c1 * v + c2 * rng.standard_normal(x.shape)  # O
        x += 0.5 * dt * v  # A
        _, f = force_fn(x)
        v += 0.5 * dt * f / m  # B
        if step > equilibration_steps and (step - equilibration_steps) % stride == 0:
            com = (m * x).sum(axis=0) / m.sum()
            frames[kept] = x - com
            kept += 1
    if not np.all(np.isfinite(frames)):
        raise FloatingPointError("MD sampling blew up (non-finite positions); lower the temperature or timestep")
    return frames


def _advance_potential(potential, state, atomic_numbers, integrator, n_steps: int):
    """``n_steps`` integrator steps on a neural potential as one ``lax.scan`` (jitted below; the potential and
    the atomic numbers are traced arguments, so every conformer and molecule of the same size reuses it)."""
    import jax

    def forces(x, aux):
        return potential.energy_and_forces(x, atomic_numbers)[1], aux

    return jax.lax.scan(lambda s, _: (integrator.step(s, forces)[0], None), state, None, length=n_steps)[0]


_advance_potential_jit = None


def sample_md_potential(potential, atomic_numbers: np.ndarray, positions_nm: np.ndarray, masses_amu: np.ndarray,
                        n_samples: int, temperature_k: float, seed: int = 0, timestep_fs: float = 0.5,
                        friction_per_ps: float = 10.0, equilibration_steps: int = 2000,
                        stride: int = 100) -> np.ndarray:
    """(S, N, 3) nm: like :func:`sample_md`, on a :class:`~jmlsim.potentials.potential.NeuralPotential`, with
    jmlsim's BAOAB integrator jit-compiled as one ``lax.scan`` of ``stride`` steps (equilibration is rounded up
    to whole strides, so one program serves both).
    """
    global _advance_potential_jit
    import jax
    import jax.numpy as jnp

    from jmlsim.integrators import LangevinBAOAB

    if _advance_potential_jit is None:
        _advance_potential_jit = jax.jit(_advance_potential, static_argnums=(3, 4))
    z = np.asarray(atomic_numbers, np.int32)
    potential.species(z, source="molecule")  # InputError for unknown elements, before compiling anything
    dtype = jnp.asarray(np.zeros(1)).dtype  # float64 when JAX runs in x64, else float32
    integrator = LangevinBAOAB(timestep_fs * units.PS_PER_FS, units.kT_kj_per_mol(temperature_k), friction_per_ps)
    x0 = jnp.asarray(positions_nm, dtype)
    masses = jnp.asarray(masses_amu, dtype)
    z_device = jnp.asarray(z)
    state = integrator.init(jax.random.PRNGKey(seed), x0, masses, potential.energy_and_forces(x0, z)[1], None)
    for _ in range(-(-int(equilibration_steps) // int(stride))):
        state = _advance_potential_jit(potential, state, z_device, integrator, int(stride))
    m = np.asarray(masses_amu, np.float64)[:, None]
    frames = np.empty((n_samples,) + tuple(x0.shape))
    for i in range(n_samples):  # one compiled chunk of `stride` steps per frame
        state = _advance_potential_jit(potential, state, z_device, integrator, int(stride))
        x = np.asarray(state.positions, np.float64)
        frames[i] = x - (m * x).sum(axis=0) / m.sum()
    if not np.all(np.isfinite(frames)):
        raise FloatingPointError("MD sampling blew up (non-finite positions); lower the temperature or timestep")
    return frames
