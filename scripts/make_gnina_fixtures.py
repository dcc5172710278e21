"""Make the gnina reference fixtures in tests/data/gnina/ with libmolgrid + gninatorch (run ONCE, offline).

Run in a separate virtual environment, never in jmlsim's own (molgrid needs numpy < 2; jmlsim must not depend
on torch or molgrid at run time)::

    python3 -m venv /tmp/gnina-venv
    /tmp/gnina-venv/bin/pip install torch==2.13.0 "numpy<2" molgrid gninatorch==0.0.2
    /tmp/gnina-venv/bin/python scripts/make_gnina_fixtures.py tests/data/pdbbind-mini tests/data/gnina

For every complex ``XXXX`` of the PDBbind-layout folder (pocket + ligand, and as ``XXXX_protein`` the whole
protein + ligand where the folder has one), it records what gninatorch's
inference does (``gninatorch.gnina`` with ``--cnn default``: molgrid ExampleProvider with the default gnina
receptor/ligand typers and hydrogens added, GridMaker 0.5 Å / 23.5 Å, no rotation, grid centred on the ligand):

- ``atoms_XXXX.npz``: molgrid's typed atoms, ``{rec,lig}_coords`` (N, 3) Å, ``{rec,lig}_types`` (N,) channel
  index, ``{rec,lig}_radii`` (N,) Å, ``center`` (3,) Å.
- ``reference.json``: per complex, each default-ensemble member's pose score (probability of a good pose) and
  affinity (pK), the ensemble's mean pose score, affinity and affinity variance, on molgrid's grid.
- ``grid_<first>.npz``: molgrid's grid of one complex (28, 48, 48, 48), stored sparse (flat indices + float32
  values of the non-zero voxels) to keep the fixture small; the network outputs in reference.json for that
  complex were computed on exactly this grid.
"""

import argparse
import json
import os
import sys
import tempfile

import molgrid
import numpy as np
import torch
from gninatorch import gnina

MEMBERS = ("dense", "general_default2018_3", "dense_3", "crossdock_default2018", "redock_default2018_2")


def complexes(root):
    """(fixture name, receptor, ligand) paths relative to root: each pocket, then each whole protein file."""
    codes = [c for c in sorted(os.listdir(root)) if os.path.isfile(os.path.join(root, c, f"{c}_ligand.sdf"))]
    for kind, suffix in (("pocket", ""), ("protein", "_protein")):
        for code in codes:
            receptor = os.path.join(code, f"{code}_{kind}.pdb")
            if os.path.isfile(os.path.join(root, receptor)):
                yield code + suffix, receptor, os.path.join(code, f"{code}_ligand.sdf")


def coord_set(cs):
    return (cs.coords.tonumpy().astype(np.float32), cs.type_index.tonumpy().astype(np.int32),
            cs.radii.tonumpy().astype(np.float32))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pdbbind_root")
    ap.add_argument("out_dir")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    torch.set_grad_enabled(False)
    members = {m: gnina.load_gnina_model(m).eval() for m in MEMBERS}
    ensemble, _ = gnina.setup_gnina_model("default")
    gm = molgrid.GridMaker(resolution=0.5, dimension=23.5)
    ref = {"molgrid_version": getattr(molgrid, "__version__", "?"), "torch_version": torch.__version__,
           "gninatorch_version": "0.0.2", "resolution": 0.5, "dimension": 23.5, "members": list(MEMBERS),
           "complexes": {}}
    grid_saved = False
    for name, pocket, ligand in complexes(args.pdbbind_root):
        with tempfile.NamedTemporaryFile("w", suffix=".types", delete=False) as fh:
            fh.write(f"1 0.0 {pocket} {ligand}\n")
            types_file = fh.name
        ep = molgrid.ExampleProvider(data_root=args.pdbbind_root, balanced=False, shuffle=False,
                                     default_batch_size=1, iteration_scheme=molgrid.IterationScheme.SmallEpoch)
        ep.populate(types_file)
        os.unlink(types_file)
        batch = ep.next_batch(1)
        ex = batch[0]
        rec, lig = ex.coord_sets[0], ex.coord_sets[1]
        c = lig.center()
        center = np.array([c.x, c.y, c.z], np.float32)
        rc, rt, rr = coord_set(rec)
        lc, lt, lr = coord_set(lig)
        np.savez_compressed(os.path.join(args.out_dir, f"atoms_{name}.npz"), rec_coords=rc, rec_types=rt,
                            rec_radii=rr, lig_coords=lc, lig_types=lt, lig_radii=lr, center=center)
        grid = torch.zeros((1,) + tuple(gm.grid_dimensions(ex.num_types())), dtype=torch.float32)
        gm.forward(batch, grid, random_translation=0.0, random_rotation=False)
        entry = {"receptor": pocket, "ligand": ligand, "center": center.tolist(), "members": {}}
        for m, model in members.items():
            log_pose, aff = model(grid)
            entry["members"][m] = {"pose_score": float(torch.exp(log_pose[0, 1])), "affinity": float(aff[0])}
        log_pose, aff, var = ensemble(grid)
        entry["ensemble"] = {"pose_score": float(torch.exp(log_pose[0, 1])), "affinity": float(aff[0]),
                             "affinity_variance": float(var[0])}
        if not grid_saved:
            g = grid[0].numpy()
            flat = np.flatnonzero(g)
            np.savez_compressed(os.path.join(args.out_dir, f"grid_{name}.npz"), shape=np.array(g.shape),
                                index=flat.astype(np.int32), value=g.reshape(-1)[flat].astype(np.float32),
                                center=center)
            entry["grid_file"] = f"grid_{name}.npz"
            grid_saved = True
        ref["complexes"][name] = entry
        print(name, len(rt), len(lt), json.dumps(entry["ensemble"]), file=sys.stderr)
    with open(os.path.join(args.out_dir, "reference.json"), "w") as fh:
        json.dump(ref, fh, indent=1)


if __name__ == "__main__":
    main()
