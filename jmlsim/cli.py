"""The ``jmlsim`` command (contract in DESIGN.md).

Exit status 0 on success; 2 on bad input, with one line ``jmlsim: error: ...`` on stderr and no traceback;
1 on an internal failure. With ``--json`` the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Optional

from jmlsim.errors import InputError, SimulationError

LJ_DEFAULT_CUTOFF = 2.5
MM_DEFAULT_CUTOFF = 0.9  # nm
MM_DEFAULT_SKIN = 0.12  # nm: an atom may move 0.06 nm (~20 steps of 2 fs for water H at 300 K) between rebuilds


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as one line and exit status 2."""

    def error(self, message):
        raise InputError(message)


def _finite(kind: str, positive: bool = True, allow_zero: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{kind} must be finite, got {text}")
        if positive and (value < 0 or (value == 0 and not allow_zero)):
            raise argparse.ArgumentTypeError(f"{kind} must be {'non-negative' if allow_zero else 'positive'}, got {text}")
        return value
    return parse


def _integer(kind: str, minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{kind} must be at least {minimum}, got {value}")
        return value
    return parse


def _json_object(flag: str):
    """argparse type: a JSON object (dict) given on the command line, e.g. ``--hyper '{"width": 0.5}'``."""
    def parse(text: str) -> dict:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{flag} must be a JSON object, got {text!r}")
        return value
    return parse


def _temperature_list(text: str) -> list:
    parse = _finite("temperature")
    values = [parse(t) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError("--temperatures needs at least one value")
    return values


def _add_system_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("system")
    g.add_argument("--lj", type=_integer("number of atoms", 1), metavar="N", help="Lennard-Jones fluid of N atoms")
    g.add_argument("--density", type=_finite("density"), metavar="RHO", help="LJ number density (sigma^-3)")
    g.add_argument("--prmtop"), g.add_argument("--inpcrd"), g.add_argument("--pdb")
    g.add_argument("--forcefield", nargs="+"), g.add_argument("--gro"), g.add_argument("--top")
    g.add_argument("--potential"), g.add_argument("--xyz")
    g.add_argument("--molecules", metavar="DIR|LIST",
                   help="simulate: a library of small molecules in one batch (a directory of .prmtop+.inpcrd / "
                        ".pdb files, or a list file); vacuum or --implicit-solvent obc2, no constraints")
    g.add_argument("--include-dir", help="GROMACS: directory of the force-field .itp files the .top includes")
    g.add_argument("--implicit-solvent", choices=["obc2"], help="AMBER prmtop: GBSA-OBC2 implicit solvent")
    g.add_argument("--nonbonded", choices=["nocutoff", "cutoff", "reaction-field", "pme"],
                   help="default: pme if the input is periodic, else nocutoff. 'cutoff' is truncated Coulomb "
                        "(reaction-field dielectric 1), 'reaction-field' OpenMM's cutoff with dielectric 78.3")
    g.add_argument("--cutoff", type=_finite("cutoff"), help="nm (default 0.9; LJ: sigma, default 2.5)")
    g.add_argument("--switch-distance", type=_finite("switch distance"), help="start of the LJ switch (nm; LJ: sigma)")
    g.add_argument("--constraints", choices=["none", "hbonds", "allbonds", "hangles"], default="hbonds",
                   help="bond constraints (default hbonds; rigid water unless none)")
    g.add_argument("--hmr", action="store_true", help="hydrogen mass repartitioning (H 3.024 amu) for 4 fs steps")
    g.add_argument("--precision", choices=["single", "mixed", "double"], default="single",
                   help="single: float32 throughout; mixed: float64 state, float32 nonbonded, bonded terms on the "
                        "float64 positions; double: float64 throughout")
    g.add_argument("--skin", type=_finite("skin"), help="neighbor-list skin (LJ: sigma, default 0.3; else nm)")
    g.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jmlsim", description="Differentiable, batchable molecular simulation in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    energy = sub.add_parser("energy", help="potential energy per term and forces")
    _add_system_arguments(energy)
    energy.add_argument("--forces-out", metavar="F.npy", help="write forces (atoms x 3) to a .npy file")

    minimize = sub.add_parser("minimize", help="FIRE energy minimization")
    _add_system_arguments(minimize)
    minimize.add_argument("--tolerance", type=_finite("tolerance"), default=None,
                          help="max force to stop at (default 10 kJ/mol/nm; LJ 1e-2)")
    minimize.add_argument("--max-steps", type=_integer("max steps", 1), default=5000)

    simulate = sub.add_parser("simulate", help="run molecular dynamics")
    _add_system_arguments(simulate)
    simulate.add_argument("--steps", type=_integer("steps", 0), required=True)
    simulate.add_argument("--timestep", type=_finite("timestep"), help="fs (LJ: tau, default 0.005)")
    simulate.add_argument("--temperature", type=_finite("temperature", allow_zero=True),
                          help="K (LJ: epsilon/k_B, default 1.0)")
    simulate.add_argument("--friction", type=_finite("friction"), default=1.0, help="1/ps (LJ: 1/tau)")
    simulate.add_argument("--integrator", choices=["langevin", "verlet", "nose-hoover"], default="langevin")
    simulate.add_argument("--pressure", type=_finite("pressure"), help="bar (Monte Carlo barostat, isotropic)")
    simulate.add_argument("--barostat-interval", type=_integer("barostat interval", 1), default=25,
                          help="steps between Monte Carlo volume moves")
    simulate.add_argument("--report-interval", type=_integer("report interval", 1), default=100)
    simulate.add_argument("--out", default="trajectory.h5", help="trajectory (.h5, .dcd, .xtc)")
    simulate.add_argument("--log", default=None, help="CSV log (default: next to the trajectory)")
    simulate.add_argument("--checkpoint", help="checkpoint file (.npz), written atomically")
    simulate.add_argument("--checkpoint-interval", type=_integer("checkpoint interval", 1), default=1,
                          help="write the checkpoint every K reports")
    simulate.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    simulate.add_argument("--overwrite", action="store_true", help="replace existing output files")
    simulate.add_argument("--replicas", type=_integer("replicas", 1),
                          help="R copies in one compiled program (independent seeds; see --temperatures)")
    ladder = simulate.add_mutually_exclusive_group()
    ladder.add_argument("--temperatures", type=_temperature_list, metavar="T1,T2,...",
                        help="one Langevin temperature per replica (K)")
    ladder.add_argument("--temperature-max", type=_finite("maximum temperature"), metavar="K",
                        help="geometric temperature ladder from --temperature to this over the replicas")
    simulate.add_argument("--exchange-interval", type=_integer("exchange interval", 1), metavar="STEPS",
                          help="temperature replica exchange between neighbouring replicas every STEPS steps")
    simulate.add_argument("--devices", type=_integer("devices", 1),
                          help="shard the replicas over this many devices (on CPU: host threads); with "
                               "--num-processes, the devices of all processes together; without --replicas, "
                               "split the neighbor-list pair sum of the one system over them (atom decomposition)")
    multi = simulate.add_argument_group("multi-host (jax.distributed: run the same command on every host)")
    multi.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    multi.add_argument("--num-processes", type=_integer("number of processes", 1), metavar="P")
    multi.add_argument("--process-id", type=_integer("process id", 0), metavar="I")
    simulate.add_argument("--seed", type=_integer("seed", 0), default=0)
    simulate.add_argument("--minimize", action="store_true", help="minimize before the run")
    simulate.add_argument("--neighbor-capacity", type=_integer("neighbor capacity", 1), help=argparse.SUPPRESS)
    simulate.add_argument("--no-progress", action="store_true", help="no progress bar")

    from jmlsim.commands import add_all

    parser.handlers = {"energy": cmd_energy, "minimize": cmd_minimize, "simulate": cmd_simulate, **add_all(sub)}
    return parser


def load_system(args):
    """System from the system arguments."""
    if args.lj is not None:
        if args.density is None:
            raise InputError("--lj needs --density")
        if args.pressure if hasattr(args, "pressure") else None:
            raise InputError("--pressure (Monte Carlo barostat) is not available yet")
        if args.nonbonded not in (None, "cutoff"):
            raise InputError("--lj supports only a plain cutoff (--nonbonded cutoff)")
        from jmlsim.systems.lennard_jones_fluid import lennard_jones_fluid
        try:
            return lennard_jones_fluid(args.lj, args.density, args.cutoff or LJ_DEFAULT_CUTOFF, args.switch_distance)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    from jmlsim.io import openmm_import as omm

    cutoff = args.cutoff if args.cutoff is not None else MM_DEFAULT_CUTOFF
    common = dict(nonbonded=args.nonbonded, cutoff=cutoff, constraints=args.constraints, hmr=args.hmr,
                  switch_distance=args.switch_distance)
    if args.switch_distance is not None and not args.switch_distance < cutoff:
        raise InputError(f"--switch-distance {args.switch_distance:g} must be below the cutoff {cutoff:g}")
    given = [flag for flag in ("prmtop", "pdb", "gro", "potential") if getattr(args, flag)]
    if len(given) > 1:
        raise InputError(f"give one system, not {' and '.join('--' + g for g in given)}")
    if args.prmtop:
        if not args.inpcrd:
            raise InputError("--prmtop needs --inpcrd")
        return omm.load_amber(args.prmtop, args.inpcrd, implicit_solvent=args.implicit_solvent, **common)
    if args.implicit_solvent:
        raise InputError("--implicit-solvent applies to --prmtop inputs (for PDB inputs add implicit/obc2.xml)")
    if args.pdb:
        if not args.forcefield:
            raise InputError("--pdb needs --forcefield (e.g. amber14-all.xml amber14/tip3p.xml)")
        return omm.load_pdb(args.pdb, args.forcefield, **common)
    if args.gro:
        if not args.top:
            raise InputError("--gro needs --top")
        return omm.load_gromacs(args.gro, args.top, include_dir=args.include_dir, **common)
    if args.potential:
        if not args.xyz:
            raise InputError("--potential needs --xyz (the molecule, in Angstrom)")
        from jmlsim.potentials import system_from_xyz
        return system_from_xyz(args.xyz, args.potential)
    raise InputError("no system given: use --prmtop/--inpcrd, --pdb/--forcefield, --gro/--top or --lj N --density RHO")


def _default_skin(args, system) -> float:
    if args.skin is not None:
        return args.skin
    return 0.3 if system.reduced_units else MM_DEFAULT_SKIN


def terms_by_force_class(terms: dict) -> dict:
    """Per-term energies summed per OpenMM force class (``HarmonicBondForce#2`` counts as HarmonicBondForce)."""
    out: dict = {}
    for name, value in terms.items():
        key = name.split("#")[0]
        out[key] = out.get(key, 0.0) + float(value)
    return out


def _check_writable(path: str, what: str, overwrite: bool) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InputError(f"cannot write {what} {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise InputError(f"cannot write {what} {path}: permission denied")
    if os.path.exists(path) and not overwrite:
        raise InputError(f"{what} {path} exists (use --overwrite to replace it, or --resume)")


def _prepare_outputs(args, outputs: list, log_path: str, main_process: bool = True):
    """Check the run's output files before anything is written: on --resume the checkpoint's metadata (validated,
    returned) and existing outputs that will be continued; otherwise files that may be (over)written. Returns the
    checkpoint metadata or None."""
    from jmlsim import checkpoint as ckpt

    if args.resume and not args.checkpoint:
        raise InputError("--resume needs --checkpoint")
    if args.resume:
        meta, _ = ckpt.read_metadata(args.checkpoint)  # validates before any file is touched
        for path in (outputs + [log_path]) if main_process else []:  # the files process 0 continues
            if not os.path.exists(path):
                raise InputError(f"cannot resume: {path} is missing")
            _check_writable(path, "output", overwrite=True)
        return meta
    if main_process:  # in a multi-process run only process 0 writes
        for path in outputs + [log_path]:
            _check_writable(path, "output", overwrite=args.overwrite)
        if args.checkpoint:
            _check_writable(args.checkpoint, "checkpoint", overwrite=args.overwrite)
    return None


def _simulation(system, integrator, **kwargs):
    """Simulation(...), with its ValueErrors (e.g. cutoff + skin too long for the box) reported as bad input."""
    from jmlsim.simulation import Simulation

    try:
        return Simulation(system, integrator, **kwargs)
    except ValueError as exc:
        raise InputError(str(exc)) from None


_result_stream = None  # where results go when stdout is diverted (multi-process runs); None: sys.stdout


def _emit(args, result: dict) -> None:
    out = _result_stream or sys.stdout
    if args.json:
        print(json.dumps(result), file=out, flush=True)
    else:
        for key, value in result.items():
            print(f"{key}: {value}", file=out)
        out.flush()


def cmd_energy(args) -> None:
    import jax
    import numpy as np

    from jmlsim.integrators import VelocityVerlet

    system = load_system(args)
    if args.forces_out:
        _check_writable(args.forces_out, "forces file", overwrite=True)
    sim = _simulation(system, VelocityVerlet(1.0), kT=0.0, precision=args.precision,
                      skin=_default_skin(args, system), constrain_start=False)
    box = None if sim.state.box is None else sim.state.box.astype(sim.force_dtype)
    x = sim.state.positions.astype(sim.force_dtype)
    terms = jax.jit(lambda p, x, nb, precise: system.energy_terms(p, x, box, nb, precise))(
        sim.params, x, sim.nbrs, sim.state.positions)
    terms = terms_by_force_class(terms)
    if args.forces_out:
        np.save(args.forces_out, np.asarray(sim.state.forces, np.float64))
    _emit(args, {"atoms": system.n_atoms, "terms": terms, "total": sum(terms.values()),
                 "units": "lj-reduced" if system.reduced_units else "kj/mol"})


def cmd_minimize(args) -> None:
    from jmlsim.integrators import VelocityVerlet
    from jmlsim.minimize import minimize

    system = load_system(args)
    dt = 0.005 if system.reduced_units else 0.001
    sim = _simulation(system, VelocityVerlet(dt), kT=0.0, precision=args.precision,
                      skin=_default_skin(args, system))
    tol = args.tolerance if args.tolerance is not None else (1e-2 if system.reduced_units else 10.0)
    result = minimize(sim, tol, args.max_steps)
    if not (math.isfinite(result["final_potential"]) and math.isfinite(result["max_force"])):
        raise SimulationError(f"minimization diverged: non-finite energy after {result['steps']} steps")
    _emit(args, {"atoms": system.n_atoms, **result})


def cmd_simulate(args) -> None:
    import numpy as np

    from jmlsim import checkpoint as ckpt
    from jmlsim import units
    from jmlsim.integrators import by_name
    from jmlsim.io.trajectory import generic_topology, trajectory_format
    from jmlsim.reporters import LogReporter, TrajectoryReporter, replica_path

    if getattr(args, "molecules", None):
        return _simulate_molecules(args)
    from jmlsim.distributed import is_main_process, same_on_all_processes, to_host
    from jmlsim.ensemble import default_devices
    main_process = is_main_process()
    if args.devices is None:  # large batches on a multi-core CPU: one shard per core
        args.devices = default_devices(args.replicas)
    system = load_system(args)
    reduced = system.reduced_units
    barostat = None
    if args.pressure is not None:
        if system.box is None:
            raise InputError("--pressure needs a periodic system (the input has no box)")
    if reduced:
        timestep = args.timestep if args.timestep is not None else 0.005
        temperature = args.temperature if args.temperature is not None else 1.0
        kT, friction = temperature, args.friction
    else:
        timestep = (args.timestep if args.timestep is not None else 2.0) * units.PS_PER_FS
        temperature = args.temperature if args.temperature is not None else 300.0
        kT, friction = units.kT_kj_per_mol(temperature), args.friction
    try:
        trajectory_format(args.out)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    log_path = args.log or os.path.splitext(args.out)[0] + ".csv"
    outputs = [replica_path(args.out, r) for r in (range(args.replicas) if args.replicas else [None])]
    meta = _prepare_outputs(args, outputs, log_path, main_process)
    temperatures = _replica_temperatures(args, temperature)
    if temperatures is not None:
        if args.integrator != "langevin":
            raise InputError("per-replica temperatures need --integrator langevin")
        scale = (1.0 if reduced else units.kT_kj_per_mol(1.0))
        kT = tuple(float(t) * scale for t in temperatures)
    exchange = None
    if args.exchange_interval is not None:
        if temperatures is None or len(set(temperatures)) < 2:
            raise InputError("--exchange-interval needs replicas at different temperatures "
                             "(--temperatures or --temperature-max)")
        from jmlsim.barostat import BAR_TO_KJ_MOL_NM3
        from jmlsim.ensemble import ReplicaExchange
        # at constant pressure the exchange test uses enthalpies U + P V (system units)
        pressure = None if args.pressure is None else args.pressure * (1.0 if reduced else BAR_TO_KJ_MOL_NM3)
        exchange = ReplicaExchange(args.exchange_interval, seed=args.seed, pressure=pressure)
    if args.pressure is not None:
        from jmlsim.barostat import MonteCarloBarostat
        # each replica's volume moves are tested at its own temperature (reduced units: read as reduced)
        barostat = MonteCarloBarostat(args.pressure, temperature if temperatures is None else tuple(temperatures),
                                      frequency=args.barostat_interval, seed=args.seed)
    try:
        integrator = by_name(args.integrator, timestep, kT, friction, constraints=system.constraints)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if args.minimize and args.replicas and not args.resume:
        # the replicas start from one structure: minimize it once, alone, before the batch is built
        import dataclasses

        from jmlsim.minimize import minimize
        kT0 = kT[0] if isinstance(kT, tuple) else kT
        lone = _simulation(system, by_name(args.integrator, timestep, kT0, friction, constraints=system.constraints),
                           kT=kT0, seed=args.seed, precision=args.precision, skin=_default_skin(args, system),
                           replicas=None, neighbor_capacity=args.neighbor_capacity, devices=None)
        minimize(lone, 1e-2 if reduced else 10.0)
        # every process minimizes the same start; process 0's result is the one all replicas start from
        system = dataclasses.replace(system, positions=same_on_all_processes(
            np.asarray(lone.state.positions, np.float64)))
    sim = _simulation(system, integrator, kT=kT, seed=args.seed, precision=args.precision,
                      skin=_default_skin(args, system), replicas=args.replicas,
                      neighbor_capacity=args.neighbor_capacity, devices=args.devices)
    frames_done = 0
    if meta is not None:
        meta = ckpt.load(args.checkpoint, sim)
        frames_done = int(meta["frames"])
        try:
            for move, key in ((barostat, "barostat"), (exchange, "exchange")):
                if move is not None and meta.get(key) is not None:
                    move.load_state_dict(meta[key])
        except ValueError as exc:
            raise InputError(f"checkpoint {args.checkpoint}: {exc}") from None
    elif args.minimize and not args.replicas:
        from jmlsim.minimize import minimize
        minimize(sim, 1e-2 if reduced else 10.0)
    topology = system.topology if system.topology is not None else generic_topology(system.n_atoms)
    start_step = sim.step
    steps_left = max(args.steps - start_step, 0)
    keep = frames_done if meta is not None else None
    frames = {"n": frames_done}
    if main_process:
        trajectory = TrajectoryReporter(args.out, topology, args.replicas, keep_frames=keep)
        log = LogReporter(log_path, reduced, args.replicas, keep_until_step=start_step if meta is not None else None)
        reporters = [trajectory, log]
    else:
        reporters = []

    class _FrameCounter:
        def report(self, frame):
            frames["n"] += 1

    def write_checkpoint(s):
        extra = {"frames": frames["n"]}
        # so that a resumed run continues the same chains of volume moves and exchanges
        if barostat is not None:
            extra["barostat"] = barostat.state_dict()
        if exchange is not None:
            extra["exchange"] = exchange.state_dict()
        ckpt.save(args.checkpoint, s, extra)

    try:
        timing = sim.run(steps_left, args.report_interval, reporters + [_FrameCounter()],
                         progress=main_process and not args.no_progress,
                         checkpoint=write_checkpoint if args.checkpoint else None,
                         checkpoint_every=args.checkpoint_interval, barostat=barostat,
                         moves=[exchange] if exchange is not None else [])
    finally:
        for reporter in reporters:
            reporter.close()
    potential = timing["final_potential"]
    if potential is None:  # nothing left to run (resumed at the end): report the current state
        potential = np.asarray(sim._energy(sim.params, sim.state, sim.nbrs))
    frame = sim.frame(potential)
    timestep_ps = timestep * (units.ARGON.tau_ps if reduced else 1.0)
    temperature_k = np.mean(frame.temperature) * (units.ARGON.epsilon_over_kb_k if reduced else 1.0)
    result = {
        "atoms": system.n_atoms, "steps": sim.step, "steps_run": steps_left, "replicas": args.replicas or 1,
        "timestep_fs": timestep_ps * units.FS_PER_PS, "compile_s": timing["compile_s"], "wall_s": timing["wall_s"],
        "ns_per_day": units.ns_per_day(timestep_ps, timing["steps_per_s"]), "steps_per_s": timing["steps_per_s"],
        "final_potential": float(np.mean(frame.potential)), "final_temperature_k": float(temperature_k),
        "trajectory": outputs[0] if len(outputs) == 1 else outputs, "log": log_path,
        "neighbor_regrowths": sim.regrowths,
    }
    if temperatures is not None:
        result["temperatures_k"] = [float(t) * (units.ARGON.epsilon_over_kb_k if reduced else 1.0)
                                    for t in temperatures]
        result["final_temperatures_k"] = (np.asarray(frame.temperature, float)
                                          * (units.ARGON.epsilon_over_kb_k if reduced else 1.0)).tolist()
    if args.devices is not None:
        result["devices"] = args.devices
    if exchange is not None and exchange.stats is not None:
        result["exchange"] = {"interval": args.exchange_interval, **exchange.stats.summary(),
                              "walkers": os.path.splitext(log_path)[0] + ".walkers.csv"}
        if main_process:
            _write_walkers(result["exchange"]["walkers"], exchange.stats)
    if barostat is not None:
        from jmlsim.barostat import density
        boxes, masses = to_host(sim.state.box), to_host(sim.state.masses)
        densities = ([density(m, b) for m, b in zip(masses, boxes)] if args.replicas else density(masses, boxes))
        result.update({"pressure_bar": args.pressure, "barostat_acceptance": barostat.stats.acceptance_rate,
                       "final_box_nm": boxes.tolist(), "final_density_g_per_cm3": densities})
    if reduced:
        result.update({"units": "lj-reduced (timestep_fs, ns_per_day, final_temperature_k mapped onto argon: "
                                "sigma 0.3405 nm, epsilon/kB 119.8 K, m 39.948 amu)",
                       "timestep_tau": timestep, "final_temperature_reduced": float(np.mean(frame.temperature))})
    if args.num_processes is not None:
        result["processes"] = args.num_processes
    if main_process:
        _emit(args, result)


def _simulate_molecules(args) -> None:
    """``simulate --molecules LIB``: every molecule of a library in one batch, one trajectory per molecule."""
    import numpy as np

    from jmlsim import molecule_batch as mb
    from jmlsim import units
    from jmlsim.distributed import is_main_process
    from jmlsim.io.trajectory import trajectory_format
    from jmlsim.reporters import LogReporter

    other = [f for f in ("prmtop", "pdb", "gro", "potential", "lj") if getattr(args, f)]
    if other:
        raise InputError(f"--molecules replaces the system: drop --{other[0]}")
    unsupported = [flag for flag, on in (("--replicas", args.replicas), ("--pressure", args.pressure is not None),
                                         ("--exchange-interval", args.exchange_interval),
                                         ("--temperatures", args.temperatures), ("--hmr", args.hmr),
                                         ("--temperature-max", args.temperature_max)) if on]
    if unsupported:
        raise InputError(f"{unsupported[0]} is not supported with --molecules")
    if args.integrator != "langevin":
        raise InputError("--molecules runs Langevin dynamics only")
    if args.nonbonded not in (None, "nocutoff"):
        raise InputError("--molecules runs without cutoff (vacuum or --implicit-solvent obc2)")
    try:
        trajectory_format(args.out)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    systems, names, skipped = mb.load_library(args.molecules, args.forcefield or ("amber14-all.xml",),
                                              args.implicit_solvent, constraints=args.constraints)
    main_process = is_main_process()  # in a multi-process run only process 0 reports and writes
    for item in skipped if main_process else []:
        print(f"jmlsim: skipped {item['name']}: {item['error']}", file=sys.stderr)
    stem, ext = os.path.splitext(args.out)
    outputs = [f"{stem}_{name}{ext}" for name in names]
    log_path = args.log or stem + ".csv"
    meta = _prepare_outputs(args, outputs, log_path, main_process)
    if meta is not None and meta.get("molecules") != names:
        raise InputError(f"checkpoint {args.checkpoint} holds the molecules {meta.get('molecules')}, "
                         f"the library now loads {names}")
    batch = mb.batch_systems(systems, names)
    # flexible bonds to hydrogen need 1 fs; constrained ones take the usual 2 fs
    default_fs = 1.0 if batch.constraints is None else 2.0
    timestep = (args.timestep if args.timestep is not None else default_fs) * units.PS_PER_FS
    temperature = args.temperature if args.temperature is not None else 300.0
    if args.devices is None:
        from jmlsim.ensemble import default_devices
        args.devices = default_devices(len(names))
    sim = mb.molecule_simulation(batch, temperature, timestep, args.friction, seed=args.seed,
                                 precision=args.precision, devices=args.devices)
    minimization, frames = None, {"n": 0}
    if meta is not None:
        from jmlsim import checkpoint as ckpt
        frames["n"] = int(ckpt.load(args.checkpoint, sim)["frames"])
    elif args.minimize:  # every molecule on its own, in one vmapped L-BFGS
        from jmlsim.minimize import minimize
        minimization = minimize(sim, 10.0)
    resumed = meta is not None
    reporters = []
    if main_process:
        reporters = [mb.MoleculeTrajectoryReporter(outputs, batch.topologies, batch.n_atoms,
                                                   keep_frames=frames["n"] if resumed else None),
                     LogReporter(log_path, False, len(names), keep_until_step=sim.step if resumed else None)]

    class _FrameCounter:
        def report(self, frame):
            frames["n"] += 1

    def write_checkpoint(s):
        from jmlsim import checkpoint as ckpt
        ckpt.save(args.checkpoint, s, {"frames": frames["n"], "molecules": names})

    steps_left = max(args.steps - sim.step, 0)
    try:
        timing = sim.run(steps_left, args.report_interval, reporters + [_FrameCounter()],
                         progress=main_process and not args.no_progress,
                         checkpoint=write_checkpoint if args.checkpoint else None,
                         checkpoint_every=args.checkpoint_interval)
    finally:
        for reporter in reporters:
            reporter.close()
    frame = sim.frame(timing["final_potential"])  # None (nothing left to run): computed here
    result = {
        "atoms": int(batch.n_atoms.sum()), "steps": sim.step, "steps_run": steps_left, "replicas": len(names),
        "timestep_fs": timestep * units.FS_PER_PS, "compile_s": timing["compile_s"], "wall_s": timing["wall_s"],
        "ns_per_day": units.ns_per_day(timestep, timing["steps_per_s"]), "steps_per_s": timing["steps_per_s"],
        "final_potential": float(np.mean(frame.potential)), "final_temperature_k": float(np.mean(frame.temperature)),
        "trajectory": outputs, "log": log_path,
        "molecules": [{"name": n, "atoms": int(a), "trajectory": o, "final_potential": float(u),
                       "final_temperature_k": float(t)}
                      for n, a, o, u, t in zip(names, batch.n_atoms, outputs, frame.potential, frame.temperature)],
        "skipped": skipped,
    }
    if minimization is not None:
        result["minimization"] = {"iterations": minimization["steps"], "tolerance_kj_per_mol_nm": 10.0,
                                  "converged": all(minimization["converged"])}
        for m, u0, u1, f in zip(result["molecules"], minimization["initial_potential"],
                                minimization["final_potential"], minimization["max_force"]):
            m.update({"initial_potential": u0, "minimized_potential": u1, "minimized_max_force": f})
    if args.devices is not None:
        result["devices"] = args.devices
    if args.num_processes is not None:
        result["processes"] = args.num_processes
    if main_process:
        _emit(args, result)


def _replica_temperatures(args, temperature: float):
    """Per-replica temperatures (K, or reduced) from --temperatures / --temperature-max, or None."""
    if args.temperatures is None and args.temperature_max is None:
        return None
    if not args.replicas:
        raise InputError("--temperatures/--temperature-max need --replicas")
    if args.temperatures is not None:
        if len(args.temperatures) != args.replicas:
            raise InputError(f"--temperatures has {len(args.temperatures)} values but --replicas is {args.replicas}")
        return list(args.temperatures)
    if args.temperature_max < temperature:
        raise InputError(f"--temperature-max {args.temperature_max:g} is below --temperature {temperature:g}")
    from jmlsim.ensemble import temperature_ladder
    return temperature_ladder(temperature, args.temperature_max, args.replicas).tolist()


def _write_walkers(path: str, stats) -> None:
    """CSV of which walker (starting replica) sat in each temperature slot after every exchange attempt."""
    import numpy as np

    rows = [[step, *walkers] for step, walkers in stats.history]
    header = "step," + ",".join(f"slot{s}" for s in range(len(stats.walker_at_slot)))
    tmp = path + ".tmp"
    np.savetxt(tmp, np.asarray(rows, dtype=np.int64).reshape(len(rows), -1), fmt="%d", delimiter=",",
               header=header, comments="")
    os.replace(tmp, path)


def _configure_devices(argv) -> None:
    """--devices N on the CPU: ask XLA for N host devices before JAX starts (it reads XLA_FLAGS once); N / P of
    them per process with --num-processes P. A batch (--replicas, --molecules) without --devices gets one host
    device per core, which large batches are sharded over by default (jmlsim.ensemble.default_devices)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "jax" in sys.modules:
        return
    try:
        if "--devices" in argv:
            n = int(argv[argv.index("--devices") + 1])
            if "--num-processes" in argv:
                n = max(n // int(argv[argv.index("--num-processes") + 1]), 1)
        elif ("--replicas" in argv or "--molecules" in argv) and "--num-processes" not in argv:
            n = os.cpu_count() or 1  # one host device per core, for large batches (ensemble.default_devices)
        else:
            return
    except (IndexError, ValueError, ZeroDivisionError):
        return  # argparse reports it
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={max(n, 1)}".strip()


def _join_processes(args) -> None:
    """simulate --coordinator/--num-processes/--process-id: check them and join the run (before JAX computes)."""
    flags = {"--coordinator": getattr(args, "coordinator", None), "--num-processes": getattr(args, "num_processes", None),
             "--process-id": getattr(args, "process_id", None)}
    if all(v is None for v in flags.values()):
        return
    missing = [name for name, v in flags.items() if v is None]
    if missing:
        raise InputError(f"a multi-process run needs {', '.join(flags)} (missing {missing[0]})")
    from jmlsim import distributed

    try:
        distributed.parse_coordinator(args.coordinator)
        if args.process_id >= args.num_processes:
            raise ValueError(f"--process-id {args.process_id} must be below --num-processes {args.num_processes}")
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if not (args.replicas or getattr(args, "molecules", None)) or args.devices is None:
        raise InputError("a multi-process run shards a batch: give --replicas (or --molecules) and --devices (all "
                         "processes' devices)")
    if args.devices % args.num_processes:
        raise InputError(f"--devices {args.devices} do not divide over --num-processes {args.num_processes}")
    # The collectives library (gloo) prints connection notes on the C-level stdout: send them to stderr and
    # keep stdout for the result alone.
    global _result_stream
    sys.stdout.flush()
    _result_stream = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    except Exception as exc:  # noqa: BLE001 - connection failures of any kind are the user's setup
        raise InputError(f"cannot join the multi-process run at {args.coordinator}: {str(exc).splitlines()[0]}") \
            from None


def main(argv: Optional[list] = None) -> int:
    try:
        _configure_devices(argv)
        parser = build_parser()
        args = parser.parse_args(argv)
        _join_processes(args)
        handler = parser.handlers[args.command]
        if isinstance(handler, dict):  # a command group (e.g. "potential train"): dispatch on its own sub-command
            handler = handler[args.subcommand]
        handler(args)
        return 0
    except InputError as exc:
        print(f"jmlsim: error: {str(exc).splitlines()[0] if str(exc) else 'bad input'}", file=sys.stderr)
        return 2
    except SimulationError as exc:
        print(f"jmlsim: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jmlsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
