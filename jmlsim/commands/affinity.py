"""``jmlsim affinity train|evaluate|predict``: binding-affinity 3D CNNs on PDBbind directories or CSV lists.

Data sources: ``--data DIR`` (a PDBbind directory in its own layout, INDEX files give the labels) or
``--csv F`` (columns ``protein,ligand,pK``; ``--data F.csv`` works too). ``--index FILE`` takes the codes and
labels from that INDEX file instead of the ones found under DIR.

A bad complex (missing file, a ligand RDKit cannot sanitize, an empty pocket) is reported with one stderr line
naming it, the rest are processed, and the JSON lists it under ``skipped``; when nothing usable remains the
command fails with exit status 2. Coordinates are Å inside the affinity package (PDBbind's units); pK is
-log10(K / M).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import warnings

from jmlsim.cli import _check_writable, _emit, _finite, _integer, _json_object
from jmlsim.errors import InputError

TYPING_SCHEMES = ("kdeep", "gnina")  # the schemes of jmlsim.affinity.atom_typing (and its HDF5 store)

RUN_FILES = ("best", "last", "log.csv", "learning_curve.png", "split.json", "test_scatter.png")


def _md_spec(text: str) -> tuple:
    """TRAJ:TOP:PDBID -> (traj, top or None, code); TOP may be empty for jmlsim/mdtraj HDF5 trajectories."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise argparse.ArgumentTypeError(f"--md-poses expects TRAJ:TOP:PDBID (TOP may be empty), got {text!r}")
    return parts[0], parts[1] or None, parts[2]


def _add_data_arguments(p) -> None:
    p.add_argument("--data", metavar="DIR|F.csv", help="PDBbind directory (its own layout) or a protein,ligand,pK CSV")
    p.add_argument("--csv", metavar="F", help="CSV with protein,ligand,pK columns (paths relative to the CSV)")
    p.add_argument("--index", metavar="FILE", help="PDBbind INDEX file giving the codes and pK (default: the "
                                                   "INDEX files found under --data)")
    p.add_argument("--sets", nargs="+", choices=["general", "refined", "core"],
                   help="PDBbind INDEX sets to use (default: all found)")
    p.add_argument("--store", metavar="F.h5", help="HDF5 feature store reused across runs (typed atoms)")
    p.add_argument("--protein-file", choices=["pocket", "protein"], default="pocket",
                   help="PDBbind: type XXXX_pocket.pdb (default) or XXXX_protein.pdb")


