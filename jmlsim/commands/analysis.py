"""``jmlsim analyze msm`` (Markov state model of existing trajectories) and ``jmlsim adaptive`` (adaptive sampling).

Both print the MSM summary: ``metastable_states`` (for peptides each with ``phi_deg``, ``psi_deg`` of its centre,
``basin`` and stationary ``probability``), ``slowest_timescale_ps``, ``timescales_ps``, ``lag_ps``; ``adaptive``
adds ``total_steps`` (MD steps summed over replicas). With ``--out DIR`` they write ``summary.json`` and figures
(free energy, implied timescales, Chapman-Kolmogorov test) there; ``adaptive`` also writes every segment as
``DIR/trajectories/eEEE_rRRR.xtc`` with ``DIR/topology.pdb``, which ``jmlsim analyze msm`` reads back.
"""

from __future__ import annotations

import json
import os

from jmlsim.cli import _check_writable, _emit, _finite, _integer
from jmlsim.errors import InputError


def add_commands(sub) -> dict:
    analyze = sub.add_parser("analyze", help="trajectory analysis (Markov state models)")
    asub = analyze.add_subparsers(dest="subcommand", required=True, parser_class=type(analyze))
    msm = asub.add_parser("msm", help="featurize, TICA, k-means, MSM, PCCA+ on mdtraj-readable trajectories")
    msm.add_argument("trajectories", nargs="*", metavar="TRAJ", help="trajectory files (any mdtraj format)")
    msm.add_argument("--top", help="topology (PDB, prmtop, ...) for formats without one (XTC, DCD)")
    _add_msm_arguments(msm)
    msm.add_argument("--frame-ps", type=_finite("frame spacing"),
                     help="ps between frames (default: from the trajectory's times)")

    adaptive = sub.add_parser("adaptive", help="adaptive sampling: epochs of batched runs respawned from "
                                               "least-visited states, then an MSM")
    adaptive.add_argument("--prmtop", required=True)
    adaptive.add_argument("--inpcrd", required=True)
    adaptive.add_argument("--implicit-solvent", choices=["obc2"], help="GBSA-OBC2 implicit solvent (default vacuum)")
    adaptive.add_argument("--replicas", type=_integer("replicas", 1), required=True)
    adaptive.add_argument("--epochs", type=_integer("epochs", 1), required=True)
    adaptive.add_argument("--steps-per-epoch", type=_integer("steps per epoch", 1), required=True)
    adaptive.add_argument("--temperature", type=_finite("temperature"), default=300.0, help="K")
    adaptive.add_argument("--timestep", type=_finite("timestep"), default=2.0, help="fs (HBonds constrained)")
    adaptive.add_argument("--friction", type=_finite("friction"), default=1.0, help="1/ps")
    adaptive.add_argument("--report-interval", type=_integer("report interval", 1), default=50,
                          help="steps between stored frames")
    adaptive.add_argument("--strategy", choices=["least-visited", "plain"], default="least-visited",
                          help="plain: no respawning (plain MD baseline)")
    adaptive.add_argument("--cluster-dmin", type=_finite("cluster distance"), default=0.5,
                          help="regular-space grid spacing in feature units (sin/cos of torsions)")
    adaptive.add_argument("--patience", type=_integer("patience", 1),
                          help="stop when no new cluster appeared for this many epochs")
    adaptive.add_argument("--stop-at", choices=["C7eq/beta", "alphaR", "alphaL"],
                          help="stop once a frame reached this basin")
    _add_msm_arguments(adaptive)
    adaptive.add_argument("--seed", type=_integer("seed", 0), default=0)
    adaptive.add_argument("--no-progress", action="store_true", help="no progress bar")
    return {"analyze": {"msm": cmd_analyze_msm}, "adaptive": cmd_adaptive}


def _add_msm_arguments(p) -> None:
    p.add_argument("--lag-ps", type=_finite("lag"), help="MSM lag time, ps (default: see the command's help)")
    p.add_argument("--clusters", type=_integer("clusters", 2), default=64, help="k-means microstates")
    p.add_argument("--states", type=_integer("metastable states", 2), default=4,
                   help="PCCA+ metastable sets (default 4: alanine dipeptide splits its left-handed region into "
                        "alpha_L and C7ax besides C7eq/beta and alpha_R)")
    p.add_argument("--out", metavar="DIR", help="directory for summary.json and figures (and trajectories)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")


def _prepare_out(out, overwrite: bool, names) -> None:
    if out is None:
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out {out} exists and is not a directory")
    os.makedirs(out, exist_ok=True)
    for name in names:
        _check_writable(os.path.join(out, name), "output", overwrite)


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)


