"""Biomolecular systems: jmlsim against OpenMM's CPU platform, same systems, same machine, same run.

Three modes (from the repository root)::

    python benchmarks/biomolecular.py                        # speed: DHFR and villin, 2 fs Langevin
    python benchmarks/biomolecular.py --systems dhfr --hmr   # speed with hydrogen mass repartitioning, 4 fs
    python benchmarks/biomolecular.py --drift --systems alanine-dipeptide --steps 2000
    python benchmarks/biomolecular.py --profile              # ms per step of the pieces of one jmlsim step

Speed (default). Each system is built once by OpenMM's app layer (``jmlsim.io.openmm_import``): PME with a
0.9 nm cutoff (OpenMM's default Ewald tolerance 5e-4), HBonds constraints and rigid water, dispersion correction
as the force field sets it. The same ``openmm.System`` feeds both engines (OpenMM's CMMotionRemover is removed,
jmlsim has none). Both start from the same positions (a brief OpenMM minimization of the input) and the same
Maxwell-Boltzmann velocities at 300 K, and run Langevin middle dynamics at 300 K, friction 1/ps, 2 fs (4 fs with
``--hmr``): OpenMM's ``LangevinMiddleIntegrator`` on the CPU platform (threads = cores) and jmlsim's
``LangevinBAOAB`` (the same splitting) in ``--precision single`` (default) or mixed, skin 0.12 nm. After one
untimed warm-up chunk each (jmlsim's includes compilation), measured chunks alternate: jmlsim, OpenMM, jmlsim,
..., so load from other processes on a shared machine hits both engines alike, and the ratio uses the figures
of this one run. Each chunk ends with the potential energy on the host in both engines (``Simulation.advance``
returns it; OpenMM's ``getState(getEnergy=True)``). Reported: ns/day of each, ratio jmlsim / OpenMM, jmlsim
compile seconds, neighbor-list rebuilds, CPU seconds per wall second (how many cores each engine kept busy),
and the load average.

Drift (``--drift``). NVE energy conservation under PME + HBonds constraints + rigid water at 1 fs (or
``--timestep-fs``), for alanine dipeptide in water and DHFR: jmlsim ``VelocityVerlet`` (RATTLE/SETTLE) in each
of ``--precisions`` against OpenMM's ``VerletIntegrator`` (Reference platform below 5,000 atoms, CPU above;
``--openmm-platform`` overrides), with OpenMM's constraint tolerance set to jmlsim's. Same start for all: the
input briefly minimized by OpenMM, velocities drawn at 300 K, then (``--equilibrate-ps``, default 2 ps) a short
OpenMM Langevin run at 300 K so that NVE starts from an equilibrated state rather than from the minimum (from the
minimum, the total energy of both engines climbs for the first few hundred fs while the potential energy rises
to equipartition, which a linear fit over a short run would report as drift); positions and velocities are
then constrained in float64 by jmlsim's solver and given to both engines. Total energy is sampled every
``--report-interval`` steps; drift is the slope of a least-squares line through E(t), given in kJ/mol/ns per
degree of freedom (dof = 3N - constraints - 3), and the fluctuation is the RMS of E about that line. OpenMM's VerletIntegrator is leapfrog: it is given v(-dt/2) = v(0) - dt/2 f(0)/m so
that it follows the same trajectory as velocity Verlet, and its reported kinetic energy is OpenMM's own on-step
estimate (velocities shifted by half a step).

Profile (``--profile``). The pieces of one jmlsim Langevin step on DHFR in float32, each jit-compiled on its
own and timed (median) at a state reached by a short run: neighbor-list build, the skin check, the nonbonded
direct-space pair sum (``Nonbonded.direct_forces``, as ``Nonbonded.forces`` does), the PME reciprocal
forces (``PMEReciprocal.forces``, analytic), the rest of the nonbonded corrections (exceptions, far exclusions,
self, dispersion), the bonded terms, the constraint solves (one SHAKE/SETTLE and two velocity projections per step) and a whole
integrator step with the forces held fixed (integrator arithmetic + noise + constraints), against the measured
time per step of ``Simulation.advance`` (measured before and after the pieces, averaged) and the list rebuild
frequency (``sim.nbrs.n_builds``). Each piece runs ``--loop-reps`` times inside one jitted ``fori_loop`` (as in a
compiled chunk); wall and process-CPU times are both reported, CPU time being less sensitive to other load.

No timing is asserted; the script only reports. ``--json`` prints one JSON line with all figures at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import time

import numpy as np

TEMPERATURE_K = 300.0
FRICTION_PER_PS = 1.0
CUTOFF_NM = 0.9
HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "tests", "data", "amber")
SYSTEM_NAMES = ("dhfr", "villin", "alanine-dipeptide")
# OpenMM's published figure for DHFR (23,558 atoms) on an H100, CUDA, 4 fs with HMR, and the OpenMM CPU figure
# measured earlier on this box (see benchmarks/RESULTS.md).
REFERENCE_FIGURES = {"openmm_h100_dhfr_4fs_hmr_ns_per_day": 1704.0, "openmm_cpu_dhfr_here_ns_per_day": 5.1}


# -- machine --------------------------------------------------------------------------------------------------
def cpu_name() -> str:
    """The processor's model name from /proc/cpuinfo, else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str:
    """Installed version of a distribution, or '?'."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine_info() -> dict:
    """Processor, cores, versions of jax / OpenMM and jax's devices."""
    import jax
    import openmm

    return {"processor": cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__, "openmm": openmm.__version__,
            "devices": [str(d) for d in jax.devices()]}


def uptime() -> str:
    """`uptime` output (load averages over 1, 5, 15 minutes), or the load averages alone."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        try:
            return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
        except OSError:
            return "?"


def load_average() -> float | None:
    """1-minute load average, or None."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def log(text: str) -> None:
    print(text, flush=True)


