"""Train, evaluate and apply binding-affinity 3D-CNNs (``models.AFFINITY_MODELS``) on featurized complexes.

A training run writes, under ``out_dir``::

    best/config.json, best/params.msgpack    the model with the lowest validation RMSE (what load_model reads)
    last/config.json, last/params.msgpack    the model after the latest epoch
    last/train_state.msgpack                 params + optimizer state + epoch/history/early-stopping counters,
                                             one file so a resume never sees a half-updated state
    log.csv, learning_curve.png              per-epoch log and its plot

Every file is written to a temporary name in the same directory, fsynced and renamed over the old one. Arrays
go through ``flax.serialization`` (msgpack), metadata through JSON; nothing is pickled.

Targets are standardized with the training-set mean/std (stored in config.json), so the network regresses a
unit-variance quantity and every prediction is mapped back to pK.

A *featurizer* is ``f(complexes, key, augment) -> (B, D, H, W, C) float32``; the default is
``jmlsim.affinity.featurize.batch_grids`` (random rotation + translation when ``augment``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmlsim.affinity import models as affinity_models
from jmlsim.errors import InputError
from jmlsim.io.atomic import atomic_write

FORMAT = "jmlsim-affinity-model-1"
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")

Featurizer = Callable[[Sequence[Any], jax.Array, bool], np.ndarray]


# ----------------------------------------------------------------------------------------------- files

def _atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`jmlsim.io.atomic.atomic_write`), creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, data)


def _json_safe(value):
    """NaN/inf -> None, so config.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_model_dir(directory: str, config: dict, params) -> None:
    # params first: config.json is what marks a directory as a model, so it must not precede its weights
    _atomic_write(os.path.join(directory, "params.msgpack"), flax.serialization.to_bytes(params))
    _atomic_write(os.path.join(directory, "config.json"), json.dumps(_json_safe(config), indent=1).encode())


def _read_json(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode())
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _param_template(module, in_channels: int):
    """Shapes/dtypes of ``module``'s params (jax.eval_shape: nothing is computed)."""
    grid = jax.ShapeDtypeStruct((1, 8, 8, 8, in_channels), jnp.float32)
    return jax.eval_shape(lambda g: module.init(jax.random.PRNGKey(0), g), grid)


