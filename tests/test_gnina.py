"""The gnina port: Flax CNNs vs gninatorch, JAX grids vs libmolgrid, gnina typing vs molgrid, end-to-end pK.

Fixtures in tests/data/gnina/ were made once by scripts/make_gnina_fixtures.py (libmolgrid 0.5.5 + gninatorch
0.0.2 + torch 2.13 in a separate venv) on the pdbbind-mini ligands with their pockets (``XXXX``) and whole
protein files (``XXXX_protein``); nothing here imports torch or molgrid.
"""

import json
import math
import os

import jax
import numpy as np
import pytest

from jmlsim.affinity import featurize, gnina, gnina_grid, gnina_typing
from jmlsim.errors import InputError

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "data", "gnina")
PDBBIND = os.path.join(HERE, "data", "pdbbind-mini")
REF = json.load(open(os.path.join(FIX, "reference.json")))
NAMES = sorted(REF["complexes"])


def _molgrid_grid():
    """The saved molgrid grid as (1, 48, 48, 48, 28) and its complex's reference entry."""
    name, entry = next((k, v) for k, v in REF["complexes"].items() if "grid_file" in v)
    g = np.load(os.path.join(FIX, entry["grid_file"]))
    dense = np.zeros(int(np.prod(g["shape"])), np.float32)
    dense[g["index"]] = g["value"]
    return name, entry, dense.reshape(tuple(g["shape"])).transpose(1, 2, 3, 0)[None]


@pytest.fixture(scope="module")
def model():
    return gnina.load_gnina("gnina-default")


def test_flax_network_reproduces_gninatorch_on_molgrid_grid(model):
    _, entry, grid = _molgrid_grid()
    for member, module, variables in zip(model.config["members"], model.modules, model.variables):
        pose, aff = gnina._member_apply(module, variables, grid)
        ref = entry["members"][member]
        assert abs(float(pose[0]) - ref["pose_score"]) < 1e-4, member
        assert abs(float(aff[0]) - ref["affinity"]) < 1e-4, member
    out = model.score_grids(grid)
    for key in ("pose_score", "affinity", "affinity_variance"):
        assert abs(out[key][0] - entry["ensemble"][key]) < 1e-4, key
    # The members disagree with each other, so the check above is not a constant passing by luck.
    affs = [entry["members"][m]["affinity"] for m in model.config["members"]]
    assert np.ptp(affs) > 0.1


def test_density_matches_molgrid_formula():
    r = np.float32(1.7)
    d = np.array([0.0, 0.5, 1.0 - 1e-4, 1.0 + 1e-4, 1.25, 1.5 - 1e-4, 1.5, 2.0], np.float32) * r
    v = np.asarray(gnina_grid.density(d ** 2, r))
    assert v[0] == pytest.approx(1.0)
    assert v[1] == pytest.approx(math.exp(-0.5), rel=1e-6)
    assert v[2] == pytest.approx(v[3], abs=1e-3)           # continuous at the radius
    slope_in = (v[2] - np.asarray(gnina_grid.density((0.999 * r) ** 2, r))) / (0.0009 * r)
    slope_out = (np.asarray(gnina_grid.density((1.001 * r) ** 2, r)) - v[3]) / (0.0009 * r)
    assert slope_in == pytest.approx(slope_out, rel=2e-2)  # and smooth
    assert v[5] < 1e-6 and v[6] == 0.0 and v[7] == 0.0


def test_jax_grid_reproduces_molgrid_grid_from_molgrid_atoms():
    name, entry, grid = _molgrid_grid()
    a = np.load(os.path.join(FIX, f"atoms_{name}.npz"))
    onehot = lambda t: np.eye(14, dtype=bool)[t]  # noqa: E731
    cpx = featurize.Complex(name, a["rec_coords"], onehot(a["rec_types"]), a["rec_radii"],
                            a["lig_coords"], onehot(a["lig_types"]), a["lig_radii"], float("nan"))
    mine = np.asarray(gnina_grid.complex_grid(cpx))
    assert mine.shape == grid.shape[1:]
    assert np.abs(mine - grid[0]).max() < 1e-4
    assert grid.max() > 1.0  # overlapping atoms sum (KDEEP's max would stay <= 1)


def test_rotation_keeps_total_density_of_a_buried_ligand():
    name, entry, _ = _molgrid_grid()
    a = np.load(os.path.join(FIX, f"atoms_{name}.npz"))
    onehot = lambda t: np.eye(14, dtype=bool)[t]  # noqa: E731
    empty = np.zeros((0, 3), np.float32)
    cpx = featurize.Complex(name, empty, np.zeros((0, 14), bool), np.zeros(0, np.float32), a["lig_coords"],
                            onehot(a["lig_types"]), a["lig_radii"], float("nan"))
    rot = featurize.random_rotation(jax.random.PRNGKey(3))
    g0 = np.asarray(gnina_grid.complex_grid(cpx))
    g1 = np.asarray(gnina_grid.complex_grid(cpx, rotation=rot))
    assert np.abs(g0 - g1).max() > 0.1                        # the grid did change
    assert g1.sum() == pytest.approx(g0.sum(), rel=2e-2)      # but the ligand's density is conserved