def add_commands(sub) -> dict:
    aff = sub.add_parser("affinity", help="binding-affinity 3D CNNs (KDEEP-style) on protein-ligand complexes")
    aff_sub = aff.add_subparsers(dest="subcommand", required=True)

    train = aff_sub.add_parser("train", help="train a 3D CNN to predict pK from voxelized complexes")
    _add_data_arguments(train)
    train.add_argument("--out", required=True, metavar="DIR", help="run directory (best/, last/, log.csv, plots)")
    train.add_argument("--model", choices=["kdeep", "resnet"], default="kdeep")
    train.add_argument("--hyper", type=_json_object("--hyper"), metavar="JSON", help='model hyperparameters, e.g. \'{"width": 0.5}\'')
    train.add_argument("--scheme", choices=["kdeep", "gnina"], default="kdeep", help="atom-typing scheme")
    train.add_argument("--epochs", type=_integer("epochs", 1), default=50)
    train.add_argument("--batch-size", type=_integer("batch size", 1), default=16)
    train.add_argument("--lr", type=_finite("learning rate"), default=1e-4)
    train.add_argument("--weight-decay", type=_finite("weight decay", allow_zero=True), default=1e-4)
    train.add_argument("--patience", type=_integer("patience", 1), default=10,
                       help="stop after this many epochs without a better validation RMSE")
    train.add_argument("--split", choices=["random", "casf", "leak-aware"], default="random",
                       help="random; casf (test = core set, train = general + refined minus core); leak-aware "
                            "(clusters by protein sequence identity and ligand Tanimoto never span two sets)")
    train.add_argument("--valid-fraction", type=_finite("validation fraction"), default=0.1)
    train.add_argument("--test-fraction", type=_finite("test fraction", allow_zero=True), default=0.1,
                       help="random/leak-aware: share held out as a test set (casf: the core set)")
    train.add_argument("--md-poses", nargs="+", type=_md_spec, default=[], metavar="TRAJ:TOP:PDBID",
                       help="frames of an MD trajectory of complex PDBID as extra training poses (same label)")
    train.add_argument("--md-ligand", default="not protein and not water", metavar="SELECTION",
                       help="mdtraj selection of the ligand atoms in the --md-poses trajectories")
    train.add_argument("--md-stride", type=_integer("MD stride", 1), default=1, help="use every K-th frame")
    train.add_argument("--no-augment", action="store_true", help="no random rotations/translations")
    train.add_argument("--max-minutes", type=_finite("max minutes"), help="stop after the first epoch past this")
    train.add_argument("--seed", type=_integer("seed", 0), default=0)
    train.add_argument("--resume", action="store_true", help="continue from DIR/last/train_state.msgpack")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory's files")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")

    evaluate = aff_sub.add_parser("evaluate", help="Pearson, Spearman, RMSE, MAE of a model on labelled complexes")
    evaluate.add_argument("--model", required=True, metavar="DIR|NAME", help="run/model directory or gnina-default")
    _add_data_arguments(evaluate)
    evaluate.add_argument("--plot", metavar="F.png", help="scatter plot of predicted vs experimental pK")
    evaluate.add_argument("--tta", type=_integer("tta", 0), default=0,
                          help="average over the input pose and this many random rotations")
    evaluate.add_argument("--batch-size", type=_integer("batch size", 1), default=16)
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --plot")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")

    predict = aff_sub.add_parser("predict", help="pK of each ligand of an SDF against a protein")
    predict.add_argument("--model", required=True, metavar="DIR|NAME", help="run/model directory or gnina-default")
    predict.add_argument("--protein", required=True, metavar="P.pdb")
    predict.add_argument("--ligand", required=True, metavar="L.sdf", help="one or more molecules (SDF, or MOL2)")
    predict.add_argument("--tta", type=_integer("tta", 0), default=0,
                         help="average over the input pose and this many random rotations")
    predict.add_argument("--batch-size", type=_integer("batch size", 1), default=16)
    predict.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    return {"affinity": {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}}


# ----------------------------------------------------------------------------------------------- data

def _source(args) -> str:
    if args.data and args.csv:
        raise InputError("give --data or --csv, not both")
    source = args.csv or args.data
    if not source:
        raise InputError("no data: give --data DIR (PDBbind layout) or --csv F")
    if args.csv and not os.path.isfile(args.csv):
        raise InputError(f"--csv {args.csv}: file not found")
    if not os.path.exists(source):
        raise InputError(f"--data {source}: no such directory or file")
    if os.path.isfile(source) and not source.lower().endswith(".csv"):
        raise InputError(f"--data {source}: expected a PDBbind directory or a .csv file")
    if args.index and not os.path.isdir(source):
        raise InputError("--index applies to a PDBbind directory (--data DIR)")
    return source


def _report_skipped(skipped: list) -> None:
    for s in skipped:
        print(f"jmlsim: skipping complex {s['name']}: {s['reason']}", file=sys.stderr)


