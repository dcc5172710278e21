"""Force-field fitting: time per fit iteration, and memory of gradients through trajectories vs their length.

What it measures (same run, same machine; no timing is asserted):

* Torsion fit (alanine dipeptide phi, the stored GFN2-xTB scan in tests/data/fitting, 24 geometries): one
  Adam iteration = value and gradient of the fit objective with respect to the 12 Fourier parameters through
  jmlsim's full energy (jit, float64). Reference: the same gradient by central finite differences with
  OpenMM's Reference platform, i.e. 2 x 12 x 24 single-point energies (measured per energy, then multiplied).
  Also the time of one restrained MM relaxation of a scan point (scipy L-BFGS-B on a jitted gradient).
* Reweighting fit (108-atom LJ fluid, 100 frames): one iteration = value and gradient of the reweighted loss
  with respect to (sigma, epsilon). Reference: one sampling run of the same length (100 frames x 20 steps of
  Langevin MD), which is what a resample costs.
* Gradient through a trajectory (108-atom LJ, velocity Verlet, mean potential energy): XLA's temporary memory
  for jit(grad) and time per gradient, plain ``lax.scan`` vs checkpointed segments of ~sqrt(n) steps, for
  growing trajectory lengths n. Reference: the forward trajectory alone (memory and time).

Run (from the repository root)::

    python benchmarks/fitting.py                    # default lengths 50 100 200 400 800 1600
    python benchmarks/fitting.py --lengths 100 400 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALA = ROOT / "tests" / "data" / "amber" / "alanine-dipeptide-gbsa" / "alanine-dipeptide"
SCAN = ROOT / "tests" / "data" / "fitting" / "ala2_phi_gfn2_hold_psi.npz"
PHI = (4, 6, 8, 14)


def _timeit(fn, repeats: int) -> float:
    fn()  # compile / warm up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def torsion_iteration() -> dict:
    from jmlsim.fitting import export, scan as sc, torsions as tf
    from jmlsim.io.openmm_import import load_amber

    system, omm = load_amber(str(ALA) + ".prmtop", str(ALA) + ".crd", nonbonded="nocutoff", constraints="none",
                             return_openmm=True)
    with np.load(SCAN) as data:
        qm = sc.ScanResult(**{k: np.asarray(data[k]) for k in sc.ScanResult._fields})
    base = tf.with_fitted_torsion(system, PHI)
    grad = jax.jit(jax.value_and_grad(tf.fit_objective(base, qm.positions, qm.energies)))
    terms = tf.FourierTerms(jnp.full(6, 0.5), jnp.zeros(6))
    t_iter = _timeit(lambda: jax.block_until_ready(grad(terms)), 50)
    t_omm = _timeit(lambda: export.openmm_energies(omm, qm.positions), 5) / len(qm.positions)
    relax = sc.make_mm_relaxer(tf.energy_function(base), PHI, held=qm.held, held_targets=qm.held_targets)
    relax(base.params, qm.positions[:1], qm.targets[:1])  # compile
    t0 = time.perf_counter()
    relax(base.params, qm.positions[:4], qm.targets[:4])
    t_relax = (time.perf_counter() - t0) / 4
    n_params, n_points = 12, len(qm.positions)
    return {"torsion_iteration_ms": 1e3 * t_iter, "openmm_energy_ms": 1e3 * t_omm,
            "openmm_fd_gradient_ms": 1e3 * t_omm * 2 * n_params * n_points,
            "mm_relax_per_point_s": t_relax, "scan_points": n_points}


def reweighting_iteration() -> dict:
    from jmlsim.energy.lennard_jones import LennardJonesParams
    from jmlsim.fitting import reweighting as rw
    from jmlsim.systems.lennard_jones_fluid import lennard_jones_fluid

    sampler = rw.LJSampler(lennard_jones_fluid(108, 0.8), 1.5, seed=0, equilibration=500)
    params = LennardJonesParams(jnp.float64(1.0), jnp.float64(1.0))
    samples = sampler.sample(params, 100, 20)  # includes compilation
    t0 = time.perf_counter()
    samples = sampler.sample(params, 100, 20, equilibration=0)
    t_sample = time.perf_counter() - t0
    loss = jax.jit(jax.value_and_grad(rw.make_loss(sampler.term, 1.5, [-4.0, 3.0], [0.05, 0.1], sampler.nbrs),
                                      has_aux=True))
    theta = rw.to_theta(params)
    t_iter = _timeit(lambda: jax.block_until_ready(loss(theta, samples)), 20)
    return {"reweighting_iteration_ms": 1e3 * t_iter, "resample_run_s": t_sample}


def trajectory_memory(lengths) -> list:
    from jmlsim.energy.lennard_jones import LennardJonesParams
    from jmlsim.fitting import reweighting as rw, trajectory_gradients as tg
    from jmlsim.systems.lennard_jones_fluid import lennard_jones_fluid

    system = lennard_jones_fluid(108, 0.8)
    ff, ef = tg.lj_force_and_energy(system.terms["lennard_jones"], system.box, rw.all_pairs(108))
    rng = np.random.default_rng(0)
    x0 = jnp.asarray(system.positions + 0.02 * rng.normal(size=system.positions.shape))
    v0 = jnp.asarray(rng.normal(size=x0.shape))
    params = LennardJonesParams(jnp.float64(1.0), jnp.float64(1.0))
    obs = lambda p, x, v: ef(p, x) / 108  # noqa: E731
    rows = []
    for n in lengths:
        seg = int(round(math.sqrt(n)))
        while n % seg:
            seg -= 1
        plain = tg.verlet_observable(ff, obs, system.masses, 0.005, n)
        ck = tg.verlet_observable(ff, obs, system.masses, 0.005, n, segment=seg)
        fwd = jax.jit(plain).lower(params, x0, v0).compile()
        fwd_mem = fwd.memory_analysis().temp_size_in_bytes if fwd.memory_analysis() else -1
        g_plain, g_ck = jax.jit(jax.grad(plain)), jax.jit(jax.grad(ck))
        rows.append({
            "steps": n, "segment": seg,
            "forward_mib": fwd_mem / 2**20,
            "grad_plain_mib": tg.gradient_memory_bytes(plain, params, x0, v0) / 2**20,
            "grad_checkpointed_mib": tg.gradient_memory_bytes(ck, params, x0, v0) / 2**20,
            "forward_s": _timeit(lambda: jax.block_until_ready(fwd(params, x0, v0)), 2),
            "grad_plain_s": _timeit(lambda: jax.block_until_ready(g_plain(params, x0, v0)), 2),
            "grad_checkpointed_s": _timeit(lambda: jax.block_until_ready(g_ck(params, x0, v0)), 2),
        })
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[50, 100, 200, 400, 800, 1600])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = {"torsion": torsion_iteration(), "reweighting": reweighting_iteration(),
              "trajectory": trajectory_memory(args.lengths)}
    t, r = result["torsion"], result["reweighting"]
    print(f"torsion fit iteration (24 points, 12 params, grad through jmlsim energy): {t['torsion_iteration_ms']:.2f} ms"
          f"  | reference: FD gradient with OpenMM Reference {t['openmm_fd_gradient_ms']:.1f} ms"
          f" ({t['openmm_energy_ms']:.3f} ms/energy)")
    print(f"restrained MM relaxation: {t['mm_relax_per_point_s']:.2f} s per scan point")
    print(f"reweighting iteration (108 LJ atoms, 100 frames): {r['reweighting_iteration_ms']:.2f} ms"
          f"  | reference: one resampling run (2,000 MD steps) {r['resample_run_s']:.2f} s")
    print(f"{'steps':>6} {'seg':>4} {'fwd MiB':>9} {'grad MiB':>9} {'ckpt MiB':>9} {'fwd s':>8} {'grad s':>8} {'ckpt s':>8}")
    for row in result["trajectory"]:
        print(f"{row['steps']:6d} {row['segment']:4d} {row['forward_mib']:9.2f} {row['grad_plain_mib']:9.2f} "
              f"{row['grad_checkpointed_mib']:9.2f} {row['forward_s']:8.3f} {row['grad_plain_s']:8.3f} "
              f"{row['grad_checkpointed_s']:8.3f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
