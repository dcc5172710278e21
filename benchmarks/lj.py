"""Lennard-Jones fluid: jmlsim against JAX MD, same system, same machine, same run.

What it measures, per system size N (default 4,096 and 32,768 atoms):

* MD throughput (steps/s) of jmlsim (``Simulation`` + ``LangevinBAOAB``) and of JAX MD
  (``energy.lennard_jones_neighbor_list`` + ``simulate.nvt_langevin``) on the same fluid: density 0.8,
  cutoff 2.5 sigma, Langevin at kT = 1.0 with friction 1.0, dt = 0.005, float32, the same neighbor-list skin,
  and the same start (``jmlsim.systems.lennard_jones_fluid``'s fcc lattice). Both advance in jit-compiled
  chunks of 100 steps; compilation and warm-up chunks are not timed. The measured chunks of the two engines
  alternate (jmlsim, JAX MD, jmlsim, ...), so background load on a shared machine hits both alike, and the
  ratio jmlsim / JAX MD uses the figures of this one run.
* The cost of one neighbor-list build (ms, median): jmlsim ``spec.build`` under jit against JAX MD's forced
  ``update`` (jit), each called on its own and inside a jitted ``fori_loop`` of builds (the way a rebuild runs
  inside an MD chunk), plus JAX MD's host-side ``allocate``, at the positions reached by the run.

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
import importlib.metadata
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


def version(package: str) -> str:
    """Installed version of a distribution, or '?'."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine_info() -> dict:
    """Processor, core count, jax / jax-md versions and devices, as printed in the header."""
    return {"processor": cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__, "jax_md": version("jax-md"),
            "devices": [str(d) for d in jax.devices()]}


def load_average() -> float | None:
    """1-minute load average (other processes on a shared machine slow both engines), or None."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def timed(fn) -> float:
    """Wall seconds of ``fn()`` (fn must block until its result is ready)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class BuildTimer:
    """Times one neighbor-list build ``fn(x, *rest) -> idx`` two ways.

    isolated: ``jax.jit(fn)`` called on its own (what a host-side rebuild costs);
    in_loop: per build inside a jitted ``lax.fori_loop`` of ``loop_builds`` builds, each feeding a negligible
    shift back into the positions so none can be skipped (what a rebuild costs inside an MD chunk, where XLA
    compiles it as part of a larger program).
    """

    def __init__(self, fn, args: tuple, loop_builds: int):
        """fn: (x, *rest) -> (N, K) int idx; args: (x, *rest) at the current positions."""
        self.args, self.loop_builds = args, loop_builds
        self.isolated_fn = jax.jit(fn)

        def loop(x, *rest):
            def body(_, xx):
                idx = fn(xx, *rest)
                return xx + 1e-9 * idx[0, 0].astype(xx.dtype)
            return jax.lax.fori_loop(0, loop_builds, body, x)
        self.loop_fn = jax.jit(loop)

    def isolated(self) -> None:
        """One build, blocking."""
        jax.block_until_ready(self.isolated_fn(*self.args))

    def in_loop(self) -> None:
        """loop_builds builds in one program, blocking."""
        jax.block_until_ready(self.loop_fn(*self.args))


