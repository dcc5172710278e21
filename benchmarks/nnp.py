"""Neural-network potentials on aspirin (21 atoms): jmlsim's four architectures beside JAX MD's, same run.

``speed`` (default) measures, per architecture (default hyper-parameters, float32, one CPU/GPU device):

* energy + forces latency (ms, median of repeated jitted calls on one aspirin geometry);
* training throughput (samples/s): one optax step (energy + force loss, gradients through the forces) on a
  batch of ``--batch`` rMD17 frames, median over ``--train-steps`` steps after compilation;
* MD throughput (steps/s): velocity Verlet at 0.5 fs through ``jmlsim.simulation.Simulation`` in chunks of
  ``--md-steps`` steps (the first chunk compiles and is not timed).

JAX MD 0.2.29's NN potentials are measured the same way in the same process as the reference:
``jax_md.energy.behler_parrinello`` (its default symmetry functions and MLP) and
``jax_md.energy.nequip_neighbor_list`` with its default config (1.08 M parameters) — energy+forces, an optax
Adam step on the same batch (neighbor lists updated per frame inside the step), and ``jax_md.simulate.nve``
in a jitted ``fori_loop`` chunk.

``nve`` runs constant-energy MD of aspirin with a saved or shipped model (default ``rmd17-aspirin``) from
rMD17 test frame 0 with 300 K Maxwell-Boltzmann velocities, and reports the total-energy drift (linear fit,
kJ/mol/ps and per atom) and the RMS fluctuation.

Run (from the repository root)::

    python benchmarks/nnp.py                                   # all architectures + JAX MD
    python benchmarks/nnp.py --archs painn,schnet --no-jaxmd --json
    python benchmarks/nnp.py nve --ps 100 --timestep-fs 0.5    # 200,000 steps

No timing is asserted; the script only reports.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "tests", "data", "rmd17")
TRAIN = os.path.join(DATA, "rmd17_aspirin_train_01.npz")
TEST = os.path.join(DATA, "rmd17_aspirin_test_01.npz")
ARCHS = ("ani", "schnet", "painn", "nequip")
KB = 0.0083144626  # kJ/mol/K


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- jmlsim

def bench_jmlsim(arch: str, data, batch: int, train_steps: int, md_steps: int, repeats: int) -> dict:
    from jmlsim.integrators import VelocityVerlet
    from jmlsim.potentials import training
    from jmlsim.potentials.architectures import build_model, model_config
    from jmlsim.potentials.potential import NeuralPotential, _energy_and_forces, init_params
    from jmlsim.simulation import Simulation
    from jmlsim.system import System

    elements = data.elements
    module = build_model(arch, len(elements))
    params = init_params(module, jax.random.PRNGKey(0), jnp.float32)
    shifts = np.zeros(len(elements))
    pot = NeuralPotential(config=model_config(module), params=params, elements=elements, shifts=shifts,
                          scale=100.0, cutoff=module.cutoff)
    n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
    z = data.atomic_numbers[0]
    species = pot.species(z)
    x = jnp.asarray(data.positions[0], jnp.float32)
    mask = jnp.ones(len(z), bool)
    t = time.perf_counter()
    jax.block_until_ready(_energy_and_forces(pot, x, species, mask, None, None))
    ef_compile = time.perf_counter() - t
    ef_ms = 1e3 * _median_time(lambda: _energy_and_forces(pot, x, species, mask, None, None), repeats)

    # training: the same compiled step `jmlsim potential train` uses
    arrays = training.prepare(pot, data.subset(np.arange(batch * (train_steps + 1))), np.float32)
    stripped = pot.replace(params=None, metadata={}, shifts=np.zeros(len(elements)), scale=1.0)
    step, _, opt, _ = training._compiled_steps(stripped.tree_flatten()[1], "warmup-cosine", 1e-3, 1000, 100, 10.0,
                                               0.0, 0.05, 5, 0.5, 1.0, 10.0, 0.99, "float32")
    state = training._concrete(training.TrainState(params, params, opt.init(params), np.int32(0)), np.float32)
    scale = jnp.float32(100.0)
    batches = [(training._concrete(b), jnp.asarray(m)) for b, m in training.batches(arrays, batch, False, 0)]
    t = time.perf_counter()
    state, loss = step(state, *batches[0], scale)
    jax.block_until_ready(loss)
    train_compile = time.perf_counter() - t
    times = []
    for b, m in batches[1:train_steps + 1]:
        t = time.perf_counter()
        state, loss = step(state, b, m, scale)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)

    # MD: Simulation + velocity Verlet, float32
    masses = np.array([{1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999}[int(a)] for a in z])
    # an untrained network's forces can push atoms apart at once (the default NequIP's reach 1e6 kJ/mol/nm per
    # unit of output); its speed does not depend on the size of its output, so MD runs it scaled down
    term = pot.replace(scale=1e-6).as_energy_term(None, z)
    system = System(terms={"nn": term}, params={"nn": params}, masses=masses, positions=np.asarray(data.positions[0]),
                    box=None, neighbor_cutoff=None, kB=KB)
    sim = Simulation(system, VelocityVerlet(0.5e-3), kT=KB * 300.0, precision="single")
    t = time.perf_counter()
    sim.advance(md_steps)
    md_compile = time.perf_counter() - t
    t = time.perf_counter()
    sim.advance(md_steps)
    md_rate = md_steps / (time.perf_counter() - t)
    return {"engine": "jmlsim", "model": arch, "parameters": n_params, "energy_forces_ms": ef_ms,
            "train_step_s": step_s, "train_samples_per_s": batch / step_s, "md_steps_per_s": md_rate,
            "compile_s": {"energy_forces": ef_compile, "train_step": train_compile, "md_chunk": md_compile}}


# ---------------------------------------------------------------------------------------------- JAX MD

def _jaxmd_train_and_md(energy_fn, params, positions_a, energies, forces, batch, train_steps, md_steps, repeats,
                        masses, shift_fn, init_extra=None):
    """Shared timing of a JAX MD energy ``energy_fn(params, R, extra) -> scalar``: E+F, Adam step, NVE chunk."""
    import optax
    from jax_md import simulate

    extra0 = init_extra(positions_a[0]) if init_extra else None
    ef = jax.jit(jax.value_and_grad(lambda r: energy_fn(params, r, extra0)))
    r0 = jnp.asarray(positions_a[0])
    t = time.perf_counter()
    jax.block_until_ready(ef(r0))
    ef_compile = time.perf_counter() - t
    ef_ms = 1e3 * _median_time(lambda: ef(r0), repeats)

    opt = optax.adam(1e-3)
    opt_state = opt.init(params)

    def loss_fn(p, rb, eb, fb):
        def one(r, e_ref, f_ref):
            e, g = jax.value_and_grad(lambda y: energy_fn(p, y, extra0))(r)
            return (e - e_ref) ** 2, jnp.mean((-g - f_ref) ** 2)
        le, lf = jax.vmap(one)(rb, eb, fb)
        return jnp.mean(le) + 10.0 * jnp.mean(lf)

    @jax.jit
    def train_step(p, s, rb, eb, fb):
        loss, g = jax.value_and_grad(loss_fn)(p, rb, eb, fb)
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss

    def batch_at(i):
        sl = slice(i * batch, (i + 1) * batch)
        return (jnp.asarray(positions_a[sl]), jnp.asarray(energies[sl]), jnp.asarray(forces[sl]))

    t = time.perf_counter()
    params, opt_state, loss = train_step(params, opt_state, *batch_at(0))
    jax.block_until_ready(loss)
    train_compile = time.perf_counter() - t
    times = []
    for i in range(1, train_steps + 1):
        b = batch_at(i)
        t = time.perf_counter()
        params, opt_state, loss = train_step(params, opt_state, *b)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)

    # JAX MD here runs in Å, eV and amu: its time unit is Å sqrt(amu/eV) = 10.18 fs
    init, apply = simulate.nve(lambda r, **kw: energy_fn(params, r, kw.get("extra")), shift_fn, 0.5 / 10.18)
    state = init(jax.random.PRNGKey(0), r0, kT=8.617e-5 * 300.0, mass=jnp.asarray(masses, jnp.float32),
                 extra=extra0)

    @jax.jit
    def chunk(st):
        return jax.lax.fori_loop(0, md_steps, lambda i, s: apply(s, extra=extra0), st)

    t = time.perf_counter()
    state = jax.block_until_ready(chunk(state))
    md_compile = time.perf_counter() - t
    t = time.perf_counter()
    state = jax.block_until_ready(chunk(state))
    md_rate = md_steps / (time.perf_counter() - t)
    return ef_ms, step_s, md_rate, {"energy_forces": ef_compile, "train_step": train_compile, "md_chunk": md_compile}


def bench_jaxmd_bp(data, batch, train_steps, md_steps, repeats) -> dict:
    from flax import nnx
    from jax_md import energy, space

    disp, shift = space.free()
    z = data.atomic_numbers[0]
    elements = list(data.elements)
    species = jnp.asarray([elements.index(int(a)) for a in z])
    model_fn = energy.behler_parrinello(disp, key=jax.random.PRNGKey(0), species=species)
    graphdef, params = nnx.split(model_fn.model)

    def energy_fn(p, r, extra=None):
        return nnx.merge(graphdef, p)(r)

    ang = (data.positions * 10.0).astype(np.float32)  # JAX MD's symmetry functions are set up in Å
    e = (data.energy - data.energy.mean()).astype(np.float32) / 96.485
    f = (data.forces / 964.85).astype(np.float32)
    masses = np.array([{1: 1.008, 6: 12.011, 8: 15.999}[int(a)] for a in z])
    n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
    ef_ms, step_s, md_rate, compile_s = _jaxmd_train_and_md(energy_fn, params, ang, e, f, batch, train_steps,
                                                           md_steps, repeats, masses, shift)
    return {"engine": "jax_md", "model": "behler_parrinello", "parameters": n_params, "energy_forces_ms": ef_ms,
            "train_step_s": step_s, "train_samples_per_s": batch / step_s, "md_steps_per_s": md_rate,
            "compile_s": compile_s}


def bench_jaxmd_nequip(data, batch, train_steps, md_steps, repeats) -> dict:
    from jax_md import energy, partition, space
    from jax_md._nn import nequip

    disp, shift = space.free()
    z = data.atomic_numbers[0]
    cfg = nequip.default_config()
    cfg.shift, cfg.scale = 0.0, 1.0  # JAX MD needs a per-atom energy shift/scale; the values do not affect speed
    atoms = jax.nn.one_hot(jnp.asarray(z), cfg.n_elements)
    box = 100.0  # Å; free space, the cell list is disabled
    neighbor_fn, init_fn, energy_raw = energy.nequip_neighbor_list(disp, box, cfg, atoms=atoms,
                                                                   disable_cell_list=True)
    ang = (data.positions * 10.0).astype(np.float32)
    nbrs0 = neighbor_fn.allocate(jnp.asarray(ang[0]), extra_capacity=20)
    params = init_fn(jax.random.PRNGKey(0), jnp.asarray(ang[0]), nbrs0)

    def energy_fn(p, r, extra=None):
        return energy_raw(p, r, nbrs0.update(r))  # the list follows the geometry (fixed capacity)

    e = (data.energy - data.energy.mean()).astype(np.float32) / 96.485
    f = (data.forces / 964.85).astype(np.float32)
    masses = np.array([{1: 1.008, 6: 12.011, 8: 15.999}[int(a)] for a in z])
    n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
    ef_ms, step_s, md_rate, compile_s = _jaxmd_train_and_md(energy_fn, params, ang, e, f, batch, train_steps,
                                                           md_steps, repeats, masses, shift)
    del partition
    return {"engine": "jax_md", "model": "nequip_default", "parameters": n_params, "energy_forces_ms": ef_ms,
            "train_step_s": step_s, "train_samples_per_s": batch / step_s, "md_steps_per_s": md_rate,
            "compile_s": compile_s}


# ---------------------------------------------------------------------------------------------- NVE

def run_nve(model: str, ps: float, timestep_fs: float, chunk: int, precision: str, seed: int,
            progress: bool) -> dict:
    from jmlsim.integrators import VelocityVerlet
    from jmlsim.io.datasets import load_rmd17
    from jmlsim.potentials.potential import load_potential
    from jmlsim.simulation import Simulation
    from jmlsim.system import System

    data = load_rmd17(TEST)
    pot = load_potential(model)
    z = data.atomic_numbers[0]
    masses = np.array([{1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999}[int(a)] for a in z])
    system = System(terms={"nn": pot.as_energy_term(None, z)}, params={"nn": pot.params}, masses=masses,
                    positions=np.asarray(data.positions[0]), box=None, neighbor_cutoff=None, kB=KB)
    dt = timestep_fs * 1e-3
    steps = int(round(ps / dt))
    sim = Simulation(system, VelocityVerlet(dt), kT=KB * 300.0, seed=seed, precision=precision)
    f0 = sim.frame()
    times, totals, temps = [0.0], [float(f0.potential + f0.kinetic)], [float(f0.temperature)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, unit="step", file=sys.stderr)
    t0 = time.perf_counter()
    status = "stable"
    done = 0
    try:
        while done < steps:
            k = min(chunk, steps - done)
            potential = sim.advance(k)
            done += k
            frame = sim.frame(potential)
            times.append(done * dt)
            totals.append(float(frame.potential + frame.kinetic))
            temps.append(float(frame.temperature))
            if bar is not None:
                bar.update(k)
            else:  # a line per chunk, so a run cut short still leaves its energy trace
                print(f"t_ps {done * dt:.3f} total_kj_per_mol {totals[-1]:.6f} temperature_k {temps[-1]:.1f}",
                      flush=True)
            if not np.isfinite(totals[-1]) or temps[-1] > 5000.0:
                status = f"blew up by step {done}"
                break
    except Exception as exc:  # a blow-up inside the chunk (SimulationError)
        status = f"failed by step {done + chunk}: {exc}"
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    t, e = np.asarray(times), np.asarray(totals)
    slope = float(np.polyfit(t, e, 1)[0]) if len(t) > 2 else float("nan")
    n = len(z)
    return {"model": model, "precision": precision, "timestep_fs": timestep_fs, "steps_done": done,
            "ps_done": done * dt, "status": status, "drift_kj_per_mol_per_ps": slope,
            "drift_kj_per_mol_per_ps_per_atom": slope / n,
            "total_energy_rms_fluctuation_kj_per_mol": float(np.std(e - np.polyval(np.polyfit(t, e, 1), t))),
            "total_energy_change_kj_per_mol": float(e[-1] - e[0]), "mean_temperature_k": float(np.mean(temps[1:])),
            "steps_per_s": done / wall, "wall_s": wall}


# ---------------------------------------------------------------------------------------------- main

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=["speed", "nve"], default="speed")
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--md-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-jaxmd", action="store_true")
    parser.add_argument("--model", default="rmd17-aspirin", help="nve: model directory or pretrained name")
    parser.add_argument("--ps", type=float, default=100.0, help="nve: simulated time")
    parser.add_argument("--timestep-fs", type=float, default=0.5)
    parser.add_argument("--chunk", type=int, default=2000, help="nve: steps per compiled chunk")
    parser.add_argument("--precision", default="mixed", choices=["single", "mixed", "double"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    header = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "device": str(jax.devices()[0]), "jax": jax.__version__}
    if args.mode == "nve":
        result = {**header, **run_nve(args.model, args.ps, args.timestep_fs, args.chunk, args.precision, args.seed,
                                      not args.no_progress)}
        for k, v in result.items():
            print(f"{k}: {v}")
        if args.json:
            print(json.dumps(result))
        return

    from jmlsim.io.datasets import load_rmd17

    need = args.batch * (args.train_steps + 1)
    data = load_rmd17(TRAIN).subset(np.arange(need))
    rows = []
    jobs = [(a, lambda a=a: bench_jmlsim(a, data, args.batch, args.train_steps, args.md_steps, args.repeats))
            for a in args.archs.split(",") if a]
    if not args.no_jaxmd:
        jobs += [("jax_md behler_parrinello",
                  lambda: bench_jaxmd_bp(data, args.batch, args.train_steps, args.md_steps, args.repeats)),
                 ("jax_md nequip",
                  lambda: bench_jaxmd_nequip(data, args.batch, args.train_steps, args.md_steps, args.repeats))]
    print(f"# aspirin (21 atoms), float32, batch {args.batch}; {header['machine']}; {header['device']}; "
          f"{header['date']}", flush=True)
    print(f"{'engine':8s} {'model':18s} {'params':>9s} {'E+F ms':>8s} {'train samples/s':>16s} {'MD steps/s':>11s}",
          flush=True)
    for name, job in jobs:
        try:
            r = job()
        except Exception as exc:  # report and continue: one failing engine must not hide the others
            traceback.print_exc()
            r = {"engine": name.split()[0] if " " in name else "jmlsim", "model": name, "error": repr(exc)}
            print(f"{r['engine']:8s} {r['model']:18s} failed: {exc}", flush=True)
            rows.append(r)
            continue
        rows.append(r)
        print(f"{r['engine']:8s} {r['model']:18s} {r['parameters']:9d} {r['energy_forces_ms']:8.2f} "
              f"{r['train_samples_per_s']:16.1f} {r['md_steps_per_s']:11.1f}", flush=True)
    if args.json:
        print(json.dumps({**header, "batch": args.batch, "results": rows}))


if __name__ == "__main__":
    main()
