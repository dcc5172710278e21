"""Binding-affinity pipeline speed: voxel featurization (complexes/s) and 3D-CNN training (samples/s).

What it measures, on the pdbbind-mini fixtures (tests/data/pdbbind-mini: six pockets of 300-1,300 heavy atoms,
cropped to the 27.2 Å sphere every rotated/shifted 24 Å box can reach), in one run on one machine:

* Featurization, KDEEP scheme, 24 Å cube at 1 Å, 16 channels, random rotation + translation per sample:
  - jmlsim's JAX voxelizer (``featurize.batch_grids``: jit + vmap over a batch), exact density over all grid
    points, and its local-window variant (``cutoff=4.5`` Å);
  - the plain NumPy voxelizer (``featurize.voxelize_numpy``, one atom at a time over all points) as the
    reference measured in the same run;
  - libmolgrid (``molgrid.GridMaker``, its own Gaussian density, on the same typed atoms) when it imports: it needs
    numpy < 2, so in the project environment it usually does not, and the script says so.
  Batches of ``--batch`` complexes (the fixtures repeated); compile and a warm-up call are not timed; the
  figure is the median over ``--repeats`` calls. JAX and NumPy timings alternate, so background load on a
  shared machine hits both alike.
* Training: samples/s of one jitted AdamW step (forward + backward + update, batch ``--train-batch``) on
  pre-made grids, per model: KDEEP's 3D SqueezeNet at paper width and the default 3D ResNet; plus the
  end-to-end rate when the batch is featurized on the fly (what ``jmlsim affinity train`` does).

Run (from the repository root)::

    python benchmarks/affinity.py                       # defaults: batch 16, 5 repeats, both models
    python benchmarks/affinity.py --models kdeep --train-batch 8 --repeats 3 --json

No timing is asserted; the script only reports.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, os.pardir, "tests", "data", "pdbbind-mini")


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def featurization(complexes, batch: int, repeats: int) -> dict:
    """complexes/s of the JAX voxelizer (exact, cutoff) and the NumPy reference, alternating."""
    from jmlsim.affinity import featurize as F

    items = [complexes[i % len(complexes)] for i in range(batch)]
    key = jax.random.PRNGKey(0)
    jax_fns = {
        "jax_exact": lambda: F.batch_grids(items, key, augment=True).block_until_ready(),
        "jax_cutoff_4.5": lambda: F.batch_grids(items, key, augment=True, cutoff=4.5).block_until_ready(),
    }
    rot = np.asarray(F.random_rotation(jax.random.PRNGKey(1)), np.float64)
    arrays = [F.complex_arrays(c) for c in complexes]

    def numpy_one_each():
        for coords, ch, radii, mask, centroid in arrays:
            F.voxelize_numpy(coords, ch, radii, mask, centroid, rot)

    t0 = time.perf_counter()
    for fn in jax_fns.values():
        fn()  # compile
    compile_s = time.perf_counter() - t0
    rates = {k: [] for k in [*jax_fns, "numpy"]}
    for _ in range(repeats):
        for name, fn in jax_fns.items():
            rates[name].append(batch / _median_time(fn, 1))
        rates["numpy"].append(len(arrays) / _median_time(numpy_one_each, 1))
    out = {k: statistics.median(v) for k, v in rates.items()}
    out["compile_s"] = compile_s
    out["molgrid"] = molgrid_rate(complexes, batch, repeats)
    return out


def molgrid_rate(complexes, batch, repeats):
    """complexes/s of libmolgrid's GridMaker on the same coordinates, or why it could not run."""
    try:
        import molgrid  # noqa: F401  (needs numpy < 2; not a project dependency)
    except Exception as exc:  # ImportError, or a binary built against numpy 1.x failing under numpy 2
        return f"not available ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    import molgrid
    import torch

    gmaker = molgrid.GridMaker(resolution=1.0, dimension=23.0)
    n_ch = 2 * complexes[0].protein_channels.shape[1]
    dims = gmaker.grid_dimensions(n_ch)
    out = torch.zeros((batch,) + tuple(dims), dtype=torch.float32)
    mg = []
    for c in complexes:
        xyz = np.concatenate([c.protein_coords, c.ligand_coords]).astype(np.float32)
        types = np.zeros((len(xyz), n_ch), np.float32)
        p = len(c.protein_coords)
        types[:p, :n_ch // 2] = c.protein_channels
        types[p:, n_ch // 2:] = c.ligand_channels
        radii = np.concatenate([c.protein_radii, c.ligand_radii]).astype(np.float32)
        center = tuple(float(v) for v in c.ligand_coords.mean(axis=0))
        mg.append((molgrid.CoordinateSet(xyz, types, radii, n_ch), molgrid.float3(*center)))

    def run():
        for i in range(batch):
            cs, center = mg[i % len(mg)]
            gmaker.forward(center, cs, out[i])

    run()
    return batch / _median_time(run, repeats)


def training(complexes, models, batch: int, repeats: int) -> dict:
    """samples/s of one jitted training step per model (grids pre-made), and with on-the-fly featurization."""
    from jmlsim.affinity import featurize as F
    from jmlsim.affinity import models as M
    from jmlsim.affinity import training as T

    items = [complexes[i % len(complexes)] for i in range(batch)]
    grids = np.asarray(F.batch_grids(items, jax.random.PRNGKey(0), augment=True))
    y = np.linspace(-1, 1, batch).astype(np.float32)
    mask = np.ones(batch, np.float32)
    out = {}
    for name in models:
        module = M.build(name)
        params = T.init_params(module, jax.random.PRNGKey(0), grids[:1])
        n_params = int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params)))
        step = T.TrainStep(module, T.make_optimizer(1e-4, 1e-4))
        opt = step.tx.init(params)
        t0 = time.perf_counter()
        params, opt, loss = step(params, opt, grids, y, mask, jax.random.PRNGKey(1))
        jax.block_until_ready(loss)
        compile_s = time.perf_counter() - t0
        state = {"p": params, "o": opt}

        def one(g=grids):
            state["p"], state["o"], l = step(state["p"], state["o"], g, y, mask, jax.random.PRNGKey(2))
            jax.block_until_ready(l)

        def with_features():
            g = np.asarray(F.batch_grids(items, jax.random.PRNGKey(3), augment=True))
            one(g)

        step_s = _median_time(one, repeats)
        e2e_s = _median_time(with_features, max(1, repeats // 2))
        out[name] = {"parameters": n_params, "compile_s": compile_s, "samples_per_s": batch / step_s,
                     "samples_per_s_with_featurization": batch / e2e_s, "loss_finite": bool(np.isfinite(loss))}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="complexes per featurization call")
    parser.add_argument("--train-batch", type=int, default=8, help="samples per training step")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["kdeep", "resnet"], choices=["kdeep", "resnet"])
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)

    from jmlsim.affinity import data

    complexes, skipped = data.load_pdbbind(DATA)
    atoms = [len(c.protein_coords) + len(c.ligand_coords) for c in complexes]
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "jax": jax.__version__, "complexes": len(complexes), "heavy_atoms_per_complex": atoms}
    print(f"# {info['date']}  backend {info['backend']}  {info['machine']}  jax {info['jax']}", file=sys.stderr)
    print(f"# {len(complexes)} complexes, heavy atoms after cropping: {atoms}", file=sys.stderr)

    feat = featurization(complexes, args.batch, args.repeats)
    print("featurization (complexes/s, 24 Å at 1 Å, 16 channels, rotated + shifted):")
    print(f"  jmlsim JAX exact          {feat['jax_exact']:10.2f}   ({feat['jax_exact'] / feat['numpy']:.1f}x NumPy)")
    print(f"  jmlsim JAX cutoff 4.5 Å   {feat['jax_cutoff_4.5']:10.2f}   "
          f"({feat['jax_cutoff_4.5'] / feat['numpy']:.1f}x NumPy)")
    print(f"  NumPy reference           {feat['numpy']:10.2f}")
    mg = feat["molgrid"]
    print(f"  libmolgrid                {mg:10.2f}" if isinstance(mg, float) else f"  libmolgrid                {mg}")
    result = {**info, "featurization_complexes_per_s": feat}
    if not args.skip_training:
        tr = training(complexes, args.models, args.train_batch, args.repeats)
        print(f"training (samples/s, batch {args.train_batch}, AdamW step; grids pre-made | featurized on the fly):")
        for name, r in tr.items():
            print(f"  {name:8s} {r['parameters']:>10,d} params   {r['samples_per_s']:8.2f} | "
                  f"{r['samples_per_s_with_featurization']:8.2f}   (compile {r['compile_s']:.1f} s)")
        result["training"] = tr
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