# -- jmlsim ---------------------------------------------------------------------------------------------------
class JmlsimRun:
    """jmlsim on the LJ fluid, advanced in ``Simulation.advance(100)`` chunks."""

    name = "jmlsim"

    def __init__(self, n_atoms: int, skin: float):
        """Build the fluid and the Simulation (neighbor list planned from the lattice)."""
        from jmlsim.integrators import LangevinBAOAB
        from jmlsim.simulation import Simulation
        from jmlsim.systems.lennard_jones_fluid import lennard_jones_fluid

        self.n_atoms = n_atoms
        self.system = lennard_jones_fluid(n_atoms, DENSITY)
        self.sim = Simulation(self.system, LangevinBAOAB(DT, KT, FRICTION), kT=KT, skin=skin)
        self.capacity_start = self.sim.spec.capacity
        self.chunk_seconds: list[float] = []
        self.rebuilds = 0
        self.regrowths_warmup = 0
        self.compile_warmup = 0.0
        self.potential = None

    def warmup(self, chunks: int) -> None:
        """Untimed chunks (the first compiles)."""
        for _ in range(chunks):
            self.potential = np.asarray(self.sim.advance(CHUNK))
        self.regrowths_warmup = self.sim.regrowths
        self.compile_warmup = self.sim.compile_seconds

    def chunk(self) -> None:
        """One timed chunk. Compilation inside it (after a regrowth) is subtracted; a redo is not."""
        sim = self.sim
        builds_before, regrowths_before, compile_before = int(sim.nbrs.n_builds), sim.regrowths, sim.compile_seconds
        t0 = time.perf_counter()
        self.potential = jax.block_until_ready(sim.advance(CHUNK))
        seconds = time.perf_counter() - t0 - (sim.compile_seconds - compile_before)
        self.chunk_seconds.append(seconds)
        after = int(sim.nbrs.n_builds)  # restarts at 1 when a regrowth rebuilt the list from scratch
        self.rebuilds += after if sim.regrowths != regrowths_before else after - builds_before

    def build_timer(self, loop_builds: int) -> BuildTimer:
        """Times ``spec.build(positions, box)`` at the current positions."""
        spec = self.sim.spec
        x = jnp.asarray(self.sim.state.positions, jnp.float32)
        box = jnp.asarray(self.system.box, jnp.float32)
        return BuildTimer(lambda x, box: spec.build(x, box).idx, (x, box), loop_builds)

    def results(self, build_ms: float, build_in_loop_ms: float) -> dict:
        """Figures for the table and the JSON line."""
        sim = self.sim
        st = jax.device_get(sim.state)
        kinetic = 0.5 * float(np.sum(np.asarray(st.masses)[:, None] * np.asarray(st.velocities) ** 2))
        total = sum(self.chunk_seconds)
        return {
            "steps_per_s": len(self.chunk_seconds) * CHUNK / total,
            "steps_per_s_median_chunk": CHUNK / statistics.median(self.chunk_seconds),
            "measured_steps": len(self.chunk_seconds) * CHUNK,
            "measured_s": total,
            "chunk_s": [round(s, 4) for s in self.chunk_seconds],
            "compile_s": sim.compile_seconds,
            "compile_s_in_measured": sim.compile_seconds - self.compile_warmup,
            "rebuilds_measured": self.rebuilds,
            "n_builds_total": int(sim.nbrs.n_builds),
            "regrowths": sim.regrowths,
            "regrowths_in_warmup": self.regrowths_warmup,
            "capacity_start": self.capacity_start,
            "capacity": sim.spec.capacity,
            "cells": list(sim.spec.cells) if sim.spec.cells is not None else None,
            "cell_capacity": sim.spec.cell_capacity,
            "build_ms": build_ms,
            "build_in_loop_ms": build_in_loop_ms,
            "potential_per_atom": float(np.asarray(self.potential)) / self.n_atoms,
            "temperature": 2.0 * kinetic / (3 * self.n_atoms),
        }

    def summary(self, r: dict) -> str:
        """One printed line."""
        return (f"jmlsim: {r['steps_per_s']:.2f} steps/s (median chunk {r['steps_per_s_median_chunk']:.2f}), "
                f"compile {r['compile_s']:.2f} s, {r['rebuilds_measured']} rebuilds in {r['measured_steps']} steps, "
                f"regrowths {r['regrowths']} ({r['regrowths_in_warmup']} in warm-up), row width "
                f"{r['capacity_start']} -> {r['capacity']}, cells {r['cells']} x {r['cell_capacity']}, build "
                f"{r['build_ms']:.1f} ms ({r['build_in_loop_ms']:.1f} ms in a loop), U/N {r['potential_per_atom']:.3f}, T {r['temperature']:.3f}")


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


