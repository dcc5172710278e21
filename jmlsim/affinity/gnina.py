"""gnina's CNN scoring functions in Flax, with the default ensemble's pretrained weights (``gnina-default``).

Architectures (McNutt et al., J. Cheminform. 2021, 13, 43; layer by layer as gninatorch 0.0.2 translated them
from gnina's Caffe models):

- :class:`Default2018`: 2x2x2 average pool, conv3x3x3 32 + ReLU, conv1x1x1 32 + ReLU, pool, conv 64, conv1 64,
  pool, conv 128 (all ReLU); flatten (6*6*6*128) -> pose logits (2) and affinity (1).
- :class:`DenseNet`: 2x2x2 max pool, conv 32; three dense blocks of four (BatchNorm, conv3x3x3 16, ReLU,
  concatenate) separated by a 1x1x1 "bottleneck" conv + ReLU and a max pool; global max pool (224) -> pose
  logits (2) and affinity (1). BatchNorm runs on its stored statistics (inference mode, eps 1e-5).

Input: grids (B, 48, 48, 48, 28) float32, indexed [b, x, y, z, channel], channels = 14 receptor + 14 ligand
gnina types (:mod:`jmlsim.affinity.gnina_typing`) at 0.5 Å, built by :mod:`jmlsim.affinity.gnina_grid`.
Outputs: pose score = softmax probability of a good pose (unitless), affinity in pK units (-log10 Kd in M).

``gnina-default`` is gnina's default ensemble (dense, general_default2018_3, dense_3, crossdock_default2018,
redock_default2018_2): pose score and affinity are member means, plus the affinity variance (population).

Weights: ``pretrained/gnina-default/*.npz`` (converted once by scripts/convert_gnina_weights.py; licence note
beside them). No torch or molgrid is needed at run time.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.errors import InputError

PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
GRID_POINTS = 48
N_CHANNELS = 28

# float32 everywhere and full-precision matmuls: TF32/bf16 defaults on accelerators would break the 1e-4 parity
# with gninatorch.
_HI = jax.lax.Precision.HIGHEST


def _conv(features: int, k: int, name: str) -> nn.Conv:
    return nn.Conv(features, (k, k, k), padding=[(k // 2, k // 2)] * 3, precision=_HI, dtype=jnp.float32,
                   param_dtype=jnp.float32, name=name)


def _heads(x):
    """(B, F) features -> (pose log-probabilities (B, 2), affinity (B,))."""
    pose = nn.Dense(2, precision=_HI, dtype=jnp.float32, param_dtype=jnp.float32, name="pose_output")(x)
    aff = nn.Dense(1, precision=_HI, dtype=jnp.float32, param_dtype=jnp.float32, name="affinity_output")(x)
    return jax.nn.log_softmax(pose, axis=-1), aff[:, 0]


class Default2018(nn.Module):
    """gnina default2018: (B, 48, 48, 48, 28) grids -> (log pose probabilities (B, 2), affinity pK (B,))."""

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32)
        pool = lambda h: nn.avg_pool(h, (2, 2, 2), strides=(2, 2, 2))  # noqa: E731
        x = pool(x)
        x = nn.relu(_conv(32, 3, "unit1_conv")(x))
        x = nn.relu(_conv(32, 1, "unit2_conv")(x))
        x = pool(x)
        x = nn.relu(_conv(64, 3, "unit3_conv")(x))
        x = nn.relu(_conv(64, 1, "unit4_conv")(x))
        x = pool(x)
        x = nn.relu(_conv(128, 3, "unit5_conv")(x))
        # Flattened in (x, y, z, channel) order; the converter permuted gninatorch's (channel, x, y, z) rows.
        return _heads(x.reshape(x.shape[0], -1))


class DenseNet(nn.Module):
    """gnina dense: (B, 48, 48, 48, 28) grids -> (log pose probabilities (B, 2), affinity pK (B,))."""
    num_blocks: int = 3
    block_features: int = 16
    block_convs: int = 4

    @nn.compact
    def __call__(self, x):
        x = jnp.asarray(x, jnp.float32)
        pool = lambda h: nn.max_pool(h, (2, 2, 2), strides=(2, 2, 2))  # noqa: E731
        x = pool(x)
        x = nn.relu(_conv(32, 3, "data_enc_init_conv")(x))
        for level in range(self.num_blocks):
            for i in range(self.block_convs):
                h = nn.BatchNorm(use_running_average=True, epsilon=1e-5, dtype=jnp.float32,
                                 param_dtype=jnp.float32, name=f"data_enc_level{level}_batchnorm_conv{i}")(x)
                h = nn.relu(_conv(self.block_features, 3, f"data_enc_level{level}_conv{i}")(h))
                x = jnp.concatenate([x, h], axis=-1)
            if level < self.num_blocks - 1:
                x = nn.relu(_conv(x.shape[-1], 1, f"data_enc_level{level}_bottleneck")(x))
                x = pool(x)
        return _heads(jnp.max(x, axis=(1, 2, 3)))


ARCHITECTURES = {"default2018": Default2018, "dense": DenseNet}


def _load_variables(path: str, module: nn.Module):
    """Flax variables from a converted ``.npz`` (keys 'params/layer/kernel' ...), checked against the module."""
    try:
        with np.load(path, allow_pickle=False) as data:
            flat = {tuple(k.split("/")): np.asarray(data[k], np.float32) for k in data.files}
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except Exception as exc:  # a damaged zip of any kind means the same to the user
        raise InputError(f"{path} is corrupt or not a converted gnina weight file ({exc.__class__.__name__})") \
            from None
    template = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                              jax.ShapeDtypeStruct((1, GRID_POINTS, GRID_POINTS, GRID_POINTS, N_CHANNELS),
                                                   jnp.float32))
    want = {tuple(str(getattr(k, "key", k)) for k in path_): leaf
            for path_, leaf in jax.tree_util.tree_flatten_with_path(template)[0]}
    if set(want) != set(flat):
        missing = sorted("/".join(k) for k in set(want) - set(flat))[:3]
        extra = sorted("/".join(k) for k in set(flat) - set(want))[:3]
        raise InputError(f"{path}: weights do not match the architecture (missing {missing}, unexpected {extra})")
    out: Dict[str, Any] = {}
    for key, leaf in want.items():
        if tuple(leaf.shape) != flat[key].shape:
            raise InputError(f"{path}: {'/'.join(key)} has shape {flat[key].shape}, expected {tuple(leaf.shape)}")
        node = out
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = jnp.asarray(flat[key])
    return out


@dataclasses.dataclass(eq=False)
class GninaModel:
    """A gnina CNN or ensemble with the prediction interface of :class:`jmlsim.affinity.training.AffinityModel`.

    ``modules[i]`` / ``variables[i]`` are the members' Flax modules and variables. Use :meth:`predict_grids`
    (grids -> pK), :meth:`score_grids` (grids -> pose score, pK, variance) or :meth:`featurize` (typed
    complexes -> grids; the ``featurizer`` argument of :mod:`jmlsim.affinity.training`'s predict/evaluate).
    """
    modules: Tuple[nn.Module, ...]
    variables: Tuple[Any, ...]
    config: dict

    @property
    def name(self) -> str:
        return self.config["model"]

    @property
    def typing_scheme(self) -> str:
        return self.config["typing_scheme"]

    def score_grids(self, grids) -> Dict[str, np.ndarray]:
        """grids (B, 48, 48, 48, 28) -> {'pose_score', 'affinity', 'affinity_variance'}, each (B,) float64.

        Trailing all-zero grids (the padding that batched prediction appends) are not run through the networks
        (five 3D CNNs per grid are the expensive part on CPU); their outputs are NaN.
        """
        grids = np.asarray(grids, np.float32)
        filled = np.flatnonzero(np.any(grids.reshape(grids.shape[0], -1) != 0, axis=1))
        n = int(filled[-1]) + 1 if filled.size else 0
        out = {k: np.full(grids.shape[0], np.nan) for k in ("pose_score", "affinity", "affinity_variance")}
        if n:
            pose, aff, var = _ensemble_apply(self.modules, self.variables, jnp.asarray(grids[:n]))
            for k, v in zip(("pose_score", "affinity", "affinity_variance"), (pose, aff, var)):
                out[k][:n] = np.asarray(v, np.float64)
        return out

    def predict_grids(self, grids) -> np.ndarray:
        """grids (B, 48, 48, 48, 28) -> pK (B,) float64 (gnina's CNNaffinity; ensemble mean)."""
        return self.score_grids(grids)["affinity"]

    def featurize(self, complexes, key=None, augment: bool = False) -> np.ndarray:
        """Typed complexes (gnina scheme) -> (B, 48, 48, 48, 28) grids; random rotation/translation if augment."""
        from jmlsim.affinity import gnina_grid
        return np.asarray(gnina_grid.batch_grids(list(complexes), key, augment), np.float32)

    def score_complex(self, cpx) -> Dict[str, float]:
        """One typed complex -> {'pose_score', 'affinity', 'affinity_variance'} (pK units)."""
        out = self.score_grids(self.featurize([cpx]))
        return {k: float(v[0]) for k, v in out.items()}

    def score_files(self, protein: str, ligand: str) -> Dict[str, float]:
        """Score a receptor PDB and a ligand SDF/MOL2 pose as gnina does (grid centred on the ligand)."""
        from jmlsim.affinity import gnina_typing
        return self.score_complex(gnina_typing.complex_from_files(protein, ligand))

    def predict_files(self, protein: str, ligands: Sequence[str]) -> list:
        """[{'ligand', 'pK', 'pose_score', 'affinity_variance'}] for each ligand file against one receptor.

        Raises InputError naming the first file that is missing or unreadable.
        """
        out = []
        for path in ligands:
            s = self.score_files(protein, path)
            out.append({"ligand": os.path.splitext(os.path.basename(path))[0], "pK": s["affinity"],
                        "pose_score": s["pose_score"], "affinity_variance": s["affinity_variance"]})
        return out


_APPLY_CACHE: Dict[tuple, Any] = {}


def _member_apply(module, variables, grids):
    """One member's (good-pose probability (B,), affinity (B,)); jit compiled once per architecture."""
    key = (type(module).__name__,) + tuple((f.name, getattr(module, f.name)) for f in dataclasses.fields(module)
                                           if f.name not in ("parent", "name"))
    if key not in _APPLY_CACHE:
        def run(v, g):
            log_pose, aff = module.apply(v, g)
            return jnp.exp(log_pose[:, 1]), aff
        _APPLY_CACHE[key] = jax.jit(run)
    return _APPLY_CACHE[key](variables, grids)


def _ensemble_apply(modules, variables, grids):
    """Ensemble mean pose score, mean affinity and affinity population variance, each (B,)."""
    outs = [_member_apply(m, v, grids) for m, v in zip(modules, variables)]
    # gninatorch averages probabilities (not log-probabilities) and reports the population variance.
    pose = jnp.stack([p for p, _ in outs])
    aff = jnp.stack([a for _, a in outs])
    return pose.mean(0), aff.mean(0), aff.var(0)


def available() -> list:
    """Names of the gnina models that :func:`load_gnina` knows (directories with a gnina.json)."""
    if not os.path.isdir(PRETRAINED_DIR):
        return []
    return sorted(d for d in os.listdir(PRETRAINED_DIR)
                  if d.startswith("gnina-") and os.path.isfile(os.path.join(PRETRAINED_DIR, d, "gnina.json")))


def load_gnina(name: str = "gnina-default", members: Optional[Sequence[str]] = None) -> GninaModel:
    """Load a pretrained gnina model by name (``gnina-default``: the default 5-model ensemble).

    ``members`` picks a subset of the ensemble by member name (e.g. ``['dense']`` for one network); the
    names are in ``pretrained/<name>/gnina.json``. A name of the form ``gnina-default:dense`` does the same.
    Raises InputError for an unknown name or member, or damaged weight files.
    """
    if ":" in name and members is None:
        name, sub = name.split(":", 1)
        members = sub.split(",")
    directory = os.path.join(PRETRAINED_DIR, name)
    meta_path = os.path.join(directory, "gnina.json")
    if os.sep in name or not os.path.isfile(meta_path):
        raise InputError(f"unknown gnina model {name!r}; known: {', '.join(available()) or 'none installed'}")
    with open(meta_path) as fh:
        meta = json.load(fh)
    table = {m["name"]: m for m in meta["members"]}
    chosen = list(members) if members is not None else [m["name"] for m in meta["members"]]
    unknown = [m for m in chosen if m not in table]
    if unknown or not chosen:
        raise InputError(f"{meta_path}: unknown member(s) {unknown}; members: {sorted(table)}")
    modules, variables = [], []
    for m in chosen:
        arch = table[m]["arch"]
        if arch not in ARCHITECTURES:
            raise InputError(f"{meta_path}: member {m!r} has unknown architecture {arch!r}")
        module = ARCHITECTURES[arch]()
        modules.append(module)
        variables.append(_load_variables(os.path.join(directory, table[m]["file"]), module))
    label = name if members is None else f"{name}:{','.join(chosen)}"
    config = {"model": label, "members": chosen, "typing_scheme": "gnina-molgrid",
              "resolution": meta["resolution_angstrom"], "dimension": meta["dimension_angstrom"],
              "in_channels": N_CHANNELS, "target_mean": 0.0, "target_std": 1.0}
    return GninaModel(tuple(modules), tuple(variables), config)
