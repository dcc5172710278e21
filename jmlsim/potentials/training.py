"""Training and evaluating neural potentials on energies and forces.

Loss per batch (dimensionless; both parts divided by the potential's ``scale`` so the weights are comparable
across datasets)::

    L = w_E * mean_frames ((E_pred - E_ref) / (n_atoms * scale))^2 + w_F * mean_components ((F_pred - F_ref) / scale)^2

E is the energy after subtracting the per-element shifts (fitted on the training set; done in float64 on the
host, so a float32 network never sees the large absolute energies). Optimiser: AdamW after global-norm gradient
clipping, with warm-up + cosine decay or reduce-on-plateau (on the epoch-mean training loss). An exponential
moving average (EMA) of the weights is validated after every epoch; the best EMA model is saved as a
NeuralPotential directory ``out_dir/model`` and early stopping watches its validation loss.

Files in ``out_dir``::

    model/                   best EMA model (config.json + params.msgpack), what ``evaluate_files`` loads
    checkpoint_last.msgpack  full training state after the last epoch (weights, EMA, optimiser, epoch), resumable
    checkpoint_best.msgpack  the same at the best epoch
    log.csv                  epoch, lr, train loss, valid loss, valid energy/force MAE (meV, meV/Å), seconds
    learning_curve.png       losses and MAEs per epoch
    result.json              the dict ``train`` returns

Checkpoints are Flax msgpack (no pickle) written atomically; batch order is a function of (seed, epoch), so a
resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import sys
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmlsim import units
from jmlsim.errors import InputError
from jmlsim.io.datasets import (QMDataset, check_elements_known, element_counts, element_shifts, energy_scale,
                                load_dataset)
from jmlsim.potentials.potential import NeuralPotential, _atomic_write, init_params, load_potential

CHECKPOINT_FORMAT = "jmlsim-train-1"
SCHEDULES = ("warmup-cosine", "plateau")
LOG_FIELDS = ("epoch", "lr", "train_loss", "valid_loss", "valid_energy_mae_mev",
              "valid_force_mae_mev_per_angstrom", "seconds")

MEV_PER_KJ_PER_MOL = units.MEV_PER_KJ_PER_MOL
# kJ/mol/nm -> meV/Å: meV per kJ/mol, and 1/nm = 0.1/Å
MEV_PER_ANGSTROM_PER_KJ_PER_MOL_PER_NM = units.MEV_PER_KJ_PER_MOL * units.NM_PER_ANGSTROM


class TrainState(NamedTuple):
    """params: network weights; ema: their moving average; opt_state: optax state; step: () int32."""

    params: Any
    ema: Any
    opt_state: Any
    step: jnp.ndarray


class Arrays(NamedTuple):
    """A dataset prepared for the network: species (F, N) int32, positions (F, N, 3) nm, residual energy (F,)
    kJ/mol (shifts removed), forces (F, N, 3) kJ/mol/nm, atom_mask (F, N), box (F, 3, 3) or None."""

    species: np.ndarray
    positions: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    atom_mask: np.ndarray
    box: Optional[np.ndarray]


def _z_key(dataset: QMDataset) -> str:
    return "nuclear_charges" if dataset.source.endswith(".npz") else "atomic_numbers"


def prepare(potential: NeuralPotential, dataset: QMDataset, dtype) -> Arrays:
    """Species indices and shift-free energies in ``dtype`` (InputError for elements the model lacks)."""
    check_elements_known(dataset.atomic_numbers, dataset.atom_mask, potential.elements, dataset.source,
                         _z_key(dataset))
    species = np.asarray(potential.species(dataset.atomic_numbers, dataset.atom_mask), np.int32)
    residual = dataset.energy - element_counts(dataset, potential.elements) @ potential.shifts
    return Arrays(species=species, positions=dataset.positions.astype(dtype), energy=residual.astype(dtype),
                  forces=np.where(dataset.atom_mask[..., None], dataset.forces, 0.0).astype(dtype),
                  atom_mask=dataset.atom_mask.copy(), box=None if dataset.box is None else dataset.box.astype(dtype))


def batches(arrays: Arrays, batch_size: int, shuffle: bool, seed: int):
    """Fixed-shape batches (``Arrays`` of B frames) plus a (B,) frame mask; the last is padded with frame-0
    copies that the mask switches off. The order is a function of ``seed`` only."""
    n = arrays.energy.shape[0]
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        real = len(idx)
        idx = np.concatenate([idx, np.full(batch_size - real, order[0])])
        yield Arrays(*[None if a is None else a[idx] for a in arrays]), np.arange(batch_size) < real


def _predict(potential: NeuralPotential, params, batch: Arrays, scale):
    """(B,) network energies (no shifts) and (B, N, 3) forces; ``scale`` (kJ/mol) is traced, not static, so
    one compiled step serves any training set."""
    pot = potential.replace(params=params, scale=1.0)

    def one(r, s, m, b):
        e, g = jax.value_and_grad(lambda x: scale * pot.network_energy(x, s, m, b))(r)
        return e, -g

    axes = (0, 0, 0, None if batch.box is None else 0)
    return jax.vmap(one, in_axes=axes)(batch.positions, batch.species, batch.atom_mask, batch.box)


def _errors(potential, params, batch: Arrays, frame_mask, scale, energy_weight, force_weight):
    """Loss and per-batch error sums: (loss, dict of sums over real frames / force components)."""
    dtype = batch.positions.dtype
    scale = jnp.asarray(scale, dtype)
    energy, forces = _predict(potential, params, batch, scale)
    fm = frame_mask.astype(dtype)
    atoms = batch.atom_mask & frame_mask[:, None]
    n_atoms = jnp.maximum(batch.atom_mask.sum(axis=1), 1).astype(dtype)
    de = energy - batch.energy
    df = jnp.where(atoms[..., None], forces - batch.forces, 0.0)
    n_frames = jnp.maximum(fm.sum(), 1.0)
    n_comp = jnp.maximum(3.0 * atoms.sum().astype(dtype), 1.0)
    e_loss = jnp.sum(fm * (de / (n_atoms * scale)) ** 2) / n_frames
    f_loss = jnp.sum((df / scale) ** 2) / n_comp
    loss = energy_weight * e_loss + force_weight * f_loss
    sums = {"e_abs": jnp.sum(fm * jnp.abs(de)), "e_sq": jnp.sum(fm * de**2), "f_abs": jnp.sum(jnp.abs(df)),
            "f_sq": jnp.sum(df**2), "frames": fm.sum(), "components": 3.0 * atoms.sum().astype(dtype),
            "loss_sum": loss * fm.sum()}
    return loss, sums


def _make_optimizer(schedule: str, lr: float, total_steps: int, steps_per_epoch: int, clip: Optional[float],
                    weight_decay: float, warmup_fraction: float, plateau_patience: int, plateau_factor: float):
    if schedule == "warmup-cosine":
        warmup = max(1, int(round(warmup_fraction * total_steps)))
        lr_fn = optax.warmup_cosine_decay_schedule(init_value=lr * 0.01, peak_value=lr, warmup_steps=warmup,
                                                   decay_steps=max(total_steps, warmup + 1), end_value=lr * 0.01)
        parts = [optax.adamw(lr_fn, weight_decay=weight_decay)]
    elif schedule == "plateau":
        lr_fn = None
        # accumulation over one epoch: the plateau is judged on the epoch-mean training loss
        parts = [optax.adamw(lr, weight_decay=weight_decay),
                 optax.contrib.reduce_on_plateau(factor=plateau_factor, patience=plateau_patience,
                                                 accumulation_size=steps_per_epoch)]
    else:
        raise InputError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    if clip:
        parts.insert(0, optax.clip_by_global_norm(clip))
    return optax.chain(*parts), lr_fn


def _current_lr(opt_state, lr: float, lr_fn, step: int) -> float:
    if lr_fn is not None:
        return float(lr_fn(step))
    return lr * float(opt_state[-1].scale)


def _concrete(tree, dtype=None):
    """Strongly typed device arrays (weak types would give the jitted step a second signature)."""
    def cast(x):
        x = np.asarray(x)
        if dtype is not None and np.issubdtype(x.dtype, np.floating):
            x = x.astype(dtype)
        return jnp.asarray(x)
    return jax.tree_util.tree_map(cast, tree)


def _signature(tree):
    return jax.tree_util.tree_map(lambda x: (x.shape, x.dtype, getattr(x, "weak_type", False)), tree)


# ---------------------------------------------------------------------------------------------- checkpoints

def _save_checkpoint(path: str, state: TrainState, meta: dict) -> None:
    from flax import serialization

    blob = {"state": serialization.to_state_dict(jax.device_get(state)),
            "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    _atomic_write(path, serialization.msgpack_serialize(blob))


def _load_checkpoint(path: str, template: TrainState) -> tuple[TrainState, dict]:
    from flax import serialization

    try:
        with open(path, "rb") as handle:
            blob = serialization.msgpack_restore(handle.read())
        meta = json.loads(bytes(np.asarray(blob["meta"], np.uint8)).decode())
        state = serialization.from_state_dict(template, blob["state"])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: not a readable training checkpoint ({exc})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: key 'format' is {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    if _signature(_concrete(state)) != _signature(template):
        raise InputError(f"{path}: checkpoint arrays do not match the model being trained")
    return _concrete(state), meta


def _read_log(path: str, last_epoch: int) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) <= last_epoch]
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items()} for r in rows]


def _write_log(path: str, rows: list[dict]) -> None:
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=LOG_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (r[k] if k == "epoch" else f"{r[k]:.8g}") for k in LOG_FIELDS})
    _atomic_write(path, text.getvalue().encode())


def plot_learning_curve(rows: list[dict], path: str) -> None:
    """Two panels: train/valid loss (log scale) and valid energy/force MAE per epoch; written as a PNG."""
    # A bare Figure with the Agg canvas: no pyplot, so the caller's backend (e.g. a notebook's inline one) is
    # left alone and no window opens.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.semilogy(epochs, [r["train_loss"] for r in rows], label="train")
    ax1.semilogy(epochs, [r["valid_loss"] for r in rows], label="valid (EMA)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(epochs, [r["valid_energy_mae_mev"] for r in rows], label="energy MAE (meV)")
    ax2.plot(epochs, [r["valid_force_mae_mev_per_angstrom"] for r in rows], label="force MAE (meV/Å)")
    ax2.set_xlabel("epoch")
    ax2.set_yscale("log")
    ax2.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- training

def train(model_name: str, train_set: QMDataset, valid_set: QMDataset, out_dir: str, *,
          hyper: Optional[dict] = None, epochs: int = 100, batch_size: int = 8, lr: float = 1e-3,
          energy_weight: float = 1.0, force_weight: float = 10.0, schedule: str = "warmup-cosine",
          ema_decay: float = 0.99, clip: Optional[float] = 10.0, patience: Optional[int] = 30, seed: int = 0,
          progress: bool = True, resume: bool = False, max_minutes: Optional[float] = None,
          float64: bool = False, weight_decay: float = 0.0, warmup_fraction: float = 0.05,
          plateau_patience: int = 5, plateau_factor: float = 0.5) -> dict:
    """Train architecture ``model_name`` on ``train_set``, validating the EMA weights on ``valid_set``.

    Args:
      model_name: 'ani', 'schnet', 'painn' or 'nequip'; hyper: its hyper-parameters (``build_model``).
      epochs: total epochs (a resumed run counts the ones already done). batch_size: frames per step.
      lr: peak learning rate. energy_weight, force_weight: loss weights (see the module docstring).
      schedule: 'warmup-cosine' or 'plateau'. ema_decay: EMA decay per step (0 = no averaging).
      clip: global gradient-norm clip, or None. patience: epochs without validation improvement before
        stopping, or None. seed: initialisation and batch order. progress: tqdm bar on stderr.
      resume: continue from ``out_dir/checkpoint_last.msgpack`` (same settings required).
      max_minutes: stop after the first epoch that ends past this wall time (checkpoint kept; resumable).
      float64: train in double precision (needs jax_enable_x64); default float32.
    Returns:
      {'epochs': epochs done, 'best_epoch', 'energy_mae_mev', 'force_mae_mev_per_angstrom', 'energy_rmse_mev',
       'force_rmse_mev_per_angstrom' (validation set, best EMA model), 'valid_loss', 'train_seconds',
       'stopped' ('epochs' | 'early_stopping' | 'time'), 'train_step_compiles', 'model_dir'}.
    """
    t_start = time.perf_counter()
    hyper = dict(hyper or {})
    if len(train_set) == 0 or len(valid_set) == 0:
        raise InputError(f"{train_set.source if len(train_set) == 0 else valid_set.source}: no frames")
    if epochs < 1 or batch_size < 1:
        raise InputError(f"epochs and batch size must be positive (got {epochs}, {batch_size})")
    if schedule not in SCHEDULES:
        raise InputError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    if float64 and not jax.config.jax_enable_x64:
        raise InputError("float64 training needs JAX_ENABLE_X64=1 (jax_enable_x64)")
    dtype = np.float64 if float64 else np.float32
    from jmlsim.potentials.architectures import build_model, model_config

    elements = train_set.elements
    check_elements_known(valid_set.atomic_numbers, valid_set.atom_mask, elements, valid_set.source,
                         _z_key(valid_set) + " (element absent from the training set)")
    module = build_model(model_name, len(elements), **hyper)
    shifts = element_shifts(train_set, elements)
    scale = energy_scale(train_set, elements, shifts, use_forces=force_weight > 0)
    settings = {"model": model_name, "hyper": hyper, "batch_size": batch_size, "lr": lr,
                "energy_weight": energy_weight, "force_weight": force_weight, "schedule": schedule,
                "ema_decay": ema_decay, "clip": clip, "seed": seed, "float64": float64,
                "weight_decay": weight_decay, "train_frames": len(train_set), "valid_frames": len(valid_set),
                "train_source": train_set.source, "valid_source": valid_set.source}
    settings = json.loads(json.dumps(settings))  # JSON types (tuples -> lists), as a checkpoint gives them back
    potential = NeuralPotential(config=model_config(module), params=None, elements=elements, shifts=shifts,
                                scale=scale, cutoff=module.cutoff, metadata={"training": settings})
    train_arrays = prepare(potential, train_set, dtype)
    valid_arrays = prepare(potential, valid_set, dtype)
    steps_per_epoch = -(-len(train_set) // batch_size)
    stripped = potential.replace(params=None, metadata={}, shifts=np.zeros(len(elements)), scale=1.0)
    train_step, eval_step, optimizer, lr_fn = _compiled_steps(
        stripped.tree_flatten()[1], schedule, float(lr), epochs * steps_per_epoch, steps_per_epoch, clip,
        float(weight_decay), float(warmup_fraction), int(plateau_patience), float(plateau_factor),
        float(energy_weight), float(force_weight), float(ema_decay), np.dtype(dtype).name)
    compiles_before = train_step._cache_size()
    scale_arg = jnp.asarray(scale, dtype)
    params = init_params(module, jax.random.PRNGKey(seed), dtype)
    state = _concrete(TrainState(params=params, ema=params, opt_state=optimizer.init(params),
                                 step=np.int32(0)), dtype)

    os.makedirs(out_dir, exist_ok=True)
    last_path = os.path.join(out_dir, "checkpoint_last.msgpack")
    best_path = os.path.join(out_dir, "checkpoint_best.msgpack")
    log_path = os.path.join(out_dir, "log.csv")
    model_dir = os.path.join(out_dir, "model")
    start_epoch, best_loss, best_epoch, bad_epochs, elapsed_before = 1, math.inf, 0, 0, 0.0
    rows: list[dict] = []
    if resume:
        if not os.path.exists(last_path):
            raise InputError(f"{last_path}: no checkpoint to resume from")
        state, meta = _load_checkpoint(last_path, state)
        for key, value in settings.items():
            if key not in ("train_source", "valid_source") and meta["settings"].get(key) != value:
                raise InputError(f"{last_path}: written with {key} = {meta['settings'].get(key)!r}, "
                                 f"this run has {value!r}")
        if list(meta["elements"]) != list(elements) or meta["shifts"] != shifts.tolist():
            raise InputError(f"{last_path}: written for a different training set (elements or shifts differ)")
        start_epoch = meta["epoch"] + 1
        best_loss, best_epoch, bad_epochs = meta["best_loss"], meta["best_epoch"], meta["bad_epochs"]
        elapsed_before = meta["train_seconds"]
        rows = _read_log(log_path, meta["epoch"])

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=epochs, initial=start_epoch - 1, unit="epoch", file=sys.stderr, dynamic_ncols=True,
                   desc=f"train {model_name}")
    stopped = "epochs"
    signature = _signature(state)
    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, epochs + 1):
            t_epoch = time.perf_counter()
            losses, weights = [], []
            for batch, frame_mask in batches(train_arrays, batch_size, shuffle=True, seed=seed * 100003 + epoch):
                state, loss = train_step(state, _concrete(batch), jnp.asarray(frame_mask), scale_arg)
                losses.append(loss)
                weights.append(frame_mask.sum())
            if _signature(state) != signature:  # a changed dtype or weak type would recompile every epoch
                raise RuntimeError(f"train step changed the state's types: {_signature(state)} != {signature}")
            train_loss = float(np.average(np.asarray(jax.device_get(losses), np.float64), weights=weights))
            metrics = _accumulate(eval_step, state.ema, valid_arrays, batch_size, scale_arg)
            valid_loss = metrics["loss"]
            if not math.isfinite(train_loss) or not math.isfinite(valid_loss):
                raise InputError(f"training diverged at epoch {epoch} (loss {train_loss:g}); lower --lr")
            step = int(state.step)
            rows.append({"epoch": epoch, "lr": _current_lr(state.opt_state, lr, lr_fn, step),
                         "train_loss": train_loss, "valid_loss": valid_loss,
                         "valid_energy_mae_mev": metrics["energy_mae_mev"],
                         "valid_force_mae_mev_per_angstrom": metrics["force_mae_mev_per_angstrom"],
                         "seconds": time.perf_counter() - t_epoch})
            improved = valid_loss < best_loss
            if improved:
                best_loss, best_epoch, bad_epochs = valid_loss, epoch, 0
            else:
                bad_epochs += 1
            elapsed = elapsed_before + time.perf_counter() - t_start
            meta = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "best_loss": best_loss, "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs, "train_seconds": elapsed, "settings": settings,
                    "elements": list(elements), "shifts": shifts.tolist()}
            if improved:
                potential.replace(params=jax.device_get(state.ema),
                                  metadata={"training": settings, "epoch": epoch,
                                            "valid_loss": valid_loss}).save(model_dir)
                _save_checkpoint(best_path, state, meta)
            _save_checkpoint(last_path, state, meta)
            _write_log(log_path, rows)
            if bar is not None:
                bar.set_postfix({"loss": f"{train_loss:.3g}", "E_MAE": f"{metrics['energy_mae_mev']:.3g} meV",
                                 "F_MAE": f"{metrics['force_mae_mev_per_angstrom']:.3g} meV/Å"}, refresh=False)
                bar.update(1)
            if patience is not None and bad_epochs >= patience:
                stopped = "early_stopping"
                break
            if max_minutes is not None and (time.perf_counter() - t_start) / 60.0 >= max_minutes and epoch < epochs:
                stopped = "time"
                break
    finally:
        if bar is not None:
            bar.close()
    if rows:
        plot_learning_curve(rows, os.path.join(out_dir, "learning_curve.png"))
    best = load_potential(model_dir)
    # the saved model, through the already compiled validation step
    final = _accumulate(eval_step, _concrete(best.params, dtype), valid_arrays, batch_size, scale_arg)
    result = {"epochs": epoch, "best_epoch": best_epoch,
              "energy_mae_mev": final["energy_mae_mev"],
              "force_mae_mev_per_angstrom": final["force_mae_mev_per_angstrom"],
              "energy_rmse_mev": final["energy_rmse_mev"],
              "force_rmse_mev_per_angstrom": final["force_rmse_mev_per_angstrom"],
              "valid_loss": best_loss, "train_seconds": elapsed_before + time.perf_counter() - t_start,
              "stopped": stopped, "train_step_compiles": int(train_step._cache_size() - compiles_before),
              "model_dir": model_dir}
    _atomic_write(os.path.join(out_dir, "result.json"), (json.dumps(result, indent=2) + "\n").encode())
    return result


@functools.lru_cache(maxsize=8)
def _compiled_steps(potential_aux, schedule, lr, total_steps, steps_per_epoch, clip, weight_decay,
                    warmup_fraction, plateau_patience, plateau_factor, ew, fw, ema_decay, dtype_name):
    """(train_step, eval_step, optimizer, lr_fn), jitted, cached on every setting they depend on, so repeated or
    resumed trainings in one process compile once."""
    potential = NeuralPotential.tree_unflatten(potential_aux, [None])
    dtype = np.dtype(dtype_name)
    optimizer, lr_fn = _make_optimizer(schedule, lr, total_steps, steps_per_epoch, clip, weight_decay,
                                       warmup_fraction, plateau_patience, plateau_factor)

    def step_fn(state: TrainState, batch: Arrays, frame_mask, scale):
        (loss, _), grads = jax.value_and_grad(
            lambda p: _errors(potential, p, batch, frame_mask, scale, ew, fw), has_aux=True)(state.params)
        if schedule == "plateau":
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params, value=loss)
        else:
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        t = state.step.astype(dtype)
        # warm-started EMA: early steps average over fewer updates
        decay = jnp.minimum(jnp.asarray(ema_decay, dtype), (1.0 + t) / (10.0 + t))
        ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, params)
        return TrainState(params, ema, opt_state, state.step + 1), loss

    def eval_fn(params, batch: Arrays, frame_mask, scale):
        return _errors(potential, params, batch, frame_mask, scale, ew, fw)[1]

    return jax.jit(step_fn), jax.jit(eval_fn), optimizer, lr_fn


def _accumulate(eval_step, params, arrays: Arrays, batch_size: int, scale) -> dict:
    """Sum per-batch error sums in float64 on the host; MAE/RMSE in meV and meV/Å, mean loss."""
    total: dict = {}
    for batch, frame_mask in batches(arrays, batch_size, shuffle=False, seed=0):
        sums = jax.device_get(eval_step(params, _concrete(batch), jnp.asarray(frame_mask), scale))
        for k, v in sums.items():
            total[k] = total.get(k, 0.0) + float(v)
    n, c = max(total["frames"], 1.0), max(total["components"], 1.0)
    return {"n": int(total["frames"]), "loss": total["loss_sum"] / n,
            "energy_mae_mev": total["e_abs"] / n * MEV_PER_KJ_PER_MOL,
            "energy_rmse_mev": math.sqrt(total["e_sq"] / n) * MEV_PER_KJ_PER_MOL,
            "force_mae_mev_per_angstrom": total["f_abs"] / c * MEV_PER_ANGSTROM_PER_KJ_PER_MOL_PER_NM,
            "force_rmse_mev_per_angstrom": math.sqrt(total["f_sq"] / c) * MEV_PER_ANGSTROM_PER_KJ_PER_MOL_PER_NM}


def _param_dtype(potential: NeuralPotential):
    leaves = jax.tree_util.tree_leaves(potential.params)
    return np.dtype(leaves[0].dtype) if leaves else np.dtype(np.float32)


def evaluate(potential: NeuralPotential, dataset: QMDataset, batch_size: int = 32) -> dict:
    """Errors of ``potential`` on ``dataset`` (energies over frames, forces over Cartesian components of real
    atoms): {'n', 'energy_mae_mev', 'force_mae_mev_per_angstrom', 'energy_rmse_mev',
    'force_rmse_mev_per_angstrom'}. Computed in the parameters' precision; sums in float64."""
    if len(dataset) == 0:
        raise InputError(f"{dataset.source}: no frames")
    arrays = prepare(potential, dataset, _param_dtype(potential))
    stripped = potential.replace(params=None, metadata={}, shifts=np.zeros(len(potential.elements)), scale=1.0)
    scale = jnp.asarray(potential.scale, arrays.positions.dtype)
    out = _accumulate(_eval_jit(stripped.tree_flatten()[1]), potential.params, arrays, batch_size, scale)
    return {k: out[k] for k in ("n", "energy_mae_mev", "force_mae_mev_per_angstrom", "energy_rmse_mev",
                                "force_rmse_mev_per_angstrom")}