# -- systems --------------------------------------------------------------------------------------------------
def load_system(name: str, hmr: bool = False):
    """(jmlsim System, openmm.System) for a named system: PME 0.9 nm, HBonds, rigid water (optionally HMR)."""
    from jmlsim.io.openmm_import import load_amber, load_pdb

    common = dict(nonbonded="pme", cutoff=CUTOFF_NM, constraints="hbonds", hmr=hmr, return_openmm=True)
    if name == "dhfr":
        d = os.path.join(DATA, "dhfr")
        return load_amber(os.path.join(d, "JAC.prmtop"), os.path.join(d, "JAC.inpcrd"), **common)
    if name == "alanine-dipeptide":
        d = os.path.join(DATA, "alanine-dipeptide-explicit")
        return load_amber(os.path.join(d, "alanine-dipeptide.prmtop"), os.path.join(d, "alanine-dipeptide.crd"),
                          **common)
    if name == "villin":
        import openmm.app as app
        pdb = os.path.join(os.path.dirname(app.__file__), "data", "test.pdb")
        return load_pdb(pdb, ["amber14-all.xml", "amber14/tip3p.xml"], **common)
    raise ValueError(f"unknown system {name!r} (choose {', '.join(SYSTEM_NAMES)})")


def without_cm_remover(omm_system):
    """A copy of the openmm.System without CMMotionRemover (jmlsim has no such step)."""
    import openmm as mm

    copy = mm.XmlSerializer.clone(omm_system)
    for i in reversed(range(copy.getNumForces())):
        if isinstance(copy.getForce(i), mm.CMMotionRemover):
            copy.removeForce(i)
    return copy


def openmm_context(omm_system, integrator, platform_name: str, threads: int | None = None):
    """An openmm.Context on a named platform (CPU: ``threads`` threads)."""
    import openmm as mm

    plat = mm.Platform.getPlatformByName(platform_name)
    props = {"Threads": str(threads)} if platform_name == "CPU" and threads else {}
    return mm.Context(omm_system, integrator, plat, props)


def minimize(omm_system, positions: np.ndarray, box: np.ndarray, iterations: int, threads: int) -> np.ndarray:
    """Positions (N, 3) nm after ``iterations`` L-BFGS iterations of OpenMM's minimizer (CPU platform)."""
    import openmm as mm

    if iterations <= 0:
        return np.asarray(positions, np.float64)
    context = openmm_context(omm_system, mm.VerletIntegrator(0.001), "CPU", threads)
    context.setPeriodicBoxVectors(*[mm.Vec3(*row) for row in box])
    context.setPositions(np.asarray(positions, np.float64))
    mm.LocalEnergyMinimizer.minimize(context, 10.0, iterations)
    out = context.getState(getPositions=True).getPositions(asNumpy=True)._value
    del context
    return np.asarray(out, np.float64)


def thermal_velocities(masses: np.ndarray, seed: int, temperature: float = TEMPERATURE_K) -> np.ndarray:
    """Maxwell-Boltzmann velocities (N, 3) nm/ps at ``temperature`` K, zero total momentum (numpy, float64)."""
    from jmlsim.units import kT_kj_per_mol

    rng = np.random.default_rng(seed)
    v = rng.standard_normal((masses.shape[0], 3)) * np.sqrt(kT_kj_per_mol(temperature) / masses)[:, None]
    return v - (masses[:, None] * v).sum(0) / masses.sum()


def equilibrate(omm_system, positions: np.ndarray, velocities: np.ndarray, box: np.ndarray, picoseconds: float,
                threads: int, seed: int):
    """OpenMM LangevinMiddle at 300 K, 1/ps, 2 fs for ``picoseconds`` (CPU platform): (positions, velocities)."""
    import openmm as mm

    integrator = mm.LangevinMiddleIntegrator(TEMPERATURE_K, FRICTION_PER_PS, 0.002)
    integrator.setRandomNumberSeed(seed + 7)
    context = openmm_context(omm_system, integrator, "CPU", threads)
    context.setPeriodicBoxVectors(*[mm.Vec3(*row) for row in box])
    context.setPositions(np.asarray(positions, np.float64))
    context.setVelocities(np.asarray(velocities, np.float64))
    context.applyConstraints(1e-6)
    context.applyVelocityConstraints(1e-6)
    integrator.step(int(round(picoseconds / 0.002)))
    state = context.getState(getPositions=True, getVelocities=True)
    x = np.asarray(state.getPositions(asNumpy=True)._value, np.float64)
    v = np.asarray(state.getVelocities(asNumpy=True)._value, np.float64)
    del context
    return x, v


def prepare(name: str, args, hmr: bool = False, equilibrate_ps: float = 0.0):
    """Load, minimize briefly (OpenMM), draw velocities at 300 K, optionally equilibrate (OpenMM Langevin):
    (jmlsim System at the start positions, openmm.System without CMMotionRemover, start velocities (N, 3))."""
    t0 = time.perf_counter()
    system, omm = load_system(name, hmr)
    omm = without_cm_remover(omm)
    t1 = time.perf_counter()
    positions = minimize(omm, system.positions, system.box, args.minimize_iterations, args.threads)
    t2 = time.perf_counter()
    velocities = thermal_velocities(np.asarray(system.masses, np.float64), args.seed)
    if equilibrate_ps > 0:
        positions, velocities = equilibrate(omm, positions, velocities, system.box, equilibrate_ps, args.threads,
                                            args.seed)
    t3 = time.perf_counter()
    system = dataclasses.replace(system, positions=positions)
    log(f"  {name}: {system.n_atoms} atoms, {system.n_constraints} constraints "
        f"({0 if system.constraints is None else len(system.constraints.waters)} rigid waters), box "
        f"{np.round(np.diag(system.box), 4).tolist()} nm, PME grid {system.terms['NonbondedForce'].pme.grid}, "
        f"terms {list(system.terms)}; loaded in {t1 - t0:.1f} s, minimized ({args.minimize_iterations} iterations, "
        f"OpenMM CPU) in {t2 - t1:.1f} s" + (f", equilibrated {equilibrate_ps:g} ps (OpenMM CPU LangevinMiddle 300 K, "
                                            f"2 fs) in {t3 - t2:.1f} s" if equilibrate_ps > 0 else ""))
    return system, omm, velocities


def openmm_potential(omm_system, positions: np.ndarray, box: np.ndarray) -> float:
    """Potential energy (kJ/mol) on the Reference platform, double precision."""
    import openmm as mm

    context = openmm_context(omm_system, mm.VerletIntegrator(0.001), "Reference")
    context.setPeriodicBoxVectors(*[mm.Vec3(*row) for row in box])
    context.setPositions(np.asarray(positions, np.float64))
    energy = context.getState(getEnergy=True).getPotentialEnergy()._value
    del context
    return float(energy)


