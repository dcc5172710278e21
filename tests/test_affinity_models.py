"""Affinity 3D-CNNs: shapes, learning a synthetic task, checkpoints/resume, metrics, pdbbind-mini, MD poses.

Tiny networks on 8^3 grids (12^3 for the learning test, marked slow) keep this file fast; the synthetic grids
carry one Gaussian blob per channel whose amplitudes determine the label, so a CNN with global pooling can
learn it.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jmlsim.affinity import models, training
from jmlsim.errors import InputError

G, C = 8, 4
TINY = {"resnet": {"channels": (8, 16), "groups": 4, "dropout": 0.0},
        "kdeep": {"width": 0.125, "dropout": 0.0}}


@dataclasses.dataclass
class Synth:
    name: str
    grid: np.ndarray
    pK: float


def synth_set(n, seed, g=G):
    rng = np.random.default_rng(seed)
    idx = np.indices((g, g, g)).transpose(1, 2, 3, 0).astype(np.float32)
    out = []
    for i in range(n):
        amp = rng.uniform(0.0, 1.0, C)
        grid = np.zeros((g, g, g, C), np.float32)
        for c in range(C):
            centre = rng.uniform(g / 4, g - g / 4, 3)
            grid[..., c] = amp[c] * np.exp(-np.sum((idx - centre) ** 2, axis=-1) / (2 * 1.5 ** 2))
        out.append(Synth(f"s{seed}_{i}", grid, float(5.0 + 3.0 * amp[0] - 2.0 * amp[2] + amp[1])))
    return out


def synth_featurizer(items, key, augment):
    grids = np.stack([c.grid for c in items]).astype(np.float32)
    if augment:  # axis flips: the label does not change
        flips = np.asarray(jax.random.bernoulli(key, 0.5, (3,)))
        for axis in np.flatnonzero(flips):
            grids = np.flip(grids, axis=1 + axis)
    return np.ascontiguousarray(grids)


def run(tmp_path, sub, model="resnet", epochs=3, n_train=13, g=G, **kw):
    opts = dict(epochs=epochs, batch_size=4, lr=3e-3, weight_decay=0.0, patience=100, seed=1, progress=False,
                featurizer=synth_featurizer, hyper=TINY[model])
    opts.update(kw)
    return training.train(model, synth_set(n_train, 0, g), synth_set(6, 1, g), str(tmp_path / sub), **opts)


@pytest.mark.parametrize("name", [pytest.param("kdeep", marks=pytest.mark.slow), "resnet"])
def test_output_shapes_and_config(name):
    # kdeep's forward pass is covered in the default run by test_evaluate_metrics_match_scipy
    m = models.build(name, **TINY[name])
    # the shapes training uses (init on one sample, apply on batches of 4), so the compiled programs are shared
    # with the tests below; 24^3 shapes: test_kdeep_paper_layers (eval_shape, no compile)
    for shape in [(4, G, G, G, C)]:
        x = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), shape), np.float32)
        params = training.init_params(m, jax.random.PRNGKey(1), x[:1])
        raw = jax.eval_shape(m.apply, params, x)
        assert raw.shape == (shape[0],) and raw.dtype == jnp.float32
        y = training.AffinityModel(m, params, {"model": name, "target_mean": 0.0, "target_std": 1.0}).predict_grids(x)
        assert y.shape == (shape[0],) and np.all(np.isfinite(y))
    cfg = json.loads(json.dumps(models.model_config(m)))
    assert models.model_from_config(cfg) == m
    with pytest.raises(InputError):
        models.build("nope")
    with pytest.raises(InputError, match="hyperparameter"):
        models.build(name, bogus=1)


def test_kdeep_paper_layers():
    """Full-width KDEEP network: conv1 7^3x96 stride 2, fire expands of SqueezeNet 1.0, pools after fire4/8."""
    m = models.build("kdeep")
    shapes = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), x),
                            jax.ShapeDtypeStruct((1, 24, 24, 24, 16), jnp.float32))["params"]
    assert shapes["conv1"]["kernel"].shape == (7, 7, 7, 16, 96)
    expands = [shapes[f"fire{i}"]["expand3"]["kernel"].shape[-1] for i in range(2, 10)]
    assert expands == [64, 64, 128, 128, 192, 192, 256, 256]
    assert shapes["out"]["kernel"].shape == (512, 1)
    inter = jax.eval_shape(lambda p, x: m.apply(p, x, capture_intermediates=True, mutable=["intermediates"]),
                           {"params": shapes}, jax.ShapeDtypeStruct((1, 24, 24, 24, 16), jnp.float32))[1]
    inter = inter["intermediates"]
    assert inter["fire4"]["__call__"][0].shape[1:4] == (12, 12, 12)
    assert inter["fire5"]["__call__"][0].shape[1:4] == (6, 6, 6)
    assert inter["fire9"]["__call__"][0].shape[1:4] == (3, 3, 3)


@pytest.mark.slow
def test_learns_synthetic_task_and_compiles_once(tmp_path):
    res = run(tmp_path, "learn", epochs=14, n_train=40, lr=5e-3, g=12)
    hist = res["history"]
    assert res["epochs"] == 14 and len(hist) == 14
    assert hist[-1]["train_rmse"] < 0.6 * hist[0]["train_rmse"], [h["train_rmse"] for h in hist]
    spread = np.std([c.pK for c in synth_set(6, 1, 12)])
    assert res["valid_rmse"] < 0.6 * spread, (res["valid_rmse"], spread)
    # 40 = 10 full batches of 4; the evaluation path is a different function, the step compiled once
    assert res["train_step_traces"] == 1
    assert res["samples_per_s"] > 0
    for f in ("log.csv", "learning_curve.png", "best/config.json", "best/params.msgpack",
              "last/train_state.msgpack"):
        assert os.path.getsize(tmp_path / "learn" / f) > 0, f


def test_padded_last_batch_compiles_once_and_mask_matters(tmp_path):
    # 13 = 3 x 4 + 1: the last batch is 1 real + 3 padded rows. The step is shared process-wide, so it has
    # compiled once in this run, or earlier (then this run adds no compile at all)
    module = models.build("resnet", **TINY["resnet"])
    step = training.train_step_for(module, 3e-3, 0.0, 10.0)  # run()'s optimizer
    before = step.traces
    res = run(tmp_path, "pad", epochs=1, n_train=13)
    assert step.traces - before == res["train_step_traces"] <= 1
    # masked rows carry no weight: a padded batch's loss equals the loss of the real row alone
    module = models.build("resnet", **TINY["resnet"])
    tx = step.tx
    data = synth_set(1, 3)
    params = training.init_params(module, jax.random.PRNGKey(0), jnp.zeros((1, G, G, G, C)))
    g1, m1 = training._padded_batch(synth_featurizer, data, jax.random.PRNGKey(0), False, 4)
    assert m1.tolist() == [1, 0, 0, 0] and not g1[1:].any()
    pred = float(module.apply(params, g1[:1])[0])
    _, _, loss = step(jax.tree_util.tree_map(jnp.copy, params), tx.init(params), g1,
                      np.array([7.0, 100, 100, 100]), m1, jax.random.PRNGKey(0))
    np.testing.assert_allclose(float(loss), (pred - 7.0) ** 2, rtol=1e-5)


def test_checkpoint_round_trip_exact(tmp_path):
    res = run(tmp_path, "ck", epochs=2, n_train=8)
    best = training.load_model(str(tmp_path / "ck"))  # run directory resolves to best/
    cfg = json.loads((tmp_path / "ck" / "best" / "config.json").read_text())
    assert cfg["epoch"] == res["best_epoch"] and cfg["model"] == "resnet"
    # the reloaded best model reproduces the validation RMSE recorded at its epoch
    ev = training.evaluate(best, synth_set(6, 1), featurizer=synth_featurizer, batch_size=4)
    np.testing.assert_allclose(ev["rmse"], res["valid_rmse"], rtol=1e-6)
    # write -> read is bit-exact
    training._write_model_dir(str(tmp_path / "copy"), best.config, best.params)
    again = training.load_model(str(tmp_path / "copy"))
    for a, b in zip(jax.tree_util.tree_leaves(best.params), jax.tree_util.tree_leaves(again.params)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    assert again.config == best.config
    grids = synth_featurizer(synth_set(4, 5), None, False)  # batch 4: the shape already compiled
    assert np.array_equal(best.predict_grids(grids), again.predict_grids(grids))


def test_resume_continues_exactly(tmp_path):
    first = run(tmp_path, "r", epochs=1, n_train=8)
    assert first["epochs"] == 1
    resumed = run(tmp_path, "r", epochs=2, n_train=8, resume=True)
    straight = run(tmp_path, "s", epochs=2, n_train=8)
    assert resumed["resumed_from"] == 1 and resumed["epochs"] == 2
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    for a, b in zip(resumed["history"], straight["history"]):
        np.testing.assert_allclose(a["train_rmse"], b["train_rmse"], rtol=1e-6)
        np.testing.assert_allclose(a["valid_rmse"], b["valid_rmse"], rtol=1e-6)
    pa = training.load_model(str(tmp_path / "r" / "last")).params
    pb = training.load_model(str(tmp_path / "s" / "last")).params
    for a, b in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    rows = (tmp_path / "r" / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,")
    # resuming a finished run does nothing more; resuming into another architecture is refused
    again = run(tmp_path, "r", epochs=2, n_train=8, resume=True)
    assert again["epochs"] == 2 and again["resumed_from"] == 2
    with pytest.raises(InputError, match="checkpoint is for"):
        run(tmp_path, "r", epochs=3, n_train=8, resume=True,
            hyper={"channels": (8, 8), "groups": 4, "dropout": 0.0})


def test_early_stopping(tmp_path):
    res = run(tmp_path, "es", epochs=30, n_train=4, patience=1, lr=0.0)  # frozen weights: epoch 2 cannot improve
    assert res["stopped"] == "early" and res["epochs"] < 30
    assert res["epochs"] == res["best_epoch"] + 1


def _predict_padded(model, grids, batch=4):
    """predict_grids in zero-padded batches of ``batch`` (one compiled shape for the whole file)."""
    out = []
    for k in range(0, len(grids), batch):
        g = grids[k:k + batch]
        pad = np.zeros((batch - len(g),) + g.shape[1:], g.dtype)
        out.append(model.predict_grids(np.concatenate([g, pad]))[:len(g)])
    return np.concatenate(out)


def test_evaluate_metrics_match_scipy(tmp_path):
    module = models.build("kdeep", **TINY["kdeep"])
    params = training.init_params(module, jax.random.PRNGKey(3), jnp.zeros((1, G, G, G, C)))
    model = training.AffinityModel(module, params, {"model": "kdeep", "target_mean": 6.0, "target_std": 2.0})
    data = synth_set(9, 2) + [Synth("unlabelled", synth_set(1, 9)[0].grid, float("nan"))]
    png = tmp_path / "scatter.png"
    out = training.evaluate(model, data, plot=str(png), featurizer=synth_featurizer, batch_size=4)
    p = _predict_padded(model, synth_featurizer(data[:9], None, False))
    y = np.array([c.pK for c in data[:9]])
    assert out["n"] == 9
    np.testing.assert_allclose(out["pearson"], stats.pearsonr(p, y)[0], rtol=1e-6)
    np.testing.assert_allclose(out["spearman"], stats.spearmanr(p, y)[0], rtol=1e-6)
    np.testing.assert_allclose(out["rmse"], np.sqrt(np.mean((p - y) ** 2)), rtol=1e-6)
    np.testing.assert_allclose(out["mae"], np.mean(np.abs(p - y)), rtol=1e-6)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # predict: names, values, and test-time augmentation averaging over flipped copies
    pred = training.predict(model, data[:5], featurizer=synth_featurizer, batch_size=4)
    assert [r["ligand"] for r in pred] == [c.name for c in data[:5]]
    np.testing.assert_allclose([r["pK"] for r in pred], p[:5], rtol=1e-6)
    tta = training.predict(model, data[:5], tta=3, featurizer=synth_featurizer, batch_size=4, seed=2)
    manual = []
    for start in (0, 4):  # predict folds (seed, batch start, rotation index) into each batch's key
        items = data[start:min(start + 4, 5)]
        keys = [jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(2), start), r) for r in range(4)]
        manual.append(np.mean([_predict_padded(model, synth_featurizer(items, k, r > 0))
                               for r, k in enumerate(keys)], axis=0))
    manual = np.concatenate(manual)
    assert not np.allclose(manual, p[:5], rtol=1e-9)  # the flips do change the predictions
    np.testing.assert_allclose([r["pK"] for r in tta], manual, rtol=1e-6)


def test_load_model_errors(tmp_path):
    with pytest.raises(InputError, match="unknown affinity model"):
        training.load_model("no-such-model")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json"):
        training.load_model(str(bad))
    (bad / "config.json").write_text(json.dumps({"format": training.FORMAT, "model": "resnet",
                                                 "hyper": {"channels": [8, 16], "groups": 4}, "in_channels": 4,
                                                 "target_mean": 0.0, "target_std": 1.0}))
    (bad / "params.msgpack").write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="params.msgpack"):
        training.load_model(str(bad))


# ----------------------------------------------------------------------------------------------- real data

def _pdbbind_mini():
    featurize = pytest.importorskip("jmlsim.affinity.featurize")
    data = pytest.importorskip("jmlsim.affinity.data")
    here = os.path.join(os.path.dirname(__file__), "data", "pdbbind-mini")
    if not os.path.isdir(here):
        pytest.skip("tests/data/pdbbind-mini not present yet")
    complexes, _ = data.load_pdbbind(here)
    complexes = [c for c in complexes if np.isfinite(c.pK)]
    if len(complexes) < 3:
        pytest.skip("pdbbind-mini has fewer than 3 labelled complexes")
    return featurize, complexes


@pytest.mark.slow  # the default-run round trip on the fixtures is tests/test_affinity_cli.py's
def test_pdbbind_mini_train_evaluate_round_trip(tmp_path):
    featurize, complexes = _pdbbind_mini()
    res = training.train("resnet", complexes[:-2], complexes[-2:], str(tmp_path / "pb"), epochs=2, batch_size=4,
                         lr=1e-3, weight_decay=1e-4, patience=5, seed=0, progress=False,
                         hyper={"channels": (8, 16), "groups": 4})
    assert res["epochs"] == 2 and res["train_step_traces"] == 1
    ev = training.evaluate(str(tmp_path / "pb"), complexes[-2:], plot=str(tmp_path / "pb.png"))
    assert ev["n"] == 2
    np.testing.assert_allclose(ev["rmse"], res["valid_rmse"], rtol=1e-5)
    pred = training.predict(str(tmp_path / "pb"), complexes[:2], tta=1)
    assert [p["ligand"] for p in pred] == [c.name for c in complexes[:2]] and all(np.isfinite(p["pK"]) for p in pred)


def _write_h5(path, topology, xyz_nm):
    from jmlsim.io.trajectory import HDF5Writer

    writer = HDF5Writer(str(path), topology)
    for i, frame in enumerate(xyz_nm):
        writer.write(frame, float(i), None)
    writer.close()


@dataclasses.dataclass
class FakeComplex:
    name: str
    protein_coords: np.ndarray
    protein_channels: np.ndarray
    protein_radii: np.ndarray
    ligand_coords: np.ndarray
    ligand_channels: np.ndarray
    ligand_radii: np.ndarray
    pK: float


def test_md_poses_from_trajectory(tmp_path):
    import mdtraj

    from jmlsim.affinity import augment_md

    rng = np.random.default_rng(0)
    prot = rng.uniform(0, 15, (12, 3))
    lig = rng.uniform(5, 10, (4, 3))
    base = FakeComplex("cplx", prot.astype(np.float32), np.eye(8, dtype=bool)[rng.integers(0, 8, 12)],
                       np.full(12, 1.7), lig.astype(np.float32), np.eye(8, dtype=bool)[[0, 1, 2, 3]],
                       np.full(4, 1.5), 7.25)
    # trajectory atom order differs from the complex's and has two extra (water) atoms
    top = mdtraj.Topology()
    chain = top.add_chain()
    order = rng.permutation(12)
    res = top.add_residue("ALA", chain)
    for _ in range(12):
        top.add_atom("CA", mdtraj.element.carbon, res)
    lres = top.add_residue("LIG", chain)
    for _ in range(4):
        top.add_atom("C1", mdtraj.element.carbon, lres)
    for _ in range(2):
        top.add_atom("O", mdtraj.element.oxygen, top.add_residue("HOH", chain))
    ref = np.concatenate([prot[order], lig[::-1], rng.uniform(30, 40, (2, 3))]) / 10.0  # nm
    frames = ref[None] + rng.normal(0, 0.01, (5, 1, 1)) * np.array([[[1.0]]]) \
        + rng.normal(0, 0.005, (5,) + ref.shape)
    frames[0] = ref + rng.normal(0, 0.002, ref.shape)  # frame 0: within tolerance of the complex
    h5 = tmp_path / "traj.h5"
    _write_h5(h5, top, frames.astype(np.float32))

    poses = augment_md.poses_from_trajectory(str(h5), None, base, "resname LIG", stride=2)
    assert [p.name for p in poses] == ["cplx_md0", "cplx_md2", "cplx_md4"]
    for pose, f in zip(poses, (0, 2, 4)):
        assert pose.pK == 7.25 and pose.protein_channels is base.protein_channels
        a = frames.astype(np.float32)[f].astype(np.float64) * 10.0
        np.testing.assert_allclose(pose.protein_coords, a[:12][np.argsort(order)], atol=1e-4)
        np.testing.assert_allclose(pose.ligand_coords, a[12:16][::-1], atol=1e-4)
    # the same through mdtraj's DCD reader with a PDB topology
    traj = mdtraj.Trajectory(frames.astype(np.float32), top)
    traj[0].save_pdb(str(tmp_path / "top.pdb"))
    traj.save_dcd(str(tmp_path / "traj.dcd"))
    dcd = augment_md.poses_from_trajectory(str(tmp_path / "traj.dcd"), str(tmp_path / "top.pdb"), base,
                                           "resname LIG", stride=2)
    np.testing.assert_allclose(dcd[1].ligand_coords, poses[1].ligand_coords, atol=2e-3)
    # a trajectory that did not start from the complex is refused
    shifted = tmp_path / "shifted.h5"
    _write_h5(shifted, top, (frames + 0.3).astype(np.float32))
    with pytest.raises(InputError, match="no trajectory atom within"):
        augment_md.poses_from_trajectory(str(shifted), None, base, "resname LIG")
    with pytest.raises(InputError, match="selects no atoms"):
        augment_md.poses_from_trajectory(str(h5), None, base, "resname XYZ")
    # extra poses go into training only
    featurize_synth = lambda items, key, augment: np.stack(  # noqa: E731
        [np.full((G, G, G, C), float(np.mean(c.ligand_coords)), np.float32) for c in items])
    res = training.train("resnet", [base], [base], str(tmp_path / "md"), epochs=1, batch_size=4, progress=False,
                         featurizer=featurize_synth, hyper=TINY["resnet"], extra_poses=poses, lr=3e-3,
                         weight_decay=0.0)  # the optimizer of run(): its compiled step is reused
    assert res["n_train"] == 4 and res["n_valid"] == 1


# ----------------------------------------------------------------------------------------------- notebook

@pytest.mark.slow
def test_notebook_executes(tmp_path):
    """notebooks/affinity.ipynb at small size: featurizes (24^3 x 16 grid), trains 1 epoch, predicts all six."""
    from notebook_runner import images, run_notebook, stream_text

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    nb = run_notebook("affinity.ipynb", f"DATA = {os.path.join(root, 'tests', 'data', 'pdbbind-mini')!r}\n"
                      "MODEL = 'resnet'\nHYPER = {'channels': [8, 16], 'groups': 4}\nEPOCHS = 1\nOUT = 'run'\n",
                      tmp_path)
    text = stream_text(nb)
    assert "grid shape (24, 24, 24, 16)" in text
    assert text.count("prediction ") == 6 and "epochs 1" in text
    assert images(nb) >= 3
    assert os.path.isfile(tmp_path / "run" / "best" / "params.msgpack")
