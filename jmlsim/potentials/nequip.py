"""NequIP-style E(3)-equivariant message passing (Batzner et al., Nat. Commun. 13, 2453 (2022)) on e3nn-jax.

Node features are irreps arrays (default 16x0e + 8x1o + 8x2e). Each interaction layer:

1. a linear map of the node features h_j,
2. messages [h_j, h_j (x) Y(r_ij)] — h_j itself plus its tensor product with the spherical harmonics
   (l = 0..lmax) of the edge direction, filtered to the irreps kept, each irrep scaled by a weight from a
   radial MLP of a Bessel basis times a polynomial envelope (so messages vanish smoothly at the cutoff),
3. a sum over neighbours (``jax.ops.segment_sum``) divided by ``avg_num_neighbors``,
4. a linear map plus a species-indexed self-connection, a gated nonlinearity (scalars through SiLU/tanh,
   l > 0 irreps multiplied by sigmoid-activated extra scalars) and a residual connection.

The output is a per-atom scalar from two linear maps of the last layer's scalars. Spherical harmonics of the
edge vector carry parity (-1)^l, and only irreps listed in ``irreps_hidden`` are kept, so the model is
equivariant under rotations and inversion.
"""

from __future__ import annotations

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp

from jmlsim.potentials.graph import Graph, edge_lengths, polynomial_envelope

Array = jnp.ndarray


def _normal_f32(key, shape, dtype=None):
    # Parameters stay float32 whatever the dtype of the first call, like flax.linen.Dense's, so one set of
    # parameters serves float32 and float64 evaluation (the computation follows the inputs' dtype).
    return jax.random.normal(key, shape, jnp.float32)


def _linear(irreps_out, name: str, **kw) -> e3nn.flax.Linear:
    """e3nn Linear with unit-normal float32 weights ('element' normalisation: the scale sits in the forward)."""
    return e3nn.flax.Linear(irreps_out, gradient_normalization="element", parameter_initializer=lambda: _normal_f32,
                            name=name, **kw)


def _segment_sum(x: e3nn.IrrepsArray, graph: Graph) -> e3nn.IrrepsArray:
    mask = graph.edge_mask[:, None]
    summed = jax.ops.segment_sum(jnp.where(mask, x.array, 0.0), graph.receivers,
                                 num_segments=graph.species.shape[0])
    return e3nn.IrrepsArray(x.irreps, summed)


class NequIPLayer(nn.Module):
    """One interaction layer: (N, irreps) features -> (N, irreps_hidden) features."""

    irreps_hidden: str
    n_species: int
    radial_hidden: tuple
    avg_num_neighbors: float

    @nn.compact
    def __call__(self, h: e3nn.IrrepsArray, sh: e3nn.IrrepsArray, radial: Array, graph: Graph):
        irreps = e3nn.Irreps(self.irreps_hidden)
        h_lin = _linear(h.irreps, "linear_in")(h)
        h_j = h_lin[graph.senders]
        keep = [mul_ir.ir for mul_ir in irreps]
        messages = e3nn.concatenate([h_j, e3nn.tensor_product(h_j, sh, filter_ir_out=keep)]).regroup()

        w = radial
        for t, width in enumerate(self.radial_hidden):
            w = nn.silu(nn.Dense(width, name=f"radial_{t}")(w))
        w = nn.Dense(messages.irreps.num_irreps, name=f"radial_{len(self.radial_hidden)}")(w)
        messages = messages * w
        agg = _segment_sum(messages, graph) / self.avg_num_neighbors

        # Gate input: the hidden irreps plus one extra scalar per non-scalar irrep (the gates).
        n_gates = sum(mul for mul, ir in irreps if ir.l > 0)
        scalars = e3nn.Irreps([(mul, ir) for mul, ir in irreps if ir.l == 0])
        vectors = e3nn.Irreps([(mul, ir) for mul, ir in irreps if ir.l > 0])
        gate_irreps = (scalars + e3nn.Irreps(f"{n_gates}x0e") + vectors).simplify() if n_gates else scalars
        x = _linear(gate_irreps, "linear_out")(agg)
        species = jnp.asarray(graph.species, jnp.int32)
        x = x + _linear(gate_irreps, "self_connection", num_indexed_weights=self.n_species,
                        force_irreps_out=True)(
            species, h)
        out = e3nn.gate(x, even_act=jax.nn.silu, odd_act=jnp.tanh, even_gate_act=jax.nn.sigmoid)
        if out.irreps == h.irreps:
            out = out + h
        return out


class NequIP(nn.Module):
    """NequIP-class per-atom model.

    Fields: n_species; cutoff (nm); irreps_hidden (node irreps, e3nn string); n_layers; lmax (spherical
    harmonics of edges); n_bessel (Bessel radial functions on [0, cutoff]); envelope_p (polynomial envelope
    order); radial_hidden (radial MLP widths); avg_num_neighbors (message-sum normalisation).
    ``__call__(graph)`` -> (N,) dimensionless per-atom outputs, 0 on padding atoms.
    ``features(graph)`` -> (N, irreps_hidden) ``e3nn.IrrepsArray`` after the last layer, equivariant:
    features(R x) = features(x).transform_by_matrix(R) for any orthogonal R.
    """

    n_species: int
    cutoff: float = 0.5
    irreps_hidden: str = "16x0e+8x1o+8x2e"
    n_layers: int = 3
    lmax: int = 2
    n_bessel: int = 8
    envelope_p: int = 6
    radial_hidden: tuple = (32, 32)
    avg_num_neighbors: float = 10.0

    @nn.compact
    def forward(self, graph: Graph):
        """Return (node features (N, irreps_hidden) IrrepsArray, (N,) per-atom outputs) in one pass."""
        dtype = graph.edge_vectors.dtype
        r, unit = edge_lengths(graph)
        sh = e3nn.spherical_harmonics(list(range(self.lmax + 1)), e3nn.IrrepsArray("1o", unit),
                                      normalize=False, normalization="component")
        env = polynomial_envelope(r, self.cutoff, self.envelope_p)
        radial = e3nn.bessel(r, self.n_bessel, x_max=self.cutoff) * (self.cutoff * env)[:, None]
        radial = jnp.where(graph.edge_mask[:, None], radial, 0.0)

        onehot = jax.nn.one_hot(graph.species, self.n_species, dtype=dtype)
        h = e3nn.IrrepsArray(f"{self.n_species}x0e", onehot)
        irreps = e3nn.Irreps(self.irreps_hidden)
        h = _linear(irreps.filter(keep=["0e"]), "embedding")(h)
        for t in range(self.n_layers):
            h = NequIPLayer(str(irreps), self.n_species, tuple(self.radial_hidden), float(self.avg_num_neighbors),
                            name=f"layer_{t}")(h, sh, radial, graph)
        y = _linear("16x0e", "readout_1")(h.filter(keep=["0e"]))
        y = _linear("1x0e", "readout_2")(e3nn.IrrepsArray(y.irreps, jax.nn.silu(y.array)))
        y = y.array[:, 0]
        return h, jnp.where(graph.atom_mask, y, 0.0)

    def features(self, graph: Graph) -> e3nn.IrrepsArray:
        """(N, irreps_hidden) node features after the last layer."""
        return self.forward(graph)[0]

    def __call__(self, graph: Graph) -> Array:
        """(N,) dimensionless per-atom outputs, 0 on padding atoms."""
        return self.forward(graph)[1]