# -- speed ----------------------------------------------------------------------------------------------------
class JmlsimSpeed:
    """jmlsim's Simulation + LangevinBAOAB, advanced in chunks."""

    name = "jmlsim"

    def __init__(self, system, velocities, dt: float, precision: str, skin: float, seed: int,
                 devices: int | None = None):
        from jmlsim.integrators import LangevinBAOAB
        from jmlsim.simulation import Simulation
        from jmlsim.units import kT_kj_per_mol

        kT = kT_kj_per_mol(TEMPERATURE_K)
        t0 = time.perf_counter()
        self.sim = Simulation(system, LangevinBAOAB(dt, kT, FRICTION_PER_PS), kT=kT, precision=precision,
                              skin=skin, seed=seed, velocities=velocities, devices=devices)
        self.setup_s = time.perf_counter() - t0
        self.chunk_s: list[float] = []
        self.cpu_s: list[float] = []
        self.rebuilds = 0
        self.steps = 0
        self.potential = None

    def start_positions(self) -> np.ndarray:
        return np.asarray(self.sim.state.positions, np.float64)

    def warmup(self, n: int) -> None:
        self.potential = float(self.sim.advance(n))
        self.compile_warmup = self.sim.compile_seconds
        self.regrowths_warmup = self.sim.regrowths

    def chunk(self, n: int) -> None:
        sim = self.sim
        builds, regrowths, compile0 = int(sim.nbrs.n_builds), sim.regrowths, sim.compile_seconds
        c0, t0 = time.process_time(), time.perf_counter()
        self.potential = float(sim.advance(n))  # a host array: the chunk has finished
        wall = time.perf_counter() - t0 - (sim.compile_seconds - compile0)
        self.cpu_s.append(time.process_time() - c0)
        self.chunk_s.append(wall)
        after = int(sim.nbrs.n_builds)  # restarts from 1 after a regrowth
        self.rebuilds += after if sim.regrowths != regrowths else after - builds
        self.steps += n

    def results(self, dt: float) -> dict:
        from jmlsim.units import ns_per_day

        sim = self.sim
        frame = sim.frame(np.asarray(self.potential))
        total = sum(self.chunk_s)
        return {"steps_per_s": self.steps / total, "ns_per_day": ns_per_day(dt, self.steps / total),
                "ns_per_day_median_chunk": ns_per_day(dt, self.steps / len(self.chunk_s) / statistics.median(self.chunk_s)),
                "measured_steps": self.steps, "chunk_s": [round(s, 3) for s in self.chunk_s],
                "cpu_per_wall": sum(self.cpu_s) / total, "cpu_s_per_step": sum(self.cpu_s) / self.steps,
                "setup_s": self.setup_s, "compile_s": sim.compile_seconds,
                "compile_s_in_measured": sim.compile_seconds - self.compile_warmup,
                "rebuilds_measured": self.rebuilds, "regrowths": sim.regrowths,
                "regrowths_in_warmup": self.regrowths_warmup, "neighbor_capacity": sim.spec.capacity,
                "cells": list(sim.spec.cells) if sim.spec.cells else None, "cell_capacity": sim.spec.cell_capacity,
                "skin": sim.skin, "potential_end": self.potential, "temperature_end": float(frame.temperature)}


class OpenMMSpeed:
    """OpenMM's LangevinMiddleIntegrator on the CPU platform, advanced in chunks."""

    name = "OpenMM"

    def __init__(self, omm_system, positions, velocities, box, dt: float, threads: int, seed: int):
        import openmm as mm

        t0 = time.perf_counter()
        self.integrator = mm.LangevinMiddleIntegrator(TEMPERATURE_K, FRICTION_PER_PS, dt)
        self.integrator.setRandomNumberSeed(seed + 1)
        self.context = openmm_context(omm_system, self.integrator, "CPU", threads)
        self.context.setPeriodicBoxVectors(*[mm.Vec3(*row) for row in box])
        self.context.setPositions(np.asarray(positions, np.float64))
        self.context.setVelocities(np.asarray(velocities, np.float64))
        self.context.applyConstraints(self.integrator.getConstraintTolerance())
        self.context.applyVelocityConstraints(self.integrator.getConstraintTolerance())
        self.setup_s = time.perf_counter() - t0
        self.threads = self.context.getPlatform().getPropertyValue(self.context, "Threads")
        self.dof = 3 * omm_system.getNumParticles() - omm_system.getNumConstraints()
        self.chunk_s: list[float] = []
        self.cpu_s: list[float] = []
        self.steps = 0
        self.state = None

    def _advance(self, n: int) -> None:
        self.integrator.step(n)
        self.state = self.context.getState(getEnergy=True)

    def warmup(self, n: int) -> None:
        self._advance(n)

    def chunk(self, n: int) -> None:
        c0, t0 = time.process_time(), time.perf_counter()
        self._advance(n)
        self.chunk_s.append(time.perf_counter() - t0)
        self.cpu_s.append(time.process_time() - c0)
        self.steps += n

    def results(self, dt: float) -> dict:
        from jmlsim.units import BOLTZMANN_KJ_PER_MOL_K, ns_per_day

        total = sum(self.chunk_s)
        kinetic = self.state.getKineticEnergy()._value
        return {"steps_per_s": self.steps / total, "ns_per_day": ns_per_day(dt, self.steps / total),
                "ns_per_day_median_chunk": ns_per_day(dt, self.steps / len(self.chunk_s) / statistics.median(self.chunk_s)),
                "measured_steps": self.steps, "chunk_s": [round(s, 3) for s in self.chunk_s],
                "cpu_per_wall": sum(self.cpu_s) / total, "cpu_s_per_step": sum(self.cpu_s) / self.steps,
                "setup_s": self.setup_s, "threads": self.threads,
                "constraint_tolerance": self.integrator.getConstraintTolerance(),
                "potential_end": self.state.getPotentialEnergy()._value,
                "temperature_end": 2.0 * kinetic / (self.dof * BOLTZMANN_KJ_PER_MOL_K)}