def _typer(scheme: str):
    """(protein_fn(path), ligand_fn(mol), crop radius Å) for a scheme; each fn -> coords (N, 3) Å, channels
    (N, C), radii (N,) Å. 'gnina-molgrid' is the gnina port's own typing (jmlsim.affinity.gnina_typing)."""
    import numpy as np

    from jmlsim.affinity import atom_typing

    if scheme == "gnina-molgrid":
        from jmlsim.affinity import gnina_typing as gt

        n_lig = len(atom_typing.GNINA_LIGAND_CHANNELS)

        def protein(path):
            coords, _, radii, weights = gt._receptor(path)  # weights: gnina's (P, 14) channel occupancy
            return coords, weights, radii

        def ligand(mol):
            coords, index, radii = gt.ligand_types(mol)
            return coords, np.eye(n_lig, dtype=bool)[index].reshape(len(index), n_lig), radii

        return protein, ligand, gt.crop_radius(2.0)
    from jmlsim.affinity.featurize import crop_radius

    atom_typing.get_scheme(scheme)
    return (lambda path: atom_typing.type_protein(path, scheme)), (lambda mol: atom_typing.type_ligand(mol, scheme)), \
        crop_radius()


def _make_complex(name, protein_typed, ligand_typed, radius, pK):
    """Complex with the protein atoms cropped to ``radius`` Å of the ligand centroid; ValueError if none."""
    import numpy as np

    from jmlsim.affinity.featurize import Complex

    pc, pch, pr = protein_typed
    lc, lch, lr = ligand_typed
    if len(lc) == 0:
        raise ValueError("ligand has no heavy atoms")
    near = np.linalg.norm(pc - lc.mean(axis=0), axis=1) <= radius
    if not near.any():
        raise ValueError(f"empty pocket: no protein atom within {radius:.1f} Å of the ligand centroid")
    return Complex(name=name, protein_coords=pc[near].astype(np.float32), protein_channels=pch[near],
                   protein_radii=pr[near].astype(np.float32), ligand_coords=lc.astype(np.float32),
                   ligand_channels=lch, ligand_radii=lr.astype(np.float32), pK=float(pK))


def _load_jobs(jobs, scheme: str):
    """(complexes, skipped) for (name, protein, ligand paths, pK) jobs, typed by ``_typer(scheme)`` (schemes the
    HDF5 store of jmlsim.affinity.data does not know, such as the gnina port's)."""
    from jmlsim.affinity.atom_typing import read_ligand

    protein_fn, ligand_fn, radius = _typer(scheme)
    complexes, skipped = [], []
    for name, protein, ligands, pk in jobs:
        try:
            mol, errors = None, []
            for path in ligands:
                try:
                    mol = read_ligand(path)
                    break
                except (FileNotFoundError, ValueError) as exc:
                    errors.append(str(exc))
            if mol is None:
                raise ValueError("; ".join(errors) or "no ligand file")
            complexes.append(_make_complex(name, protein_fn(protein), ligand_fn(mol), radius, pk))
        except (FileNotFoundError, ValueError) as exc:
            skipped.append({"name": name, "reason": " ".join(str(exc).split())})
    return complexes, skipped


def _load(args, scheme: str):
    """(complexes, skipped, members) for the command's data arguments; members = INDEX set -> codes."""
    from jmlsim.affinity import data

    source = _source(args)
    codes, labels, members = None, None, {}
    if os.path.isdir(source):
        if args.index:
            records = data.parse_index(args.index)
            if not records:
                raise InputError(f"--index {args.index}: no entries")
            codes = [r.code for r in records]
            labels = {r.code: r.pK for r in records}
            members = {"index": codes}
        else:
            _, members = data.read_index(source)
            if args.sets:
                missing = [s for s in args.sets if s not in members]
                if missing:
                    raise InputError(f"--data {source}: INDEX set(s) {missing} not found (have {sorted(members)})")
    elif args.sets:
        raise InputError("--sets selects PDBbind INDEX sets; a CSV is used whole")
    if args.store:
        _check_writable(args.store, "feature store", overwrite=True)
    sets = args.sets if os.path.isdir(source) and not args.index else None
    pocket = args.protein_file == "pocket"
    with warnings.catch_warnings():
        # the loader warns per skipped complex; this command reports each once, in its own words, below
        warnings.simplefilter("ignore", data.SkippedComplexWarning)
        if scheme in TYPING_SCHEMES:
            complexes, skipped = data.load_dataset(source, scheme=scheme, store=args.store, codes=codes, sets=sets,
                                                   pocket=pocket, progress=not getattr(args, "no_progress", True))
        else:  # e.g. the gnina port's own typing: no feature store
            jobs = data.pdbbind_jobs(source, codes, sets, pocket) if os.path.isdir(source) else data.csv_jobs(source)
            complexes, skipped = _load_jobs(jobs, scheme)
    if labels is not None:
        complexes = [c._replace(pK=float(labels[c.name])) if c.name in labels else c for c in complexes]
    _report_skipped(skipped)
    return complexes, skipped, members


