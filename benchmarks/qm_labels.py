"""QM labelling throughput: frames/s of GFN2-xTB labels for ethanol and aspirin through ``jmlsim.qm``.

For each molecule (from SMILES, one MMFF94-optimised ETKDG conformer) ``--frames`` geometries are sampled by
normal-mode displacement at 300 K, then labelled twice, on the same geometries:

* jmlsim: :func:`jmlsim.qm.labels.label_frames` with the default engine (``jmlsim.qm.engines``, one tblite
  ``Calculator`` built per frame, unit conversion, input checks) -- what ``jmlsim qm label`` does.
* reference: tblite's Python interface driven directly and as fast as it goes: one ``Calculator`` per molecule,
  ``update`` with new positions, SCF restarted from the previous frame's result.

The energies of the two must agree (checked; tblite's SCF tolerance allows ~1e-6 hartree). Printed: frames/s of
each, their ratio, and the time spent sampling. ``--threads`` sets the OpenMP threads tblite may use.

    python benchmarks/qm_labels.py --frames 100 --json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

MOLECULES = {"ethanol": "CCO", "aspirin": "CC(=O)Oc1ccccc1C(=O)O"}
BOHR_PER_NM = 1.0 / 0.0529177210903
KJ_PER_HARTREE = 2625.4996394798254


def reference_tblite(numbers, positions_nm) -> tuple:
    """(energies kJ/mol, seconds) with one reused tblite Calculator and SCF restarts."""
    from tblite.interface import Calculator

    t0 = time.perf_counter()
    calc = Calculator("GFN2-xTB", numbers, positions_nm[0] * BOHR_PER_NM)
    calc.set("verbosity", 0)
    result, energies = None, []
    for x in positions_nm:
        calc.update(x * BOHR_PER_NM)
        result = calc.singlepoint(result)
        energies.append(float(result.get("energy")) * KJ_PER_HARTREE)
    return np.asarray(energies), time.perf_counter() - t0


def run(name: str, smiles: str, frames: int, seed: int) -> dict:
    from jmlsim.qm import conformers, labels, sampling

    mol = conformers.from_smiles(smiles, seed=seed)
    t0 = time.perf_counter()
    x = sampling.sample_normal_modes(mol.force_fn(), mol.conformer_positions()[0], frames, 300.0, seed=seed)
    sampling_s = time.perf_counter() - t0
    labels.label_frames(mol.atomic_numbers, x[:1], "gfn2")  # warm-up: imports, first library load
    t0 = time.perf_counter()
    lab = labels.label_frames(mol.atomic_numbers, x, "gfn2")
    jmlsim_s = time.perf_counter() - t0
    ref_energy, ref_s = reference_tblite(mol.atomic_numbers, x)
    max_diff = float(np.abs(lab.energy - ref_energy).max())
    if max_diff > 0.05:  # kJ/mol
        raise SystemExit(f"{name}: jmlsim and tblite energies differ by {max_diff:.3g} kJ/mol")
    return {"molecule": name, "atoms": mol.n_atoms, "frames": frames, "sampling_s": sampling_s,
            "jmlsim_frames_per_s": frames / jmlsim_s, "tblite_reused_frames_per_s": frames / ref_s,
            "ratio": ref_s / jmlsim_s, "max_energy_diff_kj_mol": max_diff, "failed": len(lab.failures)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--molecules", nargs="+", default=list(MOLECULES), choices=list(MOLECULES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="OpenMP threads for tblite (default: as set)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    limit = None
    if args.threads is not None:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(args.threads)
    rows = [run(name, MOLECULES[name], args.frames, args.seed) for name in args.molecules]
    if limit is not None:
        limit.restore_original_limits()
    for r in rows:
        print(f"{r['molecule']:8s} {r['atoms']:3d} atoms  {r['frames']} frames  "
              f"jmlsim {r['jmlsim_frames_per_s']:7.1f} frames/s   tblite (reused calculator) "
              f"{r['tblite_reused_frames_per_s']:7.1f} frames/s   ratio {r['ratio']:.2f}   "
              f"sampling {r['sampling_s']:.2f} s   max |dE| {r['max_energy_diff_kj_mol']:.1e} kJ/mol")
    if args.json:
        print(json.dumps({"results": rows}))


if __name__ == "__main__":
    main()