def _figures(result, out: str, temperature_k: float) -> list:
    """Free energy, implied timescales and CK test PNGs of an MSMResult; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jmlsim.analysis import msm, plots

    written = []

    def save(fig, name):
        path = os.path.join(out, name)
        tmp = path + ".tmp.png"
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        os.replace(tmp, path)
        written.append(path)

    fig, ax = plt.subplots(figsize=(5, 4))
    if result.phi_psi is not None:
        from jmlsim.analysis.pipeline import frame_weights

        # frames reweighted to the MSM's stationary distribution (undoes the bias of adaptive respawning)
        mesh = plots.plot_ramachandran_fes(ax, result.phi_psi, temperature_k,
                                           states=result.summary["metastable_states"], weights=frame_weights(result))
    else:
        mesh = plots.plot_tica_fes(ax, result.projected, temperature_k)
    fig.colorbar(mesh, ax=ax, label="free energy (kJ/mol)")
    save(fig, "fes.png")
    lag = result.lag_frames
    lags = sorted({max(1, lag // 4), max(1, lag // 2), lag, 2 * lag, 3 * lag, 4 * lag})
    its = msm.implied_timescales(result.dtrajs, lags, n_its=min(3, result.msm.n_states - 1))
    fig, ax = plt.subplots(figsize=(5, 4))
    plots.plot_implied_timescales(ax, its, result.frame_ps)
    save(fig, "implied_timescales.png")
    try:
        ck = msm.ck_test(result.dtrajs, lag, result.pcca.n_metastable if hasattr(result.pcca, "n_metastable")
                         else result.pcca.memberships.shape[1])
        grid = plots.plot_ck_test(ck)
        save(grid.figure, "ck_test.png")
    except (InputError, ValueError, RuntimeError):
        pass  # too little data for k * lag models: the CK figure is skipped, the summary still stands
    return written


def cmd_analyze_msm(args) -> None:
    from jmlsim.analysis import featurize, pipeline

    if not args.trajectories:
        raise InputError("no trajectories given (analyze msm TRAJ... --top F)")
    _prepare_out(args.out, args.overwrite, ["summary.json"])
    trajs = featurize.load_trajectories(args.trajectories, args.top)
    frame_ps = args.frame_ps
    if frame_ps is None:
        frame_ps = float(trajs[0].timestep) if trajs[0].n_frames > 1 else None
        if frame_ps is None or not frame_ps > 0:
            raise InputError(f"cannot read the frame spacing of {args.trajectories[0]}; give --frame-ps")
    lag_ps = args.lag_ps if args.lag_ps is not None else 10 * frame_ps
    result = pipeline.analyze_trajectories(trajs, lag_ps, frame_ps, n_clusters=args.clusters,
                                           n_metastable=args.states)
    summary = dict(result.summary)
    if args.out:
        _write_json(os.path.join(args.out, "summary.json"), summary)
        if not args.no_plots:
            summary["figures"] = _figures(result, args.out, 300.0)
    _emit(args, summary)


def cmd_adaptive(args) -> None:
    import mdtraj

    from jmlsim import adaptive
    from jmlsim.io import openmm_import as omm

    if args.steps_per_epoch % args.report_interval:
        raise InputError(f"--steps-per-epoch {args.steps_per_epoch} must be a multiple of --report-interval "
                         f"{args.report_interval}")
    _prepare_out(args.out, args.overwrite, ["summary.json", "topology.pdb"])
    if args.out and os.path.isdir(os.path.join(args.out, "trajectories")) and \
            os.listdir(os.path.join(args.out, "trajectories")) and not args.overwrite:
        raise InputError(f"{os.path.join(args.out, 'trajectories')} is not empty (use --overwrite)")
    system = omm.load_amber(args.prmtop, args.inpcrd, nonbonded="nocutoff", constraints="hbonds",
                            implicit_solvent=args.implicit_solvent)
    writer = None
    if args.out:
        tdir = os.path.join(args.out, "trajectories")
        os.makedirs(tdir, exist_ok=True)
        for old in os.listdir(tdir):  # --overwrite: segments of an earlier run would mix into this one
            if old.endswith(".xtc"):
                os.remove(os.path.join(tdir, old))
        mdtraj.Trajectory(system.positions[None].astype("float32"), system.topology).save_pdb(
            os.path.join(args.out, "topology.pdb"))

        def writer(epoch, replica, positions, frame_ps):
            import numpy as np

            path = os.path.join(tdir, f"e{epoch:03d}_r{replica:03d}.xtc")
            tmp = path[:-4] + ".tmp.xtc"
            times = ((epoch - 1) * len(positions) + np.arange(1, len(positions) + 1)) * frame_ps
            mdtraj.Trajectory(positions.astype("float32"), system.topology, time=times).save_xtc(tmp)
            os.replace(tmp, path)
    run = adaptive.run_adaptive(system, args.replicas, args.epochs, args.steps_per_epoch, args.temperature,
                                timestep_ps=args.timestep / 1000.0, report_interval=args.report_interval,
                                strategy=args.strategy, cluster_dmin=args.cluster_dmin, patience=args.patience,
                                stop_at_basin=args.stop_at, seed=args.seed, friction=args.friction,
                                progress=not args.no_progress, segment_writer=writer)
    lag_ps = args.lag_ps if args.lag_ps is not None else adaptive.default_lag_ps(run)
    result = adaptive.analyze(run, lag_ps, n_clusters=args.clusters, n_metastable=args.states, seed=args.seed)
    summary = {"total_steps": int(run.total_steps), "epochs_run": run.epochs_run, "stopped": run.stopped,
               "replicas": args.replicas, "steps_per_epoch": args.steps_per_epoch,
               "temperature_k": args.temperature, "strategy": args.strategy,
               "simulated_ns": run.total_steps * args.timestep * 1e-6,
               "first_basin_total_steps": {k: int(v) for k, v in run.first_basin_total_steps.items()},
               "clusters_per_epoch": run.clusters_per_epoch, "wall_s": run.wall_s, "compile_s": run.compile_s,
               **result.summary}
    if args.out:
        summary["trajectories"] = os.path.join(args.out, "trajectories")
        _write_json(os.path.join(args.out, "summary.json"), summary)
        if not args.no_plots:
            summary["figures"] = _figures(result, args.out, args.temperature)
    _emit(args, summary)
