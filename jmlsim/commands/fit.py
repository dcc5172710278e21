"""``jmlsim fit``: force-field fitting. ``fit torsions`` (one dihedral against a QM scan), ``fit observables``
(LJ parameters against target ensemble averages, by reweighting) and ``fit water`` (a 3-site water's oxygen
sigma/epsilon, optionally its charge, against NPT density and heat of vaporization, by reweighting).

Heavy imports (jax, openmm, tblite, scipy, matplotlib) happen inside the handlers.
"""

from __future__ import annotations

import json
import os
import sys
import time

from jmlsim.errors import InputError

TORSION_OUTPUTS = ("profile.png", "profile.csv", "fit.frcmod", "system.xml", "qm_scan.npz", "result.json")


def add_commands(sub) -> dict:
    from jmlsim.cli import _finite, _integer

    fit = sub.add_parser("fit", help="fit force-field parameters (torsions to QM scans, LJ to observables)")
    fsub = fit.add_subparsers(dest="subcommand", required=True, parser_class=type(fit))

    t = fsub.add_parser("torsions", help="fit one dihedral's Fourier terms (n=1..6) to a relaxed QM scan")
    t.add_argument("--prmtop", required=True)
    t.add_argument("--inpcrd", required=True)
    t.add_argument("--dihedral", nargs=4, type=_integer("dihedral atom index", 0), required=True,
                   metavar=("I", "J", "K", "L"), help="four 0-based atom indices bonded in sequence")
    t.add_argument("--hold", nargs=4, type=_integer("held dihedral atom index", 0), action="append", default=[],
                   metavar=("I", "J", "K", "L"), help="also restrain this dihedral at its starting value during "
                   "every relaxation (repeatable), e.g. psi while scanning phi: keeps the scan in one basin")
    t.add_argument("--qm", choices=["gfn2", "dft"], default="gfn2",
                   help="gfn2: GFN2-xTB (tblite, default); dft: B3LYP-D3(BJ)/def2-SVP (PySCF, slow)")
    t.add_argument("--step-deg", type=_finite("step"), default=15.0, help="scan step in degrees (default 15)")
    t.add_argument("--charge", type=int, default=0, help="total charge for QM (e)")
    t.add_argument("--multiplicity", type=_integer("multiplicity", 1), default=1)
    t.add_argument("--qm-scan", metavar="F.npz",
                   help="reuse a QM scan written by an earlier run (qm_scan.npz) instead of computing it")
    t.add_argument("--restarts", type=_integer("restarts", 1), default=8, help="random restarts per fit round")
    t.add_argument("--rounds", type=_integer("rounds", 1), default=3, help="fit / re-relax rounds")
    t.add_argument("--fit-steps", type=_integer("fit steps", 1), default=1500, help="Adam steps per fit")
    t.add_argument("--seed", type=_integer("seed", 0), default=0)
    t.add_argument("--out", help="directory for profile.png/.csv, fit.frcmod, system.xml, qm_scan.npz")
    t.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")

    o = fsub.add_parser("observables", help="fit LJ sigma/epsilon to target <U>/N and pressure by reweighting "
                                            "(reduced units)")
    o.add_argument("--lj", type=_integer("number of atoms", 2), default=256, metavar="N")
    o.add_argument("--density", type=_finite("density"), default=0.8)
    o.add_argument("--temperature", type=_finite("temperature"), default=1.5, help="reduced (epsilon/k_B)")
    o.add_argument("--target-energy", type=float, required=True, help="target <U>/N (reduced)")
    o.add_argument("--target-pressure", type=float, required=True, help="target pressure (reduced)")
    o.add_argument("--sigma", type=_finite("sigma"), default=1.0, help="starting sigma")
    o.add_argument("--epsilon", type=_finite("epsilon"), default=1.0, help="starting epsilon")
    o.add_argument("--iterations", type=_integer("iterations", 1), default=40)
    o.add_argument("--steps", type=_integer("steps", 10), default=3000, help="MD steps per sampling run")
    o.add_argument("--ess-fraction", type=_finite("ESS fraction"), default=0.5,
                   help="resample when the effective sample size falls below this fraction")
    o.add_argument("--seed", type=_integer("seed", 0), default=0)
    o.add_argument("--no-progress", action="store_true")
    o.add_argument("--json", action="store_true")
    add_water_parser(fsub)
    return {"fit": {"torsions": cmd_fit_torsions, "observables": cmd_fit_observables,
                    "water": _cmd_fit_water}}


