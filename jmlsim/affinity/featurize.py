"""Voxel features of a protein-ligand complex: KDEEP density grids in JAX, with on-the-fly augmentation.

Units: **Ångström** throughout (coordinates, radii, box size, resolution). PDBbind files and the grids of
KDEEP/gnina are in Å; this is a data-format border, and nothing here feeds the nm-based MD engine.

Grid layout: ``G = round(box_size / resolution)`` points per axis at cell centres,
``center + (i - (G - 1) / 2) * resolution`` for ``i = 0 .. G-1`` along x, y and z; the array is indexed
``[ix, iy, iz, channel]``. An atom of van der Waals radius ``r_vdw`` at distance ``r`` from a point gives the
KDEEP occupancy ``1 - exp(-(r_vdw / r)^12)`` (Jiménez et al., J. Chem. Inf. Model. 2018, 58, 287), and a
channel's value at a point is the **maximum** over the atoms that carry that channel.

A complex grid has the protein's channels first, then the ligand's (16 for the KDEEP scheme, 8 + 8).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

KDEEP_CHANNELS = ('hydrophobic', 'aromatic', 'hbond_acceptor', 'hbond_donor',
                  'positive_ionizable', 'negative_ionizable', 'metal', 'excluded_volume')

BOX_SIZE = 24.0       # Å, KDEEP's cube edge
RESOLUTION = 1.0      # Å between grid points
MAX_TRANSLATION = 2.0  # Å, per-axis random shift used for augmentation
ATOM_BUCKET = 256     # atoms are padded to a multiple of this, so jit compiles per bucket, not per complex
ATOM_BLOCK = 64       # atoms per scan step of the dense voxelizer on accelerators (memory ~block x C x G^3)


class Complex(NamedTuple):
    """One typed protein-ligand complex (host numpy arrays; coordinates and radii in Å).

    ``protein_channels`` (P, C) and ``ligand_channels`` (L, C) are boolean channel memberships, C = 8 for the
    KDEEP scheme (order :data:`KDEEP_CHANNELS`) or 14 for gnina. Hydrogens are not included. ``pK`` is
    -log10(Kd/Ki/IC50 in M), NaN when unknown.
    """
    name: str
    protein_coords: np.ndarray    # (P, 3) Å
    protein_channels: np.ndarray  # (P, C) bool
    protein_radii: np.ndarray     # (P,) Å
    ligand_coords: np.ndarray     # (L, 3) Å
    ligand_channels: np.ndarray   # (L, C) bool
    ligand_radii: np.ndarray      # (L,) Å
    pK: float


def grid_points(box_size: float = BOX_SIZE, resolution: float = RESOLUTION) -> int:
    """Points per axis, G = round(box_size / resolution)."""
    n = int(round(box_size / resolution))
    if n < 1 or abs(n * resolution - box_size) > 1e-6 * box_size:
        raise ValueError(f"box_size {box_size} Å is not a whole number of resolution {resolution} Å steps")
    return n


def grid_axis(box_size: float = BOX_SIZE, resolution: float = RESOLUTION) -> np.ndarray:
    """(G,) offsets of the cell centres from the grid centre along one axis, Å."""
    n = grid_points(box_size, resolution)
    return (np.arange(n) - (n - 1) / 2.0) * resolution


def _occupancy(d2, radii):
    """KDEEP density 1 - exp(-(r_vdw/r)^12) from squared distances (..., Npts) and radii (..., 1)."""
    x = radii * radii / jnp.maximum(d2, 1e-12)  # (r_vdw/r)^2; an atom exactly on a point gives inf -> 1
    x3 = x * x * x
    return -jnp.expm1(-(x3 * x3))


def _default_block() -> int:
    # One atom per scan step is fastest on CPU (the (C, G^3) running max vectorises); accelerators prefer blocks.
    return 1 if jax.default_backend() == 'cpu' else ATOM_BLOCK


def voxelize(coords, channels, radii, mask, center, rotation=None, box_size: float = BOX_SIZE,
             resolution: float = RESOLUTION, atom_block: Optional[int] = None, cutoff: Optional[float] = None):
    """KDEEP density grid of a set of atoms (pure JAX; jit/vmap-able with the keyword options static).

    Args:
      coords: (A, 3) atom positions, Å.
      channels: (A, C) channel membership (bool or 0/1 float; a float weight scales that atom's density).
      radii: (A,) van der Waals radii, Å.
      mask: (A,) bool, False for padding atoms (they contribute nothing).
      center: (3,) grid centre, Å (the ligand centroid for complexes).
      rotation: optional (3, 3) rotation matrix; atoms are rotated about ``center`` before gridding
        (x -> center + R (x - center)).
      box_size, resolution: cube edge and point spacing, Å (Python floats).
      atom_block: atoms per scan step of the exact (dense) method; memory is about atom_block x C x G^3
        floats. Default: 1 on CPU, 64 on accelerators.
      cutoff: None for the exact density over all grid points (default). A float (Å) switches to a local
        window per atom covering at least ``cutoff`` Å along each axis: about 4x faster on CPU for pockets, and
        the neglected density is below 1 - exp(-(r_vdw/cutoff)^12) (6e-5 for r_vdw 2 Å at 4.5 Å).

    Returns:
      (G, G, G, C) float32 grid, the per-channel maximum over atoms of the density.
    """
    axis = jnp.asarray(grid_axis(box_size, resolution), jnp.float32)
    rel = jnp.asarray(coords, jnp.float32) - jnp.asarray(center, jnp.float32)
    if rotation is not None:
        rel = rel @ jnp.asarray(rotation, jnp.float32).T
    w = jnp.asarray(channels, jnp.float32) * jnp.asarray(mask, jnp.float32)[:, None]
    rad = jnp.asarray(radii, jnp.float32)
    if cutoff is not None:
        return _voxelize_local(rel, w, rad, axis, resolution, cutoff)
    return _voxelize_dense(rel, w, rad, axis, atom_block or _default_block())


def atom_blocks(rel, w, rad, atom_block: int):
    """Atoms padded to whole blocks for a ``lax.scan`` over blocks: (rel (B, b, 3), radii (B, b), weights (B, b, C)).

    Padding atoms have zero channel weights (and radius 1, so densities stay finite): they add nothing.
    """
    n_atoms, n_ch = w.shape
    nblk = max(1, -(-n_atoms // atom_block))
    pad = nblk * atom_block - n_atoms
    if pad:
        rel = jnp.concatenate([rel, jnp.zeros((pad, 3), rel.dtype)])
        w = jnp.concatenate([w, jnp.zeros((pad, n_ch), w.dtype)])
        rad = jnp.concatenate([rad, jnp.ones((pad,), rad.dtype)])
    return rel.reshape(nblk, atom_block, 3), rad.reshape(nblk, atom_block), w.reshape(nblk, atom_block, n_ch)


def _voxelize_dense(rel, w, rad, axis, atom_block):
    n = axis.shape[0]
    pts = jnp.stack(jnp.meshgrid(axis, axis, axis, indexing='ij'), axis=-1).reshape(-1, 3)  # (G^3, 3)
    n_ch = w.shape[1]
    blocks = atom_blocks(rel, w, rad, atom_block)

    def step(acc, blk):
        r, rv, wb = blk
        d2 = jnp.sum((pts[None, :, :] - r[:, None, :]) ** 2, axis=-1)   # (block, G^3)
        dens = _occupancy(d2, rv[:, None])
        # Running max over atoms per channel, laid out (C, G^3) so the inner loop runs over grid points.
        return jnp.maximum(acc, jnp.max(wb.T[:, :, None] * dens[None, :, :], axis=1)), None

    acc, _ = jax.lax.scan(step, jnp.zeros((n_ch, pts.shape[0]), jnp.float32), blocks)
    return acc.T.reshape(n, n, n, n_ch)


def _voxelize_local(rel, w, rad, axis, resolution, cutoff):
    n = axis.shape[0]
    n_ch = w.shape[1]
    h = max(0, int(math.ceil(cutoff / resolution - 0.5)))  # window half-width in points
    win = 2 * h + 1
    off = jnp.arange(win)
    # The accumulator is padded by one window on each side so clamped windows never wrap onto the box.
    big = n + 2 * win

    def step(acc, atom):
        r, rv, wa = atom
        i0 = jnp.round((r - axis[0]) / resolution).astype(jnp.int32) - h
        i0 = jnp.clip(i0, -win, n)
        p = axis[0] + (i0[:, None] + off[None, :]).astype(jnp.float32) * resolution   # (3, win) point coords
        dx = (p - r[:, None]) ** 2
        d2 = dx[0][:, None, None] + dx[1][None, :, None] + dx[2][None, None, :]
        dens = _occupancy(d2, rv)
        start = (i0[0] + win, i0[1] + win, i0[2] + win, jnp.zeros((), i0.dtype))
        cur = jax.lax.dynamic_slice(acc, start, (win, win, win, n_ch))
        return jax.lax.dynamic_update_slice(acc, jnp.maximum(cur, dens[..., None] * wa), start), None

    acc, _ = jax.lax.scan(step, jnp.zeros((big, big, big, n_ch), jnp.float32), (rel, rad, w))
    return acc[win:win + n, win:win + n, win:win + n]


def voxelize_numpy(coords, channels, radii, mask, center, rotation=None, box_size: float = BOX_SIZE,
                   resolution: float = RESOLUTION) -> np.ndarray:
    """Plain NumPy reference of :func:`voxelize` (float64 internally, float32 out); used by tests/benchmarks."""
    axis = grid_axis(box_size, resolution)
    n = axis.size
    pts = np.stack(np.meshgrid(axis, axis, axis, indexing='ij'), axis=-1).reshape(-1, 3)
    mask = np.asarray(mask, bool)
    rel = np.asarray(coords, np.float64)[mask] - np.asarray(center, np.float64)
    if rotation is not None:
        rel = rel @ np.asarray(rotation, np.float64).T
    w = np.asarray(channels, np.float64)[mask]
    rad = np.asarray(radii, np.float64)[mask]
    out = np.zeros((pts.shape[0], w.shape[1]))
    for i in range(rel.shape[0]):
        d2 = np.maximum(np.sum((pts - rel[i]) ** 2, axis=1), 1e-12)
        dens = -np.expm1(-(rad[i] ** 2 / d2) ** 6)
        np.maximum(out, dens[:, None] * w[i][None, :], out=out)
    return out.reshape(n, n, n, -1).astype(np.float32)


def random_rotation(key, dtype=jnp.float32):
    """(3, 3) rotation matrix uniform on SO(3) (normalised Gaussian quaternion)."""
    q = jax.random.normal(key, (4,), dtype)
    w, x, y, z = q / jnp.linalg.norm(q)
    return jnp.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ], dtype)


def random_translation(key, max_shift: float = MAX_TRANSLATION, dtype=jnp.float32):
    """(3,) shift uniform in [-max_shift, max_shift] per axis, Å."""
    return jax.random.uniform(key, (3,), dtype, -max_shift, max_shift)


def bucket_size(n_atoms: int, bucket: int = ATOM_BUCKET) -> int:
    """Padded atom count: the next multiple of ``bucket`` (at least one bucket)."""
    return max(1, -(-n_atoms // bucket)) * bucket


def complex_arrays(cpx: Complex, n_pad: Optional[int] = None, bucket: int = ATOM_BUCKET):
    """Protein and ligand atoms as one padded set for :func:`voxelize` (host numpy).

    Channels are block-diagonal: protein atoms fill columns [0, C), ligand atoms [C, 2C).
    Returns coords (A, 3) Å, channels (A, 2C) float32, radii (A,) Å, mask (A,) bool, centroid (3,) Å,
    with A = ``n_pad`` or the bucketed atom count.
    """
    p, l = len(cpx.protein_coords), len(cpx.ligand_coords)
    c = cpx.protein_channels.shape[1] if p else cpx.ligand_channels.shape[1]
    n = p + l
    a = bucket_size(n, bucket) if n_pad is None else n_pad
    if a < n:
        raise ValueError(f"{cpx.name}: {n} atoms do not fit in n_pad={a}")
    centroid = np.asarray(cpx.ligand_coords, np.float64).mean(axis=0)
    coords = np.tile(centroid.astype(np.float32), (a, 1))
    coords[:p] = cpx.protein_coords
    coords[p:n] = cpx.ligand_coords
    ch = np.zeros((a, 2 * c), np.float32)
    ch[:p, :c] = np.asarray(cpx.protein_channels).reshape(p, c)
    ch[p:n, c:] = np.asarray(cpx.ligand_channels).reshape(l, c)
    radii = np.ones(a, np.float32)
    radii[:p] = cpx.protein_radii
    radii[p:n] = cpx.ligand_radii
    mask = np.zeros(a, bool)
    mask[:n] = True
    return coords, ch, radii, mask, centroid.astype(np.float32)


def _grid_raw(coords, channels, radii, mask, centroid, rotation, translation, box_size, resolution, cutoff):
    # Rotate about the ligand centroid, then shift the atoms by -translation (the box moves by +translation).
    return voxelize(coords, channels, radii, mask, centroid + rotation.T @ translation, rotation,
                    box_size, resolution, cutoff=cutoff)


_grid_one = jax.jit(_grid_raw, static_argnums=(7, 8, 9))


@functools.partial(jax.jit, static_argnums=(7, 8, 9))
def _grid_batch(coords, channels, radii, mask, centroid, rotation, translation, box_size, resolution, cutoff):
    args = (coords, channels, radii, mask, centroid, rotation, translation)
    if cutoff is None:
        return jax.vmap(lambda *a: _grid_raw(*a, box_size, resolution, None))(*args)
    # Local windows use dynamic slices; vmapped they become scatters, so run the samples one after another.
    return jax.lax.map(lambda a: _grid_raw(*a, box_size, resolution, cutoff), args)


def complex_grid(cpx: Complex, rotation=None, translation=None, box_size: float = BOX_SIZE,
                 resolution: float = RESOLUTION, bucket: int = ATOM_BUCKET, cutoff: Optional[float] = None):
    """(G, G, G, 2C) float32 grid of one complex, centred on the ligand centroid (+ ``translation``, Å).

    ``rotation`` (3, 3) turns the atoms about the ligand centroid before gridding; ``translation`` (3,) moves
    the box centre, in the rotated frame. Atoms are padded to a multiple of ``bucket`` so jit compiles once per
    bucket. Default box: 24 Å at 1 Å, so (24, 24, 24, 16) for KDEEP channels. ``cutoff``: see :func:`voxelize`.
    """
    coords, ch, radii, mask, centroid = complex_arrays(cpx, bucket=bucket)
    rot = jnp.eye(3, dtype=jnp.float32) if rotation is None else jnp.asarray(rotation, jnp.float32)
    t = jnp.zeros(3, jnp.float32) if translation is None else jnp.asarray(translation, jnp.float32)
    return _grid_one(coords, ch, radii, mask, centroid, rot, t, float(box_size), float(resolution),
                     None if cutoff is None else float(cutoff))


def augmentations(key, batch: int, augment: bool = True, max_shift: float = MAX_TRANSLATION):
    """Per-sample rotations (B, 3, 3) and translations (B, 3) Å; identity/zero when ``augment`` is False."""
    if not augment:
        return jnp.tile(jnp.eye(3, dtype=jnp.float32), (batch, 1, 1)), jnp.zeros((batch, 3), jnp.float32)
    kr, kt = jax.random.split(key)
    rots = jax.vmap(random_rotation)(jax.random.split(kr, batch))
    shifts = jax.vmap(lambda k: random_translation(k, max_shift))(jax.random.split(kt, batch))
    return rots, shifts


def batch_grids(complexes: Sequence[Complex], key=None, augment: bool = False, box_size: float = BOX_SIZE,
                resolution: float = RESOLUTION, bucket: int = ATOM_BUCKET,
                max_shift: float = MAX_TRANSLATION, cutoff: Optional[float] = None):
    """(B, G, G, G, 2C) float32 grids of a batch; random rotation + translation per sample if ``augment``.

    All complexes are padded to the largest bucketed atom count of the batch (one compile per bucket and
    batch size). ``key`` (jax PRNG key) is required when ``augment`` is True. ``cutoff``: see :func:`voxelize`.
    """
    if augment and key is None:
        raise ValueError("batch_grids(augment=True) needs a PRNG key")
    n_pad = max(bucket_size(len(c.protein_coords) + len(c.ligand_coords), bucket) for c in complexes)
    arrs = [complex_arrays(c, n_pad=n_pad) for c in complexes]
    coords, ch, radii, mask, centroid = (np.stack(x) for x in zip(*arrs))
    rots, shifts = augmentations(key if key is not None else jax.random.PRNGKey(0), len(complexes), augment,
                                 max_shift)
    return _grid_batch(coords, ch, radii, mask, centroid, rots, shifts, float(box_size), float(resolution),
                       None if cutoff is None else float(cutoff))


def crop_radius(box_size: float = BOX_SIZE, max_shift: float = MAX_TRANSLATION, margin: float = 3.0) -> float:
    """Radius (Å) around the ligand centroid beyond which atoms cannot reach any rotated/shifted box point.

    Half the cube diagonal + the largest shift (sqrt(3) x the per-axis bound) + a margin: an atom farther away
    is more than ``margin`` from every point it could meet, so it adds at most 1 - exp(-(r_vdw/margin)^12)
    (2.2e-3 for sulfur, r_vdw 1.8 Å, at the default 3 Å). Default: 20.8 + 3.5 + 3 = 27.2 Å.
    """
    return 0.5 * box_size * math.sqrt(3.0) + math.sqrt(3.0) * max_shift + margin
