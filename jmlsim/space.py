"""Periodic space: box matrices, minimum-image displacements, wrapping.

A box is a (3, 3) matrix whose **rows** are the lattice vectors a, b, c in nm, in OpenMM's reduced form
(a = (ax, 0, 0), b = (bx, by, 0), c = (cx, cy, cz), with |bx| <= ax/2, |cx| <= ax/2, |cy| <= by/2).
An orthorhombic box may be given as its three edge lengths. ``None`` means no periodicity.

The minimum image follows OpenMM: subtract c, then b, then a, each rounded along its own axis. For a box in
reduced form this is exact whenever the cutoff is at most half the smallest box width.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray


def box_matrix(box) -> Optional[np.ndarray]:
    """Return a (3, 3) box matrix (rows = lattice vectors) from lengths (3,) or a matrix; None stays None."""
    if box is None:
        return None
    b = np.asarray(box, dtype=np.float64)
    if b.shape == (3,):
        return np.diag(b)
    if b.shape == (3, 3):
        return b
    raise ValueError(f"box must have shape (3,) or (3, 3), got {b.shape}")


def is_triclinic(box) -> bool:
    """True when a box matrix has off-diagonal entries (host-side check; decides the code path)."""
    if box is None:
        return False
    b = np.asarray(box)
    return bool(np.any(b[np.triu_indices(3, 1)] != 0) or np.any(b[np.tril_indices(3, -1)] != 0))


def volume(box: Array) -> Array:
    """Box volume in nm^3 for a reduced-form (lower-triangular) box matrix."""
    return box[0, 0] * box[1, 1] * box[2, 2]


def widths(box) -> np.ndarray:
    """Perpendicular widths (3,) of the box: the distance between opposite faces, per lattice direction."""
    b = np.asarray(box, dtype=np.float64)
    vol = abs(np.linalg.det(b))
    areas = np.array([
        np.linalg.norm(np.cross(b[1], b[2])),
        np.linalg.norm(np.cross(b[2], b[0])),
        np.linalg.norm(np.cross(b[0], b[1])),
    ])
    return vol / areas


def minimum_image(dr: Array, box: Optional[Array], triclinic: bool = False) -> Array:
    """Minimum-image displacement.

    Args:
      dr: (..., 3) raw displacements r_i - r_j in nm.
      box: (3, 3) reduced-form box matrix, or None for open boundaries.
      triclinic: static flag; False uses the cheaper per-axis form (box must then be diagonal).
    Returns:
      (..., 3) displacements of the nearest periodic image.
    """
    if box is None:
        return dr
    if not triclinic:
        lengths = jnp.diagonal(box)
        return dr - lengths * jnp.round(dr / lengths)
    for axis in (2, 1, 0):
        dr = dr - jnp.round(dr[..., axis] / box[axis, axis])[..., None] * box[axis]
    return dr


def minimum_image_components(d: tuple, box: Optional[Array], triclinic: bool = False) -> tuple:
    """:func:`minimum_image` on displacements given as a tuple (dx, dy, dz) of same-shaped arrays, nm.

    Component-major arrays vectorize on CPU where an (..., 3) array with minor axis 3 does not.
    """
    if box is None:
        return tuple(d)
    if not triclinic:
        return tuple(d[a] - box[a, a] * jnp.round(d[a] / box[a, a]) for a in range(3))
    d = list(d)
    for axis in (2, 1, 0):
        shift = jnp.round(d[axis] / box[axis, axis])
        d = [d[c] - shift * box[axis, c] for c in range(3)]
    return tuple(d)


def fractional(positions: Array, box: Array) -> Array:
    """Fractional coordinates s with positions = s @ box; (N, 3) -> (N, 3)."""
    return positions @ jnp.linalg.inv(box)


def wrap(positions: Array, box: Optional[Array]) -> Array:
    """Wrap positions (N, 3) into the primary cell [0, 1)^3 in fractional coordinates."""
    if box is None:
        return positions
    s = fractional(positions, box)
    return (s - jnp.floor(s)) @ box


def lengths_and_angles(box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell lengths (nm) and angles alpha, beta, gamma (degrees) of a box matrix, for trajectory files."""
    b = np.asarray(box, dtype=np.float64)
    a, bb, c = b
    la, lb, lc = np.linalg.norm(a), np.linalg.norm(bb), np.linalg.norm(c)
    alpha = np.degrees(np.arccos(np.dot(bb, c) / (lb * lc)))
    beta = np.degrees(np.arccos(np.dot(a, c) / (la * lc)))
    gamma = np.degrees(np.arccos(np.dot(a, bb) / (la * lb)))
    return np.array([la, lb, lc]), np.array([alpha, beta, gamma])
