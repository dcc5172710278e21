"""gnina/libmolgrid density grids in JAX: what the pretrained gnina CNNs (:mod:`jmlsim.affinity.gnina`) read.

Units: **Ångström** (coordinates, radii, resolution).

Grid: 48 points per axis at 0.5 Å, spanning 23.5 Å between the first and last point (libmolgrid GridMaker
defaults, ``dimension=23.5``), i.e. ``center + (i - 23.5) * 0.5`` for ``i = 0..47`` -- the same points as
:func:`jmlsim.affinity.featurize.grid_axis` for a 24 Å box at 0.5 Å. Centre: the mean of the ligand's typed
(heavy) atoms. Array layout ``[x, y, z, channel]``, 14 receptor channels then 14 ligand channels.

Density of an atom of radius ``R`` (smina ``xs_radius``) at distance ``r`` (libmolgrid, non-binary,
``gaussian_radius_multiple = 1``): with ``d = r / R``,

    exp(-2 d^2)                   for d < 1
    4 e^-2 (d - 3/2)^2            for 1 <= d < 3/2   (matches value and slope at d = 1, zero at 3/2)
    0                             beyond,

and a channel's value is the **sum** over its atoms (KDEEP's grids take the maximum instead).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.affinity import featurize

GRID_POINTS = 48
RESOLUTION = 0.5      # Å
BOX_SIZE = GRID_POINTS * RESOLUTION  # 24 Å of cells; 23.5 Å between the outermost points
ATOM_BLOCK = 64       # atoms per scan step (memory ~ ATOM_BLOCK x 48^3 floats)
_QUAD = 4.0 * math.exp(-2.0)


def density(d2, radii):
    """libmolgrid's atom density from squared distances (..., P) Å² and radii (..., 1) Å; unitless."""
    d = jnp.sqrt(d2) / radii
    gauss = jnp.exp(-2.0 * d * d)
    quad = _QUAD * (d - 1.5) ** 2
    return jnp.where(d < 1.0, gauss, jnp.where(d < 1.5, quad, 0.0))


def grid_axis() -> np.ndarray:
    """(48,) point offsets from the grid centre along one axis, Å."""
    return featurize.grid_axis(BOX_SIZE, RESOLUTION)


def voxelize(coords, channels, radii, mask, center, rotation=None, atom_block: int = ATOM_BLOCK):
    """gnina density grid of a set of atoms (pure JAX; jit/vmap-able).

    Args:
      coords: (A, 3) positions, Å. channels: (A, C) 0/1 membership (a float weights the atom's density).
      radii: (A,) Å. mask: (A,) bool, False for padding. center: (3,) grid centre, Å.
      rotation: optional (3, 3); atoms are turned about ``center`` first (x -> center + R (x - center)).
    Returns:
      (48, 48, 48, C) float32, per channel the sum over atoms of :func:`density`.
    """
    axis = jnp.asarray(grid_axis(), jnp.float32)
    pts = jnp.stack(jnp.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)  # (P, 3)
    rel = jnp.asarray(coords, jnp.float32) - jnp.asarray(center, jnp.float32)
    if rotation is not None:
        rel = rel @ jnp.asarray(rotation, jnp.float32).T
    w = jnp.asarray(channels, jnp.float32) * jnp.asarray(mask, jnp.float32)[:, None]
    rad = jnp.asarray(radii, jnp.float32)
    n_ch = w.shape[1]
    blocks = featurize.atom_blocks(rel, w, rad, atom_block)

    def step(acc, blk):
        r, rv, wb = blk
        d2 = jnp.sum((pts[None, :, :] - r[:, None, :]) ** 2, axis=-1)      # (block, P)
        dens = density(d2, rv[:, None])
        # A sum over atoms is a matmul with the channel weights; full precision so accelerators match molgrid.
        return acc + jnp.matmul(wb.T, dens, precision=jax.lax.Precision.HIGHEST), None

    acc, _ = jax.lax.scan(step, jnp.zeros((n_ch, pts.shape[0]), jnp.float32), blocks)
    return acc.T.reshape(GRID_POINTS, GRID_POINTS, GRID_POINTS, n_ch)


def _grid_raw(coords, channels, radii, mask, centroid, rotation, translation):
    # Rotate about the ligand centre, then move the box by +translation (in the rotated frame).
    return voxelize(coords, channels, radii, mask, centroid + rotation.T @ translation, rotation)


_grid_batch = jax.jit(jax.vmap(_grid_raw))


def batch_grids(complexes: Sequence[featurize.Complex], key=None, augment: bool = False,
                max_shift: float = featurize.MAX_TRANSLATION, bucket: int = featurize.ATOM_BUCKET):
    """(B, 48, 48, 48, 28) gnina grids of gnina-typed complexes; random rotation + shift per sample if augment.

    Complexes come from :func:`jmlsim.affinity.gnina_typing.complex_from_files` (14 receptor + 14 ligand
    channels). Atoms are padded to the batch's largest bucketed count (one compile per bucket and batch size).
    """
    if augment and key is None:
        raise ValueError("batch_grids(augment=True) needs a PRNG key")
    complexes = list(complexes)
    n_pad = max(featurize.bucket_size(len(c.protein_coords) + len(c.ligand_coords), bucket) for c in complexes)
    arrs = [featurize.complex_arrays(c, n_pad=n_pad) for c in complexes]
    coords, ch, radii, mask, centroid = (np.stack(x) for x in zip(*arrs))
    rots, shifts = featurize.augmentations(key if key is not None else jax.random.PRNGKey(0), len(complexes),
                                           augment, max_shift)
    return _grid_batch(coords, ch, radii, mask, centroid, rots, shifts)


def complex_grid(cpx: featurize.Complex, rotation=None, translation=None):
    """(48, 48, 48, 28) gnina grid of one complex, centred on its ligand (+ ``translation`` Å)."""
    coords, ch, radii, mask, centroid = featurize.complex_arrays(cpx)
    rot = jnp.eye(3, dtype=jnp.float32) if rotation is None else jnp.asarray(rotation, jnp.float32)
    t = jnp.zeros(3, jnp.float32) if translation is None else jnp.asarray(translation, jnp.float32)
    return _grid_batch(coords[None], ch[None], radii[None], mask[None], centroid[None], rot[None], t[None])[0]
