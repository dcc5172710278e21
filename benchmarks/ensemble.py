"""Aggregate replica throughput: R replicas of alanine dipeptide in one compiled program vs OpenMM one at a time.

Issue 9's benchmark. The system is alanine dipeptide in vacuum (AMBER ff14SB-era prmtop from
tests/data/amber, 22 atoms), no cutoff, bonds to H constrained, 2 fs LangevinMiddle/BAOAB at 300 K, friction 1/ps;
``--implicit-solvent obc2`` adds GBSA-OBC2 implicit solvent to both engines.

* OpenMM reference: one CPU-platform Context, measured in this run. Running R systems "one Context at a time"
  gives R x (1/R of the time) = the same aggregate ns/day as one Context, so the reference aggregate is the
  single-Context figure (measured here, not quoted).
* jmlsim: ``ensemble.replica_simulation`` with R replicas (independent seeds, same temperature), one ``lax.scan``
  chunk of ``--chunk`` steps per host round-trip, replica axis sharded over ``--devices`` host devices (on a CPU
  these are threads; XLA_FLAGS is set before JAX starts). Without ``--devices`` each R runs as the CLI would run
  it: sharded over one host device per core when every core gets at least 32 replicas
  (``jmlsim.ensemble.default_devices``), else on one device with XLA's own threads.

Printed per R: aggregate replica-ns/day (R x per-replica ns/day), per-replica ns/day, ratio to OpenMM, compile
time. ``--plot F.png`` draws the scaling curve (aggregate vs R, with the OpenMM line and the 100x goal line).

    python benchmarks/ensemble.py --replicas 1 4 16 64 256 1024 --plot benchmarks/ensemble_scaling.png --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ALA = os.path.join(HERE, "..", "tests", "data", "amber", "alanine-dipeptide-gbsa", "alanine-dipeptide")
TIMESTEP_PS = 0.002
TEMPERATURE_K = 300.0
FRICTION_PER_PS = 1.0


def ns_per_day(steps: int, seconds: float, timestep_ps: float = TIMESTEP_PS) -> float:
    return steps * timestep_ps * 1e-3 / seconds * 86400.0


def openmm_single_context(steps: int, warmup: int, threads: int | None, implicit_solvent: str | None = None) -> dict:
    """ns/day of one OpenMM CPU Context on the same system and settings (implicit_solvent None or 'obc2')."""
    import openmm
    import openmm.app as app
    import openmm.unit as u

    prmtop = app.AmberPrmtopFile(ALA + ".prmtop")
    inpcrd = app.AmberInpcrdFile(ALA + ".crd")
    system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=app.HBonds,
                                 implicitSolvent=app.OBC2 if implicit_solvent else None)
    integrator = openmm.LangevinMiddleIntegrator(TEMPERATURE_K * u.kelvin, FRICTION_PER_PS / u.picosecond,
                                                 TIMESTEP_PS * u.picoseconds)
    platform = openmm.Platform.getPlatformByName("CPU")
    properties = {"Threads": str(threads)} if threads else {}
    context = openmm.Context(system, integrator, platform, properties)
    context.setPositions(inpcrd.positions)
    context.setVelocitiesToTemperature(TEMPERATURE_K * u.kelvin, 1)
    integrator.step(warmup)
    start = time.perf_counter()
    integrator.step(steps)
    context.getState(getEnergy=True)  # make sure the steps are done
    elapsed = time.perf_counter() - start
    return {"ns_per_day": ns_per_day(steps, elapsed), "steps": steps, "seconds": elapsed,
            "threads": platform.getPropertyValue(context, "Threads")}


def jmlsim_replicas(system, replicas: int, steps: int, chunk: int, devices: int | None, precision: str,
                    seed: int) -> dict:
    """Aggregate and per-replica ns/day of R replicas in one program (compile excluded, measured separately)."""
    from jmlsim import ensemble

    sim = ensemble.replica_simulation(system, [TEMPERATURE_K] * replicas, TIMESTEP_PS, FRICTION_PER_PS,
                                      seed=seed, precision=precision, devices=devices)
    start = time.perf_counter()
    sim.advance(chunk)  # compile + first chunk
    sim.state.positions.block_until_ready()
    compile_s = time.perf_counter() - start
    n_chunks = max(1, steps // chunk)
    start = time.perf_counter()
    for _ in range(n_chunks):
        potential = sim.advance(chunk)
    sim.state.positions.block_until_ready()
    elapsed = time.perf_counter() - start
    import numpy as np

    if not np.all(np.isfinite(np.asarray(potential))):
        raise RuntimeError(f"R={replicas}: non-finite potential energy")
    per_replica = ns_per_day(n_chunks * chunk, elapsed)
    return {"replicas": replicas, "per_replica_ns_per_day": per_replica, "aggregate_ns_per_day": per_replica * replicas,
            "steps": n_chunks * chunk, "seconds": elapsed, "compile_s": compile_s,
            "replica_steps_per_s": replicas * n_chunks * chunk / elapsed}


def plot(rows: list, openmm: dict, path: str, solvent: str = "vacuum") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = [row["replicas"] for row in rows]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.loglog(r, [row["aggregate_ns_per_day"] for row in rows], "o-", label="jmlsim, R replicas in one program")
    ax.axhline(openmm["ns_per_day"], color="k", ls="--", label=f"OpenMM CPU, one Context at a time "
                                                               f"({openmm['ns_per_day']:.0f} ns/day)")
    ax.axhline(100 * openmm["ns_per_day"], color="r", ls=":", label="goal: 100x OpenMM")
    ax.set_xlabel("replicas R")
    ax.set_ylabel("aggregate replica-ns/day")
    ax.set_title(f"Alanine dipeptide, {solvent}, 2 fs, HBonds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024])
    parser.add_argument("--steps", type=int, default=2000, help="measured steps per R (after one compile chunk)")
    parser.add_argument("--chunk", type=int, default=500, help="steps per compiled chunk")
    parser.add_argument("--devices", type=int, default=None,
                        help="shard the replica axis over N host devices (default: as the CLI does, one host "
                             "device per core for batches of at least 32 replicas per core, else one device)")
    parser.add_argument("--precision", choices=["single", "mixed", "double"], default="single")
    parser.add_argument("--implicit-solvent", choices=["obc2"], default=None, help="GBSA-OBC2 (default: vacuum)")
    parser.add_argument("--openmm-steps", type=int, default=20000)
    parser.add_argument("--openmm-threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="PNG of the scaling curve")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        host_devices = args.devices or os.cpu_count() or 1  # the CLI's choice when --devices is not given
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={host_devices}").strip()
    import jax

    from jmlsim.ensemble import default_devices

    from jmlsim.io.openmm_import import load_amber

    print(f"machine: {os.cpu_count()} CPUs, jax {jax.__version__}, devices {[str(d) for d in jax.devices()]}, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    openmm = openmm_single_context(args.openmm_steps, 500, args.openmm_threads, args.implicit_solvent)
    print(f"OpenMM CPU, one Context ({openmm['threads']} threads): {openmm['ns_per_day']:.1f} ns/day", flush=True)

    system = load_amber(ALA + ".prmtop", ALA + ".crd", nonbonded="nocutoff", constraints="hbonds",
                        implicit_solvent=args.implicit_solvent)
    rows = []
    print(f"{'R':>6} {'aggregate ns/day':>17} {'per replica':>12} {'x OpenMM':>9} {'compile s':>10} {'devices':>8}",
          flush=True)
    for replicas in args.replicas:
        if args.devices and replicas % args.devices:
            print(f"{replicas:>6}  skipped: not divisible by --devices {args.devices}")
            continue
        devices = args.devices or default_devices(replicas)
        row = jmlsim_replicas(system, replicas, args.steps, args.chunk, devices, args.precision, args.seed)
        row["devices"] = devices or 1
        row["ratio_to_openmm"] = row["aggregate_ns_per_day"] / openmm["ns_per_day"]
        rows.append(row)
        print(f"{replicas:>6} {row['aggregate_ns_per_day']:>17.1f} {row['per_replica_ns_per_day']:>12.2f} "
              f"{row['ratio_to_openmm']:>9.2f} {row['compile_s']:>10.1f} {row['devices']:>8}", flush=True)
    # OpenMM once more at the end: the reference brackets the jmlsim runs (load changes show up as a difference)
    openmm_after = openmm_single_context(args.openmm_steps, 500, args.openmm_threads, args.implicit_solvent)
    print(f"OpenMM CPU, one Context, after: {openmm_after['ns_per_day']:.1f} ns/day "
          f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    if args.plot:
        plot(rows, openmm, args.plot, "GBSA-OBC2" if args.implicit_solvent else "vacuum")
        print(f"plot: {args.plot}")
    if args.json:
        print(json.dumps({"openmm": openmm, "openmm_after": openmm_after, "devices": args.devices,
                          "precision": args.precision, "implicit_solvent": args.implicit_solvent, "rows": rows}))


if __name__ == "__main__":
    sys.exit(main())
