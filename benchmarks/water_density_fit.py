"""TIP3P oxygen sigma/epsilon fitted to the experimental density (and heat of vaporization) by NPT reweighting.

216 TIP3P waters (tests/data/amber/waterbox), PME 0.8 nm with dispersion correction, rigid water (SETTLE),
Langevin BAOAB 2 fs, 1/ps, Monte Carlo barostat every 25 steps, 300 K, 1 bar. One Markov chain throughout:

1. plain TIP3P (the prmtop's sigma_O, epsilon_O): --equil-ps, then --verify-ps of production; density and dH_vap
   with block standard errors (10 blocks);
2. the fit: start from sigma_O x --sigma-scale, epsilon_O x --epsilon-scale, equilibrate --first-equil-ps, then
   Adam in log-parameter space (steps --learning-rate on log sigma, x --epsilon-step-ratio on log epsilon,
   halved every 20 iterations after --decay-after) on the reweighted loss
   ((rho - 0.997) / 0.005)^2 [+ ((dH_vap - 44.0) / 0.25)^2], each sample --sample-frames frames every --every
   steps after --resample-equil-ps, resampled when ESS < --ess-fraction * frames (at most --max-resamples times);
3. verification: plain NPT at the fitted parameters (--equil-ps, then --verify-ps), density and dH_vap.

dH_vap = -<U>/N_mol + RT (rigid model: no intramolecular energy; no polarization correction). Experimental
targets: 0.997 g/cm^3 and 44.0 kJ/mol (298 K). Prints a log and a summary; --json FILE writes the summary.

Why short samples and a low ESS threshold: in a 648-atom box the energy's derivative in log sigma_O fluctuates
strongly from frame to frame: one Adam step of 0.2 % in sigma_O (with 1 % in epsilon_O) took the ESS of 100
frames (10 ps) to 23-35 %.
Travel per sample is therefore ESS-limited (about one Adam step per sample), and many short samples (2 ps
re-equilibration + 6 ps) cover more parameter distance per MD picosecond than few long ones. Default lengths:
plain and verification 5 + 25 ps each, fit 6 ps + up to 25 samples x 8 ps: ~260 ps of MD, ~35 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WATER = os.path.join(HERE, "..", "tests", "data", "amber", "waterbox")


def main(argv=None) -> dict:
    from jmlsim.fitting import water_observables as wo
    from jmlsim.io.openmm_import import load_amber

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sigma-scale", type=float, default=1.03)
    ap.add_argument("--epsilon-scale", type=float, default=0.80)
    ap.add_argument("--no-dhvap", action="store_true", help="fit the density alone")
    ap.add_argument("--cutoff", type=float, default=0.8)
    ap.add_argument("--equil-ps", type=float, default=5.0, help="before the plain and the verification runs")
    ap.add_argument("--verify-ps", type=float, default=25.0, help="production of the plain and verification runs")
    ap.add_argument("--first-equil-ps", type=float, default=6.0, help="at the perturbed start")
    ap.add_argument("--resample-equil-ps", type=float, default=2.0)
    ap.add_argument("--sample-frames", type=int, default=60)
    ap.add_argument("--every", type=int, default=50, help="MD steps between stored frames")
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--learning-rate", type=float, default=0.0025,
                    help="Adam step on log sigma_O; halved every 20 iterations after --decay-after")
    ap.add_argument("--epsilon-step-ratio", type=float, default=4.0,
                    help="Adam step on log epsilon_O relative to log sigma_O")
    ap.add_argument("--decay-after", type=int, default=40)
    ap.add_argument("--ess-fraction", type=float, default=0.3)
    ap.add_argument("--max-resamples", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    system = load_amber(os.path.join(WATER, "watbox216.prmtop"), os.path.join(WATER, "watbox216.crd"),
                        nonbonded="pme", cutoff=args.cutoff, constraints="hbonds")
    model = wo.WaterModel(system, 300.0)
    sampler = wo.WaterSampler(model, pressure_bar=1.0, seed=args.seed)
    dt = sampler.timestep
    steps = lambda ps: int(round(ps / dt))  # noqa: E731
    targets = {"density_g_cm3": 0.997}
    if not args.no_dhvap:
        targets["dhvap_kj_mol"] = 44.0
    log(f"216 TIP3P, PME {args.cutoff} nm, 300 K, 1 bar, 2 fs; targets {targets}")
    log(f"lengths: plain/verify {args.equil_ps} + {args.verify_ps} ps; fit: first equilibration "
        f"{args.first_equil_ps} ps, each sample {args.resample_equil_ps} ps + {args.sample_frames} frames x "
        f"{args.every * dt:g} ps = {args.sample_frames * args.every * dt:g} ps")

    def report(label, theta, r):
        log(f"{label}: sigma_O {theta[0]:.5f} nm  epsilon_O {theta[1]:.4f} kJ/mol  density "
            f"{r['density_g_cm3']:.4f} +- {r['density_se']:.4f} g/cm3  dH_vap {r['dhvap_kj_mol']:.2f} +- "
            f"{r['dhvap_se']:.2f} kJ/mol ({r['production_ps']:g} ps, {r['n_frames']} frames)")

    tip3p = model.reference.copy()
    t = time.perf_counter()
    plain = sampler.density_run(tip3p, steps(args.equil_ps), steps(args.verify_ps))
    plain["wall_s"] = time.perf_counter() - t
    report("plain TIP3P", tip3p, plain)

    start = tip3p * np.array([args.sigma_scale, args.epsilon_scale])
    log(f"start: sigma_O {start[0]:.5f} nm (x{args.sigma_scale}), epsilon_O {start[1]:.4f} kJ/mol "
        f"(x{args.epsilon_scale})")
    import optax

    schedule = optax.exponential_decay(args.learning_rate, transition_steps=20, decay_rate=0.5,
                                       transition_begin=args.decay_after)
    fit = wo.fit_water(sampler, start, targets, iterations=args.iterations, learning_rate=schedule,
                       step_scales=(1.0, args.epsilon_step_ratio),
                       n_frames=args.sample_frames, every=args.every, equilibration=steps(args.resample_equil_ps),
                       first_equilibration=steps(args.first_equil_ps), ess_fraction=args.ess_fraction,
                       max_resamples=args.max_resamples, log=lambda m: log("  " + m))
    fitted = fit["params"]
    first, last = fit["history"][0], fit["history"][-1]
    log(f"fit: {len(fit['history'])} iterations, {fit['resamples']} resamples ({fit['samples']} samples), "
        f"{fit['wall_s']:.0f} s; fitted sigma_O {fitted[0]:.5f} nm ({fitted[0] / tip3p[0]:.4f} x TIP3P), "
        f"epsilon_O {fitted[1]:.4f} kJ/mol ({fitted[1] / tip3p[1]:.4f} x TIP3P)")

    t = time.perf_counter()
    verify = sampler.density_run(fitted, steps(args.equil_ps), steps(args.verify_ps))
    verify["wall_s"] = time.perf_counter() - t
    report("verify (fitted)", fitted, verify)
    wall = time.perf_counter() - t0
    summary = {
        "targets": targets,
        "tip3p": {"sigma_nm": float(tip3p[0]), "epsilon_kj_mol": float(tip3p[1]), **plain},
        "start": {"sigma_nm": float(start[0]), "epsilon_kj_mol": float(start[1]),
                  "density_g_cm3": first["density_g_cm3"], "dhvap_kj_mol": first["dhvap_kj_mol"],
                  "loss": first["loss"], "note": "plain average of the first sample (ESS = K)"},
        "fitted": {"sigma_nm": float(fitted[0]), "epsilon_kj_mol": float(fitted[1]),
                   "reweighted_density_g_cm3": last["density_g_cm3"], "reweighted_dhvap_kj_mol": last["dhvap_kj_mol"],
                   "loss": last["loss"], "ess": last["ess"]},
        "verify": verify,
        "history": fit["history"],
        "iterations": len(fit["history"]), "resamples": fit["resamples"], "samples": fit["samples"],
        "md_ps": sampler.steps * dt, "md_s": sampler.md_seconds, "wall_s": wall,
        "settings": vars(args),
    }
    log(f"summary: density start {first['density_g_cm3']:.4f} -> fitted {verify['density_g_cm3']:.4f} +- "
        f"{verify['density_se']:.4f} g/cm3 (target 0.997; plain TIP3P {plain['density_g_cm3']:.4f} +- "
        f"{plain['density_se']:.4f}); dH_vap start {first['dhvap_kj_mol']:.2f} -> {verify['dhvap_kj_mol']:.2f} +- "
        f"{verify['dhvap_se']:.2f} kJ/mol (target 44.0; TIP3P {plain['dhvap_kj_mol']:.2f}); "
        f"{sampler.steps * dt:.0f} ps of MD in {sampler.md_seconds:.0f} s; total wall {wall:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
