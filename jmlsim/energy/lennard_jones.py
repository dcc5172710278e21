"""Lennard-Jones pair term for a single species, on a full neighbor list.

    U(r) = 4 eps [(sigma/r)^12 - (sigma/r)^6] for r < cutoff,

truncated at the cutoff and either shifted so U(cutoff) = 0 (default) or smoothly switched to zero between
``switch_distance`` and the cutoff with OpenMM's polynomial S(x) = 1 - 10x^3 + 15x^4 - 6x^5.
Units: whatever positions and params use (nm and kJ/mol, or LJ reduced units).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax.numpy as jnp

from jmlsim import space
from jmlsim.neighbors import NeighborList

Array = jnp.ndarray


class LennardJonesParams(NamedTuple):
    """Differentiable parameters: sigma (length), epsilon (energy); scalars."""

    sigma: Array
    epsilon: Array


@dataclasses.dataclass(frozen=True)
class LennardJones:
    """Static configuration of the term. cutoff and switch_distance in the same length unit as positions."""

    cutoff: float
    switch_distance: Optional[float] = None
    shift: bool = True
    triclinic: bool = False

    def _pairs(self, params: LennardJonesParams, positions: Array, box: Optional[Array], nbrs: NeighborList):
        """Per-pair energy u (N, K) and -du/dr / r (N, K), zero outside the cutoff, plus displacements."""
        n = positions.shape[0]
        dr = space.minimum_image(positions[:, None, :] - positions[nbrs.idx], box, self.triclinic)
        r2 = jnp.sum(dr * dr, axis=-1)
        inside = (nbrs.idx < n) & (r2 < self.cutoff**2)
        r2 = jnp.where(inside, r2, 1.0)  # keeps padded pairs finite so their (zero) gradient is finite too
        sigma2, eps = params.sigma**2, params.epsilon
        s6 = (sigma2 / r2) ** 3
        u = 4.0 * eps * (s6 * s6 - s6)
        f_over_r = 24.0 * eps * (2.0 * s6 * s6 - s6) / r2
        if self.switch_distance is not None:
            r = jnp.sqrt(r2)
            width = self.cutoff - self.switch_distance
            x = jnp.clip((r - self.switch_distance) / width, 0.0, 1.0)
            switch = 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x * x)
            dswitch_dr = -30.0 * x * x * (1.0 - x) ** 2 / width
            f_over_r = f_over_r * switch - u * dswitch_dr / r
            u = u * switch
        elif self.shift:
            sc6 = (sigma2 / self.cutoff**2) ** 3
            u = u - 4.0 * eps * (sc6 * sc6 - sc6)
        zero = jnp.zeros_like(u)
        return jnp.where(inside, u, zero), jnp.where(inside, f_over_r, zero), dr

    def energy(self, params: LennardJonesParams, positions: Array, box: Optional[Array], nbrs: NeighborList) -> Array:
        """Total energy (scalar). Each pair is in the full list twice, hence the 1/2."""
        u, _, _ = self._pairs(params, positions, box, nbrs)
        return 0.5 * jnp.sum(u)

    def forces(self, params: LennardJonesParams, positions: Array, box: Optional[Array], nbrs: NeighborList) -> Array:
        """Forces (N, 3) = -grad(energy), as row sums over the full list (no scatter)."""
        _, f_over_r, dr = self._pairs(params, positions, box, nbrs)
        return jnp.sum(f_over_r[..., None] * dr, axis=1)

    def virial(self, params: LennardJonesParams, positions: Array, box: Optional[Array], nbrs: NeighborList) -> Array:
        """Scalar virial sum over pairs of r . f (for the pressure P = (N kT + W/3) / V)."""
        _, f_over_r, dr = self._pairs(params, positions, box, nbrs)
        return 0.5 * jnp.sum(f_over_r * jnp.sum(dr * dr, axis=-1))
