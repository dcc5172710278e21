"""Constrained energy minimization: jmlsim's L-BFGS against OpenMM's LocalEnergyMinimizer, same run.

    python benchmarks/minimization.py                       # solvated alanine dipeptide and the 216-water box
    python benchmarks/minimization.py --systems water --json

Each system is built once by OpenMM's app layer (``jmlsim.io.openmm_import``): PME (0.9 nm) for alanine dipeptide
in water, cutoff 0.8 nm for the water box, HBonds and rigid water. The same ``openmm.System`` and start positions
feed both engines. OpenMM's ``LocalEnergyMinimizer.minimize`` runs on its CPU platform at the same tolerance
(10 kJ/mol/nm by default), jmlsim's ``minimize`` in float32 and float64 (``--precisions``).

OpenMM stops when the gradient of its penalized objective (energy plus a stiff harmonic penalty on the constrained
distances) is below the tolerance and then projects onto the constraints; jmlsim searches on the constraint
surface and stops on the projected forces there. So every result is judged the same way, afterwards, in float64:
the largest per-atom force once its components along the constraints are removed (``surface_max_force``), the
constraint error, and the potential energy. Wall seconds include jmlsim's compilation.

No figure is asserted; the script only reports. ``--json`` prints one JSON line with all figures at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
AMBER = os.path.join(HERE, "..", "tests", "data", "amber")
SYSTEMS = {
    "alanine-dipeptide": (os.path.join(AMBER, "alanine-dipeptide-explicit", "alanine-dipeptide"), ".crd",
                          {"nonbonded": "pme", "cutoff": 0.9}),
    "water": (os.path.join(AMBER, "waterbox", "watbox216"), ".crd", {"cutoff": 0.8}),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", nargs="+", choices=sorted(SYSTEMS), default=["alanine-dipeptide", "water"])
    parser.add_argument("--precisions", nargs="+", choices=["single", "double"], default=["single", "double"])
    parser.add_argument("--tolerance", type=float, default=10.0, help="kJ/mol/nm (OpenMM's default)")
    parser.add_argument("--max-steps", type=int, default=5000, help="jmlsim L-BFGS iterations at most")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)  # float64 available; each Simulation sets its own precision
    import jax.numpy as jnp
    import numpy as np
    import openmm
    import openmm.unit as u

    from jmlsim.integrators import VelocityVerlet
    from jmlsim.io.openmm_import import load_amber
    from jmlsim.minimize import minimize
    from jmlsim.simulation import Simulation

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
          f"OpenMM {openmm.__version__}, load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for name in args.systems:
        base, coordinates, options = SYSTEMS[name]
        system, omm_system = load_amber(base + ".prmtop", base + coordinates, constraints="hbonds",
                                        return_openmm=True, **options)
        judge = Simulation(system, VelocityVerlet(0.001), kT=0.0, precision="double", skin=0.1)
        constraints = judge.integrator.constraints
        start = np.asarray(judge.state.positions)
        forces_of = jax.jit(judge._force_fn(judge.params, judge.state.box))

        def judged(positions):
            """(potential kJ/mol, largest per-atom force on the constraint surface kJ/mol/nm, largest relative
            constraint error) of positions (N, 3) nm, all in float64."""
            x = jnp.asarray(positions, jnp.float64)
            state = judge.state._replace(positions=x)
            nbrs = judge._rebuild(state)
            forces, _ = forces_of(x, nbrs)
            surface = constraints.velocities(x, forces, jnp.ones_like(judge.state.masses))
            return (float(judge._energy(judge.params, state, nbrs)),
                    float(jnp.max(jnp.linalg.norm(surface, axis=-1))), float(jnp.max(jnp.abs(constraints.errors(x)))))

        context = openmm.Context(omm_system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
        context.setPositions(start)
        clock = time.perf_counter()
        openmm.LocalEnergyMinimizer.minimize(context, args.tolerance)
        seconds = time.perf_counter() - clock
        positions = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
        energy, surface, error = judged(positions)
        rows.append({"system": name, "atoms": system.n_atoms, "engine": "openmm-cpu", "seconds": seconds,
                     "potential_kj_per_mol": energy, "surface_max_force_kj_per_mol_nm": surface,
                     "max_constraint_error": error, "iterations": None, "converged": None})
        print(json.dumps(rows[-1]), flush=True)
        for precision in args.precisions:
            sim = Simulation(system, VelocityVerlet(0.001), kT=0.0, precision=precision, skin=0.1)
            clock = time.perf_counter()
            result = minimize(sim, args.tolerance, args.max_steps)
            seconds = time.perf_counter() - clock
            energy, surface, error = judged(sim.state.positions)
            rows.append({"system": name, "atoms": system.n_atoms, "engine": f"jmlsim-{precision}", "seconds": seconds,
                         "potential_kj_per_mol": energy, "surface_max_force_kj_per_mol_nm": surface,
                         "max_constraint_error": error, "iterations": result["steps"],
                         "converged": result["converged"]})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| system | engine | potential kJ/mol | surface max force kJ/mol/nm | constraint error | iterations | s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['engine']} | {r['potential_kj_per_mol']:.2f} | "
              f"{r['surface_max_force_kj_per_mol_nm']:.1f} | {r['max_constraint_error']:.1e} | "
              f"{r['iterations'] if r['iterations'] is not None else '-'} | {r['seconds']:.1f} |")
    if args.json:
        print(json.dumps({"tolerance_kj_per_mol_nm": args.tolerance, "rows": rows}))


if __name__ == "__main__":
    main()