def _cmd_fit_water(args) -> None:
    from jmlsim.fitting import water_observables

    water_observables.cmd_fit_water(args)


def _check_out_dir(out: str, overwrite: bool) -> None:
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise InputError(f"cannot write --out {out}: directory {parent} does not exist")
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {out} exists and is not a directory")
    existing = [f for f in TORSION_OUTPUTS if os.path.exists(os.path.join(out, f))]
    if existing and not overwrite:
        raise InputError(f"--out {out} already holds {existing[0]} (use --overwrite to replace it)")


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def _load_qm_scan(path: str, n_atoms: int, atoms):
    import numpy as np

    from jmlsim.fitting.scan import ScanResult

    if not os.path.isfile(path):
        raise InputError(f"--qm-scan {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = [k for k in ScanResult._fields if k in data.files or k not in ScanResult._field_defaults]
            scan = ScanResult(**{k: np.asarray(data[k], dtype=np.float64) for k in fields})
            saved_atoms = tuple(int(a) for a in data["dihedral"])
    except (KeyError, ValueError, OSError) as exc:
        raise InputError(f"--qm-scan {path}: not a jmlsim QM scan ({str(exc).splitlines()[0]})") from None
    if scan.positions.ndim != 3 or scan.positions.shape[1:] != (n_atoms, 3):
        raise InputError(f"--qm-scan {path}: positions have shape {scan.positions.shape}, expected (P, {n_atoms}, 3)")
    if saved_atoms != tuple(atoms):
        raise InputError(f"--qm-scan {path} scans dihedral {list(saved_atoms)}, not {list(atoms)}")
    return scan


def cmd_fit_torsions(args) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)  # profile differences of 0.01 kcal/mol on totals of ~100 kJ/mol
    import numpy as np

    from jmlsim.cli import _emit
    from jmlsim.fitting import export, scan as sc, torsions as tf
    from jmlsim.io.openmm_import import load_amber
    from jmlsim.units import KCAL_PER_KJ

    t0 = time.perf_counter()
    if args.out:
        _check_out_dir(args.out, args.overwrite)
    system, omm = load_amber(args.prmtop, args.inpcrd, nonbonded="nocutoff", constraints="none",
                             return_openmm=True)
    if system.box is not None:
        raise InputError(f"{args.inpcrd}: periodic input; torsion scans need a molecule in vacuum")
    atoms = sc.check_dihedral(system, args.dihedral)
    moving = sc.moving_atoms(system, atoms)
    held = np.asarray([sc.check_dihedral(system, h, source="--hold") for h in args.hold], dtype=np.int32)
    if any(tuple(h) in (atoms, atoms[::-1]) for h in held.tolist()):
        raise InputError("--hold names the scanned dihedral itself")
    held_targets = np.asarray([sc.dihedral_angle(system.positions, h) for h in held])
    targets = sc.scan_targets(args.step_deg)
    types = export.prmtop_atom_types(args.prmtop)
    log = (lambda msg: print(f"jmlsim fit: {msg}", file=sys.stderr)) if not args.no_progress else None

    if args.qm_scan:
        qm = _load_qm_scan(args.qm_scan, system.n_atoms, atoms)
        if args.hold:
            raise InputError("--hold cannot change a --qm-scan: the held dihedrals are stored in the scan")
        qm_method = "from " + os.path.basename(args.qm_scan)
    else:
        numbers = sc.atomic_numbers(system)
        qm_fn = sc.qm_function(numbers, args.qm, args.charge, args.multiplicity)
        qm = sc.relax_qm(qm_fn, system.positions, atoms, moving, targets, progress=not args.no_progress,
                         held=held.reshape(-1, 4), held_targets=held_targets)
        if args.qm == "dft":
            from jmlsim.qm.engines import dft_method_name
            qm_method = dft_method_name()
        else:
            qm_method = "GFN2-xTB"
    qm_s = time.perf_counter() - t0
    result = tf.fit_torsion(system, atoms, qm, rounds=args.rounds, restarts=args.restarts, steps=args.fit_steps,
                            seed=args.seed, log=log, atom_types=types)
    terms = result.terms_after
    frcmod = export.frcmod_text([types[a] for a in atoms], tf.PERIODICITIES, terms.k, terms.phase,
                                remark=f"jmlsim fit torsions: dihedral {list(atoms)} vs {qm_method}")

    # Round trip: the frcmod, applied to OpenMM's own System, must reproduce jmlsim's fitted energies.
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fit.frcmod")
        with open(path, "w") as fh:
            fh.write(frcmod)
        entries = export.read_frcmod_dihedrals(path)
    quadruples = export.apply_frcmod(omm, types, entries)
    omm_e = export.openmm_energies(omm, result.mm_after.positions)
    energy = jax.jit(tf.energy_function(result.system))
    ours = np.array([float(energy(result.system.params, x)) for x in result.mm_after.positions])
    openmm_diff = float(np.max(np.abs(omm_e - ours)))

    parameters = [{"periodicity": int(n), "k_kcal_mol": float(k) * KCAL_PER_KJ, "k_kj_mol": float(k),
                   "phase_deg": float(np.rad2deg(p))} for n, k, p in zip(tf.PERIODICITIES, terms.k, terms.phase)]
    out = {
        "dihedral": list(atoms), "held": np.asarray(qm.held, dtype=int).tolist(),
        "atom_types": [types[a] for a in atoms], "qm_method": qm_method,
        "points": int(len(qm.energies)), "step_deg": float(args.step_deg),
        "rmse_before_kcal_mol": result.rmse_before * KCAL_PER_KJ,
        "rmse_after_kcal_mol": result.rmse_after * KCAL_PER_KJ,
        "parameters": parameters,
        "parameters_before": [{"periodicity": int(n), "k_kcal_mol": float(k) * KCAL_PER_KJ,
                               "phase_deg": float(np.rad2deg(p))}
                              for n, k, p in zip(tf.PERIODICITIES, result.terms_before.k, result.terms_before.phase)
                              if abs(k) > 0],
        "rounds": [{"round": r, "fit_loss_kj2_mol2": v, "rmse_kcal_mol": e * KCAL_PER_KJ}
                   for r, v, e in result.rounds],
        "qm_scan_range_kcal_mol": float(np.ptp(qm.energies)) * KCAL_PER_KJ,
        "max_restraint_deviation_deg": float(np.max(np.abs(np.rad2deg(
            np.angle(np.exp(1j * (qm.angles - qm.targets))))))),
        "fitted_quadruples": result.quadruples.tolist(),
        "frcmod_quadruples_changed": quadruples,
        "openmm_max_abs_energy_diff_kj_mol": openmm_diff,
        "qm_s": qm_s, "wall_s": time.perf_counter() - t0,
    }
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        paths = {name: os.path.join(args.out, name) for name in TORSION_OUTPUTS}
        _atomic_write(paths["fit.frcmod"], lambda p: open(p, "w").write(frcmod))
        export.write_system_xml(omm, paths["system.xml"])

        def save_scan(p):
            with open(p, "wb") as fh:
                np.savez(fh, dihedral=np.asarray(atoms), **qm._asdict())
        _atomic_write(paths["qm_scan.npz"], save_scan)

        def save_csv(p):
            rows = np.column_stack([np.rad2deg(qm.targets), np.rad2deg(qm.angles), qm.energies * KCAL_PER_KJ,
                                    result.mm_before.energies * KCAL_PER_KJ, result.mm_after.energies * KCAL_PER_KJ])
            np.savetxt(p, rows, delimiter=",", fmt="%.8g", comments="",
                       header="target_deg,qm_angle_deg,qm_kcal_mol,mm_before_kcal_mol,mm_after_kcal_mol")
        _atomic_write(paths["profile.csv"], save_csv)
        _atomic_write(paths["profile.png"], lambda p: tf.plot_profiles(
            result, p + ".png", title=f"dihedral {list(atoms)} ({'-'.join(out['atom_types'])}) vs {qm_method}")
            or os.replace(p + ".png", p))
        out["outputs"] = paths
        _atomic_write(paths["result.json"], lambda p: open(p, "w").write(json.dumps(out, indent=1)))
    _emit(args, out)


