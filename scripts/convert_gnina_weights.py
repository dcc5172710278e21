"""Convert gninatorch 0.0.2's gnina CNN weights (PyTorch state dicts) to jmlsim's Flax layout, once.

torch is needed only here, in a separate environment (see scripts/make_gnina_fixtures.py)::

    /tmp/gnina-venv/bin/python scripts/convert_gnina_weights.py \\
        /tmp/gnina-venv/lib/python3.11/site-packages/gninatorch/weights jmlsim/affinity/pretrained/gnina-default

Writes one ``<member>.npz`` per member of gnina's default ensemble (McNutt et al., J. Cheminform. 2021, 13, 43:
dense, general_default2018_3, dense_3, crossdock_default2018, redock_default2018_2) with keys that are
``/``-joined Flax variable paths (``params/...`` and ``batch_stats/...``), and ``gnina.json`` naming the members
and their architectures. Layout changes, so that the network runs on (B, X, Y, Z, C) grids:

- Conv3d weight (O, I, kx, ky, kz) -> Flax kernel (kx, ky, kz, I, O) (both are cross-correlations);
- Linear weight (O, F) -> Dense kernel (F, O); for default2018 the F = 128*6*6*6 input features are flattened
  by PyTorch in (C, X, Y, Z) order, so rows are permuted to jmlsim's (X, Y, Z, C) flattening;
- BatchNorm3d weight/bias/running_mean/running_var -> scale/bias (params), mean/var (batch_stats).

Only torch.load of the state dicts that the gninatorch wheel ships is done (weights_only, no pickle code).
"""

import argparse
import json
import os

import numpy as np
import torch

MEMBERS = ("dense", "general_default2018_3", "dense_3", "crossdock_default2018", "redock_default2018_2")


def arch_of(name):
    return "dense" if name.startswith("dense") else "default2018"


def convert(state, arch):
    out = {}
    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in state.items()
          if not k.endswith("num_batches_tracked")}
    for key, value in sd.items():
        layer, kind = key.rsplit(".", 1)
        layer = layer.split(".")[-1]  # "dense_block_0.data_enc_level0_conv0" -> "data_enc_level0_conv0"
        if "batchnorm" in layer:
            if kind == "weight":
                out[f"params/{layer}/scale"] = value
            elif kind == "bias":
                out[f"params/{layer}/bias"] = value
            elif kind == "running_mean":
                out[f"batch_stats/{layer}/mean"] = value
            elif kind == "running_var":
                out[f"batch_stats/{layer}/var"] = value
            else:
                raise KeyError(key)
        elif value.ndim == 5:
            out[f"params/{layer}/kernel" if kind == "weight" else f"params/{layer}/bias"] = (
                value.transpose(2, 3, 4, 1, 0) if kind == "weight" else value)
        elif kind == "weight":  # Linear
            if arch == "default2018":
                o = value.shape[0]
                value = value.reshape(o, 128, 6, 6, 6).transpose(0, 2, 3, 4, 1).reshape(o, -1)
            out[f"params/{layer}/kernel"] = value.T.copy()
        else:
            out[f"params/{layer}/bias"] = value
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights_dir", help="gninatorch/weights folder of an installed gninatorch 0.0.2")
    ap.add_argument("out_dir")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    for name in MEMBERS:
        state = torch.load(os.path.join(args.weights_dir, f"{name}.pt"), map_location="cpu", weights_only=True)
        arrays = convert(state, arch_of(name))
        np.savez(os.path.join(args.out_dir, f"{name}.npz"), **arrays)
        print(name, arch_of(name), len(arrays), "arrays")
    meta = {"format": "jmlsim-gnina-1", "source": "gninatorch 0.0.2 (PyPI), gninatorch/weights/*.pt",
            "members": [{"name": m, "arch": arch_of(m), "file": f"{m}.npz"} for m in MEMBERS],
            "resolution_angstrom": 0.5, "dimension_angstrom": 23.5, "grid_points": 48,
            "receptor_channels": 14, "ligand_channels": 14}
    with open(os.path.join(args.out_dir, "gnina.json"), "w") as fh:
        json.dump(meta, fh, indent=1)


if __name__ == "__main__":
    main()