def _restore_params(path: str, module, in_channels: int):
    """Params from a flax msgpack file, checked leaf by leaf against the module's own structure."""
    try:
        with open(path, "rb") as handle:
            raw = flax.serialization.msgpack_restore(handle.read())
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except Exception as exc:  # msgpack damage of any kind means the same thing to the user
        raise InputError(f"{path} is corrupt or not a flax msgpack file ({exc.__class__.__name__})") from None
    template = _param_template(module, in_channels)
    try:
        params = flax.serialization.from_state_dict(template, raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: parameters do not match config.json's model ({exc})") from None
    for want, got in zip(jax.tree_util.tree_leaves(template), jax.tree_util.tree_leaves(params)):
        if tuple(want.shape) != tuple(np.shape(got)):
            raise InputError(f"{path}: parameter shape {np.shape(got)} does not match config.json's {want.shape}")
    return jax.tree_util.tree_map(lambda t, a: jnp.asarray(a, t.dtype), template, params)


# ----------------------------------------------------------------------------------------------- jit cache

# Compiled functions per model configuration (and optimizer settings), shared by every train/evaluate call in
# the process: a new jax.jit wrapper per call would recompile identical programs (seconds each on CPU).
_JIT_CACHE: dict = {}


def _module_key(module) -> str:
    return json.dumps(affinity_models.model_config(module), sort_keys=True)


def init_params(module, key, grids):
    """``module.init(key, grids)`` through a jit compiled once per model configuration and grid shape."""
    k = ("init", _module_key(module))
    if k not in _JIT_CACHE:
        _JIT_CACHE[k] = jax.jit(module.init)
    return _JIT_CACHE[k](key, jnp.asarray(grids, jnp.float32))


def _apply_fn(module):
    """jitted (params, grids, mean, std) -> pK = network output * std + mean."""
    k = ("apply", _module_key(module))
    if k not in _JIT_CACHE:
        _JIT_CACHE[k] = jax.jit(lambda p, g, mean, std: module.apply(p, g) * std + mean)
    return _JIT_CACHE[k]


# ----------------------------------------------------------------------------------------------- model

@dataclasses.dataclass(eq=False)
class AffinityModel:
    """A trained affinity network: flax module, its params, and config.json (target mean/std for pK)."""

    module: Any
    params: Any
    config: dict

    @property
    def name(self) -> str:
        return self.config["model"]

    def predict_grids(self, grids) -> np.ndarray:
        """grids (B, D, H, W, C) -> pK (B,) as float64 numpy."""
        mean = np.float32(self.config.get("target_mean", 0.0))
        std = np.float32(self.config.get("target_std", 1.0))
        out = _apply_fn(self.module)(self.params, jnp.asarray(grids, jnp.float32), mean, std)
        return np.asarray(out, dtype=np.float64)


def _load_dir(directory: str) -> AffinityModel:
    cfg_path = os.path.join(directory, "config.json")
    config = _read_json(cfg_path)
    if config.get("format") != FORMAT:
        raise InputError(f"{cfg_path}: key 'format' is {config.get('format')!r}, expected {FORMAT!r}")
    module = affinity_models.model_from_config(config, source=cfg_path)
    for key in ("target_mean", "target_std", "in_channels"):
        if not isinstance(config.get(key), (int, float)):
            raise InputError(f"{cfg_path}: key {key!r} missing or not a number")
    params = _restore_params(os.path.join(directory, "params.msgpack"), module, int(config["in_channels"]))
    return AffinityModel(module, params, config)


def load_model(name_or_dir) -> AffinityModel:
    """A model by pretrained name (``jmlsim/affinity/pretrained/<name>/``, looked up first) or by directory.

    A directory is a model directory (config.json + params.msgpack) or a training ``out_dir`` (its ``best/``
    is used). Names starting with ``gnina`` go to :func:`jmlsim.affinity.gnina.load_gnina`. A loaded model
    (anything with ``predict_grids``) is returned unchanged. Anything else: InputError.

    Model protocol (what predict/evaluate and the CLI use): ``predict_grids(grids) -> (B,) pK``, ``name``,
    ``config`` (dict; ``config['scheme']`` or ``config['typing_scheme']`` names the atom-typing scheme its
    complexes need, default 'kdeep'), and optionally ``featurizer`` / ``featurize`` ``(complexes, key, augment)
    -> grids`` when its grids are not the default KDEEP 24 Å / 1 Å ones (the gnina port's 48^3 at 0.5 Å).
    """
    if isinstance(name_or_dir, AffinityModel) or hasattr(name_or_dir, "predict_grids"):
        return name_or_dir  # a loaded model (AffinityModel or a gnina port)
    name = os.fspath(name_or_dir)
    if name.startswith("gnina") and os.sep not in name and not os.path.isdir(name):
        from jmlsim.affinity.gnina import load_gnina  # lazily: the port and its weights are optional

        return load_gnina(name)
    pretrained = os.path.join(PRETRAINED_DIR, name)
    if name and os.sep not in name and os.path.isfile(os.path.join(pretrained, "config.json")):
        return _load_dir(pretrained)
    if os.path.isdir(name):
        if os.path.isfile(os.path.join(name, "config.json")):
            return _load_dir(name)
        if os.path.isfile(os.path.join(name, "best", "config.json")):
            return _load_dir(os.path.join(name, "best"))
        raise InputError(f"{name}: directory has no config.json (nor best/config.json)")
    known = sorted(d for d in os.listdir(PRETRAINED_DIR)) if os.path.isdir(PRETRAINED_DIR) else []
    raise InputError(f"unknown affinity model {name!r}: not a pretrained model "
                     f"({', '.join(known) or 'none installed'}) nor a model directory")


# ----------------------------------------------------------------------------------------------- batching

def default_featurizer(complexes, key, augment: bool) -> np.ndarray:
    from jmlsim.affinity import featurize  # lazily: grids are only needed once training starts

    return np.asarray(featurize.batch_grids(list(complexes), key, augment), dtype=np.float32)


def model_featurizer(model) -> Featurizer:
    """The featurizer a model needs: its own ``featurizer`` (or gnina's ``featurize``), else the default grids."""
    return getattr(model, "featurizer", None) or getattr(model, "featurize", None) or default_featurizer


def model_scheme(model) -> str:
    """Atom-typing scheme of the complexes a model expects ('kdeep' unless its config says otherwise)."""
    config = getattr(model, "config", None) or {}
    for scheme in (getattr(model, "scheme", None), getattr(model, "typing_scheme", None), config.get("scheme"),
                   config.get("typing_scheme")):
        if scheme:
            return scheme
    return "kdeep"


def _padded_batch(featurizer, items, key, augment: bool, batch_size: int):
    """(grids (batch_size, ...), mask (batch_size,)): featurized items, zero grids with mask 0 after them."""
    grids = np.asarray(featurizer(items, key, augment), dtype=np.float32)
    n = len(items)
    mask = np.zeros(batch_size, np.float32)
    mask[:n] = 1.0
    if n < batch_size:
        grids = np.concatenate([grids, np.zeros((batch_size - n,) + grids.shape[1:], np.float32)])
    return grids, mask


def _labelled(complexes) -> list:
    """The complexes with a finite pK (unlabelled ones cannot be trained or scored on)."""
    out = []
    for c in complexes:
        pk = getattr(c, "pK", None)
        if pk is not None and math.isfinite(float(pk)):
            out.append(c)
    return out


def _predict_array(model: AffinityModel, complexes, *, tta: int = 0, batch_size: int = 16, seed: int = 0,
                   featurizer: Optional[Featurizer] = None) -> np.ndarray:
    """pK (n,) averaged over the unrotated pose and ``tta`` random rotations/translations."""
    featurizer = featurizer or model_featurizer(model)
    complexes = list(complexes)
    out = np.zeros(len(complexes))
    base = jax.random.PRNGKey(seed)
    for start in range(0, len(complexes), batch_size):
        items = complexes[start:start + batch_size]
        total = np.zeros(len(items))
        for r in range(tta + 1):
            key = jax.random.fold_in(jax.random.fold_in(base, start), r)
            grids, _ = _padded_batch(featurizer, items, key, r > 0, batch_size)
            total += model.predict_grids(grids)[:len(items)]
        out[start:start + len(items)] = total / (tta + 1)
    return out


def predict(model, complexes, *, tta: int = 0, batch_size: int = 16, seed: int = 0,
            featurizer: Optional[Featurizer] = None) -> list[dict]:
    """[{'ligand': complex name, 'pK': prediction}] for ``complexes``; ``model`` as for load_model.

    tta > 0 averages the prediction over the input pose and tta random rotations + translations.
    """
    model = load_model(model)
    pk = _predict_array(model, complexes, tta=tta, batch_size=batch_size, seed=seed, featurizer=featurizer)
    return [{"ligand": getattr(c, "name", str(i)), "pK": float(p)} for i, (c, p) in enumerate(zip(complexes, pk))]


# ----------------------------------------------------------------------------------------------- metrics

def metrics(predicted, experimental) -> dict:
    """{'n', 'pearson', 'spearman', 'rmse', 'mae'} of two equal-length arrays (NaN where undefined)."""
    from scipy import stats

    p = np.asarray(predicted, np.float64)
    y = np.asarray(experimental, np.float64)
    n = int(p.size)
    out = {"n": n, "pearson": float("nan"), "spearman": float("nan"), "rmse": float("nan"), "mae": float("nan")}
    if n == 0:
        return out
    err = p - y
    out["rmse"] = float(np.sqrt(np.mean(err ** 2)))
    out["mae"] = float(np.mean(np.abs(err)))
    if n >= 2 and np.ptp(p) > 0 and np.ptp(y) > 0:  # correlations of a constant are undefined
        out["pearson"] = float(stats.pearsonr(p, y)[0])
        out["spearman"] = float(stats.spearmanr(p, y)[0])
    return out


def _scatter_png(path: str, predicted, experimental, stats_: dict, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    ax.scatter(experimental, predicted, s=12, alpha=0.7)
    both = np.concatenate([np.asarray(predicted, float), np.asarray(experimental, float)])
    if both.size:
        lo, hi = float(both.min()) - 0.5, float(both.max()) + 0.5
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xlabel("experimental pK")
    ax.set_ylabel("predicted pK")
    ax.set_title(f"{title}\nn={stats_['n']}  R={stats_['pearson']:.3f}  RMSE={stats_['rmse']:.3f}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _atomic_write(path, buf.getvalue())


def evaluate(model_dir_or_name, complexes, plot: Optional[str] = None, *, tta: int = 0, batch_size: int = 16,
             seed: int = 0, featurizer: Optional[Featurizer] = None) -> dict:
    """Metrics {'n', 'pearson', 'spearman', 'rmse', 'mae'} (pK units) over the complexes with a finite pK.

    plot: path of a PNG scatter plot of predicted vs experimental pK (written atomically), or None.
    """
    model = load_model(model_dir_or_name)
    labelled = _labelled(complexes)
    y = np.array([float(c.pK) for c in labelled])
    p = _predict_array(model, labelled, tta=tta, batch_size=batch_size, seed=seed, featurizer=featurizer)
    out = metrics(p, y)
    if plot:
        _scatter_png(plot, p, y, out, model.name)
    return out


# ----------------------------------------------------------------------------------------------- training

class TrainStep:
    """Jitted Adam(W) step on a masked MSE; ``traces`` counts compilations (one per batch shape)."""

    def __init__(self, module, tx):
        self.traces = 0
        self.tx = tx

        def loss_fn(params, grids, y, mask, key):
            pred = module.apply(params, grids, train=True, rngs={"dropout": key})
            return jnp.sum(mask * (pred - y) ** 2) / jnp.maximum(jnp.sum(mask), 1.0)

        def step(params, opt_state, grids, y, mask, key):
            self.traces += 1  # Python side effect: runs only while tracing
            loss, grads = jax.value_and_grad(loss_fn)(params, grids, y, mask, key)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self._step = jax.jit(step, donate_argnums=(0, 1))

    def __call__(self, params, opt_state, grids, y, mask, key):
        return self._step(params, opt_state, jnp.asarray(grids, jnp.float32), jnp.asarray(y, jnp.float32),
                          jnp.asarray(mask, jnp.float32), key)


def make_optimizer(lr: float, weight_decay: float, grad_clip: Optional[float] = 10.0):
    """AdamW (decoupled weight decay; weight_decay=0 is Adam), after global-norm gradient clipping."""
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    return optax.chain(*parts, optax.adamw(lr, weight_decay=weight_decay))


def train_step_for(module, lr: float, weight_decay: float, grad_clip: Optional[float]) -> TrainStep:
    """The process-wide TrainStep for this model configuration and optimizer (compiled at most once)."""
    k = ("step", _module_key(module), float(lr), float(weight_decay), grad_clip and float(grad_clip))
    if k not in _JIT_CACHE:
        _JIT_CACHE[k] = TrainStep(module, make_optimizer(lr, weight_decay, grad_clip))
    return _JIT_CACHE[k]


def _write_log(out_dir: str, history: list[dict]) -> None:
    if not history:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    _atomic_write(os.path.join(out_dir, "log.csv"), buf.getvalue().encode())


def _curve_png(out_dir: str, history: list[dict], title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_rmse"] for h in history], "o-", ms=3, label="train (augmented)")
    ax.plot(ep, [h["valid_rmse"] for h in history], "s-", ms=3, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("RMSE (pK)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _atomic_write(os.path.join(out_dir, "learning_curve.png"), buf.getvalue())


def _save_train_state(path: str, params, opt_state, meta: dict) -> None:
    blob = flax.serialization.msgpack_serialize({
        "params": flax.serialization.to_state_dict(params),
        "opt_state": flax.serialization.to_state_dict(opt_state),
        "meta": json.dumps(meta)})
    _atomic_write(path, blob)


def _load_train_state(path: str, params_template, opt_template):
    try:
        with open(path, "rb") as handle:
            raw = flax.serialization.msgpack_restore(handle.read())
        meta = json.loads(raw["meta"])
        params = flax.serialization.from_state_dict(params_template, raw["params"])
        opt_state = flax.serialization.from_state_dict(opt_template, raw["opt_state"])
    except Exception as exc:  # damage or a different model/optimizer: the checkpoint cannot be continued
        raise InputError(f"{path}: cannot resume from this checkpoint ({exc.__class__.__name__}: {exc})") from None
    params = jax.tree_util.tree_map(lambda t, a: jnp.asarray(a, t.dtype), params_template, params)
    opt_state = jax.tree_util.tree_map(lambda t, a: jnp.asarray(a, jnp.asarray(t).dtype), opt_template, opt_state)
    return params, opt_state, meta


def train(model_name: str, train_complexes, valid_complexes, out_dir: str, *, epochs: int = 50,
          batch_size: int = 16, lr: float = 1e-4, weight_decay: float = 1e-4, patience: int = 10, seed: int = 0,
          augment: bool = True, resume: bool = False, progress: bool = True, max_minutes: Optional[float] = None,
          extra_poses=None, hyper: Optional[dict] = None, featurizer: Optional[Featurizer] = None,
          grad_clip: Optional[float] = 10.0, scheme: str = "kdeep") -> dict:
    """Train ``models.build(model_name, **hyper)`` to regress pK; return a summary dict.

    Args:
      train_complexes, valid_complexes: sequences of Complex (anything the featurizer accepts, with ``name``
        and ``pK``); items with a NaN/None pK are left out.
      out_dir: run directory (layout in the module docstring); created if needed.
      epochs: total epochs (a resumed run continues up to this number).
      batch_size: fixed batch shape; the last batch is zero-padded and masked, so the step compiles once.
      lr, weight_decay, grad_clip: AdamW settings (see make_optimizer).
      patience: stop when validation RMSE has not improved for this many epochs.
      seed: drives initialization, shuffling, augmentation and dropout (each derived from (seed, epoch, batch),
        so a resumed run repeats exactly what an uninterrupted one would have done).
      augment: random rotation + translation of every training grid, drawn afresh each epoch.
      resume: continue from ``out_dir/last/train_state.msgpack`` if present (its seed and target
        normalization win over the arguments); starts afresh when there is none.
      progress: tqdm bar on stderr.
      max_minutes: stop after the first epoch that ends past this wall-clock budget.
      extra_poses: more Complex objects (e.g. ``augment_md.poses_from_trajectory``) added to training only.
      hyper: model hyperparameters (models.build keywords).
      featurizer: f(complexes, key, augment) -> grids; default featurize.batch_grids.
      scheme: atom-typing scheme the complexes were made with; stored in config.json so evaluate/predict
        type new complexes the same way.

    Returns: {'epochs' (completed, total), 'valid_pearson', 'valid_rmse' (at the best epoch), 'valid_spearman',
      'valid_mae', 'best_epoch', 'stopped' ('epochs' | 'early' | 'time'), 'out_dir', 'model_dir', 'n_train',
      'n_valid', 'samples_per_s' (training steps, compile excluded), 'train_step_traces' (compilations of the
      step during this call: 1, or 0 when an earlier call in the process compiled the same configuration),
      'resumed_from', 'history'}.
    """
    featurizer = featurizer or default_featurizer
    hyper = dict(hyper or {})
    module = affinity_models.build(model_name, **hyper)
    train_set = _labelled(list(train_complexes) + list(extra_poses or []))
    valid_set = _labelled(valid_complexes or [])
    if not train_set:
        raise InputError("train: no training complex has a finite pK")
    if batch_size < 1 or epochs < 0:
        raise InputError("train: batch_size must be >= 1 and epochs >= 0")
    os.makedirs(out_dir, exist_ok=True)
    last_dir, best_dir = os.path.join(out_dir, "last"), os.path.join(out_dir, "best")
    state_path = os.path.join(last_dir, "train_state.msgpack")

    y_train = np.array([float(c.pK) for c in train_set])
    y_valid = np.array([float(c.pK) for c in valid_set])
    probe = np.asarray(featurizer(train_set[:1], jax.random.PRNGKey(0), False), np.float32)
    in_channels = int(probe.shape[-1])
    step = train_step_for(module, lr, weight_decay, grad_clip)
    params = init_params(module, jax.random.PRNGKey(seed), probe)
    opt_state = step.tx.init(params)
    meta = {"seed": seed, "target_mean": float(y_train.mean()), "target_std": float(max(y_train.std(), 1e-3)),
            "epoch": 0, "best_rmse": float("inf"), "best_epoch": 0, "bad_epochs": 0, "history": [],
            "model": affinity_models.model_config(module)}
    resumed_from = None
    if resume and os.path.exists(state_path):
        params, opt_state, saved = _load_train_state(state_path, params, opt_state)
        if saved.get("model") != meta["model"]:
            raise InputError(f"{state_path}: checkpoint is for {saved.get('model')}, not {meta['model']}")
        meta = saved
        resumed_from = meta["epoch"]
    seed = meta["seed"]
    config = {"format": FORMAT, **meta["model"], "scheme": scheme, "in_channels": in_channels,
              "target_mean": meta["target_mean"], "target_std": meta["target_std"],
              "grid_shape": list(probe.shape[1:])}
    mean, std = meta["target_mean"], meta["target_std"]
    traces_before = step.traces
    model = AffinityModel(module, params, config)
    root = jax.random.PRNGKey(seed)
    n_batches = math.ceil(len(train_set) / batch_size)
    t_start = time.perf_counter()
    step_time, step_samples = 0.0, 0
    stopped = "epochs"
    if meta["bad_epochs"] >= patience and meta["epoch"] > 0:
        stopped = "early"

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=max(epochs - meta["epoch"], 0) * n_batches, unit="batch", file=sys.stderr,
                   dynamic_ncols=True, desc=f"train {model_name}")
    try:
        while stopped == "epochs" and meta["epoch"] < epochs:
            epoch = meta["epoch"] + 1
            t_epoch = time.perf_counter()
            key_epoch = jax.random.fold_in(root, epoch)
            order = np.random.default_rng([seed, epoch]).permutation(len(train_set))
            sq_sum, count = 0.0, 0
            for b in range(n_batches):
                idx = order[b * batch_size:(b + 1) * batch_size]
                k_feat, k_drop = jax.random.split(jax.random.fold_in(key_epoch, b))
                grids, mask = _padded_batch(featurizer, [train_set[i] for i in idx], k_feat, augment, batch_size)
                y = np.zeros(batch_size, np.float32)
                y[:len(idx)] = (y_train[idx] - mean) / std
                t0 = time.perf_counter()
                traces = step.traces
                params, opt_state, loss = step(params, opt_state, grids, y, mask, k_drop)
                loss = float(loss)
                if step.traces == traces:  # compile time is not throughput
                    step_time += time.perf_counter() - t0
                    step_samples += len(idx)
                sq_sum += loss * len(idx)
                count += len(idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({"epoch": epoch, "loss": f"{loss:.3g}"}, refresh=False)
            model.params = params
            pv = _predict_array(model, valid_set, batch_size=batch_size, seed=seed, featurizer=featurizer)
            m = metrics(pv, y_valid)
            train_rmse = math.sqrt(sq_sum / max(count, 1)) * std
            meta["history"].append({"epoch": epoch, "train_rmse": train_rmse, "valid_rmse": m["rmse"],
                                    "valid_pearson": m["pearson"], "valid_spearman": m["spearman"],
                                    "valid_mae": m["mae"], "seconds": time.perf_counter() - t_epoch})
            meta["epoch"] = epoch
            # no validation set: the training RMSE decides what "best" is
            score = m["rmse"] if valid_set else train_rmse
            improved = score < meta["best_rmse"]
            if improved:
                meta["best_rmse"], meta["best_epoch"], meta["bad_epochs"] = score, epoch, 0
            else:
                meta["bad_epochs"] += 1
            epoch_cfg = {**config, "epoch": epoch, "valid_rmse": m["rmse"], "valid_pearson": m["pearson"]}
            if improved:
                _write_model_dir(best_dir, epoch_cfg, params)
            _write_model_dir(last_dir, epoch_cfg, params)
            _save_train_state(state_path, params, opt_state, meta)
            _write_log(out_dir, meta["history"])
            _curve_png(out_dir, meta["history"], f"{model_name}  (best epoch {meta['best_epoch']})")
            if bar is not None:
                bar.set_postfix({"epoch": epoch, "valid_rmse": f"{m['rmse']:.3f}"}, refresh=True)
            if meta["bad_epochs"] >= patience:
                stopped = "early"
            elif max_minutes is not None and time.perf_counter() - t_start > 60.0 * max_minutes:
                stopped = "time"
    finally:
        if bar is not None:
            bar.close()

    best = next((h for h in meta["history"] if h["epoch"] == meta["best_epoch"]), None)
    nan = float("nan")
    return {"epochs": meta["epoch"], "valid_pearson": best["valid_pearson"] if best else nan,
            "valid_rmse": best["valid_rmse"] if best else nan,
            "valid_spearman": best["valid_spearman"] if best else nan,
            "valid_mae": best["valid_mae"] if best else nan, "best_epoch": meta["best_epoch"],
            "stopped": stopped, "out_dir": out_dir, "model_dir": best_dir, "n_train": len(train_set),
            "n_valid": len(valid_set), "samples_per_s": step_samples / step_time if step_time > 0 else nan,
            "train_step_traces": step.traces - traces_before, "resumed_from": resumed_from, "history": meta["history"]}
