"""Lennard-Jones fluid: jmlsim against JAX MD, same system, same machine, same run.

What it measures, per system size N (default 4,096 and 32,768 atoms):

* MD throughput (steps/s) of jmlsim (``Simulation`` + ``LangevinBAOAB``) and of JAX MD
  (``energy.lennard_jones_neighbor_list`` + ``simulate.nvt_langevin``) on the same fluid: density 0.8,
  cutoff 2.5 sigma, Langevin at kT = 1.0 with friction 1.0, dt = 0.005, float32, the same neighbor-list skin,
  and the same start (``jmlsim.systems.lennard_jones_fluid``'s fcc lattice). Both advance in jit-compiled
  chunks of 100 steps; compilation and warm-up chunks are not timed, and the ratio jmlsim / JAX MD uses the
  figures of this one run.
* The cost of one neighbor-list build (ms): jmlsim ``spec.build`` under jit against JAX MD's forced
  ``update`` (jit) and its host-side ``allocate``, at the positions reached by the run.

JAX MD neighbor lists overflow silently; after every chunk the benchmark checks ``did_buffer_overflow``, and on
overflow re-allocates a larger list and redoes the chunk. A redone chunk's time is not counted (only clean
chunks are timed) and the number of reallocations is printed. jmlsim redoes overflowing chunks itself; its
timings include any such redo (compilation excluded) and its regrowths are printed.

Run (from the repository root)::

    python benchmarks/lj.py                          # N = 4096 and 32768, 500 measured steps each
    python benchmarks/lj.py --sizes 4096 --steps 1000 --skin 0.3 --json

No timing is asserted; the script only reports.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

DENSITY = 0.8
CUTOFF = 2.5
KT = 1.0
FRICTION = 1.0
DT = 0.005
CHUNK = 100


# -- machine --------------------------------------------------------------------------------------------------
def cpu_name() -> str:
    """The processor's name: platform.processor(), else the model name from /proc/cpuinfo."""
    name = platform.processor()
    if name:
        return name
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def machine_info() -> dict:
    """Processor, core count, jax / jax-md versions and devices, as printed in the header."""
    import jax_md

    return {"processor": cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "jax_md": getattr(jax_md, "__version__", "?"), "devices": [str(d) for d in jax.devices()]}


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls (fn must block), after one untimed call; ms."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


