"""SchNet (Schütt et al., J. Chem. Phys. 148, 241722 (2018)).

Atom embeddings are refined by interaction blocks whose continuous-filter convolutions weight each
neighbour's features by a filter generated from its distance: a Gaussian radial basis -> dense ->
shifted softplus -> dense, times a cosine cutoff so messages (and forces) switch off smoothly at the cutoff.
An atom-wise MLP maps the final features to one dimensionless number per atom.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from jmlsim.potentials.graph import Graph, aggregate, cosine_cutoff, edge_lengths

Array = jnp.ndarray


def shifted_softplus(x: Array) -> Array:
    """ssp(x) = softplus(x) - log 2 (zero at the origin)."""
    # a Python float is weakly typed: float32 features stay float32 under jax_enable_x64
    return nn.softplus(x) - math.log(2.0)


def gaussian_rbf(r: Array, cutoff: float, n_rbf: int) -> Array:
    """(E,) nm -> (E, n_rbf) Gaussians exp(-(r - mu_k)^2 / (2 w^2)), centres evenly on [0, cutoff], w = spacing."""
    centers = jnp.linspace(0.0, cutoff, n_rbf, dtype=r.dtype)
    width = cutoff / (n_rbf - 1)
    return jnp.exp(-0.5 * ((r[:, None] - centers) / width) ** 2)


class CFConv(nn.Module):
    """Continuous-filter convolution: x_i' = sum_j x_j * W(r_ij) with W from the RBF expansion."""

    n_filters: int
    cutoff: float

    @nn.compact
    def __call__(self, x: Array, rbf: Array, r: Array, graph: Graph) -> Array:
        w = nn.Dense(self.n_filters, name="filter_1")(rbf)
        w = nn.Dense(self.n_filters, name="filter_2")(shifted_softplus(w))
        w = w * cosine_cutoff(r, self.cutoff)[:, None]
        return aggregate(x[graph.senders] * w, graph)


class SchNetInteraction(nn.Module):
    """Interaction block: atom-wise dense -> cfconv -> dense -> ssp -> dense, added to the features."""

    n_features: int
    n_filters: int
    cutoff: float

    @nn.compact
    def __call__(self, x: Array, rbf: Array, r: Array, graph: Graph) -> Array:
        y = nn.Dense(self.n_filters, use_bias=False, name="in2f")(x)
        y = CFConv(self.n_filters, self.cutoff, name="cfconv")(y, rbf, r, graph)
        y = nn.Dense(self.n_features, name="f2out")(y)
        y = nn.Dense(self.n_features, name="dense")(shifted_softplus(y))
        return x + y


class SchNet(nn.Module):
    """SchNet per-atom model.

    Fields: n_species; cutoff (nm); n_features (atom feature width); n_filters (filter width, 0 = n_features);
    n_interactions; n_rbf (Gaussians spanning [0, cutoff], width = their spacing, 0.026 nm by default).
    __call__(graph) -> (N,) dimensionless per-atom outputs, 0 on padding atoms.
    """

    n_species: int
    cutoff: float = 0.5
    n_features: int = 64
    n_filters: int = 0
    n_interactions: int = 3
    n_rbf: int = 20

    @nn.compact
    def forward(self, graph: Graph) -> tuple[Array, Array]:
        """Return (atom features (N, n_features), (N,) per-atom outputs) in one pass."""
        dtype = graph.edge_vectors.dtype
        r, _ = edge_lengths(graph)
        rbf = gaussian_rbf(r, self.cutoff, self.n_rbf)
        x = nn.Embed(self.n_species, self.n_features, name="embedding")(graph.species).astype(dtype)
        for t in range(self.n_interactions):
            x = SchNetInteraction(self.n_features, self.n_filters or self.n_features, self.cutoff,
                                  name=f"interaction_{t}")(x, rbf, r, graph)
        y = nn.Dense(self.n_features // 2, name="out_1")(x)
        y = nn.Dense(1, name="out_2")(shifted_softplus(y))[:, 0]
        return x, jnp.where(graph.atom_mask, y, 0.0)

    def features(self, graph: Graph) -> Array:
        """(N, n_features) atom features after the interaction blocks (invariant)."""
        return self.forward(graph)[0]

    def __call__(self, graph: Graph) -> Array:
        """(N,) dimensionless per-atom outputs, 0 on padding atoms."""
        return self.forward(graph)[1]
