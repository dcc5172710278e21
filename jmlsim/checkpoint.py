"""Checkpoints: everything needed to continue a run exactly, written atomically.

Format: a NumPy ``.npz`` (no pickle) holding every leaf of the MD state and the neighbor list under its tree
path, plus a JSON ``metadata`` entry (step, frames written, integrator and neighbor-list settings). It is written
to a temporary file in the same directory, fsynced and renamed over the old one, so a crash leaves either the
old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.distributed import is_main_process, to_host
from jmlsim.errors import InputError
from jmlsim.io.atomic import atomic_write
from jmlsim.neighbors import NeighborListSpec

FORMAT = "jmlsim-checkpoint-1"


def _named_leaves(tree, prefix: str) -> dict:
    # to_host gathers arrays sharded over several processes (a collective: every process must call save)
    leaves = jax.tree_util.tree_flatten_with_path(to_host(tree))[0]
    return {prefix + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _describe(sim) -> dict:
    """Settings a checkpoint must agree with to be resumed by ``sim``."""
    return {
        "n_atoms": sim.system.n_atoms,
        "replicas": sim.replicas,
        "integrator": type(sim.integrator).__name__,
        # the Constraints object holds arrays: record its size, not its contents
        "integrator_settings": {f.name: getattr(sim.integrator, f.name) for f in dataclasses.fields(sim.integrator)
                                if f.name not in ("constraints", "layout")},
        # per replica for a molecule batch (ConstraintsBatch), one count otherwise
        "constraints": 0 if getattr(sim.integrator, "constraints", None) is None
        else np.asarray(sim.integrator.constraints.n_constraints).tolist(),
        "precision": sim.precision,
    }


def save(path: str, sim, extra: dict | None = None) -> None:
    """Atomically write ``sim``'s state, neighbor list and metadata (plus ``extra``) to ``path``.

    In a multi-process run every process calls this (the state is gathered from all of them) and process 0
    alone writes; to resume, every process reads the file (it must be on a file system they all see)."""
    arrays = _named_leaves(sim.state, "state")
    if sim.nbrs is not None:
        arrays.update(_named_leaves(sim.nbrs, "neighbors"))
    meta = {"format": FORMAT, "step": sim.step, **_describe(sim), **(extra or {})}
    if sim.spec is not None:
        meta["neighbor_spec"] = dataclasses.asdict(sim.spec)
    arrays["metadata"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    if is_main_process():
        atomic_write(path, lambda handle: np.savez(handle, **arrays), suffix=".npz")


def read_metadata(path: str) -> tuple[dict, dict]:
    """(metadata, arrays) of a checkpoint; InputError for a missing, corrupt or foreign file."""
    if not os.path.exists(path):
        raise InputError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(arrays.pop("metadata").tobytes().decode())
    except Exception as exc:  # zip, npy or JSON damage all mean the same thing to the user
        raise InputError(f"checkpoint {path} is corrupt or not a jmlsim checkpoint ({type(exc).__name__})") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"checkpoint {path} has unknown format {meta.get('format')!r}")
    return meta, arrays


def load(path: str, sim) -> dict:
    """Restore ``sim`` (built with the same system and settings) from ``path``; returns the metadata."""
    meta, arrays = read_metadata(path)
    expected = _describe(sim)
    for key, value in expected.items():
        if json.loads(json.dumps(value)) != meta.get(key):
            raise InputError(f"checkpoint {path} was written with {key}={meta.get(key)!r}, this run has {value!r}")
    if meta.get("neighbor_spec") is not None:
        spec = dict(meta["neighbor_spec"])
        spec["cells"] = None if spec["cells"] is None else tuple(spec["cells"])
        sim.spec = NeighborListSpec(**spec)
    sim.state = _restore(sim.state, arrays, "state", path)
    if sim.nbrs is not None:
        template = sim._rebuild(sim.state) if sim.spec is not None else sim.nbrs
        sim.nbrs = _restore(template, arrays, "neighbors", path)
    return meta


def _restore(template, arrays: dict, prefix: str, path: str):
    leaves, _ = jax.tree_util.tree_flatten_with_path(template)
    restored = []
    for key_path, leaf in leaves:
        name = prefix + jax.tree_util.keystr(key_path)
        if name not in arrays:
            raise InputError(f"checkpoint {path} lacks {name}")
        value = arrays[name]
        if value.shape != np.shape(leaf):
            raise InputError(f"checkpoint {path}: {name} has shape {value.shape}, expected {np.shape(leaf)}")
        restored.append(jnp.asarray(value, dtype=leaf.dtype))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), restored)
