"""Adaptive sampling vs plain MD on alanine dipeptide: total MD steps until the first visit to alpha_L.

Both arms run R replicas in one compiled replica batch (GBSA-OBC2, HBonds, 2 fs Langevin, friction 1/ps) from the
same extended start structure, in epochs of S steps, for at most E epochs (budget R * E * S steps), and stop at the
first frame in alpha_L (phi in (0, 150) degrees). The reference arm is plain MD (``strategy='plain'``: replicas
keep running); the adaptive arm respawns all replicas from the least-visited regular-space clusters after every
epoch. Same seeds for both; a run that never reaches alpha_L is censored at the budget (reported as '>budget'),
and the median is taken over seeds with censored runs counted as budget (so a censored median is a lower bound).

Run (from the repository root)::

    python benchmarks/adaptive_alanine.py --replicas 16 --epochs 15 --steps-per-epoch 1000 --seeds 0 1 2 3
    python benchmarks/adaptive_alanine.py --strategies plain --seeds 0 1   # one arm only (e.g. in parallel)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALA = os.path.join(ROOT, "tests", "data", "amber", "alanine-dipeptide-gbsa", "alanine-dipeptide")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=16)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--steps-per-epoch", type=int, default=1000)
    p.add_argument("--report-interval", type=int, default=50)
    p.add_argument("--temperature", type=float, default=300.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--strategies", nargs="+", default=["least-visited", "plain"])
    p.add_argument("--json-out", help="write the rows here as they finish")
    args = p.parse_args(argv)

    from jmlsim import adaptive, ensemble
    from jmlsim.io.openmm_import import load_amber

    system = load_amber(ALA + ".prmtop", ALA + ".crd", nonbonded="nocutoff", constraints="hbonds",
                        implicit_solvent="obc2")
    sim = ensemble.replica_simulation(system, [args.temperature] * args.replicas, 0.002, seed=0)
    budget = args.replicas * args.epochs * args.steps_per_epoch
    rows = []
    print(f"# alanine dipeptide OBC2 {args.temperature:g} K, {args.replicas} replicas x {args.epochs} epochs x "
          f"{args.steps_per_epoch} steps (budget {budget} steps = {budget * 0.002 / 1000:.3f} ns); "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{os.cpu_count()} CPUs", flush=True)
    for seed in args.seeds:
        for strategy in args.strategies:
            t0 = time.perf_counter()
            run = adaptive.run_adaptive(system, args.replicas, args.epochs, args.steps_per_epoch, args.temperature,
                                        report_interval=args.report_interval, strategy=strategy,
                                        stop_at_basin="alphaL", seed=seed, progress=False, sim=sim)
            hit = run.first_basin_total_steps.get("alphaL")
            row = {"seed": seed, "strategy": strategy, "alphaL_total_steps": None if hit is None else int(hit),
                   "steps_run": int(run.total_steps), "budget": budget, "wall_s": time.perf_counter() - t0,
                   "clusters": run.clusters_per_epoch[-1]}
            rows.append(row)
            print(f"seed {seed} {strategy:14s} alphaL after {hit if hit is not None else '>' + str(budget)} steps "
                  f"({row['wall_s']:.0f} s wall)", flush=True)
            if args.json_out:
                with open(args.json_out + ".tmp", "w") as f:
                    json.dump(rows, f)
                os.replace(args.json_out + ".tmp", args.json_out)
    summary = {}
    for strategy in args.strategies:
        hits = [r["alphaL_total_steps"] if r["alphaL_total_steps"] is not None else budget
                for r in rows if r["strategy"] == strategy]
        censored = sum(r["alphaL_total_steps"] is None for r in rows if r["strategy"] == strategy)
        med = float(np.median(hits))
        summary[strategy] = {"median_steps": med, "reached": len(hits) - censored, "runs": len(hits)}
        print(f"{strategy:14s} median total steps to alphaL: {'>=' if med >= budget else ''}{med:.0f} "
              f"(reached in {len(hits) - censored}/{len(hits)} runs)")
    return {"rows": rows, "summary": summary}


if __name__ == "__main__":
    main()
