"""3D-CNN binding-affinity models on voxel grids: KDEEP's 3D SqueezeNet and a small 3D ResNet.

Input: grids (B, D, H, W, C) float32, channels last (NDHWC), e.g. (B, 24, 24, 24, 16) from
``featurize.batch_grids`` (8 protein then 8 ligand channels). Output: (B,) one (normalized) pK per complex.
Both networks end in global average pooling, so any cubic grid size works (tests use 12^3).

``KDeepSqueezeNet`` follows Jimenez et al., J. Chem. Inf. Model. 58, 287 (2018): SqueezeNet 1.0 (Iandola et
al. 2016) made 3D. Layer list used here (the paper's figure gives the order; the exact pooling sizes and the
absence of a pool after conv1 are our reading of it for a 24^3 input):

    conv1  7x7x7, 96 filters, stride 2, ReLU               24^3 -> 12^3
    fire2  squeeze 16, expand 64 (1^3) + 64 (3^3)          -> 128 channels
    fire3  squeeze 16, expand 64 + 64                      -> 128
    fire4  squeeze 32, expand 128 + 128                    -> 256
    maxpool 3x3x3, stride 2, SAME                          12^3 -> 6^3
    fire5  squeeze 32, expand 128 + 128                    -> 256
    fire6  squeeze 48, expand 192 + 192                    -> 384
    fire7  squeeze 48, expand 192 + 192                    -> 384
    fire8  squeeze 64, expand 256 + 256                    -> 512
    maxpool 3x3x3, stride 2, SAME                          6^3 -> 3^3
    fire9  squeeze 64, expand 256 + 256                    -> 512
    global average pool, dropout (0.5 in SqueezeNet; ``dropout``), dense -> 1

Choices where the paper is silent: no batch normalization (SqueezeNet 1.0 has none), SAME padding everywhere,
ReLU after every convolution, the 1000-way conv10 classifier replaced by a dense layer to one output.
``width`` scales every filter count (width=1 is the paper's network; tests use a fraction).

Neither model has mutable collections (no BatchNorm: the ResNet uses GroupNorm), so a checkpoint is the
``params`` tree alone and a padded batch row cannot leak into batch statistics.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.errors import InputError

# (squeeze, expand) per fire module of SqueezeNet 1.0, fire2..fire9
_FIRE = ((16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256))
_POOL_AFTER = (2, 6)  # indices into _FIRE: after fire4 and fire8


def variance_scaling_flat(scale: float):
    """Truncated-normal fan-in initializer (He for scale=2, LeCun for 1), drawn as one 1-D vector and reshaped.

    Same distribution as ``nn.initializers.variance_scaling(scale, 'fan_in', 'truncated_normal')``. Why not
    that: XLA's CPU compile time of the random-bits kernel grows steeply with the array's rank (about 10 s for
    one 7x7x7x16x12 kernel on the loaded 2-core test machine, 0.5 s flat); a jitted init of KDEEP at width 1/8
    compiled in ~7 s this way against ~43 s with flax's initializers.
    """

    def init(key, shape, dtype=jnp.float32):
        fan_in = int(np.prod(shape[:-1]))
        # 0.8796... is the std of a standard normal truncated to [-2, 2]
        std = np.sqrt(scale / max(fan_in, 1)) / 0.87962566103423978
        flat = jax.random.truncated_normal(key, -2.0, 2.0, (int(np.prod(shape)),), jnp.float32)
        return (flat * std).reshape(shape).astype(dtype)

    return init


HE = variance_scaling_flat(2.0)  # kernels followed by ReLU
LECUN = variance_scaling_flat(1.0)  # linear output layer


def _scaled(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


class Fire3D(nn.Module):
    """SqueezeNet fire module in 3D: 1^3 squeeze, then 1^3 and 3^3 expands concatenated on the channel axis."""

    squeeze: int
    expand: int

    @nn.compact
    def __call__(self, x):
        s = nn.relu(nn.Conv(self.squeeze, (1, 1, 1), kernel_init=HE, name="squeeze")(x))
        e1 = nn.relu(nn.Conv(self.expand, (1, 1, 1), kernel_init=HE, name="expand1")(s))
        e3 = nn.relu(nn.Conv(self.expand, (3, 3, 3), padding="SAME", kernel_init=HE, name="expand3")(s))
        return jnp.concatenate([e1, e3], axis=-1)


class KDeepSqueezeNet(nn.Module):
    """KDEEP 3D SqueezeNet. grids (B, D, H, W, C) -> (B,) predictions.

    Attributes: width (filter-count multiplier, 1.0 = paper), dropout (rate before the output layer).
    """

    width: float = 1.0
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(jnp.float32)
        x = nn.relu(nn.Conv(_scaled(96, self.width), (7, 7, 7), strides=(2, 2, 2), padding="SAME",
                            kernel_init=HE, name="conv1")(x))
        for i, (sq, ex) in enumerate(_FIRE):
            x = Fire3D(_scaled(sq, self.width), _scaled(ex, self.width), name=f"fire{i + 2}")(x)
            if i in _POOL_AFTER:
                x = nn.max_pool(x, (3, 3, 3), strides=(2, 2, 2), padding="SAME")
        x = jnp.mean(x, axis=(1, 2, 3))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(1, kernel_init=LECUN, name="out")(x)[:, 0]


def _groups(channels: int, groups: int) -> int:
    """Largest divisor of channels not above groups (GroupNorm needs an exact split)."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class ResBlock3D(nn.Module):
    """Pre-activation residual block (He et al. 2016): GN-ReLU-conv3^3-GN-ReLU-conv3^3, projected shortcut
    when the stride or channel count changes."""

    channels: int
    stride: int = 1
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        g = _groups(x.shape[-1], self.groups)
        h = nn.relu(nn.GroupNorm(num_groups=g, name="norm1")(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.channels:
            shortcut = nn.Conv(self.channels, (1, 1, 1), strides=(self.stride,) * 3, use_bias=False,
                               kernel_init=HE, name="project")(h)
        h = nn.Conv(self.channels, (3, 3, 3), strides=(self.stride,) * 3, padding="SAME", use_bias=False,
                    kernel_init=HE, name="conv1")(h)
        h = nn.relu(nn.GroupNorm(num_groups=_groups(self.channels, self.groups), name="norm2")(h))
        # zero-initialized last conv: each block starts as the identity, which keeps early training stable
        h = nn.Conv(self.channels, (3, 3, 3), padding="SAME", use_bias=False, kernel_init=nn.initializers.zeros,
                    name="conv2")(h)
        return shortcut + h


class ResNet3D(nn.Module):
    """Small pre-activation 3D ResNet with GroupNorm. grids (B, D, H, W, C) -> (B,) predictions.

    Default: stem conv 3^3 (32), 4 stages of ``blocks`` residual blocks with 32, 64, 128, 256 channels, stride 2
    at the start of stages 2-4 (24^3 -> 3^3), GN-ReLU, global average pool, dropout, dense -> 1.
    """

    channels: Sequence[int] = (32, 64, 128, 256)
    blocks: int = 1
    groups: int = 8
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(jnp.float32)
        x = nn.Conv(self.channels[0], (3, 3, 3), padding="SAME", kernel_init=HE, name="stem")(x)
        for s, c in enumerate(self.channels):
            for b in range(self.blocks):
                x = ResBlock3D(c, stride=2 if (s > 0 and b == 0) else 1, groups=self.groups,
                               name=f"stage{s + 1}_block{b + 1}")(x)
        x = nn.relu(nn.GroupNorm(num_groups=_groups(x.shape[-1], self.groups), name="norm_out")(x))
        x = jnp.mean(x, axis=(1, 2, 3))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(1, kernel_init=LECUN, name="out")(x)[:, 0]


AFFINITY_MODELS: dict[str, type[nn.Module]] = {"kdeep": KDeepSqueezeNet, "resnet": ResNet3D}


def _hyper_names(cls) -> list[str]:
    return [f for f in cls.__dataclass_fields__ if f not in ("parent", "name")]


def build(name: str, **hyper: Any) -> nn.Module:
    """The registered model ``name`` ('kdeep' or 'resnet') with hyperparameters ``hyper``.

    InputError for an unknown name or hyperparameter (message names both).
    """
    if name not in AFFINITY_MODELS:
        raise InputError(f"unknown affinity model {name!r} (choose from {', '.join(sorted(AFFINITY_MODELS))})")
    cls = AFFINITY_MODELS[name]
    unknown = sorted(set(hyper) - set(_hyper_names(cls)))
    if unknown:
        raise InputError(f"affinity model {name!r} has no hyperparameter {unknown[0]!r} "
                         f"(has {', '.join(_hyper_names(cls))})")
    if "channels" in hyper:
        hyper = {**hyper, "channels": tuple(int(c) for c in hyper["channels"])}
    return cls(**hyper)


def model_config(model: nn.Module) -> dict:
    """JSON-able description {'model': name, 'hyper': {...}} that ``model_from_config`` rebuilds exactly."""
    for name, cls in AFFINITY_MODELS.items():
        if type(model) is cls:
            hyper = {}
            for f in _hyper_names(cls):
                v = getattr(model, f)
                hyper[f] = list(v) if isinstance(v, tuple) else v
            return {"model": name, "hyper": hyper}
    raise InputError(f"{type(model).__name__} is not a registered affinity model")


def model_from_config(config: dict, source: str = "config") -> nn.Module:
    """Rebuild a model from ``model_config``'s dict; ``source`` (a file name) appears in error messages."""
    if not isinstance(config, dict) or "model" not in config:
        raise InputError(f"{source}: missing key 'model'")
    hyper = config.get("hyper", {})
    if not isinstance(hyper, dict):
        raise InputError(f"{source}: key 'hyper' must be an object")
    try:
        return build(config["model"], **hyper)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
