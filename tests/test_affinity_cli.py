"""``jmlsim affinity train|evaluate|predict`` on tests/data/pdbbind-mini: round trip, skipped complexes, MD poses,
exit status 2 on bad input. The commands run in-process (``jmlsim.cli.main``) so compiled programs are shared;
a tiny ResNet (8/16 channels) keeps each epoch short."""

import json
import math
import os
import shutil

import numpy as np
import pytest

from jmlsim.cli import main

ROOT = os.path.join(os.path.dirname(__file__), "data", "pdbbind-mini")
TINY = ["--model", "resnet", "--hyper", '{"channels": [8, 16], "groups": 4}', "--batch-size", "8", "--lr", "1e-3"]
BATCH = ["--batch-size", "8"]  # evaluate/predict: the batch shape training compiled


def _run(capsys, *argv):
    """(exit status, last stdout line parsed as JSON or None, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            pass
    return rc, result, err


def _expected_split():
    """The random split train will make (seed 0, fractions 0.6/0.2/0.2) of the complexes in loading order."""
    from jmlsim.affinity import data, splits

    return splits.random_split([job[0] for job in data.pdbbind_jobs(ROOT)], (0.6, 0.2, 0.2), seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-epoch training run on the fixtures, with 3 MD frames of a training complex as extra poses; shared
    by the tests below. Returns (run directory, JSON result, MD trajectory path)."""
    import contextlib  # capsys is function-scoped: capture this module-wide run by hand
    import io

    from jmlsim.affinity import data

    tmp = tmp_path_factory.mktemp("aff")
    code = _expected_split()["train"][0]
    cpx, _ = data.load_pdbbind(ROOT, codes=[code])
    traj = tmp / "md.h5"
    _trajectory_of(cpx[0], traj)
    out = tmp / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["affinity", "train", "--data", ROOT, "--out", str(out), *TINY, "--epochs", "2",
                   "--valid-fraction", "0.2", "--test-fraction", "0.2", "--md-poses", f"{traj}::{code}",
                   "--md-ligand", "resname LIG", "--no-progress", "--json"])
    assert rc == 0
    return out, json.loads(buf.getvalue().strip().splitlines()[-1]), traj