def cmd_fit_observables(args) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from jmlsim.cli import _emit
    from jmlsim.energy.lennard_jones import LennardJonesParams
    from jmlsim.fitting import reweighting as rw
    from jmlsim.systems.lennard_jones_fluid import lennard_jones_fluid

    t0 = time.perf_counter()
    if not 0 < args.ess_fraction < 1:
        raise InputError(f"--ess-fraction must lie in (0, 1), got {args.ess_fraction}")
    try:
        system = lennard_jones_fluid(args.lj, args.density)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    sampler = rw.LJSampler(system, args.temperature, seed=args.seed)
    log = (lambda msg: print(f"jmlsim fit: {msg}", file=sys.stderr)) if not args.no_progress else None
    start = LennardJonesParams(jnp.float64(args.sigma), jnp.float64(args.epsilon))
    n_frames, every = 100, max(1, args.steps // 100)
    out = rw.fit_observables(sampler, start, [args.target_energy, args.target_pressure], [0.05, 0.1],
                             iterations=args.iterations, n_frames=n_frames, every=every,
                             ess_fraction=args.ess_fraction, log=log)
    last = out["history"][-1]
    _emit(args, {
        "sigma": float(out["params"].sigma), "epsilon": float(out["params"].epsilon),
        "energy_per_atom": last[4], "pressure": last[5], "loss": last[3], "ess": last[6],
        "iterations": len(out["history"]), "resamples": out["resamples"],
        "targets": {"energy_per_atom": args.target_energy, "pressure": args.target_pressure},
        "units": "reduced LJ", "wall_s": time.perf_counter() - t0,
    })


def add_water_parser(fsub) -> None:
    """``jmlsim fit water``: the oxygen sigma/epsilon of a TIP3P-like water box against density (and dH_vap)."""
    from jmlsim.cli import _finite, _integer

    w = fsub.add_parser("water", help="fit the oxygen LJ sigma/epsilon of a 3-site water box to NPT density "
                                      "(and heat of vaporization) by reweighting")
    w.add_argument("--prmtop", required=True, help="AMBER prmtop of a box of 3-site waters")
    w.add_argument("--inpcrd", required=True, help="coordinates with box")
    w.add_argument("--cutoff", type=_finite("cutoff"), default=0.8, help="PME direct-space cutoff, nm")
    w.add_argument("--temperature", type=_finite("temperature"), default=300.0, help="K")
    w.add_argument("--pressure", type=_finite("pressure", positive=False), default=1.0, help="bar")
    w.add_argument("--target-density", type=_finite("target density"), default=0.997, help="g/cm3")
    w.add_argument("--target-dhvap", type=_finite("target dH_vap"), default=None,
                   help="kJ/mol (e.g. 44.0); omitted: fit the density alone")
    w.add_argument("--sigma-scale", type=_finite("sigma scale"), default=1.0,
                   help="start from the prmtop's sigma_O times this factor")
    w.add_argument("--epsilon-scale", type=_finite("epsilon scale"), default=1.0,
                   help="start from the prmtop's epsilon_O times this factor")
    w.add_argument("--fit-charge", action="store_true",
                   help="also fit |q_O| (the hydrogens carry +|q_O|/2, molecules stay neutral)")
    w.add_argument("--charge-scale", type=_finite("charge scale"), default=1.0,
                   help="with --fit-charge: start from the prmtop's |q_O| times this factor")
    w.add_argument("--charge-step-ratio", type=_finite("charge step ratio"), default=0.5,
                   help="Adam step on log |q_O| relative to log sigma_O")
    w.add_argument("--iterations", type=_integer("iterations", 1), default=60,
                   help="Adam steps (cheap next to the MD: each evaluates the stored frames only)")
    w.add_argument("--learning-rate", type=_finite("learning rate"), default=0.0025,
                   help="Adam step on log sigma_O")
    w.add_argument("--epsilon-step-ratio", type=_finite("epsilon step ratio"), default=4.0,
                   help="Adam step on log epsilon_O relative to log sigma_O")
    w.add_argument("--max-resamples", type=_integer("max resamples", 0), default=24)
    w.add_argument("--frames", type=_integer("frames", 2), default=60, help="frames per sample")
    w.add_argument("--resample-every", type=_integer("resample every", 1), default=None,
                   help="also resample after this many iterations on one sample (guards against fitting one "
                        "short sample's noise)")
    w.add_argument("--every", type=_integer("every", 1), default=50, help="MD steps between frames")
    w.add_argument("--equilibration-ps", type=_finite("equilibration", allow_zero=True), default=2.0,
                   help="ps before each sample (the first one: twice this)")
    w.add_argument("--verify-ps", type=_finite("verify length", allow_zero=True), default=0.0,
                   help="length of a plain NPT check at the fitted parameters, ps (0: none)")
    w.add_argument("--ess-fraction", type=_finite("ESS fraction"), default=0.3,
                   help="resample when the effective sample size falls below this fraction of the frames")
    w.add_argument("--seed", type=_integer("seed", 0), default=0)
    w.add_argument("--no-progress", action="store_true")
    w.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
