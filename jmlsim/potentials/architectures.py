"""Registry of neural-network potential architectures, and JSON-able configs to rebuild them.

``build_model('schnet', n_species=4, n_features=32)`` makes a module; ``model_config(module)`` gives
``{'name': 'schnet', 'n_species': 4, 'cutoff': 0.5, ...}`` (every hyper-parameter, JSON types only), and
``model_from_config(config)`` rebuilds the same module, so a checkpoint (flax msgpack params + JSON config)
restores without pickling.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from jmlsim.errors import InputError
from jmlsim.potentials.ani import ANI
from jmlsim.potentials.nequip import NequIP
from jmlsim.potentials.painn import PaiNN
from jmlsim.potentials.schnet import SchNet

ARCHITECTURES: dict[str, type[nn.Module]] = {"ani": ANI, "schnet": SchNet, "painn": PaiNN, "nequip": NequIP}

# Flax's own dataclass fields, not hyper-parameters.
_FLAX_FIELDS = {"parent", "name"}


def _hyper_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in _FLAX_FIELDS]


def build_model(name: str, n_species: int, **hyper) -> nn.Module:
    """Make the architecture ``name`` (a key of ARCHITECTURES) for ``n_species`` elements.

    Hyper-parameters not given take the module's defaults; lists are turned into tuples.
    Raises InputError for an unknown architecture or hyper-parameter.
    """
    key = str(name).lower()
    if key not in ARCHITECTURES:
        raise InputError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    cls = ARCHITECTURES[key]
    allowed = set(_hyper_fields(cls)) - {"n_species"}
    unknown = sorted(set(hyper) - allowed)
    if unknown:
        raise InputError(f"architecture {key!r} has no hyper-parameter {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(allowed))}")
    return cls(n_species=int(n_species), **{k: _from_json(v) for k, v in hyper.items()})


def model_config(module: nn.Module) -> dict[str, Any]:
    """JSON-able ``{'name': architecture, 'n_species': ..., <every hyper-parameter>: value}``."""
    for key, cls in ARCHITECTURES.items():
        if type(module) is cls:
            break
    else:
        raise InputError(f"model_config: {type(module).__name__} is not a registered architecture")
    config = {"name": key}
    for field in _hyper_fields(cls):
        config[field] = _to_json(getattr(module, field))
    return config


def model_from_config(config: dict) -> nn.Module:
    """Rebuild a module from ``model_config`` output (InputError on a malformed config)."""
    if not isinstance(config, dict) or "name" not in config or "n_species" not in config:
        raise InputError("model config: needs the keys 'name' and 'n_species'")
    hyper = {k: v for k, v in config.items() if k not in ("name", "n_species")}
    return build_model(config["name"], config["n_species"], **hyper)


def _to_json(value):
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def _from_json(value):
    # Module fields must be hashable (flax compares modules); JSON gives lists.
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    return value