def _typing_agreement():
    from scipy.spatial import cKDTree

    total = wrong = 0
    lig_total = lig_wrong = 0
    for name in NAMES:
        a = np.load(os.path.join(FIX, f"atoms_{name}.npz"))
        e = REF["complexes"][name]
        for role, fn, path in (("rec", gnina_typing.receptor_types, e["receptor"]),
                               ("lig", gnina_typing.ligand_types, e["ligand"])):
            coords, types, radii = fn(os.path.join(PDBBIND, path))
            ref_xyz = a[role + "_coords"]
            assert len(coords) == len(ref_xyz), (name, role)
            dist, j = cKDTree(coords).query(ref_xyz)
            assert dist.max() < 1e-3, (name, role)        # the same atoms, one to one
            assert np.allclose(radii[j], a[role + "_radii"], atol=1e-5), (name, role)
            bad = int(np.sum(types[j] != a[role + "_types"]))
            total += len(j)
            wrong += bad
            if role == "lig":
                lig_total += len(j)
                lig_wrong += bad
    return total, wrong, lig_total, lig_wrong


def test_gnina_typing_agrees_with_molgrid():
    total, wrong, lig_total, lig_wrong = _typing_agreement()
    agreement = 1.0 - wrong / total
    print(f"gnina typing vs molgrid: {total - wrong}/{total} atoms agree ({agreement:.4f}); "
          f"ligands {lig_total - lig_wrong}/{lig_total}")
    assert total > 4000
    assert lig_wrong == 0
    assert agreement >= 0.99   # the bar; 4,988/4,988 measured with libmolgrid 0.5.5


def _end_to_end(model, name):
    e = REF["complexes"][name]
    cpx = gnina_typing.complex_from_files(os.path.join(PDBBIND, e["receptor"]), os.path.join(PDBBIND, e["ligand"]))
    np.testing.assert_allclose(cpx.ligand_coords.mean(axis=0), e["center"], atol=1e-4)
    out = model.score_grids(model.featurize([cpx]))
    return out, e["ensemble"]


def test_end_to_end_pk_matches_gninatorch(model):
    # 1nlo: a pocket with polar hydrogens and no CONECT records (carboxyl protons placed by z order); 10gs (the
    # grid test below, and the slow test) covers a hydrogen-free file with CONECT records.
    out, ref = _end_to_end(model, "1nlo")
    assert abs(out["affinity"][0] - ref["affinity"]) < 0.05      # the bar
    assert abs(out["affinity"][0] - ref["affinity"]) < 1e-3      # measured: < 1e-4
    assert abs(out["pose_score"][0] - ref["pose_score"]) < 1e-3


def test_end_to_end_grid_matches_molgrid_grid(model):
    """From the PDB/SDF files to the grid, jmlsim's typing + JAX density give molgrid's grid."""
    name, entry, grid = _molgrid_grid()
    cpx = gnina_typing.complex_from_files(os.path.join(PDBBIND, entry["receptor"]),
                                          os.path.join(PDBBIND, entry["ligand"]))
    mine = model.featurize([cpx])
    assert mine.shape == grid.shape
    assert np.abs(mine - grid).max() < 1e-4


@pytest.mark.slow
def test_end_to_end_pk_all_fixtures(model):
    diffs = []
    for name in NAMES:
        out, ref = _end_to_end(model, name)
        diffs.append(out["affinity"][0] - ref["affinity"])
    print("pK - gninatorch pK:", dict(zip(NAMES, np.round(diffs, 6))))
    assert np.max(np.abs(diffs)) < 1e-3


def test_prediction_interface_like_affinity_model(model):
    """training's batch prediction runs a GninaModel (predict_grids + a featurizer) unchanged."""
    from jmlsim.affinity import training

    _, entry, grid = _molgrid_grid()
    seen = []

    def featurizer(items, key, augment):
        seen.append(len(items))
        return grid

    pk = training._predict_array(model, ["complex"], batch_size=4, featurizer=featurizer)
    assert seen == [1] and pk.shape == (1,)
    assert abs(pk[0] - entry["ensemble"]["affinity"]) < 1e-4
    # The zero grids that batching pads with are skipped (NaN), not scored.
    padded = np.concatenate([grid, np.zeros_like(grid)])
    assert np.isnan(model.predict_grids(padded)[1]) and np.isfinite(model.predict_grids(padded)[0])
    assert model.name == "gnina-default" and model.typing_scheme == "gnina-molgrid"
    assert model.config["in_channels"] == 28


def test_load_errors(tmp_path):
    with pytest.raises(InputError, match="unknown gnina model"):
        gnina.load_gnina("gnina-nope")
    with pytest.raises(InputError, match="unknown member"):
        gnina.load_gnina("gnina-default", members=["dense_9"])
    one = gnina.load_gnina("gnina-default:general_default2018_3")
    assert one.config["members"] == ["general_default2018_3"] and isinstance(one.modules[0], gnina.Default2018)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="corrupt"):
        gnina._load_variables(str(bad), gnina.Default2018())
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **{"params/unit1_conv/kernel": np.zeros((3, 3, 3, 28, 32), np.float32)})
    with pytest.raises(InputError, match="do not match"):
        gnina._load_variables(str(wrong), gnina.Default2018())


def test_missing_or_bad_input_files_name_the_file(tmp_path):
    e = REF["complexes"]["10gs"]
    with pytest.raises(InputError, match="missing.sdf"):
        gnina_typing.complex_from_files(os.path.join(PDBBIND, e["receptor"]), str(tmp_path / "missing.sdf"))
    bad = tmp_path / "bad.sdf"
    bad.write_text("garbage\n\n\n  1  0  0  0  0  0  0  0  0  0999 V2000\nM  END\n$$$$\n")
    with pytest.raises(InputError, match="bad.sdf"):
        gnina_typing.complex_from_files(os.path.join(PDBBIND, e["receptor"]), str(bad))
