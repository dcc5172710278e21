"""Behler-Parrinello / ANI-style potential (Smith, Isayev, Roitberg, Chem. Sci. 8, 3192 (2017); ANI-1x).

Each atom is described by its atomic environment vector (AEV):

* radial, per neighbour species s and shift R_k:
  G^R = sum_j 0.25 exp(-eta_R (r_ij - R_k)^2) f_c(r_ij; R_c),
* angular (ANI's modified form), per unordered neighbour-species pair and (shift R_m, angle theta_n):
  G^A = 2^(1 - zeta) sum_{j<k} (1 + cos(theta_ijk - theta_n))^zeta exp(-eta_A ((r_ij + r_ik)/2 - R_m)^2)
        f_c(r_ij; R_a) f_c(r_ik; R_a),

with the cosine cutoff f_c. The AEV goes through one MLP per element (CELU, alpha 0.1); all elements'
MLPs run on every atom with stacked weights and the atom's own is picked, which keeps shapes static.

Defaults are ANI-1x's published hyper-parameters in nm (R_c 0.52, 16 radial shifts from 0.09 nm with
eta_R = 16 A^-2 = 1600 nm^-2; R_a 0.35, 4 shifts from 0.09 nm, eta_A 800 nm^-2, zeta 32, 8 angle sections)
with a small MLP. As in TorchANI, cos(theta) is scaled by 0.95 so that sin(theta) never reaches 0.

Triplets: the graph's edges are grouped per receiver into a static (N, K) slot table
(``graph.receiver_slots``: edges sorted by receiver with those inside the angular cutoff first); the angular
sum runs over the (N, K, K) slot pairs with k-slot > j-slot. K defaults to E // N (N - 1 for a dense graph,
the list capacity for a neighbor graph), which is exact; ``angular_slots`` may lower it for large periodic
systems, but then any atom with more than K neighbours inside R_a would lose angular terms.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.potentials.graph import Graph, cosine_cutoff, edge_lengths, receiver_slots

Array = jnp.ndarray

_COS_SCALE = 0.95


def _pair_table(n_species: int) -> np.ndarray:
    """(S, S) index of the unordered species pair (a, b) among S(S+1)/2 pairs."""
    table = np.zeros((n_species, n_species), np.int32)
    k = 0
    for a in range(n_species):
        for b in range(a, n_species):
            table[a, b] = table[b, a] = k
            k += 1
    return table


class ANI(nn.Module):
    """ANI per-atom model.

    Fields (lengths in nm, etas in nm^-2): n_species; cutoff (radial R_c); n_radial, radial_start, radial_eta;
    angular_cutoff (R_a <= cutoff), n_angular, angular_start, angular_eta, zeta, n_sections; hidden (MLP
    widths); angular_slots (K, 0 = E // N, see module docstring).
    ``aev(graph)`` -> (N, S*n_radial + S(S+1)/2*n_angular*n_sections) AEVs; ``__call__`` -> (N,) outputs.
    """

    n_species: int
    cutoff: float = 0.52
    n_radial: int = 16
    radial_start: float = 0.09
    radial_eta: float = 1600.0
    angular_cutoff: float = 0.35
    n_angular: int = 4
    angular_start: float = 0.09
    angular_eta: float = 800.0
    zeta: float = 32.0
    n_sections: int = 8
    hidden: tuple = (64, 32)
    angular_slots: int = 0

    def aev(self, graph: Graph) -> Array:
        """(N, n_aev) atomic environment vectors (dimensionless, invariant); zero rows for padding atoms."""
        n = graph.species.shape[0]
        s = self.n_species
        r, unit = edge_lengths(graph)
        dtype = r.dtype

        # Radial: per edge (E, n_radial), summed onto (receiver, sender species).
        shifts = self.radial_start + (self.cutoff - self.radial_start) / self.n_radial * np.arange(self.n_radial)
        g = 0.25 * jnp.exp(-self.radial_eta * (r[:, None] - jnp.asarray(shifts, dtype)) ** 2)
        g = g * cosine_cutoff(r, self.cutoff)[:, None]
        g = jnp.where(graph.edge_mask[:, None], g, 0.0)
        seg = graph.receivers * s + graph.species[graph.senders]
        radial = jax.ops.segment_sum(g, seg, num_segments=n * s).reshape(n, s * self.n_radial)

        # Angular: slot table of edges inside the angular cutoff, then all slot pairs j < k per receiver.
        ang_mask = graph.edge_mask & (r < self.angular_cutoff)
        k_slots = self.angular_slots or max(graph.receivers.shape[0] // max(n, 1), 1)
        edge_ids, slot_ok = receiver_slots(graph, k_slots, ang_mask)
        r_s = r[edge_ids]                              # (N, K)
        u_s = unit[edge_ids]                           # (N, K, 3)
        fc_s = jnp.where(slot_ok, cosine_cutoff(r_s, self.angular_cutoff), 0.0)
        spec_s = graph.species[graph.senders[edge_ids]]
        upper = np.triu(np.ones((k_slots, k_slots), bool), 1)
        pair_ok = slot_ok[:, :, None] & slot_ok[:, None, :] & upper          # (N, K, K)
        cos_t = _COS_SCALE * jnp.einsum("nac,nbc->nab", u_s, u_s)
        sin_t = jnp.sqrt(1.0 - cos_t * cos_t)                                # >= sqrt(1 - 0.95^2)
        sections = (np.arange(self.n_sections) + 0.5) * np.pi / self.n_sections
        cos_d = (cos_t[..., None] * jnp.asarray(np.cos(sections), dtype)
                 + sin_t[..., None] * jnp.asarray(np.sin(sections), dtype))  # cos(theta - theta_n)
        f_ang = 2.0 * ((1.0 + cos_d) / 2.0) ** self.zeta                       # = 2^(1-zeta) (1 + cos)^zeta
        ashifts = (self.angular_start
                   + (self.angular_cutoff - self.angular_start) / self.n_angular * np.arange(self.n_angular))
        r_mean = 0.5 * (r_s[:, :, None] + r_s[:, None, :])
        f_rad = jnp.exp(-self.angular_eta * (r_mean[..., None] - jnp.asarray(ashifts, dtype)) ** 2)
        weight = jnp.where(pair_ok, fc_s[:, :, None] * fc_s[:, None, :], 0.0)
        terms = (f_rad[..., :, None] * f_ang[..., None, :]) * weight[..., None, None]  # (N, K, K, A, Z)
        pair_id = jnp.asarray(_pair_table(s))[spec_s[:, :, None], spec_s[:, None, :]]
        onehot = jax.nn.one_hot(pair_id, s * (s + 1) // 2, dtype=dtype)               # (N, K, K, P)
        angular = jnp.einsum("nabp,nabmz->npmz", onehot, terms).reshape(n, -1)
        out = jnp.concatenate([radial, angular], axis=-1)
        return jnp.where(graph.atom_mask[:, None], out, 0.0)

    @nn.compact
    def forward(self, graph: Graph):
        """Return (aev (N, n_aev), (N,) per-atom outputs) in one pass."""
        x = self.aev(graph)
        s = self.n_species
        h = x[:, None, :]                                   # (N, 1, D) -> (N, S, H): every element's MLP
        widths = tuple(self.hidden) + (1,)
        for t, width in enumerate(widths):
            fan_in = h.shape[-1]
            init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-2, out_axis=-1,
                                                    batch_axis=(0,))
            w = self.param(f"w_{t}", init, (s, fan_in, width), jnp.float32)
            b = self.param(f"b_{t}", nn.initializers.zeros, (s, width), jnp.float32)
            h = jnp.einsum("nsd,sdh->nsh", jnp.broadcast_to(h, (h.shape[0], s, fan_in)), w.astype(x.dtype))
            h = h + b.astype(x.dtype)
            if t < len(widths) - 1:
                h = jax.nn.celu(h, alpha=0.1)
        y = jnp.take_along_axis(h[..., 0], graph.species[:, None], axis=1)[:, 0]
        return x, jnp.where(graph.atom_mask, y, 0.0)

    def features(self, graph: Graph) -> Array:
        """(N, n_aev) AEVs (the model's invariant features)."""
        return self.aev(graph)

    def __call__(self, graph: Graph) -> Array:
        """(N,) dimensionless per-atom outputs, 0 on padding atoms."""
        return self.forward(graph)[1]
