"""``jmlsim potential train`` and ``jmlsim potential evaluate``: neural-network potentials on QM datasets.

Datasets are rMD17 ``.npz`` files (kcal/mol, Å) or jmlsim HDF5 files (:mod:`jmlsim.io.datasets`). Errors are
reported in meV and meV/Å (the field's customary units); everything inside runs in kJ/mol and nm.
"""

from __future__ import annotations

import os
import shutil

from jmlsim.cli import _check_writable, _emit, _finite, _integer, _json_object
from jmlsim.errors import InputError

ARCHITECTURE_NAMES = ("ani", "schnet", "painn", "nequip")


def add_commands(sub) -> dict:
    pot = sub.add_parser("potential", help="train and evaluate neural-network potentials")
    pot_sub = pot.add_subparsers(dest="subcommand", required=True)

    train = pot_sub.add_parser("train", help="train a neural-network potential on energies and forces")
    train.add_argument("--train", required=True, metavar="F", help="training set (.npz rMD17 layout or .h5)")
    train.add_argument("--valid", metavar="F", help="validation set (default: --valid-fraction of --train)")
    train.add_argument("--valid-fraction", type=_finite("validation fraction"), default=0.05,
                       help="share of the training frames held out when --valid is not given (default 0.05)")
    train.add_argument("--model", required=True, choices=ARCHITECTURE_NAMES, help="architecture")
    train.add_argument("--hyper", type=_json_object("--hyper"), default=None, metavar="JSON",
                       help='architecture hyper-parameters, e.g. \'{"n_features": 32, "n_layers": 2}\'')
    train.add_argument("--out", required=True, metavar="DIR", help="output directory (model/, checkpoints, log)")
    train.add_argument("--epochs", type=_integer("epochs", 1), default=100)
    train.add_argument("--batch-size", type=_integer("batch size", 1), default=8)
    train.add_argument("--lr", type=_finite("learning rate"), default=1e-3, help="peak learning rate")
    train.add_argument("--schedule", choices=["warmup-cosine", "plateau"], default="warmup-cosine")
    train.add_argument("--energy-weight", type=_finite("energy weight", allow_zero=True), default=1.0)
    train.add_argument("--force-weight", type=_finite("force weight", allow_zero=True), default=10.0)
    train.add_argument("--ema-decay", type=_finite("EMA decay", allow_zero=True), default=0.99)
    train.add_argument("--clip", type=_finite("gradient clip", allow_zero=True), default=10.0,
                       help="global gradient-norm clip (0: none)")
    train.add_argument("--patience", type=_integer("patience", 0), default=30,
                       help="early stopping after this many epochs without improvement (0: never)")
    train.add_argument("--max-frames", type=_integer("max frames", 1),
                       help="train on at most N training frames (a seeded random subset)")
    train.add_argument("--max-minutes", type=_finite("max minutes"),
                       help="stop after the first epoch past this wall time (resumable)")
    train.add_argument("--float64", action="store_true", help="train in double precision")
    train.add_argument("--seed", type=_integer("seed", 0), default=0)
    train.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint_last.msgpack")
    train.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")

    evaluate = pot_sub.add_parser("evaluate", help="errors of a potential on a dataset")
    evaluate.add_argument("--model", required=True, metavar="DIR|NAME",
                          help="a trained model directory (DIR or DIR/model) or a pretrained name, e.g. rmd17-aspirin")
    evaluate.add_argument("--data", required=True, metavar="F", help="dataset (.npz rMD17 layout or .h5)")
    evaluate.add_argument("--batch-size", type=_integer("batch size", 1), default=32)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    return {"potential": {"train": cmd_train, "evaluate": cmd_evaluate}}


def _check_dataset_path(path: str, flag: str) -> None:
    if not os.path.isfile(path):
        raise InputError(f"{flag} {path}: no such file")


def cmd_train(args) -> None:
    if args.float64:
        import jax
        jax.config.update("jax_enable_x64", True)
    from jmlsim.io.datasets import load_dataset
    from jmlsim.potentials.training import train

    _check_dataset_path(args.train, "--train")
    if args.valid:
        _check_dataset_path(args.valid, "--valid")
    elif not 0.0 < args.valid_fraction < 1.0:
        raise InputError(f"--valid-fraction must be between 0 and 1, got {args.valid_fraction:g}")
    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {out}: exists and is not a directory")
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    if os.path.isdir(out) and os.listdir(out) and not args.resume:
        if not args.overwrite:
            raise InputError(f"output directory {out} is not empty (use --overwrite to replace it, or --resume)")
    _check_writable(os.path.join(out if os.path.isdir(out) else os.path.dirname(os.path.abspath(out)), "x"),
                    "output directory", overwrite=True)

    train_set = load_dataset(args.train)
    if args.max_frames is not None and args.max_frames < len(train_set):
        import numpy as np
        keep = np.sort(np.random.default_rng(args.seed).permutation(len(train_set))[:args.max_frames])
        train_set = train_set.subset(keep)
    if args.valid:
        valid_set = load_dataset(args.valid)
    else:
        train_set, valid_set = train_set.split(args.valid_fraction, seed=args.seed)
    if os.path.isdir(out) and args.overwrite and not args.resume:
        shutil.rmtree(out)
    result = train(args.model, train_set, valid_set, out, hyper=args.hyper, epochs=args.epochs,
                   batch_size=args.batch_size, lr=args.lr, energy_weight=args.energy_weight,
                   force_weight=args.force_weight, schedule=args.schedule, ema_decay=args.ema_decay,
                   clip=args.clip or None, patience=args.patience or None, seed=args.seed,
                   progress=not args.no_progress, resume=args.resume, max_minutes=args.max_minutes,
                   float64=args.float64)
    result["model"] = args.model
    result["train_frames"] = len(train_set)
    result["valid_frames"] = len(valid_set)
    _emit(args, result)


def cmd_evaluate(args) -> None:
    from jmlsim.potentials.training import evaluate_files

    _check_dataset_path(args.data, "--data")
    model = args.model
    # accept a training output directory as well as the model directory inside it
    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "config.json")) \
            and os.path.isfile(os.path.join(model, "model", "config.json")):
        model = os.path.join(model, "model")
    result = evaluate_files(model, args.data, batch_size=args.batch_size)
    result["model"] = args.model
    result["data"] = args.data
    _emit(args, result)
