"""Smooth particle-mesh Ewald: the reciprocal-space part of Ewald electrostatics.

The Ewald sum splits the periodic Coulomb energy into

    E = E_direct + E_reciprocal + E_self + E_neutralizing

with E_direct = k * sum_{i<j, r<cutoff} q_i q_j erfc(alpha r_ij) / r_ij handled by a pair term, and the
other three here.  The reciprocal part follows Essmann et al., J. Chem. Phys. 103, 8577 (1995):
charges are spread onto a grid with cardinal B-splines M_n of order n, the grid is Fourier transformed,
and

    E_rec = k / (2 pi V) * sum_{m != 0} exp(-pi^2 |m|^2 / alpha^2) / |m|^2 * B(m) |S(m)|^2,

where m runs over reciprocal lattice vectors, S(m) is the FFT of the charge grid and B(m) = 1 / prod_d
|b_d(m_d)|^2 the B-spline moduli correction.  All choices that change the numbers (frequency mapping,
the zero-modulus fix-up, the grid-size rule) follow OpenMM's Reference platform so energies match it.

Units are OpenMM's: nm, e, kJ/mol; alpha in 1/nm.  A box is (3, 3) with rows = lattice vectors in
OpenMM's reduced (lower-triangular) form.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray

# Coulomb constant 1/(4 pi eps0) in kJ mol^-1 nm e^-2, the value OpenMM 8 uses (matches its energies).
ONE_4PI_EPS0 = 138.93545764438198


# One atom's order^3 block of grid points: a scatter/gather window starting at the atom's (padded) grid point.
_WINDOW_SCATTER = jax.lax.ScatterDimensionNumbers(update_window_dims=(1, 2, 3), inserted_window_dims=(),
                                                  scatter_dims_to_operand_dims=(0, 1, 2))
_WINDOW_GATHER = jax.lax.GatherDimensionNumbers(offset_dims=(1, 2, 3), collapsed_slice_dims=(),
                                                start_index_map=(0, 1, 2))


def _is_fft_friendly(n: int) -> bool:
    """True when n has no prime factor above 7 (OpenMM's ComputeContext::findLegalFFTDimension rule)."""
    for factor in (2, 3, 5, 7):
        while n % factor == 0 and n > 1:
            n //= factor
    return n == 1


def pme_parameters(box, cutoff: float, tolerance: float = 5e-4,
                   fft_friendly: bool = False) -> Tuple[float, Tuple[int, int, int]]:
    """Ewald alpha and PME grid chosen as OpenMM's NonbondedForce does when none is set explicitly.

    alpha = sqrt(-ln(2 tol)) / cutoff; grid size along axis d = ceil(2 alpha box[d, d] / (3 tol^(1/5))),
    at least 6.  This equals ``NonbondedForce.getPMEParametersInContext`` on the Reference and CPU
    platforms, which use any grid size.  ``fft_friendly=True`` additionally rounds each size up to the next
    number with only prime factors 2, 3, 5, 7 (the generic rule of OpenMM's GPU platforms; CUDA/HIP FFT
    back ends may pick differently).

    Args:
      box: (3, 3) box matrix in nm, rows = lattice vectors (reduced form), or (3,) edge lengths.
      cutoff: direct-space cutoff in nm.
      tolerance: OpenMM's ewaldErrorTolerance.
      fft_friendly: round grid sizes up to 2-3-5-7-smooth numbers.
    Returns:
      (alpha in 1/nm, (nx, ny, nz)).
    """
    b = np.asarray(box, dtype=np.float64)
    diag = b if b.shape == (3,) else np.diagonal(b)
    alpha = (1.0 / cutoff) * math.sqrt(-math.log(2.0 * tolerance))  # OpenMM's operation order, bit-exact
    grid = []
    for length in diag:
        n = max(int(math.ceil(2.0 * alpha * float(length) / (3.0 * tolerance ** 0.2))), 6)
        if fft_friendly:
            while not _is_fft_friendly(n):
                n += 1
        grid.append(n)
    return alpha, tuple(grid)


def _bspline_weights(frac: Array, order: int, xp=jnp) -> Array:
    """Cardinal B-spline values M_order(frac + j) for j = 0..order-1.

    Args:
      frac: (...,) fractional offsets in [0, 1).
      xp: array namespace (jnp, or np for host-side tables).
    Returns:
      (..., order) weights; they sum to 1 for every frac.
    """
    j = xp.arange(order, dtype=frac.dtype)
    x = frac[..., None] + j  # the order points where this atom's spline is non-zero
    # M_1(x) = 1 on [0, 1): only j = 0 is inside.
    m = xp.broadcast_to((j == 0).astype(frac.dtype), x.shape)
    for k in range(2, order + 1):
        # M_k(x) = [x M_{k-1}(x) + (k - x) M_{k-1}(x - 1)] / (k - 1); M_{k-1}(x - 1) is the j - 1 column.
        shifted = xp.concatenate([xp.zeros_like(m[..., :1]), m[..., :-1]], axis=-1)
        m = (x * m + (k - x) * shifted) / (k - 1)
    return m


def _bspline_moduli(size: int, order: int) -> np.ndarray:
    """|sum_j M_order(j) exp(2 pi i m j / size)|^2 for m = 0..size-1 (float64, host-side).

    Zeros (odd-degree splines at the Nyquist frequency) are replaced by the mean of their neighbours,
    sequentially in m, exactly as OpenMM's reference PME does.
    """
    values = np.zeros(order + 1)
    values[:order] = _bspline_weights(np.zeros((), np.float64), order, xp=np)
    # values[j] = M_order(j); M_order(0) = 0 so index 0 carries nothing.
    j = np.arange(order + 1)
    m = np.arange(size)[:, None]
    arg = 2.0 * np.pi * m * j / size
    moduli = (values * np.cos(arg)).sum(1) ** 2 + (values * np.sin(arg)).sum(1) ** 2
    for i in range(size):
        if moduli[i] < 1e-7:
            moduli[i] = 0.5 * (moduli[(i - 1) % size] + moduli[(i + 1) % size])
    return moduli


def _signed_frequency(index: np.ndarray, size: int) -> np.ndarray:
    """Grid index -> signed integer frequency, OpenMM's mapping (index >= (size+1)//2 is negative)."""
    return np.where(index < (size + 1) // 2, index, index - size)


@dataclasses.dataclass(frozen=True, eq=False)
class PMEReciprocal:
    """Reciprocal-space smooth-PME energy.

    Attributes:
      alpha: Ewald splitting parameter in 1/nm.
      grid: (nx, ny, nz) grid points along the a, b, c lattice directions.
      order: B-spline order (OpenMM uses 5).
    """

    alpha: float
    grid: Tuple[int, int, int]
    order: int = 5
    _tables: tuple = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        nx, ny, nz = (int(n) for n in self.grid)
        if min(nx, ny, nz) < self.order:
            raise ValueError(f"PME grid {self.grid} must be at least the spline order {self.order}")
        object.__setattr__(self, "grid", (nx, ny, nz))
        nzh = nz // 2 + 1  # rfftn keeps the non-negative half of the last axis
        kx, ky, kz = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nzh), indexing="ij")
        # Each rfft entry stands for itself and, unless it is self-conjugate along z, for its mirror
        # (-kx, -ky, -kz); OpenMM's frequency mapping differs between the two only on Nyquist planes
        # (which matters for triclinic boxes), so the influence function is evaluated for both.
        own = np.stack([_signed_frequency(kx, nx), _signed_frequency(ky, ny), _signed_frequency(kz, nz)])
        mirror = np.stack([_signed_frequency((-kx) % nx, nx), _signed_frequency((-ky) % ny, ny),
                           _signed_frequency((-kz) % nz, nz)])
        has_mirror = (kz != 0) & (2 * kz != nz)
        moduli = (_bspline_moduli(nx, self.order)[kx] * _bspline_moduli(ny, self.order)[ky]
                  * _bspline_moduli(nz, self.order)[kz])
        # Mirror indices have the same moduli (|b(k)| = |b(K - k)|).
        tables = (own.reshape(3, -1).astype(np.float64), mirror.reshape(3, -1).astype(np.float64),
                  has_mirror.reshape(-1), moduli.reshape(-1))
        object.__setattr__(self, "_tables", tables)

    def _splines(self, positions: Array, box: Array):
        """Where each atom's spline sits on the grid.

        Returns (start (N, 3) int32, the first of the atom's ``order`` grid points along each axis, in the
        coordinates of a grid padded with order - 1 points in front (point p stands for grid index
        p - order + 1 mod size); frac (N, 3), the offset in grid units that the spline weights depend on;
        inv_box (3, 3)).
        """
        sizes = jnp.asarray(self.grid, dtype=positions.dtype)
        inv_box = jnp.linalg.inv(box)
        s = positions @ inv_box  # fractional coordinates
        s = s - jnp.floor(s)  # wrap into the home cell; floor carries no gradient
        u = s * sizes
        base = jnp.floor(u)
        # the spline covers grid indices base - order + 1 .. base, i.e. padded points base .. base + order - 1
        # (base = size when rounding puts s at exactly 1: the modulo keeps the window inside the padded grid)
        start = base.astype(jnp.int32) % jnp.asarray(self.grid, jnp.int32)
        return start, u - base, inv_box

    def _window_weights(self, frac: Array):
        """(N, 3, order) spline weights of the window's points in grid order (index base - order + 1 first)."""
        return _bspline_weights(frac, self.order)[..., ::-1]

    def charge_grid(self, charges: Array, positions: Array, box: Array) -> Array:
        """Spread charges onto the PME grid.

        Each atom adds an order^3 block of weights at once (one windowed scatter-add per atom into a grid
        padded by order - 1 points per axis, folded back periodically afterwards): 4x faster on CPU than a
        scatter of single points (DHFR, 23,558 atoms, 55^3 grid: 61 -> 14.5 ms).

        Args:
          charges: (N,) e.  positions: (N, 3) nm.  box: (3, 3) nm, rows = lattice vectors.
        Returns:
          (nx, ny, nz) grid of B-spline-weighted charges (e).
        """
        start, frac, _ = self._splines(positions, box)
        return self._spread(charges, start, self._window_weights(frac))

    def _spread(self, charges: Array, start: Array, w: Array) -> Array:
        """The charge grid from the atoms' window starts (N, 3) and window weights (N, 3, order)."""
        blocks = (charges[:, None, None, None] * w[:, 0, :, None, None] * w[:, 1, None, :, None]
                  * w[:, 2, None, None, :])  # (N, order, order, order)
        pad = self.order - 1
        padded = jnp.zeros(tuple(n + pad for n in self.grid), blocks.dtype)
        padded = jax.lax.scatter_add(padded, start, blocks, _WINDOW_SCATTER,
                                     mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
        for axis, size in enumerate(self.grid):  # fold the leading pad onto the far end of each axis
            head = jax.lax.slice_in_dim(padded, 0, pad, axis=axis)
            body = jax.lax.slice_in_dim(padded, pad, pad + size, axis=axis)
            padded = jnp.concatenate([jax.lax.slice_in_dim(body, 0, size - pad, axis=axis),
                                      jax.lax.slice_in_dim(body, size - pad, size, axis=axis) + head], axis=axis)
        return padded

    def grid_energy(self, grid: Array, box: Array) -> Array:
        """E_rec (kJ/mol) of a charge grid (nx, ny, nz): sum of influence * |FFT(Q)|^2."""
        s = jnp.fft.rfftn(grid)
        return jnp.sum(self.influence(box) * (s.real ** 2 + s.imag ** 2).reshape(-1))

    def forces(self, charges: Array, positions: Array, box: Array) -> Array:
        """Reciprocal-space forces (N, 3) kJ/mol/nm, analytic: -q_i grad(spline weights) . phi, with phi =
        dE/dQ the potential on the grid (autodiff through the FFT only). Equals -grad(energy) (2.3x faster
        than autodiff through the spreading on DHFR); use :meth:`energy` for charge and box derivatives."""
        start, frac, inv_box = self._splines(positions, box)
        n = self.order
        w = self._window_weights(frac)
        lower = _bspline_weights(frac, n - 1)
        zero = jnp.zeros_like(lower[..., :1])
        # d M_n(x) / dx = M_{n-1}(x) - M_{n-1}(x - 1), reversed into window order as the weights are
        dw = (jnp.concatenate([lower, zero], -1) - jnp.concatenate([zero, lower], -1))[..., ::-1]
        phi = jax.grad(self.grid_energy)(self._spread(charges, start, w), box)
        pad = n - 1
        for axis, size in enumerate(self.grid):  # periodic pad in front, as in charge_grid
            phi = jnp.concatenate([jax.lax.slice_in_dim(phi, size - pad, size, axis=axis), phi], axis=axis)
        window = jax.lax.gather(phi, start, _WINDOW_GATHER, slice_sizes=(n, n, n),
                                mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)  # (N, n, n, n)
        wx, wy, wz = w[:, 0], w[:, 1], w[:, 2]
        dx, dy, dz = dw[:, 0], dw[:, 1], dw[:, 2]
        along_z = jnp.sum(window * wz[:, None, None, :], axis=3)  # (N, n, n): x, y
        along_dz = jnp.sum(window * dz[:, None, None, :], axis=3)
        g = jnp.stack([jnp.sum(along_z * dx[:, :, None] * wy[:, None, :], axis=(1, 2)),
                       jnp.sum(along_z * wx[:, :, None] * dy[:, None, :], axis=(1, 2)),
                       jnp.sum(along_dz * wx[:, :, None] * wy[:, None, :], axis=(1, 2))], axis=-1)
        de_ds = charges[:, None] * g * jnp.asarray(self.grid, positions.dtype)  # s: fractional coordinates
        return -de_ds @ inv_box.T  # dE/dx_c = sum_a dE/ds_a d s_a/dx_c, s = x inv_box

    def influence(self, box: Array) -> Array:
        """Influence function on the rfft half grid, flattened: E_rec = sum influence * |FFT(Q)|^2.

        Args:
          box: (3, 3) nm.
        Returns:
          (nx * ny * (nz // 2 + 1),) in kJ/mol/e^2; zero at m = 0.
        """
        own, mirror, has_mirror, moduli = self._tables
        dtype = box.dtype
        recip = jnp.linalg.inv(box)  # columns are the reciprocal vectors a*, b*, c*
        volume = box[0, 0] * box[1, 1] * box[2, 2]
        prefactor = ONE_4PI_EPS0 / (2.0 * jnp.pi * volume)
        factor = (jnp.pi / self.alpha) ** 2

        def term(m_int):
            # (3, K) Cartesian reciprocal vectors, 1/nm. Written as broadcasts, not `recip @ m_int`: XLA's CPU
            # float64 dot with this large constant operand returns wrong values under jit (jax 0.10.2).
            k = jnp.asarray(m_int, dtype)
            m = recip[:, 0:1] * k[0] + recip[:, 1:2] * k[1] + recip[:, 2:3] * k[2]
            m2 = jnp.sum(m * m, axis=0)
            zero = m2 == 0
            safe = jnp.where(zero, 1.0, m2)
            return jnp.where(zero, 0.0, jnp.exp(-factor * safe) / safe)

        total = term(own) + jnp.where(jnp.asarray(has_mirror), term(mirror), 0.0)
        return prefactor * total / jnp.asarray(moduli, dtype)

    def energy(self, charges: Array, positions: Array, box: Array) -> Array:
        """Reciprocal-space Ewald energy.

        Args:
          charges: (N,) e.
          positions: (N, 3) nm (any image; wrapped internally).
          box: (3, 3) nm, rows = lattice vectors, reduced (lower-triangular) form.
        Returns:
          scalar energy in kJ/mol; differentiable w.r.t. charges, positions and box.
        """
        return self.grid_energy(self.charge_grid(charges, positions, box), box)


def ewald_self_energy(charges: Array, alpha) -> Array:
    """Ewald self-interaction correction -k alpha / sqrt(pi) * sum q^2, in kJ/mol (charges (N,) e)."""
    return -ONE_4PI_EPS0 * alpha / math.sqrt(math.pi) * jnp.sum(charges * charges)


def neutralizing_energy(charges: Array, alpha, volume) -> Array:
    """Energy of a uniform background that neutralizes a net charge, -k pi Q^2 / (2 V alpha^2), kJ/mol.

    OpenMM's NonbondedForce adds this with PME/Ewald; it is zero for a neutral system.

    Args:
      charges: (N,) e.  alpha: 1/nm.  volume: box volume in nm^3.
    """
    total = jnp.sum(charges)
    return -ONE_4PI_EPS0 * math.pi * total * total / (2.0 * volume * alpha * alpha)