def test_train_evaluate_round_trip(trained, capsys, tmp_path):
    out, res, _ = trained
    for key in ("epochs", "valid_pearson", "valid_rmse", "skipped", "n_train", "n_valid", "test_rmse"):
        assert key in res, key
    assert res["epochs"] == 2 and res["skipped"] == []
    assert res["n_md_poses"] == 3 and res["n_train"] - 3 + res["n_valid"] + res["n_test"] == 6
    for f in ("best/config.json", "best/params.msgpack", "last/train_state.msgpack", "log.csv",
              "learning_curve.png", "split.json", "test_scatter.png"):
        assert os.path.getsize(out / f) > 0, f
    split = json.loads((out / "split.json").read_text())
    assert split == _expected_split() and res["n_train"] == len(split["train"]) + 3
    # evaluate on the validation complexes, selected through an INDEX file: it reproduces valid_rmse
    index = tmp_path / "INDEX_valid"
    lines = [ln for ln in open(os.path.join(ROOT, "index", "INDEX_general_PL_data.2016"))
             if ln.split() and ln.split()[0] in split["valid"]]
    index.write_text("".join(lines))
    rc, ev, err = _run(capsys, "affinity", "evaluate", "--model", out, "--data", ROOT, "--index", index,
                       "--plot", tmp_path / "scatter.png", "--json", *BATCH)
    assert rc == 0, err
    assert ev["n"] == len(split["valid"]) and ev["skipped"] == []
    np.testing.assert_allclose(ev["rmse"], res["valid_rmse"], rtol=1e-5)
    assert (tmp_path / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    # whole set: every metric present and finite (6 complexes, so the correlations are defined)
    rc, ev, err = _run(capsys, "affinity", "evaluate", "--model", out / "best", "--data", ROOT, "--json", *BATCH)
    assert rc == 0 and ev["n"] == 6
    assert all(math.isfinite(ev[k]) for k in ("pearson", "spearman", "rmse", "mae"))
    # the plot is not replaced without --overwrite
    rc, _, err = _run(capsys, "affinity", "evaluate", "--model", out, "--data", ROOT, "--index", index,
                      "--plot", tmp_path / "scatter.png")
    assert rc == 2 and "--overwrite" in err


def test_resume_and_overwrite(trained, capsys):
    out, res, traj = trained
    rc, _, err = _run(capsys, "affinity", "train", "--data", ROOT, "--out", out, *TINY, "--epochs", "2",
                      "--no-progress")
    assert rc == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    # resuming a finished 2-epoch run to 2 epochs trains nothing and keeps the recorded best
    rc, again, err = _run(capsys, "affinity", "train", "--data", ROOT, "--out", out, *TINY, "--epochs", "2",
                          "--valid-fraction", "0.2", "--test-fraction", "0.2", "--resume", "--no-progress", "--json",
                          "--md-poses", f"{traj}::{_expected_split()['train'][0]}", "--md-ligand", "resname LIG")
    assert rc == 0, err
    assert again["resumed_from"] == 2 and again["epochs"] == 2
    np.testing.assert_allclose(again["valid_rmse"], res["valid_rmse"], rtol=1e-12)


_CF5 = ("bad\n  corrupt\n\n  6  5  0  0  0  0  0  0  0  0999 V2000\n"
        + "".join(f"    0.{i}000    0.0000    0.0000 {e:<3} 0  0  0  0  0  0  0  0  0  0  0  0\n"
                  for i, e in enumerate("CFFFFF"))
        + "".join(f"  1  {j}  1  0\n" for j in range(2, 7)) + "M  END\n$$$$\n")


def _bad_copy(tmp_path):
    """pdbbind-mini with an unsanitizable ligand (4yef), a missing ligand (1nlo), a ligand 200 Å from its
    pocket (1nlp)."""
    root = tmp_path / "pdbbind"
    shutil.copytree(ROOT, root)
    (root / "4yef" / "4yef_ligand.sdf").write_text(_CF5)
    os.remove(root / "1nlo" / "1nlo_ligand.sdf")
    _shift_sdf(root / "1nlp" / "1nlp_ligand.sdf", root / "1nlp" / "1nlp_ligand.sdf", 200.0)
    return root


def _shift_sdf(src, dst, dx):
    out = []
    for ln in open(src).read().splitlines():
        parts = ln.split()
        if len(parts) >= 10 and len(ln) >= 34 and parts[3].isalpha() and "." in parts[0]:
            ln = f"{float(ln[0:10]) + dx:10.4f}" + ln[10:]
        out.append(ln)
    open(dst, "w").write("\n".join(out) + "\n")


def test_bad_complexes_are_named_and_skipped(trained, capsys, tmp_path):
    out, _, _ = trained
    root = _bad_copy(tmp_path)
    rc, ev, err = _run(capsys, "affinity", "evaluate", "--model", out, "--data", root, "--json", *BATCH)
    assert rc == 0, err
    reasons = {s["name"]: s["reason"] for s in ev["skipped"]}
    assert set(reasons) == {"4yef", "1nlo", "1nlp"} and ev["n"] == 3
    assert "sanitize" in reasons["4yef"] and "missing file" in reasons["1nlo"] and "empty pocket" in reasons["1nlp"]
    err_lines = [ln for ln in err.splitlines() if "skipping" in ln]
    assert len(err_lines) == 3 and all(any(code in ln for ln in err_lines) for code in reasons)
    # nothing usable left: exit status 2, one line
    sub = tmp_path / "only-bad"
    sub.mkdir()
    for code in ("4yef", "1nlo"):
        shutil.copytree(root / code, sub / code)
    rc, _, err = _run(capsys, "affinity", "evaluate", "--model", out, "--data", sub)
    assert rc == 2 and err.strip().splitlines()[-1].startswith("jmlsim: error:") and "no usable complex" in err


def test_predict_one_line_per_molecule(trained, capsys, tmp_path):
    out, _, _ = trained
    code = "1imx"
    lig = os.path.join(ROOT, code, f"{code}_ligand.sdf")
    block = open(lig).read().split("$$$$")[0].strip("\n")
    far = tmp_path / "far.sdf"
    _shift_sdf(lig, far, 300.0)
    far_block = open(far).read().split("$$$$")[0].strip("\n")
    bad = _CF5.strip("\n").replace("$$$$", "").strip("\n")  # five-valent carbon: RDKit cannot sanitize it
    multi = tmp_path / "multi.sdf"
    multi.write_text("\n$$$$\n".join([block, bad, block, far_block]) + "\n$$$$\n")
    rc, res, err = _run(capsys, "affinity", "predict", "--model", out, "--protein",
                        os.path.join(ROOT, code, f"{code}_pocket.pdb"), "--ligand", multi, "--json", *BATCH)
    assert rc == 0, err
    preds = res["predictions"]
    assert len(preds) == 2 and all(math.isfinite(p["pK"]) for p in preds)
    assert preds[0]["ligand"] != preds[1]["ligand"]  # same title twice: names kept apart
    np.testing.assert_allclose(preds[0]["pK"], preds[1]["pK"], rtol=1e-6)  # same molecule, same pose
    assert len(res["skipped"]) == 2 and "sanitize" in res["skipped"][0]["reason"]
    assert "empty pocket" in res["skipped"][1]["reason"]
    assert len([ln for ln in err.splitlines() if "skipping" in ln]) == 2
    # the prediction agrees with evaluate's path (pocket typing + cropping is the same)
    from jmlsim.affinity import data, training
    cpx, _ = data.load_pdbbind(ROOT, codes=[code])
    np.testing.assert_allclose(preds[0]["pK"], training.predict(str(out), cpx, batch_size=8)[0]["pK"], rtol=1e-5)
    # only bad molecules: exit 2
    only_bad = tmp_path / "bad.sdf"
    only_bad.write_text(bad + "\n$$$$\n")
    rc, _, err = _run(capsys, "affinity", "predict", "--model", out, "--protein",
                      os.path.join(ROOT, code, f"{code}_pocket.pdb"), "--ligand", only_bad)
    assert rc == 2 and "no usable molecule" in err


def _trajectory_of(complex_, path, n_frames=3, seed=0):
    """An HDF5 trajectory (jmlsim/mdtraj layout) whose atoms are the complex's, in shuffled order, plus a water,
    jittered by 0.05 Å per frame; the ligand is residue LIG."""
    import mdtraj

    from jmlsim.io.trajectory import HDF5Writer

    rng = np.random.default_rng(seed)
    top = mdtraj.Topology()
    chain = top.add_chain()
    res = top.add_residue("ALA", chain)
    n_p, n_l = len(complex_.protein_coords), len(complex_.ligand_coords)
    for _ in range(n_p):
        top.add_atom("CA", mdtraj.element.carbon, res)
    lres = top.add_residue("LIG", chain)
    for _ in range(n_l):
        top.add_atom("C", mdtraj.element.carbon, lres)
    top.add_atom("O", mdtraj.element.oxygen, top.add_residue("HOH", chain))
    order = rng.permutation(n_p)
    ref = np.concatenate([complex_.protein_coords[order], complex_.ligand_coords, [[500.0, 500.0, 500.0]]])
    writer = HDF5Writer(str(path), top)
    frames = []
    for i in range(n_frames):
        xyz = ref + (rng.normal(0, 0.05, ref.shape) if i else 0.0)
        frames.append(xyz)
        writer.write((xyz / 10.0).astype(np.float32), float(i), None)  # Å -> nm at the file border
    writer.close()
    return np.asarray(frames)


def test_md_poses_leak_refused(trained, capsys, tmp_path):
    """The fixture trained with --md-poses (3 poses counted above); poses of a held-out complex are refused."""
    _, _, traj = trained
    valid = _expected_split()["valid"][0]
    rc, _, err = _run(capsys, "affinity", "train", "--data", ROOT, "--out", tmp_path / "leak", *TINY, "--epochs",
                      "1", "--valid-fraction", "0.2", "--test-fraction", "0.2", "--md-poses", f"{traj}::{valid}",
                      "--no-progress")
    assert rc == 2 and "leak" in err
    rc, _, err = _run(capsys, "affinity", "train", "--data", ROOT, "--out", tmp_path / "none", *TINY, "--epochs",
                      "1", "--md-poses", f"{traj}::zzzz", "--no-progress")
    assert rc == 2 and "not among the loaded complexes" in err


@pytest.mark.parametrize("argv, message", [
    (["affinity", "train", "--out", "{tmp}/x"], "no data"),
    (["affinity", "train", "--data", "{tmp}/missing", "--out", "{tmp}/x"], "no such directory"),
    (["affinity", "train", "--data", ROOT, "--out", "{tmp}/x", "--model", "vgg"], "invalid choice"),
    (["affinity", "train", "--data", ROOT, "--out", "{tmp}/x", "--hyper", '{"depth": 3}'], "hyperparameter"),
    (["affinity", "train", "--data", ROOT, "--out", "{tmp}/x", "--md-poses", "traj.h5"], "TRAJ:TOP:PDBID"),
    (["affinity", "train", "--data", ROOT, "--out", "{tmp}/x", "--resume"], "cannot resume"),
    (["affinity", "train", "--data", ROOT, "--out", "{tmp}/x", "--valid-fraction", "0.6", "--test-fraction",
      "0.5"], "leave something"),
    (["affinity", "train", "--csv", "{tmp}/none.csv", "--out", "{tmp}/x"], "file not found"),
    (["affinity", "train", "--data", ROOT, "--out", "{tmp}/x", "--epochs", "0"], "at least 1"),
    (["affinity", "evaluate", "--model", "no-such-model", "--data", ROOT], "unknown affinity model"),
    (["affinity", "predict", "--model", "no-such-model", "--protein", "p.pdb", "--ligand", "l.sdf"], "not found"),
])
def test_bad_input_exit_2(argv, message, capsys, tmp_path):
    rc, _, err = _run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("jmlsim: error:") and message in lines[0], err


@pytest.mark.slow
def test_gnina_default_by_name(capsys):
    """--model gnina-default goes to the gnina port (its own typing and 48^3 grids): predict matches its scorer."""
    gnina = pytest.importorskip("jmlsim.affinity.gnina")
    if "gnina-default" not in gnina.available():
        pytest.skip("gnina-default weights not installed")
    code = "1imx"
    protein, ligand = (os.path.join(ROOT, code, f"{code}_{k}") for k in ("pocket.pdb", "ligand.sdf"))
    rc, res, err = _run(capsys, "affinity", "predict", "--model", "gnina-default", "--protein", protein,
                        "--ligand", ligand, "--json")
    assert rc == 0, err
    direct = gnina.load_gnina("gnina-default").score_files(protein, ligand)["affinity"]
    np.testing.assert_allclose(res["predictions"][0]["pK"], direct, rtol=1e-5)
    rc, ev, err = _run(capsys, "affinity", "evaluate", "--model", "gnina-default", "--data", ROOT, "--sets", "core",
                       "--json")
    assert rc == 0 and ev["n"] == 2 and math.isfinite(ev["rmse"]), err
