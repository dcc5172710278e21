"""PaiNN: polarizable atom interaction neural network (Schütt, Unke, Gastegger, ICML 2021).

Each atom carries scalar features s (N, F) and vector features v (N, 3, F). A message block passes
rotation-invariant scalars and rotation-equivariant vectors along edges (filters from a sine radial basis
times a cosine cutoff); an update block mixes the vector channels linearly and couples scalars and vectors
through norms and inner products. Vectors only ever get multiplied by scalars, summed, or dotted, so v
rotates with the molecule and s (and the energy) stay invariant.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jmlsim.potentials.graph import Graph, aggregate, cosine_cutoff, edge_lengths

Array = jnp.ndarray

_NORM_EPS = 1e-8  # inside the vector-norm sqrt: keeps the gradient finite for zero vectors


_ANGSTROM = 0.1  # nm


def sine_rbf(r: Array, cutoff: float, n_rbf: int) -> Array:
    """(E,) nm -> (E, n_rbf) sin(n pi r / rc) / (r / 1 A), n = 1..n_rbf (r is a safe length, never 0).

    The 1/r is taken with r in Angstrom so the basis has the magnitudes of the published model (in nm it
    would be ten times larger and the random-initialised network would blow up across layers).
    """
    n = jnp.arange(1, n_rbf + 1, dtype=r.dtype)
    return jnp.sin(n * jnp.pi * r[:, None] / cutoff) / (r[:, None] / _ANGSTROM)


class PaiNNMessage(nn.Module):
    """Message block: residual updates (ds (N, F), dv (N, 3, F)) from neighbours."""

    n_features: int
    cutoff: float

    @nn.compact
    def __call__(self, s, v, rbf, r, unit, graph: Graph):
        f = self.n_features
        phi = nn.Dense(3 * f, name="phi_2")(nn.silu(nn.Dense(f, name="phi_1")(s)))
        w = nn.Dense(3 * f, name="filter")(rbf) * cosine_cutoff(r, self.cutoff)[:, None]
        x = phi[graph.senders] * w
        x_s, x_vv, x_vs = x[:, :f], x[:, f:2 * f], x[:, 2 * f:]
        ds = aggregate(x_s, graph)
        dv = aggregate(v[graph.senders] * x_vv[:, None, :] + unit[:, :, None] * x_vs[:, None, :], graph)
        return s + ds, v + dv


class PaiNNUpdate(nn.Module):
    """Update block: per-atom mixing of scalar and vector channels."""

    n_features: int

    @nn.compact
    def __call__(self, s, v):
        f = self.n_features
        uv = nn.Dense(f, use_bias=False, name="U")(v)
        vv = nn.Dense(f, use_bias=False, name="V")(v)
        vv_norm = jnp.sqrt(jnp.sum(vv * vv, axis=1) + _NORM_EPS)
        a = nn.Dense(3 * f, name="mix_2")(nn.silu(nn.Dense(f, name="mix_1")(jnp.concatenate([s, vv_norm], -1))))
        a_vv, a_sv, a_ss = a[:, :f], a[:, f:2 * f], a[:, 2 * f:]
        dv = a_vv[:, None, :] * uv
        ds = a_sv * jnp.sum(uv * vv, axis=1) + a_ss
        return s + ds, v + dv


class PaiNN(nn.Module):
    """PaiNN per-atom model.

    Fields: n_species; cutoff (nm); n_features (F, scalar and vector channels); n_layers (message+update
    pairs); n_rbf (sine radial functions up to the cutoff).
    ``__call__(graph)`` -> (N,) dimensionless per-atom outputs, 0 on padding atoms.
    ``features(graph)`` -> (s (N, F) invariant, v (N, 3, F) equivariant: v(R x) = R v(x)).
    """

    n_species: int
    cutoff: float = 0.5
    n_features: int = 64
    n_layers: int = 3
    n_rbf: int = 20

    @nn.compact
    def forward(self, graph: Graph):
        """Return ((s (N, F), v (N, 3, F)), (N,) per-atom outputs) in one pass."""
        dtype = graph.edge_vectors.dtype
        n, f = graph.species.shape[0], self.n_features
        r, unit = edge_lengths(graph)
        rbf = sine_rbf(r, self.cutoff, self.n_rbf)
        s = nn.Embed(self.n_species, f, name="embedding")(graph.species).astype(dtype)
        v = jnp.zeros((n, 3, f), dtype)
        for t in range(self.n_layers):
            s, v = PaiNNMessage(f, self.cutoff, name=f"message_{t}")(s, v, rbf, r, unit, graph)
            s, v = PaiNNUpdate(f, name=f"update_{t}")(s, v)
        y = nn.Dense(f // 2, name="out_1")(s)
        y = nn.Dense(1, name="out_2")(nn.silu(y))[:, 0]
        return (s, v), jnp.where(graph.atom_mask, y, 0.0)

    def features(self, graph: Graph):
        """(s (N, F), v (N, 3, F)) after the last update block."""
        return self.forward(graph)[0]

    def __call__(self, graph: Graph) -> Array:
        """(N,) dimensionless per-atom outputs, 0 on padding atoms."""
        return self.forward(graph)[1]
