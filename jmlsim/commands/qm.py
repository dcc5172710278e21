"""``jmlsim qm label``: QM-labelled training data for new molecules.

SMILES or SDF -> RDKit conformers (ETKDG, MMFF94/UFF-optimised) -> sampled geometries (normal modes or Langevin
MD on the force field) -> GFN2-xTB (tblite) or DFT (PySCF) energies and forces -> HDF5 dataset in jmlsim's layout
(:mod:`jmlsim.io.datasets`), which ``jmlsim potential train`` reads.
"""

from __future__ import annotations

import json
import os
import time

from jmlsim.cli import _check_writable, _emit, _finite, _integer
from jmlsim.errors import InputError, SimulationError


def add_commands(sub) -> dict:
    qm = sub.add_parser("qm", help="quantum-chemistry labels for training neural potentials")
    qm_sub = qm.add_subparsers(dest="subcommand", required=True)
    label = qm_sub.add_parser("label", help="sample geometries of a molecule and label them with GFN2-xTB or DFT")
    source = label.add_mutually_exclusive_group(required=True)
    source.add_argument("--smiles", help="molecule as a SMILES string (hydrogens are added)")
    source.add_argument("--sdf", help="SDF file; every record is labelled (its 3D coordinates are the conformer "
                                      "unless --conformers is given)")
    label.add_argument("--out", required=True, help="output HDF5 dataset (.h5 / .hdf5)")
    label.add_argument("--method", choices=["gfn2", "dft"], default="gfn2",
                       help="gfn2: GFN2-xTB via tblite (fast); dft: B3LYP(-D3BJ)/def2-SVP via PySCF (reference, slow)")
    label.add_argument("--conformers", type=_integer("conformers", 1),
                       help="ETKDG conformers per molecule (default 1 for --smiles; the file's for --sdf)")
    label.add_argument("--samples", type=_integer("samples", 1), default=10,
                       help="sampled geometries per conformer (default 10)")
    label.add_argument("--sampling", choices=["normal-modes", "md"], default="normal-modes",
                       help="harmonic normal-mode displacements, or Langevin MD (0.5 fs, frame every 50 fs after "
                            "1 ps), both on the molecule's MMFF94 (or UFF) force field")
    label.add_argument("--potential", metavar="MODEL",
                       help="sample on a trained jmlsim neural potential (directory or pretrained name) instead of "
                            "the force field (conformers are still force-field optimised)")
    label.add_argument("--temperature", type=_finite("temperature"), default=300.0, help="K (default 300)")
    label.add_argument("--seed", type=_integer("seed", 0), default=0)
    label.add_argument("--workers", type=_integer("workers", 1), default=1,
                       help="processes labelling frames in parallel, one OpenMP thread each (default 1)")
    label.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    label.add_argument("--no-progress", action="store_true", help="no progress bar")
    label.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    return {"qm": {"label": cmd_label}}


def cmd_label(args) -> None:
    import numpy as np

    from jmlsim.qm import conformers, labels, sampling

    t0 = time.perf_counter()
    if os.path.splitext(args.out)[1].lower() not in (".h5", ".hdf5"):
        raise InputError(f"--out {args.out}: the dataset must be an HDF5 file (.h5 or .hdf5)")
    _check_writable(args.out, "dataset", overwrite=args.overwrite)
    if args.smiles is not None:
        molecules = [conformers.from_smiles(args.smiles, args.conformers or 1, seed=args.seed)]
    else:
        molecules = conformers.from_sdf(args.sdf, args.conformers, seed=args.seed)
    description = labels.method_description(args.method)  # fails early if the engine's package is missing
    potential = None
    if args.potential is not None:
        from jmlsim.potentials.potential import load_potential
        potential = load_potential(args.potential)

    geometries = []
    for m, mol in enumerate(molecules):
        force_fn = (mol.force_fn() if potential is None
                    else sampling.potential_force_fn(potential, mol.atomic_numbers))
        per_conformer = []
        for c, x0 in enumerate(mol.conformer_positions()):
            seed = args.seed + 1000 * m + c
            try:
                if args.sampling == "normal-modes":
                    x = sampling.sample_normal_modes(force_fn, x0, args.samples, args.temperature, seed=seed)
                elif potential is not None:
                    x = sampling.sample_md_potential(potential, mol.atomic_numbers, x0, mol.masses, args.samples,
                                                     args.temperature, seed=seed)
                else:
                    x = sampling.sample_md(force_fn, x0, mol.masses, args.samples, args.temperature, seed=seed)
            except FloatingPointError as exc:
                raise SimulationError(f"{mol.name}: conformer {c}: {exc}") from None
            per_conformer.append(x)
        geometries.append(np.concatenate(per_conformer))
    t_sampled = time.perf_counter()

    bar = labels.progress_bar(sum(len(g) for g in geometries), args.method, enabled=not args.no_progress)
    results = []
    try:
        for mol, x in zip(molecules, geometries):
            if bar is not None:
                bar.set_postfix_str(mol.name[:30], refresh=False)
            results.append(labels.label_frames(mol.atomic_numbers, x, args.method, mol.charge, mol.multiplicity,
                                               bar=bar, workers=args.workers))
    finally:
        if bar is not None:
            bar.close()
    t_labelled = time.perf_counter()

    dataset = labels.to_dataset([m.atomic_numbers for m in molecules], results, source=args.out)
    sampling_energy = args.potential if potential is not None else "force field"
    labels.write_dataset(dataset, args.out, attrs={
        "qm_method": description, "method": args.method, "sampling": args.sampling,
        "sampling_energy": sampling_energy, "temperature_k": float(args.temperature),
        "force_field": json.dumps([m.force_field for m in molecules]),
        "molecules": json.dumps([m.name for m in molecules]), "seed": int(args.seed)})
    n_failed = sum(len(r.failures) for r in results)
    label_s = t_labelled - t_sampled
    _emit(args, {
        "n_frames": len(dataset), "n_atoms": int(max(m.n_atoms for m in molecules)), "method": args.method,
        "qm_method": description, "out": args.out, "wall_s": time.perf_counter() - t0,
        "sampling": args.sampling, "sampling_energy": sampling_energy,
        "temperature_k": float(args.temperature), "n_failed": n_failed,
        "workers": args.workers,
        "sampling_s": t_sampled - t0, "label_s": label_s,
        "frames_per_s": (len(dataset) + n_failed) / label_s if label_s > 0 else None,
        "molecules": [{"name": m.name, "n_atoms": m.n_atoms, "conformers": m.n_conformers,
                       "frames": len(r.energy), "charge": m.charge, "multiplicity": m.multiplicity,
                       "force_field": m.force_field} for m, r in zip(molecules, results)],
    })