# -- jmlsim ---------------------------------------------------------------------------------------------------
def run_jmlsim(n_atoms: int, skin: float, steps: int, warmup: int, build_repeats: int) -> dict:
    """Time ``Simulation.advance(100)`` chunks of jmlsim on the LJ fluid.

    Warm-up chunks (the first one compiles) are untimed. steps/s = measured steps / (measured wall time minus
    any compilation that happened inside the measured chunks, e.g. after a regrowth). Rebuilds are counted over
    the measured chunks only (``nbrs.n_builds`` restarts at 1 when a regrowth rebuilds the list from scratch).
    """
    from jmlsim.integrators import LangevinBAOAB
    from jmlsim.simulation import Simulation
    from jmlsim.systems.lennard_jones_fluid import lennard_jones_fluid

    system = lennard_jones_fluid(n_atoms, DENSITY)
    sim = Simulation(system, LangevinBAOAB(DT, KT, FRICTION), kT=KT, skin=skin)
    capacity_start = sim.spec.capacity
    for _ in range(warmup):
        np.asarray(sim.advance(CHUNK))
    regrowths_warmup = sim.regrowths
    compile_warmup = sim.compile_seconds

    n_chunks = max(1, steps // CHUNK)
    builds = 0
    wall = 0.0
    potential = None
    for _ in range(n_chunks):
        builds_before, regrowths_before = int(sim.nbrs.n_builds), sim.regrowths
        t0 = time.perf_counter()
        potential = jax.block_until_ready(sim.advance(CHUNK))
        wall += time.perf_counter() - t0
        after = int(sim.nbrs.n_builds)
        builds += after if sim.regrowths != regrowths_before else after - builds_before
    compile_measured = sim.compile_seconds - compile_warmup
    run_s = max(wall - compile_measured, 1e-9)

    positions = jnp.asarray(sim.state.positions, jnp.float32)
    box = jnp.asarray(system.box, jnp.float32)
    build = jax.jit(sim.spec.build)
    build_ms = median_ms(lambda: jax.block_until_ready(build(positions, box)), build_repeats)

    st = jax.device_get(sim.state)
    kinetic = 0.5 * float(np.sum(np.asarray(st.masses)[:, None] * np.asarray(st.velocities) ** 2))
    result = {
        "steps_per_s": n_chunks * CHUNK / run_s,
        "measured_steps": n_chunks * CHUNK,
        "measured_wall_s": wall,
        "compile_s": sim.compile_seconds,
        "compile_s_in_measured": compile_measured,
        "rebuilds_measured": builds,
        "n_builds_total": int(sim.nbrs.n_builds),
        "regrowths": sim.regrowths,
        "regrowths_in_warmup": regrowths_warmup,
        "capacity_start": capacity_start,
        "capacity": sim.spec.capacity,
        "cells": list(sim.spec.cells) if sim.spec.cells is not None else None,
        "cell_capacity": sim.spec.cell_capacity,
        "build_ms": build_ms,
        "potential_per_atom": float(np.asarray(potential)) / n_atoms,
        "temperature": 2.0 * kinetic / (3 * n_atoms),
    }
    del sim, build, positions
    return result


# -- JAX MD ---------------------------------------------------------------------------------------------------
def make_jaxmd_chunk(apply_fn, n_steps: int):
    """(state, nbrs) -> (state, nbrs, rebuilds) advancing n_steps with a ``lax.fori_loop``.

    Each step is ``apply(state, neighbor=nbrs)`` then ``nbrs.update(position)`` (JAX MD's usual loop). A rebuild
    is counted when the update moved the list's reference positions (a cheap (N, 3) comparison).
    """

    def chunk(state, nbrs):
        def body(_, carry):
            state, nbrs, rebuilds = carry
            state = apply_fn(state, neighbor=nbrs)
            new = nbrs.update(state.position)
            rebuilt = jnp.any(new.reference_position != nbrs.reference_position)
            return state, new, rebuilds + rebuilt.astype(jnp.int32)

        return jax.lax.fori_loop(0, n_steps, body, (state, nbrs, jnp.zeros((), jnp.int32)))

    return chunk


def run_jaxmd(n_atoms: int, skin: float, steps: int, warmup: int, build_repeats: int,
              capacity_multiplier: float, extra_step: int) -> dict:
    """Time 100-step chunks of JAX MD on the LJ fluid.

    The list is allocated at the lattice, re-allocated from the melted positions after the warm-up chunks
    (capacity = count there x capacity_multiplier, JAX MD's own rule), and re-allocated with ``extra_step``
    more slots whenever a chunk overflows; that chunk is then redone from its start state and only the clean
    run is timed. Compilation (ahead of time, per list shape) is timed separately, as for jmlsim.
    """
    import jax_md
    from jax_md import energy, partition, simulate, space
    from jmlsim.systems.lennard_jones_fluid import lennard_jones_fluid

    system = lennard_jones_fluid(n_atoms, DENSITY)
    box_length = float(system.box[0, 0])
    displacement, shift = space.periodic(box_length)
    neighbor_fn, energy_fn = energy.lennard_jones_neighbor_list(
        displacement, box_length, sigma=1.0, epsilon=1.0, r_cutoff=CUTOFF, dr_threshold=skin,
        format=partition.Dense, capacity_multiplier=capacity_multiplier)
    init_fn, apply_fn = simulate.nvt_langevin(energy_fn, shift, dt=DT, kT=KT, gamma=FRICTION)
    chunk = jax.jit(make_jaxmd_chunk(apply_fn, CHUNK))

    positions = jnp.asarray(system.positions, jnp.float32)
    extra = 0
    nbrs = neighbor_fn.allocate(positions, extra_capacity=extra)
    capacity_start = int(nbrs.max_occupancy)
    state = init_fn(jax.random.PRNGKey(0), positions, mass=1.0, neighbor=nbrs)

    compiled: dict = {}
    stats = {"compile_s": 0.0, "reallocations": 0, "redone_chunks": 0}

    def compiled_for(state, nbrs):
        """The chunk compiled for this list shape (compile time goes to stats)."""
        key = (int(nbrs.max_occupancy), nbrs.cell_list_capacity, tuple(nbrs.idx.shape))
        if key not in compiled:
            t0 = time.perf_counter()
            compiled[key] = chunk.lower(state, nbrs).compile()
            stats["compile_s"] += time.perf_counter() - t0
        return compiled[key]

    def advance(state, nbrs, extra):
        """One clean chunk: (state, nbrs, rebuilds, seconds, extra); redone after re-allocation on overflow."""
        while True:
            fn = compiled_for(state, nbrs)
            t0 = time.perf_counter()
            new_state, new_nbrs, rebuilds = jax.block_until_ready(fn(state, nbrs))
            seconds = time.perf_counter() - t0
            if not bool(new_nbrs.did_buffer_overflow):
                return new_state, new_nbrs, int(rebuilds), seconds, extra
            extra += extra_step
            stats["reallocations"] += 1
            stats["redone_chunks"] += 1
            nbrs = neighbor_fn.allocate(state.position, extra_capacity=extra)

    for _ in range(warmup):
        state, nbrs, _, _, extra = advance(state, nbrs, extra)
    # A fair capacity: JAX MD's own rule applied to the melted fluid instead of the lattice.
    nbrs = neighbor_fn.allocate(state.position, extra_capacity=extra)
    reallocations_warmup = stats["reallocations"]

    n_chunks = max(1, steps // CHUNK)
    wall = 0.0
    builds = 0
    for _ in range(n_chunks):
        state, nbrs, rebuilds, seconds, extra = advance(state, nbrs, extra)
        wall += seconds
        builds += rebuilds

    # Cost of one list build at the current positions: a forced update (reference positions moved by more
    # than skin / 2, so the cond takes the rebuild branch), jitted; and the host-side allocate.
    offset = jnp.asarray([1.0, 0.0, 0.0], jnp.float32)
    forced = jax.jit(lambda x, nb: neighbor_fn.update(x, nb.set(reference_position=nb.reference_position + offset)))
    build_ms = median_ms(lambda: jax.block_until_ready(forced(state.position, nbrs).idx), build_repeats)
    allocate_ms = median_ms(lambda: jax.block_until_ready(
        neighbor_fn.allocate(state.position, extra_capacity=extra).idx), max(1, build_repeats // 4))

    potential = float(energy_fn(state.position, neighbor=nbrs))
    kinetic = 0.5 * float(jnp.sum(state.momentum ** 2 / state.mass))
    result = {
        "steps_per_s": n_chunks * CHUNK / wall,
        "measured_steps": n_chunks * CHUNK,
        "measured_wall_s": wall,
        "compile_s": stats["compile_s"],
        "compiles": len(compiled),
        "rebuilds_measured": builds,
        "reallocations": stats["reallocations"],
        "reallocations_in_warmup": reallocations_warmup,
        "redone_chunks": stats["redone_chunks"],
        "extra_capacity": extra,
        "capacity_start": capacity_start,
        "capacity": int(nbrs.max_occupancy),
        "cell_capacity": nbrs.cell_list_capacity,
        "build_ms": build_ms,
        "allocate_ms": allocate_ms,
        "potential_per_atom": potential / n_atoms,
        "temperature": 2.0 * kinetic / (3 * n_atoms),
        "jax_md": getattr(jax_md, "__version__", "?"),
    }
    del state, nbrs, compiled, chunk, forced
    return result


# -- driver ---------------------------------------------------------------------------------------------------
def guarded(label: str, fn, *args) -> dict:
    """Run one side; on any failure (out of memory, XLA error) return {'error': ...} instead of crashing."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the benchmark reports every failure and carries on
        traceback.print_exc()
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"  {label} FAILED: {message}", flush=True)
        return {"error": message[:500]}
    finally:
        gc.collect()
        jax.clear_caches()


def fmt(value, spec: str) -> str:
    """Format a number, or '-' when missing."""
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    """The summary tables: throughput and compile/rebuild figures, then neighbor-list build cost."""
    print()
    head = (f"{'N':>6} | {'jmlsim steps/s':>14} | {'JAX MD steps/s':>14} | {'ratio':>6} | {'jmlsim compile s':>16} | "
            f"{'JAX MD compile s':>16} | {'jmlsim rebuilds':>15} | {'JAX MD rebuilds':>15} | "
            f"{'jmlsim regrowths':>16} | {'JAX MD reallocs':>15}")
    print(head)
    print("-" * len(head))
    for row in rows:
        j, m = row["jmlsim"], row["jaxmd"]
        print(f"{row['n']:>6} | {fmt(j.get('steps_per_s'), '14.2f')} | {fmt(m.get('steps_per_s'), '14.2f')} | "
              f"{fmt(row.get('ratio'), '6.2f')} | {fmt(j.get('compile_s'), '16.2f')} | "
              f"{fmt(m.get('compile_s'), '16.2f')} | {fmt(j.get('rebuilds_measured'), '15d')} | "
              f"{fmt(m.get('rebuilds_measured'), '15d')} | {fmt(j.get('regrowths'), '16d')} | "
              f"{fmt(m.get('reallocations'), '15d')}")
    print()
    head = (f"{'N':>6} | {'jmlsim build ms':>15} | {'JAX MD update ms':>16} | {'JAX MD allocate ms':>18} | "
            f"{'jmlsim row width':>16} | {'JAX MD row width':>16}")
    print(head)
    print("-" * len(head))
    for row in rows:
        j, m = row["jmlsim"], row["jaxmd"]
        print(f"{row['n']:>6} | {fmt(j.get('build_ms'), '15.1f')} | {fmt(m.get('build_ms'), '16.1f')} | "
              f"{fmt(m.get('allocate_ms'), '18.1f')} | {fmt(j.get('capacity'), '16d')} | "
              f"{fmt(m.get('capacity'), '16d')}")
    for row in rows:
        for side in ("jmlsim", "jaxmd"):
            if "error" in row[side]:
                print(f"N={row['n']}: {side} failed: {row[side]['error']}")


def main(argv=None) -> None:
    """Parse arguments, run both engines per size, print the tables (and a JSON line with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 32768], help="atom counts")
    parser.add_argument("--skin", type=float, default=0.3, help="neighbor-list skin (sigma), both engines")
    parser.add_argument("--steps", type=int, default=500, help="measured steps per engine (chunks of 100)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up chunks of 100 steps")
    parser.add_argument("--build-repeats", type=int, default=20, help="timed neighbor-list builds (median)")
    parser.add_argument("--jaxmd-capacity-multiplier", type=float, default=1.25,
                        help="JAX MD capacity_multiplier (its default; jmlsim sizes with the same 1.25)")
    parser.add_argument("--jaxmd-extra-step", type=int, default=8,
                        help="extra_capacity added per JAX MD re-allocation after an overflow")
    parser.add_argument("--json", action="store_true", help="print one JSON line with all figures at the end")
    args = parser.parse_args(argv)

    info = machine_info()
    print(f"machine: {info['processor']}, {info['cpu_count']} CPUs ({info['platform']}, Python {info['python']})")
    print(f"jax {info['jax']}, jax-md {info['jax_md']}, devices {info['devices']}")
    print(f"LJ fluid rho={DENSITY} rc={CUTOFF} Langevin kT={KT} gamma={FRICTION} dt={DT} float32 skin={args.skin}; "
          f"{args.steps} measured steps in chunks of {CHUNK} after {args.warmup} warm-up chunk(s)")
    print("note: JAX MD's lennard_jones_neighbor_list switches the potential smoothly to zero from r_onset=2.0 to "
          "rc=2.5 (multiplicative cutoff); jmlsim truncates and shifts at rc. The pair count, and so the cost, "
          "is the same.", flush=True)

    rows = []
    for n in args.sizes:
        print(f"\n== N = {n}", flush=True)
        j = guarded("jmlsim", run_jmlsim, n, args.skin, args.steps, args.warmup, args.build_repeats)
        if "error" not in j:
            print(f"  jmlsim: {j['steps_per_s']:.2f} steps/s, compile {j['compile_s']:.2f} s, "
                  f"{j['rebuilds_measured']} rebuilds in {j['measured_steps']} steps, regrowths {j['regrowths']} "
                  f"({j['regrowths_in_warmup']} in warm-up), row width {j['capacity_start']} -> {j['capacity']}, "
                  f"cells {j['cells']} x {j['cell_capacity']}, build {j['build_ms']:.1f} ms, "
                  f"U/N {j['potential_per_atom']:.3f}, T {j['temperature']:.3f}", flush=True)
        m = guarded("JAX MD", run_jaxmd, n, args.skin, args.steps, args.warmup, args.build_repeats,
                    args.jaxmd_capacity_multiplier, args.jaxmd_extra_step)
        if "error" not in m:
            print(f"  JAX MD: {m['steps_per_s']:.2f} steps/s, compile {m['compile_s']:.2f} s ({m['compiles']} "
                  f"compiles), {m['rebuilds_measured']} rebuilds in {m['measured_steps']} steps, "
                  f"{m['reallocations']} reallocations ({m['reallocations_in_warmup']} in warm-up, "
                  f"{m['redone_chunks']} chunks redone), row width {m['capacity_start']} -> {m['capacity']}, "
                  f"cell capacity {m['cell_capacity']}, forced update {m['build_ms']:.1f} ms, allocate "
                  f"{m['allocate_ms']:.1f} ms, U/N {m['potential_per_atom']:.3f}, T {m['temperature']:.3f}",
                  flush=True)
        ratio = j["steps_per_s"] / m["steps_per_s"] if "error" not in j and "error" not in m else None
        rows.append({"n": n, "jmlsim": j, "jaxmd": m, "ratio": ratio})

    print_table(rows)
    if args.json:
        print(json.dumps({"benchmark": "lj", "date": datetime.date.today().isoformat(), "machine": info,
                          "args": vars(args), "results": rows}))


if __name__ == "__main__":
    main()