def run_speed(name: str, args) -> dict:
    """Both engines on one system: warm-up, then alternating measured chunks."""
    dt = (0.004 if args.hmr else 0.002) if args.timestep_fs is None else 1e-3 * args.timestep_fs
    log(f"\n== {name}: speed, Langevin middle {TEMPERATURE_K:g} K, {FRICTION_PER_PS:g}/ps, dt {dt * 1e3:g} fs"
        f"{' (HMR)' if args.hmr else ''}, jmlsim {args.precision}")
    system, omm, velocities = prepare(name, args, hmr=args.hmr)
    jml = JmlsimSpeed(system, velocities, dt, args.precision, args.skin, args.seed, args.devices)
    start = jml.start_positions()  # jmlsim's constrained start: OpenMM starts from the same positions
    reference_u = openmm_potential(omm, start, system.box)
    jml_u = float(jml.sim.potential())
    log(f"  start potential: jmlsim {jml_u:.2f}, OpenMM Reference {reference_u:.2f} kJ/mol "
        f"(relative difference {abs(jml_u - reference_u) / abs(reference_u):.2e}); jmlsim set-up {jml.setup_s:.1f} s, "
        f"list {jml.sim.spec.capacity} wide, cells {jml.sim.spec.cells} x {jml.sim.spec.cell_capacity}")
    omm_run = OpenMMSpeed(omm, start, np.asarray(jml.sim.state.velocities, np.float64), system.box, dt,
                          args.threads, args.seed)
    t0 = time.perf_counter()
    jml.warmup(args.chunk)
    log(f"  jmlsim warm-up chunk ({args.chunk} steps, compile {jml.sim.compile_seconds:.1f} s) took "
        f"{time.perf_counter() - t0:.1f} s")
    for _ in range(args.warmup - 1):
        jml.warmup(args.chunk)
    for _ in range(args.warmup):
        omm_run.warmup(args.chunk)
    load_start, up_start = load_average(), uptime()
    for i in range(args.chunks):
        for run in (jml, omm_run):
            run.chunk(args.chunk)
        log(f"  chunk {i + 1}/{args.chunks}: jmlsim {jml.chunk_s[-1]:.2f} s, OpenMM {omm_run.chunk_s[-1]:.2f} s "
            f"({args.chunk} steps each), load {load_average()}")
    load_end, up_end = load_average(), uptime()
    out = {"system": name, "n_atoms": system.n_atoms, "timestep_ps": dt, "hmr": args.hmr, "devices": args.devices,
           "precision": args.precision, "start_potential_jmlsim": jml_u, "start_potential_openmm_reference": reference_u,
           "jmlsim": jml.results(dt), "openmm": omm_run.results(dt), "load_average": [load_start, load_end],
           "uptime": [up_start, up_end]}
    out["ratio"] = out["jmlsim"]["ns_per_day"] / out["openmm"]["ns_per_day"]
    # CPU seconds per step, OpenMM / jmlsim: the work ratio, less sensitive to load than the wall-clock ratio
    out["cpu_ratio"] = out["openmm"]["cpu_s_per_step"] / out["jmlsim"]["cpu_s_per_step"]
    j, o = out["jmlsim"], out["openmm"]
    log(f"  jmlsim: {j['ns_per_day']:.3f} ns/day ({j['steps_per_s']:.3f} steps/s), compile {j['compile_s']:.1f} s, "
        f"{j['rebuilds_measured']} rebuilds in {j['measured_steps']} steps, regrowths {j['regrowths']}, "
        f"CPU/wall {j['cpu_per_wall']:.2f}, T_end {j['temperature_end']:.1f} K, U_end {j['potential_end']:.1f}")
    log(f"  OpenMM CPU ({o['threads']} threads): {o['ns_per_day']:.3f} ns/day ({o['steps_per_s']:.2f} steps/s), "
        f"CPU/wall {o['cpu_per_wall']:.2f}, T_end {o['temperature_end']:.1f} K, U_end {o['potential_end']:.1f}")
    log(f"  ratio jmlsim / OpenMM: {out['ratio']:.4f} (wall), {out['cpu_ratio']:.4f} (CPU seconds per step: jmlsim "
        f"{j['cpu_s_per_step']:.3f}, OpenMM {o['cpu_s_per_step']:.4f}); load {load_start} -> {load_end}")
    del jml, omm_run
    gc.collect()
    return out