@functools.lru_cache(maxsize=8)
def _eval_jit(potential_aux):
    stripped = NeuralPotential.tree_unflatten(potential_aux, [None])
    return jax.jit(lambda params, batch, frame_mask, scale:
                   _errors(stripped, params, batch, frame_mask, scale, 1.0, 1.0)[1])


# ---------------------------------------------------------------------------------------------- CLI helpers

def train_from_files(train_path: str, valid_path: Optional[str], model_name: str, out_dir: str,
                     valid_fraction: float = 0.05, **kwargs) -> dict:
    """``jmlsim potential train``: read the datasets (.npz rMD17 or .h5), split off ``valid_fraction`` of the
    training frames when no validation file is given, and ``train``. kwargs go to ``train``."""
    train_set = load_dataset(train_path)
    if valid_path:
        valid_set = load_dataset(valid_path)
    else:
        train_set, valid_set = train_set.split(valid_fraction, seed=kwargs.get("seed", 0))
    return train(model_name, train_set, valid_set, out_dir, **kwargs)


def evaluate_files(model: str, data_path: str, batch_size: int = 32) -> dict:
    """``jmlsim potential evaluate``: a potential directory or pretrained name, on a dataset file."""
    return evaluate(load_potential(model), load_dataset(data_path), batch_size)