class JaxMDRun:
    """JAX MD on the same fluid: Dense neighbor list, nvt_langevin, 100-step fori_loop chunks.

    The list is allocated at the lattice, re-allocated from the melted positions after the warm-up chunks
    (capacity = count there x capacity_multiplier, JAX MD's own rule), and re-allocated with ``extra_step``
    more slots whenever a chunk overflows; that chunk is then redone from its start state and only the clean
    run is timed. Compilation (ahead of time, per list shape) is timed separately, as jmlsim does.
    """

    name = "JAX MD"

    def __init__(self, n_atoms: int, skin: float, capacity_multiplier: float, extra_step: int):
        """Build the JAX MD functions, allocate the list at the lattice and initialise the Langevin state."""
        from jax_md import energy, partition, simulate, space
        from jmlsim.systems.lennard_jones_fluid import lennard_jones_fluid

        self.n_atoms = n_atoms
        self.extra_step = extra_step
        system = lennard_jones_fluid(n_atoms, DENSITY)
        box_length = float(system.box[0, 0])
        displacement, shift = space.periodic(box_length)
        self.neighbor_fn, self.energy_fn = energy.lennard_jones_neighbor_list(
            displacement, box_length, sigma=1.0, epsilon=1.0, r_cutoff=CUTOFF, dr_threshold=skin,
            format=partition.Dense, capacity_multiplier=capacity_multiplier)
        init_fn, apply_fn = simulate.nvt_langevin(self.energy_fn, shift, dt=DT, kT=KT, gamma=FRICTION)
        self._chunk = jax.jit(make_jaxmd_chunk(apply_fn, CHUNK))
        positions = jnp.asarray(system.positions, jnp.float32)
        self.extra = 0
        self.nbrs = self.neighbor_fn.allocate(positions, extra_capacity=self.extra)
        self.capacity_start = int(self.nbrs.max_occupancy)
        self.state = init_fn(jax.random.PRNGKey(0), positions, mass=1.0, neighbor=self.nbrs)
        self._compiled: dict = {}
        self.compile_s = 0.0
        self.reallocations = 0
        self.reallocations_warmup = 0
        self.chunk_seconds: list[float] = []
        self.rebuilds = 0

    def _compiled_for(self, state, nbrs):
        """The chunk compiled for this list shape (compile time accumulates in compile_s)."""
        key = (int(nbrs.max_occupancy), nbrs.cell_list_capacity, tuple(nbrs.idx.shape))
        if key not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[key] = self._chunk.lower(state, nbrs).compile()
            self.compile_s += time.perf_counter() - t0
        return self._compiled[key]

    def _advance(self) -> tuple[int, float]:
        """One clean chunk from the current state: (rebuilds, seconds). Redone after re-allocation on overflow."""
        state, nbrs = self.state, self.nbrs
        while True:
            fn = self._compiled_for(state, nbrs)
            t0 = time.perf_counter()
            new_state, new_nbrs, rebuilds = jax.block_until_ready(fn(state, nbrs))
            seconds = time.perf_counter() - t0
            if not bool(new_nbrs.did_buffer_overflow):
                self.state, self.nbrs = new_state, new_nbrs
                return int(rebuilds), seconds
            self.extra += self.extra_step
            self.reallocations += 1
            nbrs = self.neighbor_fn.allocate(state.position, extra_capacity=self.extra)

    def warmup(self, chunks: int) -> None:
        """Untimed chunks, then a list re-allocated from the melted fluid (a fair capacity)."""
        for _ in range(chunks):
            self._advance()
        self.nbrs = self.neighbor_fn.allocate(self.state.position, extra_capacity=self.extra)
        self.reallocations_warmup = self.reallocations
        self._compiled_for(self.state, self.nbrs)  # compile now, not inside the first measured chunk

    def chunk(self) -> None:
        """One timed clean chunk."""
        rebuilds, seconds = self._advance()
        self.chunk_seconds.append(seconds)
        self.rebuilds += rebuilds

    def build_timer(self, loop_builds: int) -> BuildTimer:
        """Times a forced rebuild at the current positions: ``update`` with the list's reference positions moved
        by 1 sigma (> skin / 2), so its cond takes the rebuild branch."""
        offset = jnp.asarray([1.0, 0.0, 0.0], jnp.float32)
        neighbor_fn = self.neighbor_fn

        def forced(x, nbrs):
            return neighbor_fn.update(x, nbrs.set(reference_position=nbrs.reference_position + offset)).idx
        return BuildTimer(forced, (self.state.position, self.nbrs), loop_builds)

    def allocate_once(self) -> None:
        """One host-side allocate at the current positions, blocking."""
        jax.block_until_ready(self.neighbor_fn.allocate(self.state.position, extra_capacity=self.extra).idx)

    def results(self, build_ms: float, build_in_loop_ms: float, allocate_ms: float) -> dict:
        """Figures for the table and the JSON line."""
        potential = float(self.energy_fn(self.state.position, neighbor=self.nbrs))
        kinetic = 0.5 * float(jnp.sum(self.state.momentum ** 2 / self.state.mass))
        total = sum(self.chunk_seconds)
        return {
            "steps_per_s": len(self.chunk_seconds) * CHUNK / total,
            "steps_per_s_median_chunk": CHUNK / statistics.median(self.chunk_seconds),
            "measured_steps": len(self.chunk_seconds) * CHUNK,
            "measured_s": total,
            "chunk_s": [round(s, 4) for s in self.chunk_seconds],
            "compile_s": self.compile_s,
            "compiles": len(self._compiled),
            "rebuilds_measured": self.rebuilds,
            "reallocations": self.reallocations,
            "reallocations_in_warmup": self.reallocations_warmup,
            "extra_capacity": self.extra,
            "capacity_start": self.capacity_start,
            "capacity": int(self.nbrs.max_occupancy),
            "cell_capacity": self.nbrs.cell_list_capacity,
            "build_ms": build_ms,
            "build_in_loop_ms": build_in_loop_ms,
            "allocate_ms": allocate_ms,
            "potential_per_atom": potential / self.n_atoms,
            "temperature": 2.0 * kinetic / (3 * self.n_atoms),
        }

    def summary(self, r: dict) -> str:
        """One printed line."""
        return (f"JAX MD: {r['steps_per_s']:.2f} steps/s (median chunk {r['steps_per_s_median_chunk']:.2f}), "
                f"compile {r['compile_s']:.2f} s ({r['compiles']} compiles), {r['rebuilds_measured']} rebuilds in "
                f"{r['measured_steps']} steps, {r['reallocations']} reallocations ({r['reallocations_in_warmup']} "
                f"in warm-up; overflowing chunks redone, untimed), row width {r['capacity_start']} -> "
                f"{r['capacity']}, cell capacity {r['cell_capacity']}, forced update {r['build_ms']:.1f} ms "
                f"({r['build_in_loop_ms']:.1f} ms in a loop), allocate {r['allocate_ms']:.1f} ms, U/N {r['potential_per_atom']:.3f}, T {r['temperature']:.3f}")