def print_speed_table(rows: list[dict]) -> None:
    print()
    head = (f"{'system':>8} | {'atoms':>6} | {'dt fs':>5} | {'jmlsim ns/day':>13} | {'OpenMM CPU ns/day':>17} | "
            f"{'ratio':>7} | {'CPU-s ratio':>11} | {'jmlsim compile s':>16} | {'rebuilds':>8} | {'CPU/wall jml / OMM':>18} | "
            f"{'load':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        j, o = r["jmlsim"], r["openmm"]
        print(f"{r['system']:>8} | {r['n_atoms']:>6} | {r['timestep_ps'] * 1e3:>5g} | {j['ns_per_day']:>13.3f} | "
              f"{o['ns_per_day']:>17.3f} | {r['ratio']:>7.4f} | {r['cpu_ratio']:>11.4f} | {j['compile_s']:>16.1f} | "
              f"{j['rebuilds_measured']:>4d}/{j['measured_steps']:<3d} | "
              f"{j['cpu_per_wall']:>8.2f} / {o['cpu_per_wall']:<7.2f} | {r['load_average'][0]} -> {r['load_average'][1]}")
    print("(ratio: jmlsim ns/day / OpenMM ns/day in this run; CPU-s ratio: OpenMM CPU seconds per step / jmlsim's, "
          "i.e. the same ratio measured in work rather than wall time; CPU/wall: cores kept busy)")
    print(f"(reference figures: OpenMM CPU on DHFR measured here earlier {REFERENCE_FIGURES['openmm_cpu_dhfr_here_ns_per_day']} "
          f"ns/day; OpenMM's published H100 DHFR figure {REFERENCE_FIGURES['openmm_h100_dhfr_4fs_hmr_ns_per_day']:g} ns/day "
          f"at 4 fs with HMR)")


# -- drift ----------------------------------------------------------------------------------------------------
def energy_fit(times_ps: np.ndarray, energies: np.ndarray, dof: int) -> dict:
    """Least-squares line through E(t): slope kJ/mol/ns (total and per dof) and RMS of E about the line."""
    t_ns = np.asarray(times_ps) * 1e-3
    e = np.asarray(energies, np.float64)
    slope, intercept = np.polyfit(t_ns, e, 1)
    residual = e - (slope * t_ns + intercept)
    return {"drift_kj_per_mol_per_ns": float(slope), "drift_per_dof": float(slope / dof),
            "rms_fluctuation": float(np.sqrt(np.mean(residual ** 2))),
            "rms_fluctuation_per_dof": float(np.sqrt(np.mean(residual ** 2)) / dof),
            "energy_start": float(e[0]), "energy_end": float(e[-1]), "samples": int(len(e))}


def drift_jmlsim(system, x0, v0, dt: float, precision: str, steps: int, interval: int, skin: float, dof: int) -> dict:
    """jmlsim VelocityVerlet from (x0, v0): total energy every ``interval`` steps."""
    from jmlsim.integrators import VelocityVerlet
    from jmlsim.simulation import Simulation
    from jmlsim.units import kT_kj_per_mol

    t0 = time.perf_counter()
    sim = Simulation(dataclasses.replace(system, positions=x0), VelocityVerlet(dt), kT=kT_kj_per_mol(TEMPERATURE_K),
                     precision=precision, skin=skin, velocities=v0)
    masses = np.asarray(system.masses, np.float64)

    def total(potential):
        v = np.asarray(sim.state.velocities, np.float64)
        return float(potential) + 0.5 * float(np.sum(masses[:, None] * v * v))
    times, energies = [0.0], [total(sim.potential())]
    builds0 = int(sim.nbrs.n_builds)
    wall0 = time.perf_counter()
    done = 0
    while done < steps:
        k = min(interval, steps - done)
        potential = sim.advance(k)
        done += k
        times.append(done * dt)
        energies.append(total(potential))
    wall = time.perf_counter() - wall0 - sim.compile_seconds
    out = energy_fit(np.array(times), np.array(energies), dof)
    out.update({"engine": f"jmlsim {precision}", "steps": steps, "wall_s": wall, "setup_s": wall0 - t0,
                "compile_s": sim.compile_seconds, "rebuilds": int(sim.nbrs.n_builds) - builds0,
                "regrowths": sim.regrowths, "dof_sim": sim.dof})
    del sim
    gc.collect()
    return out


def drift_openmm(omm_system, x0, v0, box, dt: float, steps: int, interval: int, platform_name: str, threads: int,
                 tolerance: float, dof: int) -> dict:
    """OpenMM VerletIntegrator from (x0, v0): total energy every ``interval`` steps."""
    import openmm as mm

    integrator = mm.VerletIntegrator(dt)
    integrator.setConstraintTolerance(tolerance)
    context = openmm_context(omm_system, integrator, platform_name, threads)
    context.setPeriodicBoxVectors(*[mm.Vec3(*row) for row in box])
    context.setPositions(np.asarray(x0, np.float64))
    # OpenMM's Verlet is leapfrog: its velocities lag the positions by half a step. v(-dt/2) = v(0) - dt/2 f(0)/m
    # (constrained) puts it on the same trajectory as velocity Verlet from (x0, v0).
    forces = np.asarray(context.getState(getForces=True).getForces(asNumpy=True)._value, np.float64)
    masses = np.array([omm_system.getParticleMass(i)._value for i in range(omm_system.getNumParticles())])
    context.setVelocities(np.asarray(v0, np.float64) - 0.5 * dt * forces / masses[:, None])
    context.applyVelocityConstraints(tolerance)

    def total():
        s = context.getState(getEnergy=True)
        return s.getPotentialEnergy()._value + s.getKineticEnergy()._value
    times, energies = [0.0], [total()]
    wall0 = time.perf_counter()
    done = 0
    while done < steps:
        k = min(interval, steps - done)
        integrator.step(k)
        done += k
        times.append(done * dt)
        energies.append(total())
    wall = time.perf_counter() - wall0
    out = energy_fit(np.array(times), np.array(energies), dof)
    out.update({"engine": f"OpenMM {platform_name}", "steps": steps, "wall_s": wall, "constraint_tolerance": tolerance})
    del context
    gc.collect()
    return out


def run_drift(name: str, args) -> dict:
    """NVE drift of every requested jmlsim precision and of OpenMM, from one shared start."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # the shared start is constrained in float64
    dt = 1e-3 * (args.timestep_fs or 1.0)
    log(f"\n== {name}: NVE drift, PME + HBonds + rigid water, dt {dt * 1e3:g} fs, {args.steps} steps, energy every "
        f"{args.report_interval} steps")
    system, omm, velocities = prepare(name, args, equilibrate_ps=args.equilibrate_ps)
    cons = system.constraints
    m = jnp.asarray(system.masses, jnp.float64)
    x = jnp.asarray(system.positions, jnp.float64)
    x0 = np.asarray(jax.jit(cons.positions)(x, x, m))
    v0 = np.asarray(jax.jit(cons.velocities)(jnp.asarray(x0), jnp.asarray(velocities), m))
    dof = 3 * system.n_atoms - system.n_constraints - 3
    platform_name = args.openmm_platform
    if platform_name == "auto":
        platform_name = "Reference" if system.n_atoms < 5000 else "CPU"
    load_start, up_start = load_average(), uptime()
    rows = []
    o = drift_openmm(omm, x0, v0, system.box, dt, args.steps, args.report_interval, platform_name, args.threads,
                     cons.tolerance, dof)
    log(f"  {o['engine']}: drift {o['drift_per_dof']:+.3e} kJ/mol/ns/dof ({o['drift_kj_per_mol_per_ns']:+.2f} kJ/mol/ns), "
        f"RMS about the fit {o['rms_fluctuation']:.3f} kJ/mol, E {o['energy_start']:.2f} -> {o['energy_end']:.2f}, "
        f"{o['wall_s']:.1f} s")
    rows.append(o)
    for precision in args.precisions:
        r = drift_jmlsim(system, x0, v0, dt, precision, args.steps, args.report_interval, args.skin, dof)
        log(f"  {r['engine']}: drift {r['drift_per_dof']:+.3e} kJ/mol/ns/dof ({r['drift_kj_per_mol_per_ns']:+.2f} "
            f"kJ/mol/ns), RMS about the fit {r['rms_fluctuation']:.3f} kJ/mol, E {r['energy_start']:.2f} -> "
            f"{r['energy_end']:.2f}, {r['wall_s']:.1f} s (+ compile {r['compile_s']:.1f} s), {r['rebuilds']} rebuilds")
        rows.append(r)
    load_end, up_end = load_average(), uptime()
    return {"system": name, "n_atoms": system.n_atoms, "dof": dof, "timestep_ps": dt, "steps": args.steps,
            "equilibrate_ps": args.equilibrate_ps, "minimize_iterations": args.minimize_iterations,
            "report_interval": args.report_interval, "openmm_platform": platform_name,
            "constraint_tolerance": cons.tolerance, "kT": float(system.kB * TEMPERATURE_K), "runs": rows,
            "load_average": [load_start, load_end], "uptime": [up_start, up_end]}


def print_drift_table(results: list[dict]) -> None:
    print()
    head = (f"{'system':>17} | {'engine':>16} | {'steps':>5} | {'drift kJ/mol/ns/dof':>19} | {'drift kT/ns/dof':>15} | "
            f"{'RMS fluct. kJ/mol':>17} | {'E start':>12} | {'E end':>12} | {'wall s':>7}")
    print(head)
    print("-" * len(head))
    for res in results:
        for r in res["runs"]:
            print(f"{res['system']:>17} | {r['engine']:>16} | {r['steps']:>5} | {r['drift_per_dof']:>+19.3e} | "
                  f"{r['drift_per_dof'] / res['kT']:>+15.3e} | {r['rms_fluctuation']:>17.3f} | "
                  f"{r['energy_start']:>12.2f} | {r['energy_end']:>12.2f} | {r['wall_s']:>7.1f}")
    print("(drift: slope of a least-squares line through the total energy vs time, per degree of freedom; RMS: "
          "of the total energy about that line; dof = 3N - constraints - 3)")


# -- profile --------------------------------------------------------------------------------------------------
def timed_ms(fn, repeats: int, per: int = 1) -> dict:
    """ms of ``fn()`` (blocking) after one untimed call (compilation), divided by ``per``: median and minimum
    of the wall time, and the median process CPU time (robust to other processes' load: XLA runs these
    programs on about one core here)."""
    import jax

    jax.block_until_ready(fn())
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn())
        wall.append(1e3 * (time.perf_counter() - t0) / per)
        cpu.append(1e3 * (time.process_time() - c0) / per)
    return {"median": statistics.median(wall), "min": min(wall), "cpu": statistics.median(cpu)}


def in_loop(piece, feed, reps: int):
    """jit of ``reps`` calls of ``piece(x, *rest)`` in one ``fori_loop``, each call's output fed into the next
    call's x through ``feed(x, out)`` (so no call can be skipped or hoisted). This is how the pieces run inside
    a compiled MD chunk; a piece jitted on its own costs up to 2x more here (its large temporaries are
    allocated, and their pages faulted in, on every call)."""
    import jax

    def run(x, *rest):
        return jax.lax.fori_loop(0, reps, lambda _, xx: feed(xx, piece(xx, *rest)), x)
    return jax.jit(run)


def run_profile(name: str, args) -> dict:
    """ms per step of the pieces of one jmlsim Langevin step, each jitted alone (in a loop), float32."""
    import jax
    import jax.numpy as jnp

    from jmlsim import space
    from jmlsim.integrators import LangevinBAOAB
    from jmlsim.simulation import Simulation
    from jmlsim.units import kT_kj_per_mol

    dt = 0.004 if args.hmr else 0.002
    log(f"\n== {name}: profile of one Langevin step, float32, dt {dt * 1e3:g} fs, skin {args.skin}")
    system, _, velocities = prepare(name, args, hmr=args.hmr)
    kT = kT_kj_per_mol(TEMPERATURE_K)
    sim = Simulation(system, LangevinBAOAB(dt, kT, FRICTION_PER_PS), kT=kT, precision="single", skin=args.skin,
                     velocities=velocities, seed=args.seed)
    sim.advance(args.chunk)  # compile, and move off the minimized start
    load_start, up_start = load_average(), uptime()
    n_chunks = max(1, args.profile_steps // args.chunk)
    steps = n_chunks * args.chunk

    def measure_steps():
        """The whole step as the run loop does it: chunks of args.chunk steps, list rebuilds as they come.
        Returns (wall ms per step, CPU ms per step, rebuilds)."""
        builds0, regrowths0, compile0 = int(sim.nbrs.n_builds), sim.regrowths, sim.compile_seconds
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n_chunks):
            sim.advance(args.chunk)
        run_s = time.perf_counter() - t0 - (sim.compile_seconds - compile0)
        cpu_s = time.process_time() - c0
        rebuilds = int(sim.nbrs.n_builds) - builds0 if sim.regrowths == regrowths0 else int(sim.nbrs.n_builds)
        return 1e3 * run_s / steps, 1e3 * cpu_s / steps, rebuilds

    step_before, cpu_before, rebuilds_before = measure_steps()
    log(f"  measured {step_before:.1f} ms/step (CPU {cpu_before:.1f} ms/step) over {steps} steps "
        f"({rebuilds_before} rebuilds)")

    spec, nb_term = sim.spec, system.terms["NonbondedForce"]
    params = sim.params
    st = sim.state
    x = st.positions.astype(jnp.float32)
    v = st.velocities.astype(jnp.float32)
    masses = st.masses.astype(jnp.float32)
    box = jnp.asarray(system.box, jnp.float32)
    nbrs = sim.nbrs
    p_nb = params["NonbondedForce"]
    cons = system.constraints
    bonded_names = [k for k in system.terms if k != "NonbondedForce"]
    reps, r = args.loop_reps, args.repeats
    tiny = lambda xx, out: xx + 1e-9 * out  # noqa: E731 - a negligible feedback that keeps every call alive

    def direct_forces(xx, p, box, nbrs):
        return nb_term.direct_forces(p, xx, box, nbrs)

    def pme_forces(xx, q, box):
        return nb_term.pme.forces(q, xx, box)  # analytic, as Nonbonded.forces uses it

    # The corrections other than the reciprocal sum, timed on a copy of the term without PME (the exceptions'
    # erf removal is then left out: a small underestimate).
    no_pme = dataclasses.replace(nb_term, method="cutoff", pme=None)

    def bonded(xx, p, box):
        return jax.grad(lambda y: sum(system.terms[k].energy(p[k], y, box, None) for k in bonded_names))(xx)

    pieces = {
        "neighbor list build": (in_loop(lambda xx, box: spec.build(xx, box).idx[0, 0].astype(xx.dtype), tiny, reps),
                                (x, box)),
        "skin check": (in_loop(lambda xx, nb, box: spec.needs_rebuild(nb, xx, box).astype(xx.dtype), tiny, reps),
                       (x, nbrs, box)),
        "nonbonded direct pair sum": (in_loop(direct_forces, tiny, reps), (x, p_nb, box, nbrs)),
        "PME reciprocal forces": (in_loop(pme_forces, tiny, reps), (x, p_nb.charge, box)),
        "other nonbonded corrections": (in_loop(lambda xx, p, box: jax.grad(no_pme._corrections, argnums=1)(p, xx, box),
                                                tiny, reps), (x, p_nb, box)),
        "nonbonded total (term.forces)": (in_loop(lambda xx, p, box, nb: nb_term.forces(p, xx, box, nb), tiny, reps),
                                          (x, p_nb, box, nbrs)),
        "bonded terms": (in_loop(bonded, tiny, reps), (x, params, box)),
        "all forces (system.forces)": (in_loop(lambda xx, p, box, nb: system.forces(p, xx, box, nb), tiny, reps),
                                       (x, params, box, nbrs)),
        # SHAKE/SETTLE from the previous positions after an unconstrained drift, as in a step
        "constraints: positions (SHAKE+SETTLE)": (in_loop(lambda xx, vv, m: cons.positions(xx + dt * vv, xx, m),
                                                          lambda xx, out: out, reps), (x, v, masses)),
        "constraints: velocities (RATTLE+SETTLE)": (
            in_loop(lambda vv, xx, m: cons.velocities(xx, vv, m), lambda vv, out: out + 1e-6, reps), (v, x, masses)),
        # a whole Langevin step with the forces held fixed: integrator arithmetic, noise and the constraints
        "integrator step, forces held fixed": (
            in_loop(lambda s, f: sim.integrator.step(s, lambda xx, aux: (f, aux))[0], lambda s, out: out, reps),
            (jax.tree_util.tree_map(lambda a: a, st), st.forces)),
    }
    ms = {}
    for key, (fn, fn_args) in pieces.items():
        ms[key] = timed_ms(lambda: fn(*fn_args), max(2, r // 2) if key == "neighbor list build" else r, per=reps)
        log(f"  {key}: {ms[key]['median']:.1f} ms (min {ms[key]['min']:.1f}, CPU {ms[key]['cpu']:.1f}) per call in a "
            f"loop of {reps}")
    # For comparison, two pieces jitted as single calls (what a host-side rebuild or force call costs).
    alone_build = jax.jit(lambda x, box: spec.build(x, box).idx)
    alone_forces = jax.jit(system.forces)
    alone = {"neighbor list build": timed_ms(lambda: alone_build(x, box), max(2, r // 2)),
             "all forces (system.forces)": timed_ms(lambda: alone_forces(params, x, box, nbrs), r)}
    step_after, cpu_after, rebuilds_after = measure_steps()  # again: load on a shared machine changes over minutes
    log(f"  measured again after the pieces: {step_after:.1f} ms/step (CPU {cpu_after:.1f}) ({rebuilds_after} rebuilds)")
    step_ms, step_cpu = 0.5 * (step_before + step_after), 0.5 * (cpu_before + cpu_after)
    rebuilds = rebuilds_before + rebuilds_after
    steps_total = 2 * steps
    load_end, up_end = load_average(), uptime()

    def per_step(which: str) -> dict:
        t = {k: val[which] for k, val in ms.items()}
        out = {
            "neighbor list rebuilds (build x rate)": t["neighbor list build"] * rebuilds / steps_total,
            "skin check": t["skin check"],
            "nonbonded direct pair sum": t["nonbonded direct pair sum"],
            "PME reciprocal": t["PME reciprocal forces"],
            "other nonbonded corrections": t["other nonbonded corrections"],
            "bonded terms": t["bonded terms"],
            "constraints (1 x positions + 2 x velocities)": t["constraints: positions (SHAKE+SETTLE)"]
            + 2 * t["constraints: velocities (RATTLE+SETTLE)"],
        }
        # the integrator's own work: a fixed-force step less its constraint solves (not below zero)
        out["integrator arithmetic + noise"] = max(
            0.0, t["integrator step, forces held fixed"] - out["constraints (1 x positions + 2 x velocities)"])
        return out

    wall_steps, cpu_steps = per_step("median"), per_step("cpu")
    n_pairs = jnp.sum(nbrs.idx < system.n_atoms, axis=1)
    dr = x[:, None, :] - x[jnp.minimum(nbrs.idx, system.n_atoms - 1)]
    dr = space.minimum_image(dr, box, spec.triclinic)
    within = jnp.sum((jnp.sum(dr * dr, -1) < CUTOFF_NM ** 2) & (nbrs.idx < system.n_atoms), axis=1)
    return {"system": name, "n_atoms": system.n_atoms, "timestep_ps": dt, "skin": sim.skin, "loop_reps": reps,
            "measured_step_ms": step_ms, "measured_step_cpu_ms": step_cpu,
            "measured_step_ms_before_after": [step_before, step_after],
            "measured_step_cpu_ms_before_after": [cpu_before, cpu_after], "measured_steps": steps_total,
            "rebuilds": rebuilds, "steps_per_rebuild": steps_total / rebuilds if rebuilds else None,
            "pieces_ms": ms, "alone_ms": alone, "per_step_ms": wall_steps, "per_step_cpu_ms": cpu_steps,
            "sum_of_pieces_ms": sum(wall_steps.values()), "sum_of_pieces_cpu_ms": sum(cpu_steps.values()),
            "neighbor_capacity": spec.capacity, "cells": list(spec.cells) if spec.cells else None,
            "cell_capacity": spec.cell_capacity, "candidates_per_atom": 27 * spec.cell_capacity if spec.cells else None,
            "mean_list_neighbors": float(jnp.mean(n_pairs)), "mean_within_cutoff": float(jnp.mean(within)),
            "pme_grid": list(nb_term.pme.grid), "load_average": [load_start, load_end], "uptime": [up_start, up_end]}


def print_profile(p: dict) -> None:
    print()
    print(f"{p['system']} ({p['n_atoms']} atoms), float32, Langevin {p['timestep_ps'] * 1e3:g} fs, skin {p['skin']:g} nm: "
          f"measured {p['measured_step_ms']:.1f} ms/step wall, {p['measured_step_cpu_ms']:.1f} ms/step CPU over "
          f"{p['measured_steps']} steps (wall {p['measured_step_ms_before_after'][0]:.1f} before and "
          f"{p['measured_step_ms_before_after'][1]:.1f} after timing the pieces), {p['rebuilds']} list rebuilds "
          f"(one per {fmt(p['steps_per_rebuild'], '.1f')} steps)")
    head = (f"{'piece (jitted alone, in a loop of ' + str(p['loop_reps']) + ')':>46} | {'wall ms/step':>12} | "
            f"{'CPU ms/step':>11} | {'CPU share':>9}")
    print(head)
    print("-" * len(head))
    wall, cpu = p["per_step_ms"], p["per_step_cpu_ms"]
    for key in wall:
        print(f"{key:>46} | {wall[key]:>12.1f} | {cpu[key]:>11.1f} | {100 * cpu[key] / p['measured_step_cpu_ms']:>8.1f}%")
    print(f"{'sum of the pieces':>46} | {p['sum_of_pieces_ms']:>12.1f} | {p['sum_of_pieces_cpu_ms']:>11.1f} | "
          f"{100 * p['sum_of_pieces_cpu_ms'] / p['measured_step_cpu_ms']:>8.1f}%")
    print(f"{'measured step (Simulation.advance)':>46} | {p['measured_step_ms']:>12.1f} | {p['measured_step_cpu_ms']:>11.1f} | "
          f"{100.0:>8.1f}%")
    rest_w = p["measured_step_ms"] - p["sum_of_pieces_ms"]
    rest_c = p["measured_step_cpu_ms"] - p["sum_of_pieces_cpu_ms"]
    print(f"{'remainder: fusion, timing noise':>46} | {rest_w:>12.1f} | {rest_c:>11.1f} | "
          f"{100 * rest_c / p['measured_step_cpu_ms']:>8.1f}%")
    print()
    print("per call in a loop, ms (wall median / wall min / CPU): " + "; ".join(
        f"{k} {v['median']:.1f} / {v['min']:.1f} / {v['cpu']:.1f}" for k, v in p["pieces_ms"].items()))
    print("as single jitted calls, ms (wall median / wall min / CPU): " + "; ".join(
        f"{k} {v['median']:.1f} / {v['min']:.1f} / {v['cpu']:.1f}" for k, v in p["alone_ms"].items()))
    print(f"neighbor list: row width {p['neighbor_capacity']}, mean {p['mean_list_neighbors']:.0f} neighbors within "
          f"cutoff + skin and {p['mean_within_cutoff']:.0f} within the cutoff per atom (full list: every pair twice); "
          f"cells {p['cells']} x {p['cell_capacity']} slots = {p['candidates_per_atom']} candidates per atom per build; "
          f"PME grid {p['pme_grid']}")


# -- driver ---------------------------------------------------------------------------------------------------
def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--drift", action="store_true", help="NVE energy drift instead of speed")
    mode.add_argument("--profile", action="store_true", help="time the pieces of one jmlsim step")
    parser.add_argument("--systems", nargs="+", choices=SYSTEM_NAMES, default=None,
                        help="default: dhfr villin (speed), alanine-dipeptide dhfr (drift), dhfr (profile)")
    parser.add_argument("--hmr", action="store_true", help="hydrogen mass repartitioning and a 4 fs step (speed, profile)")
    parser.add_argument("--precision", default="single", choices=("single", "mixed"), help="jmlsim precision (speed)")
    parser.add_argument("--precisions", nargs="+", default=["double", "mixed", "single"],
                        choices=("double", "mixed", "single"), help="jmlsim precisions (drift)")
    parser.add_argument("--timestep-fs", type=float, default=None,
                        help="timestep, fs (default: speed 2, or 4 with --hmr; drift 1)")
    parser.add_argument("--chunk", type=int, default=50, help="steps per chunk (speed, profile)")
    parser.add_argument("--chunks", type=int, default=3, help="measured chunks per engine (speed)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up chunks per engine (speed)")
    parser.add_argument("--steps", type=int, default=2000, help="NVE steps per engine (drift)")
    parser.add_argument("--report-interval", type=int, default=10, help="steps between energy samples (drift)")
    parser.add_argument("--openmm-platform", default="auto", choices=("auto", "Reference", "CPU"),
                        help="OpenMM platform for drift (auto: Reference below 5,000 atoms, else CPU)")
    parser.add_argument("--profile-steps", type=int, default=100, help="steps of the measured run (profile)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per piece, median (profile)")
    parser.add_argument("--loop-reps", type=int, default=3, help="calls per timed loop program (profile)")
    parser.add_argument("--skin", type=float, default=0.12, help="jmlsim neighbor-list skin, nm")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="OpenMM CPU threads (default: cores)")
    parser.add_argument("--minimize-iterations", type=int, default=100,
                        help="OpenMM L-BFGS iterations applied to the input before both engines start")
    parser.add_argument("--equilibrate-ps", type=float, default=2.0,
                        help="drift: OpenMM Langevin equilibration (ps, 2 fs steps) after the minimization and "
                             "before the shared NVE start; 0 starts NVE from the minimized structure")
    parser.add_argument("--seed", type=int, default=0, help="velocity / noise seed")
    parser.add_argument("--devices", type=int, default=None,
                        help="speed: split jmlsim's pair sum over this many devices (atom decomposition; on the CPU "
                             "that many host devices share the cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON line with all figures at the end")
    args = parser.parse_args(argv)
    if args.devices and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        # before JAX starts: it reads XLA_FLAGS once (CPU host devices; a GPU host has its own)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}").strip()
    if args.systems is None:
        args.systems = (["alanine-dipeptide", "dhfr"] if args.drift else ["dhfr"] if args.profile
                        else ["dhfr", "villin"])
    mode_name = "drift" if args.drift else "profile" if args.profile else "speed"

    info = machine_info()
    log(f"machine: {info['processor']}, {info['cpu_count']} CPUs ({info['platform']}, Python {info['python']})")
    log(f"jax {info['jax']}, OpenMM {info['openmm']}, devices {info['devices']}")
    log(f"date {datetime.datetime.now().isoformat(timespec='seconds')}; uptime: {uptime()}")

    results = []
    for name in args.systems:
        if args.drift:
            results.append(run_drift(name, args))
        elif args.profile:
            results.append(run_profile(name, args))
        else:
            results.append(run_speed(name, args))
    if args.drift:
        print_drift_table(results)
    elif args.profile:
        for p in results:
            print_profile(p)
    else:
        print_speed_table(results)
    log(f"uptime at the end: {uptime()}")
    if args.json:
        print(json.dumps({"benchmark": "biomolecular", "mode": mode_name,
                          "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": info,
                          "args": vars(args), "reference_figures": REFERENCE_FIGURES, "results": results},
                         default=float))


if __name__ == "__main__":
    main()