def _labelled(complexes, what: str, skipped) -> list:
    out = [c for c in complexes if math.isfinite(float(c.pK))]
    if not out:
        raise InputError(f"{what}: no usable complex with a pK label"
                         + (f" ({len(skipped)} skipped, e.g. {skipped[0]['name']}: {skipped[0]['reason']})"
                            if skipped else ""))
    return out


def _check_fraction(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise InputError(f"{name} must be in [0, 1), got {value:g}")


def _split(args, complexes, members, source):
    """{'train', 'valid', 'test'} lists of complex names."""
    from jmlsim.affinity import splits

    names = [c.name for c in complexes]
    _check_fraction("--valid-fraction", args.valid_fraction)
    _check_fraction("--test-fraction", args.test_fraction)
    if args.split == "casf":
        if not os.path.isdir(source):
            raise InputError("--split casf needs a PDBbind directory with INDEX files (--data DIR)")
        if "core" not in members:
            raise InputError(f"--split casf: no core-set INDEX file under {source}")
        pool = {k: v for k, v in members.items() if k in ("general", "refined", "core")}
        out = splits.casf_split(pool, available=names, valid_fraction=args.valid_fraction, seed=args.seed)
    else:
        fractions = (1.0 - args.valid_fraction - args.test_fraction, args.valid_fraction, args.test_fraction)
        if fractions[0] <= 0:
            raise InputError("--valid-fraction + --test-fraction must leave something to train on")
        if args.split == "random":
            out = splits.random_split(names, fractions, seed=args.seed)
        else:
            out = splits.leak_aware_split(names, *_similarity_inputs(complexes, source, args), fractions=fractions,
                                          seed=args.seed, method="nw" if len(names) <= 500 else "kmer")
    if not out["train"]:
        raise InputError(f"--split {args.split}: the training set is empty ({len(names)} usable complexes)")
    return out


def _similarity_inputs(complexes, source, args):
    """(sequences, ligand molecules) by complex name, for the leak-aware split (PDBbind directory or CSV)."""
    from jmlsim.affinity import data, splits
    from jmlsim.affinity.atom_typing import read_ligand

    if os.path.isdir(source):
        jobs = data.pdbbind_jobs(source, [c.name for c in complexes], pocket=args.protein_file == "pocket")
    else:
        jobs = data.csv_jobs(source)
    wanted = {c.name for c in complexes}
    seqs, ligs = {}, {}
    for name, protein, ligands, _ in jobs:
        if name not in wanted:
            continue
        folder = os.path.dirname(protein)
        full = os.path.join(folder, f"{name}_protein.pdb")  # PDBbind: the full protein's sequence if present
        seqs[name] = splits.protein_sequence(full if os.path.isfile(full) else protein)
        for path in ligands:
            try:
                ligs[name] = read_ligand(path)
                break
            except (FileNotFoundError, ValueError):
                continue
    return seqs, ligs


def _md_poses(args, by_name: dict, held_out: set) -> list:
    from jmlsim.affinity import augment_md

    poses = []
    for traj, top, code in args.md_poses:
        key = code.lower() if code.lower() in by_name else code
        if key not in by_name:
            raise InputError(f"--md-poses {traj}: complex {code!r} is not among the loaded complexes")
        if key in held_out:
            raise InputError(f"--md-poses {traj}: complex {code!r} is in the validation/test set; its MD poses "
                             f"would leak into training")
        poses += augment_md.poses_from_trajectory(traj, top, by_name[key], args.md_ligand, stride=args.md_stride)
    return poses


def _prepare_out(args) -> None:
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {out} exists and is not a directory")
    if os.path.isdir(out):
        if not os.access(out, os.W_OK):
            raise InputError(f"cannot write run directory {out}: permission denied")
    else:
        _check_writable(out, "run directory", overwrite=False)  # its parent must exist and be writable
    existing = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    if args.resume:
        if not os.path.isfile(os.path.join(out, "last", "train_state.msgpack")):
            raise InputError(f"cannot resume: {os.path.join(out, 'last', 'train_state.msgpack')} is missing")
        return
    if existing and not args.overwrite:
        raise InputError(f"run directory {out} already holds a run ({existing[0]}); use --overwrite or --resume")
    for f in existing:  # --overwrite: a fresh run must not inherit an old run's best model or log
        path = os.path.join(out, f)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _finite_or_none(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


# ----------------------------------------------------------------------------------------------- commands

def cmd_train(args) -> None:
    from jmlsim.affinity import training

    if args.hyper is not None:  # unknown names fail before any data is loaded
        from jmlsim.affinity import models
        models.build(args.model, **args.hyper)
    _check_fraction("--valid-fraction", args.valid_fraction)
    _check_fraction("--test-fraction", args.test_fraction)
    if args.split != "casf" and args.valid_fraction + args.test_fraction >= 1:
        raise InputError("--valid-fraction + --test-fraction must leave something to train on")
    _prepare_out(args)
    source = _source(args)
    complexes, skipped, members = _load(args, args.scheme)
    complexes = _labelled(complexes, f"--data {source}", skipped)
    split_path = os.path.join(args.out, "split.json")
    if args.resume and os.path.isfile(split_path):
        with open(split_path) as fh:
            split = json.load(fh)  # the resumed run keeps its sets even if the data folder grew
    else:
        split = _split(args, complexes, members, source)
    by_name = {c.name: c for c in complexes}
    sets = {k: [by_name[n] for n in v if n in by_name] for k, v in split.items()}
    if not sets["train"]:
        raise InputError(f"{split_path}: none of its training complexes loaded")
    extra = _md_poses(args, by_name, set(split["valid"]) | set(split["test"])) if args.md_poses else []
    os.makedirs(args.out, exist_ok=True)
    if not (args.resume and os.path.isfile(split_path)):
        training._atomic_write(split_path, json.dumps(split, indent=1).encode())
    result = training.train(
        args.model, sets["train"], sets["valid"], args.out, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, patience=args.patience, seed=args.seed,
        augment=not args.no_augment, resume=args.resume, progress=not args.no_progress,
        max_minutes=args.max_minutes, extra_poses=extra, hyper=args.hyper, scheme=args.scheme)
    out = {"epochs": result["epochs"], "valid_pearson": _finite_or_none(result["valid_pearson"]),
           "valid_rmse": _finite_or_none(result["valid_rmse"]),
           "valid_spearman": _finite_or_none(result["valid_spearman"]),
           "valid_mae": _finite_or_none(result["valid_mae"]), "best_epoch": result["best_epoch"],
           "stopped": result["stopped"], "n_train": result["n_train"], "n_valid": result["n_valid"],
           "n_md_poses": len(extra), "split": args.split, "model": args.model, "model_dir": result["model_dir"],
           "samples_per_s": _finite_or_none(result["samples_per_s"]), "resumed_from": result["resumed_from"],
           "skipped": skipped}
    if sets["test"]:
        test = training.evaluate(result["model_dir"], sets["test"], plot=os.path.join(args.out, "test_scatter.png"),
                                 batch_size=args.batch_size)
        out.update({"n_test": test["n"], **{f"test_{k}": _finite_or_none(test[k])
                                            for k in ("pearson", "spearman", "rmse", "mae")}})
    _emit(args, out)


def cmd_evaluate(args) -> None:
    from jmlsim.affinity import training

    model = training.load_model(args.model)
    if args.plot:
        _check_writable(args.plot, "plot", overwrite=args.overwrite)
    complexes, skipped, _ = _load(args, training.model_scheme(model))
    complexes = _labelled(complexes, f"--data {args.csv or args.data}", skipped)
    res = training.evaluate(model, complexes, plot=args.plot, tta=args.tta, batch_size=args.batch_size)
    _emit(args, {"n": res["n"], **{k: _finite_or_none(res[k]) for k in ("pearson", "spearman", "rmse", "mae")},
                 "model": getattr(model, "name", str(args.model)), "skipped": skipped})


def _sdf_molecules(path: str):
    """[(name, RDKit mol or None, reason)] for every record of an SDF (or the single molecule of a MOL2)."""
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    from jmlsim.affinity.atom_typing import _strip_query_features, read_ligand

    stem = os.path.splitext(os.path.basename(path))[0]
    if not path.lower().endswith((".sdf", ".sd", ".mol")):
        try:
            return [(stem, read_ligand(path), None)]
        except (FileNotFoundError, ValueError) as exc:
            return [(stem, None, str(exc))]
    with open(path, encoding="utf-8", errors="replace") as fh:
        blocks = [b for b in fh.read().split("$$$$") if b.strip()]
    out = []
    for i, block in enumerate(blocks):
        title = block.lstrip("\r\n").splitlines()[0].strip() if block.strip() else ""
        name = title or f"{stem}#{i + 1}"
        with BlockLogs():
            mol = Chem.MolFromMolBlock(block.lstrip("\r\n"), sanitize=False, removeHs=False, strictParsing=False)
            if mol is None or mol.GetNumAtoms() == 0:
                out.append((name, None, "RDKit could not parse the molecule"))
                continue
            mol = _strip_query_features(mol)
            try:
                Chem.SanitizeMol(mol)
            except Exception as exc:  # RDKit raises several exception types (valence, kekulization)
                out.append((name, None, f"RDKit cannot sanitize the ligand: {str(exc).splitlines()[0]}"))
                continue
        out.append((name, mol, None))
    return out


def cmd_predict(args) -> None:
    from jmlsim.affinity import training

    for flag, path in (("--protein", args.protein), ("--ligand", args.ligand)):
        if not os.path.isfile(path):
            raise InputError(f"{flag} {path}: file not found")
    model = training.load_model(args.model)
    protein_fn, ligand_fn, radius = _typer(training.model_scheme(model))
    try:
        protein = protein_fn(args.protein)  # typed once, cropped per ligand
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"--protein {args.protein}: {exc}") from None
    complexes, skipped, seen = [], [], {}
    for name, mol, reason in _sdf_molecules(args.ligand):
        if name in seen:  # SDF titles repeat (poses of one ligand): keep the names apart
            seen[name] += 1
            name = f"{name}#{seen[name]}"
        else:
            seen[name] = 1
        try:
            if mol is None:
                raise ValueError(reason)
            complexes.append(_make_complex(name, protein, ligand_fn(mol), radius, float("nan")))
        except ValueError as exc:
            skipped.append({"name": name, "reason": " ".join(str(exc).split())})
    _report_skipped(skipped)
    if not complexes:
        raise InputError(f"--ligand {args.ligand}: no usable molecule"
                         + (f" ({skipped[0]['name']}: {skipped[0]['reason']})" if skipped else ""))
    predictions = training.predict(model, complexes, tta=args.tta, batch_size=args.batch_size)
    _emit(args, {"predictions": predictions, "model": getattr(model, "name", str(args.model)),
                 "skipped": skipped})