# -- driver ---------------------------------------------------------------------------------------------------
def failure(label: str, exc: BaseException) -> dict:
    """Print a failed side (out of memory, XLA error, ...) and return {'error': message}."""
    traceback.print_exc()
    text = str(exc).strip()
    message = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]
    print(f"  {label} FAILED: {message}", flush=True)
    return {"error": message}


def run_size(n_atoms: int, args) -> dict:
    """Set up both engines at one size, warm them up, time alternating chunks, then the list builds."""
    runs, out = {}, {}
    for key, make in (("jmlsim", lambda: JmlsimRun(n_atoms, args.skin)),
                      ("jaxmd", lambda: JaxMDRun(n_atoms, args.skin, args.jaxmd_capacity_multiplier,
                                                 args.jaxmd_extra_step))):
        try:
            run = make()
            run.warmup(args.warmup)
            runs[key] = run
        except Exception as exc:  # noqa: BLE001 - report the failure and go on with the other engine
            out[key] = failure(f"{key} set-up/warm-up", exc)
            gc.collect()
    load_start = load_average()
    for _ in range(max(1, args.steps // CHUNK)):
        for key in list(runs):
            try:
                runs[key].chunk()
            except Exception as exc:  # noqa: BLE001
                out[key] = failure(f"{key} measured chunk", exc)
                del runs[key]
                gc.collect()
    load_end = load_average()

    # One neighbor-list build, both engines alternating: isolated, inside a loop, and JAX MD's allocate.
    builds = {key: [] for key in runs}
    in_loop = {key: [] for key in runs}
    allocations = []
    try:
        timers = {key: run.build_timer(args.loop_builds) for key, run in runs.items()}
        for timer in timers.values():  # compile
            timer.isolated()
            timer.in_loop()
        if "jaxmd" in runs:
            runs["jaxmd"].allocate_once()
        for i in range(args.build_repeats):
            for key, timer in timers.items():
                builds[key].append(1e3 * timed(timer.isolated))
            if i % 4 == 0:
                for key, timer in timers.items():
                    in_loop[key].append(1e3 * timed(timer.in_loop) / args.loop_builds)
                if "jaxmd" in runs:
                    allocations.append(1e3 * timed(runs["jaxmd"].allocate_once))
        del timers
    except Exception as exc:  # noqa: BLE001
        failure("neighbor-list build timing", exc)
    median = lambda xs: statistics.median(xs) if xs else None  # noqa: E731

    for key, run in runs.items():
        try:
            extra = (median(allocations),) if key == "jaxmd" else ()
            out[key] = run.results(median(builds[key]), median(in_loop[key]), *extra)
            print("  " + run.summary(out[key]), flush=True)
        except Exception as exc:  # noqa: BLE001
            out[key] = failure(f"{key} results", exc)
    runs.clear()
    gc.collect()
    jax.clear_caches()
    ok = "error" not in out["jmlsim"] and "error" not in out["jaxmd"]
    ratio = out["jmlsim"]["steps_per_s"] / out["jaxmd"]["steps_per_s"] if ok else None
    print(f"  load average during the measured chunks: {load_start} -> {load_end}", flush=True)
    return {"n": n_atoms, "jmlsim": out["jmlsim"], "jaxmd": out["jaxmd"], "ratio": ratio,
            "load_average": [load_start, load_end]}


def fmt(value, spec: str) -> str:
    """Format a number, or '-' when missing."""
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    """The summary tables: throughput with compile/rebuild figures, then the neighbor-list build cost."""
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
    print("(rebuilds: neighbor-list rebuilds during the measured steps; regrowths / reallocs: list enlargements "
          "after an overflow, warm-up included)")
    print()
    head = (f"{'N':>6} | {'jmlsim build ms':>15} | {'JAX MD update ms':>16} | {'jmlsim in-loop ms':>17} | "
            f"{'JAX MD in-loop ms':>17} | {'JAX MD allocate ms':>18} | {'jmlsim row width':>16} | "
            f"{'JAX MD row width':>16}")
    print(head)
    print("-" * len(head))
    for row in rows:
        j, m = row["jmlsim"], row["jaxmd"]
        print(f"{row['n']:>6} | {fmt(j.get('build_ms'), '15.1f')} | {fmt(m.get('build_ms'), '16.1f')} | "
              f"{fmt(j.get('build_in_loop_ms'), '17.1f')} | {fmt(m.get('build_in_loop_ms'), '17.1f')} | "
              f"{fmt(m.get('allocate_ms'), '18.1f')} | {fmt(j.get('capacity'), '16d')} | "
              f"{fmt(m.get('capacity'), '16d')}")
    print("(one list build at the final positions, median: jmlsim jit(spec.build), JAX MD jitted forced update, "
          "each called alone and per build inside a jitted fori_loop; JAX MD host-side allocate)")
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
    parser.add_argument("--build-repeats", type=int, default=12,
                        help="timed isolated neighbor-list builds (median); every 4th also times a loop")
    parser.add_argument("--loop-builds", type=int, default=5, help="builds per timed in-loop program")
    parser.add_argument("--jaxmd-capacity-multiplier", type=float, default=1.25,
                        help="JAX MD capacity_multiplier (its default; jmlsim sizes with the same 1.25)")
    parser.add_argument("--jaxmd-extra-step", type=int, default=8,
                        help="extra_capacity added per JAX MD re-allocation after an overflow")
    parser.add_argument("--json", action="store_true", help="print one JSON line with all figures at the end")
    args = parser.parse_args(argv)

    info = machine_info()
    print(f"machine: {info['processor']}, {info['cpu_count']} CPUs ({info['platform']}, Python {info['python']})")
    print(f"jax {info['jax']}, jax-md {info['jax_md']}, devices {info['devices']}, load average {load_average()}")
    print(f"LJ fluid rho={DENSITY} rc={CUTOFF} Langevin kT={KT} gamma={FRICTION} dt={DT} float32 skin={args.skin}; "
          f"{args.steps} measured steps per engine in chunks of {CHUNK} (alternating) after {args.warmup} "
          f"warm-up chunk(s)")
    print("note: JAX MD's lennard_jones_neighbor_list switches the potential smoothly to zero from r_onset=2.0 to "
          "rc=2.5 (multiplicative cutoff); jmlsim truncates and shifts at rc. The pair count, and so the cost, "
          "is the same; U/N differs accordingly.", flush=True)

    rows = []
    for n in args.sizes:
        print(f"\n== N = {n}", flush=True)
        rows.append(run_size(n, args))

    print_table(rows)
    if args.json:
        print(json.dumps({"benchmark": "lj", "date": datetime.date.today().isoformat(), "machine": info,
                          "args": vars(args), "results": rows}))


if __name__ == "__main__":
    main()
