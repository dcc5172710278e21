"""Neural-network potential models (ANI, SchNet, PaiNN, NequIP) on real rMD17 ethanol geometries.

Random-initialised tiny models; E = sum of per-atom outputs. Checks: forces = -grad E against central finite
differences, invariance (and equivariance of PaiNN/NequIP features) under rotation, reflection, translation
and permutation of like atoms, padding with masked atoms (inside a jit + vmap batch), continuity at the
cutoff, periodic images (dense graph with a triclinic box, shifted molecules, neighbor-list graph), and the
config round trip. Each architecture compiles four functions, shared by the tests through a cache.
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlsim import neighbors, space
from jmlsim.errors import InputError
from jmlsim.potentials.architectures import ARCHITECTURES, build_model, model_config, model_from_config
from jmlsim.potentials.graph import dense_graph, neighbor_graph

HERE = os.path.dirname(os.path.abspath(__file__))
ARCHS = ["ani", "schnet", "painn", "nequip"]
# The batch and periodic checks compile two more functions per architecture; NequIP's (and ANI's periodic one)
# take longest to compile, so those cases run with the slow set (the same code paths are covered by the others).
_SLOW_NEQUIP = [pytest.param("nequip", marks=pytest.mark.slow) if a == "nequip" else a for a in ARCHS]
_SLOW_ANI_NEQUIP = [pytest.param(a, marks=pytest.mark.slow) if a in ("ani", "nequip") else a for a in ARCHS]
TINY = {
    "ani": dict(hidden=(16,)),
    "schnet": dict(n_features=16, n_interactions=2, n_rbf=12),
    "painn": dict(n_features=16, n_layers=2, n_rbf=12),
    "nequip": dict(irreps_hidden="4x0e+2x1o+2x2e", n_layers=2, radial_hidden=(8,), n_bessel=6),
}


def _rmd17(name):
    for folder in (os.path.join(HERE, "data", "rmd17"), os.path.join(HERE, "..", "..", "shared", "data", "rmd17"),
                   "/work/shared/data/rmd17"):
        path = os.path.join(folder, f"rmd17_{name}_train_01.npz")
        if os.path.exists(path):
            data = np.load(path)
            return np.asarray(data["nuclear_charges"]), np.asarray(data["coords"][:3], np.float64) * 0.1  # A -> nm
    pytest.skip(f"rMD17 {name} not found")


def _species(z):
    elements = sorted(set(int(a) for a in z))
    return np.array([elements.index(int(a)) for a in z], np.int32), len(elements)


def _rotation(seed, proper=True):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q if proper else -q


class Setup:
    """One architecture: tiny model, random parameters, ethanol frames and the compiled functions."""

    def __init__(self, arch):
        z, coords = _rmd17("ethanol")
        self.species, n_species = _species(z)
        self.frames = coords                      # (3, 9, 3) nm
        self.model = build_model(arch, n_species, **TINY[arch])
        self.cutoff = self.model.cutoff
        graph = dense_graph(jnp.asarray(coords[0]), self.species, None, self.cutoff)
        # An rbg key keeps the init compile short (threefry is slow to compile on CPU).
        self.params = jax.jit(self.model.init)(jax.random.key(0, impl="rbg"), graph)
        model, params, cutoff = self.model, self.params, self.cutoff

        def energy_features(pos, species, mask, box=None):
            feats, out = model.apply(params, dense_graph(pos, species, mask, cutoff, box), method="forward")
            return jnp.sum(out), feats

        @jax.jit
        def ef(pos):
            (e, feats), g = jax.value_and_grad(energy_features, has_aux=True)(pos, self.species, None)
            return e, -g, feats
        self.ef = ef

        def padded_energy(p, pos, species, mask):
            feats, out = model.apply(p, dense_graph(pos, species, mask, cutoff), method="forward")
            return jnp.sum(out)

        @jax.jit
        def batch(pos, species, mask):
            e, g = jax.vmap(jax.value_and_grad(padded_energy, argnums=1), (None, 0, 0, 0))(params, pos, species, mask)
            # Parameter gradients of the batch loss must be finite too (training differentiates these).
            pg = jax.grad(lambda p: jnp.sum(jax.vmap(padded_energy, (None, 0, 0, 0))(p, pos, species, mask)))(params)
            return e, -g, pg
        self.batch = batch

        def periodic_energy(pos, species, box, nbrs, use_nbrs):
            if use_nbrs:
                graph = neighbor_graph(pos, species, None, nbrs, box, cutoff)
            else:
                graph = dense_graph(pos, species, None, cutoff, box)
            return jnp.sum(model.apply(params, graph))

        @jax.jit
        def periodic(pos, species, box, nbrs):
            e_d, g_d = jax.value_and_grad(periodic_energy)(pos, species, box, nbrs, False)
            e_n, g_n = jax.value_and_grad(periodic_energy)(pos, species, box, nbrs, True)
            return e_d, -g_d, e_n, -g_n
        self.periodic = periodic


@functools.lru_cache(maxsize=None)
def setup(arch) -> Setup:
    return Setup(arch)


def _rms(f):
    return float(np.sqrt(np.mean(np.asarray(f) ** 2)))


@pytest.mark.parametrize("arch", ARCHS)
def test_forces_match_finite_differences(arch):
    s = setup(arch)
    x = s.frames[0]
    e, f, _ = s.ef(jnp.asarray(x))
    f = np.asarray(f)
    assert np.isfinite(float(e)) and np.all(np.isfinite(f)) and _rms(f) > 1e-3
    rng = np.random.default_rng(1)
    h = 1e-5  # nm
    directions = [d / np.linalg.norm(d) for d in rng.normal(size=(3,) + x.shape)]
    for atom, axis in ((0, 0), (2, 1), (5, 2)):  # a C, the O, an H
        d = np.zeros_like(x)
        d[atom, axis] = 1.0
        directions.append(d)
    worst = 0.0
    for d in directions:
        fd = (float(s.ef(jnp.asarray(x + h * d))[0]) - float(s.ef(jnp.asarray(x - h * d))[0])) / (2 * h)
        worst = max(worst, abs(fd + np.sum(f * d)) / np.linalg.norm(f))
    assert worst < 1e-6, f"{arch}: finite-difference error {worst:.2e} relative to |F|"


@pytest.mark.parametrize("arch", ARCHS)
def test_invariance_and_equivariance(arch):
    s = setup(arch)
    x = s.frames[0]
    e0, f0, feats0 = s.ef(jnp.asarray(x))
    f0 = np.asarray(f0)
    centre = x.mean(0)
    for proper in (True, False):
        rot = _rotation(7, proper)
        y = (x - centre) @ rot.T + centre + np.array([0.31, -1.7, 2.2])
        e1, f1, feats1 = s.ef(jnp.asarray(y))
        assert abs(float(e1) - float(e0)) < 1e-10 * max(1.0, abs(float(e0)))
        np.testing.assert_allclose(np.asarray(f1), f0 @ rot.T, atol=1e-10 * max(1.0, np.abs(f0).max()))
        if arch == "painn":
            (s0, v0), (s1, v1) = feats0, feats1
            np.testing.assert_allclose(np.asarray(s1), np.asarray(s0), atol=1e-10)
            np.testing.assert_allclose(np.asarray(v1), np.einsum("ij,njf->nif", rot, np.asarray(v0)), atol=1e-10)
            assert np.abs(np.asarray(v0)).max() > 1e-3  # the vector channels carry something
        elif arch == "nequip":
            expected = feats0.transform_by_matrix(jnp.asarray(rot))
            assert feats1.irreps == feats0.irreps
            np.testing.assert_allclose(np.asarray(feats1.array), np.asarray(expected.array), atol=1e-10)
            for l in (1, 2):
                part = feats0.filter(keep=[ir for _, ir in feats0.irreps if ir.l == l])
                assert np.abs(np.asarray(part.array)).max() > 1e-3  # l=1 and l=2 channels are populated
        else:
            np.testing.assert_allclose(np.asarray(feats1), np.asarray(feats0), atol=1e-10)
    # Permutation of like atoms: ethanol is C C O H H H H H H; shuffle the carbons and the hydrogens.
    perm = np.arange(len(x))
    for element in np.unique(s.species):
        where = np.flatnonzero(s.species == element)
        perm[where] = np.random.default_rng(int(element) + 3).permutation(where)
    assert np.all(s.species[perm] == s.species) and np.any(perm != np.arange(len(x)))
    e2, f2, _ = s.ef(jnp.asarray(x[perm]))
    assert abs(float(e2) - float(e0)) < 1e-10 * max(1.0, abs(float(e0)))
    np.testing.assert_allclose(np.asarray(f2), f0[perm], atol=1e-10 * max(1.0, np.abs(f0).max()))


@pytest.mark.parametrize("arch", _SLOW_NEQUIP)
def test_padding_in_a_jit_vmap_batch(arch):
    s = setup(arch)
    n, extra = len(s.species), 3
    rng = np.random.default_rng(5)
    pos = np.zeros((3, n + extra, 3))
    pos[:, :n] = s.frames
    pos[0, n:] = s.frames[0, :3] + rng.normal(scale=0.05, size=(3, 3))  # near real atoms, inside the cutoff
    pos[1, n:] = 0.0                                                     # all three at the same place
    pos[2, n:] = s.frames[2, 1]                                          # on top of a real atom
    species = np.zeros((3, n + extra), np.int32)
    species[:, :n] = s.species
    species[0, n:] = [1, 2, 0]
    mask = np.zeros((3, n + extra), bool)
    mask[:, :n] = True
    e, f, pgrad = s.batch(jnp.asarray(pos), jnp.asarray(species), jnp.asarray(mask))
    f = np.asarray(f)
    assert np.all(np.isfinite(f))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(pgrad))
    for i in range(3):
        e_ref, f_ref, _ = s.ef(jnp.asarray(s.frames[i]))
        assert abs(float(e[i]) - float(e_ref)) < 1e-10 * max(1.0, abs(float(e_ref)))
        np.testing.assert_allclose(f[i, :n], np.asarray(f_ref), atol=1e-10 * max(1.0, np.abs(f_ref).max()))
        assert np.all(f[i, n:] == 0.0)
    assert abs(float(e[0]) - float(e[1])) > 1e-6  # different frames really give different energies


@pytest.mark.parametrize("arch", ARCHS)
def test_energy_continuous_at_cutoff(arch):
    s = setup(arch)
    x = s.frames[0].copy()
    rc = s.cutoff
    moved = n_last = len(x) - 1                 # an H
    others = np.arange(n_last)
    k = others[np.argmax(x[others, 0])]          # the atom furthest along +x
    energies, forces = [], []
    for delta in (-1e-6, 1e-6):
        x[moved] = x[k] + np.array([rc + delta, 0.0, 0.0])
        dist = np.linalg.norm(x[others] - x[moved], axis=1)
        assert np.all(np.delete(dist, np.flatnonzero(others == k)) > rc + 1e-3)
        e, f, _ = s.ef(jnp.asarray(x))
        energies.append(float(e))
        forces.append(np.asarray(f))
    # Beyond the cutoff the atom is isolated; just inside, its interaction must have faded to (nearly) zero.
    assert abs(energies[0] - energies[1]) < 1e-8, f"{arch}: jump {energies[0] - energies[1]:.2e} at the cutoff"
    assert np.abs(forces[0] - forces[1]).max() < 1e-4
    # The same pair at 0.8 rc does interact (so the check above is not trivially true).
    x[moved] = x[k] + np.array([0.8 * rc, 0.0, 0.0])
    assert abs(float(s.ef(jnp.asarray(x))[0]) - energies[1]) > 1e-6


@pytest.mark.parametrize("arch", _SLOW_ANI_NEQUIP)
def test_periodic_dense_and_neighbor_graphs(arch):
    s = setup(arch)
    box = np.array([[1.2, 0.0, 0.0], [0.3, 1.2, 0.0], [-0.25, 0.3, 1.15]])
    skin = 0.01
    assert np.min(space.widths(box)) > 2 * (s.cutoff + skin)
    # Two ethanol molecules, the second near the box centre, every atom wrapped into the cell.
    raw = np.concatenate([s.frames[0] - s.frames[0].mean(0), s.frames[1] - s.frames[1].mean(0) + box.sum(0) / 2])
    frac = raw @ np.linalg.inv(box)
    wrapped = (frac - np.floor(frac)) @ box
    species = np.concatenate([s.species, s.species])
    n = len(species)
    # The molecules must interact through the boundary for the test to mean anything.
    g = dense_graph(jnp.asarray(wrapped), species, None, s.cutoff, jnp.asarray(box))
    raw_dr = wrapped[np.asarray(g.receivers)] - wrapped[np.asarray(g.senders)]
    crossing = np.asarray(g.edge_mask) & np.any(np.abs(np.asarray(g.edge_vectors) - raw_dr) > 1e-9, axis=1)
    assert crossing.sum() > 0
    _, nbrs = neighbors.plan(wrapped, box, s.cutoff, skin, capacity=n - 1)
    assert not bool(nbrs.overflow)
    box_j = jnp.asarray(box)
    e_d, f_d, e_n, f_n = s.periodic(jnp.asarray(wrapped), species, box_j, nbrs)
    e_d, f_d, e_n, f_n = float(e_d), np.asarray(f_d), float(e_n), np.asarray(f_n)
    scale = max(1.0, abs(e_d))
    assert abs(e_n - e_d) < 1e-10 * scale
    np.testing.assert_allclose(f_n, f_d, atol=1e-10 * max(1.0, np.abs(f_d).max()))
    # Unwrapped, and with the second molecule moved by a lattice vector b and one atom by -c: same system.
    shifted = raw.copy()
    shifted[n // 2:] += box[1]
    shifted[0] -= box[2]
    for pos in (raw, shifted):
        e, f, e2, f2 = s.periodic(jnp.asarray(pos), species, box_j, nbrs)
        assert abs(float(e) - e_d) < 1e-10 * scale and abs(float(e2) - e_d) < 1e-10 * scale
        np.testing.assert_allclose(np.asarray(f), f_d, atol=1e-10 * max(1.0, np.abs(f_d).max()))
    # Without the box the molecules do not see each other's images: a different energy.
    e_open = float(s.ef(jnp.asarray(s.frames[0]))[0]) + float(s.ef(jnp.asarray(s.frames[1]))[0])
    assert abs(e_open - e_d) > 1e-6


def test_config_round_trip_and_errors():
    for arch in ARCHS:
        model = build_model(arch, 4, **TINY[arch])
        config = json.loads(json.dumps(model_config(model)))
        assert config["name"] == arch and config["n_species"] == 4
        rebuilt = model_from_config(config)
        assert type(rebuilt) is ARCHITECTURES[arch] and model_config(rebuilt) == config
        for key, value in TINY[arch].items():
            assert getattr(rebuilt, key) == value
    with pytest.raises(InputError, match="known: ani, nequip, painn, schnet"):
        build_model("mace", 3)
    with pytest.raises(InputError, match="n_featurez"):
        build_model("schnet", 3, n_featurez=8)
    with pytest.raises(InputError):
        model_from_config({"n_species": 3})


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_aspirin_float32_timing(arch):
    """Default-size model: one jitted energy + forces evaluation on aspirin (21 atoms) in float32."""
    z, coords = _rmd17("aspirin")
    species, n_species = _species(z)
    model = build_model(arch, n_species)
    x = jnp.asarray(coords[0], jnp.float32)
    params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), dense_graph(x, species, None, model.cutoff))
    n_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    ef = jax.jit(jax.value_and_grad(lambda p: jnp.sum(model.apply(params, dense_graph(p, species, None,
                                                                                         model.cutoff)))))
    e, g = jax.block_until_ready(ef(x))
    assert e.dtype == jnp.float32 and g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))
    runs = []
    for _ in range(20):
        t = time.perf_counter()
        jax.block_until_ready(ef(x))
        runs.append(time.perf_counter() - t)
    print(f"\n{arch}: {n_params} parameters, energy+forces {1e3 * np.median(runs):.2f} ms (median of 20)")
