"""Binding-affinity featurization and data: atom typing, voxel grids, PDBbind INDEX/directories/CSV, HDF5 store,
splits. Fixtures: tests/data/pdbbind-mini (ODDT's mocked PDBbind subset, BSD licence beside it)."""

import math
import os
import shutil
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmlsim.affinity import atom_typing as T
from jmlsim.affinity import data as D
from jmlsim.affinity import featurize as F
from jmlsim.affinity import splits as S
from jmlsim.errors import InputError

ROOT = os.path.join(os.path.dirname(__file__), 'data', 'pdbbind-mini')
CODES = ['10gs', '1imx', '1k9q', '1nlo', '1nlp', '4yef']
K = {name: i for i, name in enumerate(F.KDEEP_CHANNELS)}


def _pocket_atom(code, res, name):
    """(KDEEP channels (8,), chemistry index) of the first pocket atom with this residue and atom name."""
    mol, _ = T.read_protein(os.path.join(ROOT, code, f'{code}_pocket.pdb'))
    chem = T.protein_chemistry(mol)
    ch = T.kdeep_channels(chem)
    for a in mol.GetAtoms():
        info = a.GetPDBResidueInfo()
        if info.GetResidueName().strip() == res and info.GetName().strip() == name:
            return ch[a.GetIdx()], T.gnina_type_names(chem)[a.GetIdx()]
    raise AssertionError(f'{res} {name} not in {code}')


@pytest.fixture(scope='module')
def complexes():
    cpx, skipped = D.load_pdbbind(ROOT)
    assert skipped == []
    return {c.name: c for c in cpx}


# ---------------------------------------------------------------------------------------------------------
# Atom typing
# ---------------------------------------------------------------------------------------------------------

def test_protein_template_atoms():
    nz, nz_gnina = _pocket_atom('10gs', 'LYS', 'NZ')
    assert nz[K['hbond_donor']] and nz[K['positive_ionizable']] and not nz[K['negative_ionizable']]
    assert not nz[K['hydrophobic']] and nz[K['excluded_volume']]
    assert nz_gnina == 'NitrogenXSDonor'
    od1, od1_gnina = _pocket_atom('10gs', 'ASP', 'OD1')
    assert od1[K['hbond_acceptor']] and od1[K['negative_ionizable']] and not od1[K['hbond_donor']]
    assert od1_gnina == 'OxygenXSAcceptor'
    cz, cz_gnina = _pocket_atom('10gs', 'PHE', 'CZ')
    assert cz[K['aromatic']] and cz[K['hydrophobic']] and not cz[K['hbond_acceptor']]
    assert cz_gnina == 'AromaticCarbonXSHydrophobe'
    ca, _ = _pocket_atom('10gs', 'PHE', 'CA')          # bonded to N: not hydrophobic
    assert not ca[K['hydrophobic']] and not ca[K['aromatic']]
    og, og_gnina = _pocket_atom('1imx', 'SER', 'OG')
    assert og[K['hbond_donor']] and og[K['hbond_acceptor']] and og_gnina == 'OxygenXSDonorAcceptor'


def test_ligand_atoms_and_query_sdf():
    mol = T.read_ligand(os.path.join(ROOT, '10gs', '10gs_ligand.sdf'))
    chem = T.ligand_chemistry(mol)
    ch = T.kdeep_channels(chem)
    # Carboxylic acid oxygens (drawn neutral in the SDF) are acceptors and negative ionizable at pH 7.
    acid_o = [a.GetIdx() for a in mol.GetAtoms() if a.GetSymbol() == 'O'
              and a.GetNeighbors()[0].GetDegree() == 3
              and sum(n.GetSymbol() == 'O' for n in a.GetNeighbors()[0].GetNeighbors()) == 2]
    assert len(acid_o) == 4
    for i in acid_o:
        assert ch[i, K['hbond_acceptor']] and ch[i, K['negative_ionizable']], i
    amine = [a.GetIdx() for a in mol.GetAtoms() if a.GetSymbol() == 'N' and a.GetFormalCharge() == 1]
    assert len(amine) == 1 and ch[amine[0], K['positive_ionizable']] and ch[amine[0], K['hbond_donor']]
    ring_c = [a.GetIdx() for a in mol.GetAtoms() if a.GetIsAromatic() and a.GetSymbol() == 'C']
    assert len(ring_c) == 12 and ch[ring_c, K['aromatic']].all() and ch[ring_c, K['hydrophobic']].all()
    amide_c = [a.GetIdx() for a in mol.GetAtoms() if a.GetSymbol() == 'C'
               and any(n.GetSymbol() == 'N' for n in a.GetNeighbors())]
    assert not ch[amide_c, K['hydrophobic']].any()
    assert not ch[chem.atomic_num == 1].any()          # hydrogens carry no channel
    # 1k9q's SDF carries MDL query features; once stripped, the tyrosine ring is aromatic.
    mol = T.read_ligand(os.path.join(ROOT, '1k9q', '1k9q_ligand.sdf'))
    assert sum(a.GetIsAromatic() for a in mol.GetAtoms()) == 6


def test_gnina_types_small_molecules():
    from rdkit import Chem
    from rdkit.Chem import AllChem
    mol = Chem.AddHs(Chem.MolFromSmiles('Oc1ccncc1CC(=O)N'))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    types = T.smina_types(mol)
    sym = [a.GetSymbol() for a in mol.GetAtoms()]
    assert types[0] == 'OxygenXSDonorAcceptor'                      # phenol O
    assert types[1] == 'AromaticCarbonXSNonHydrophobe'              # C-OH
    assert types[2] == 'AromaticCarbonXSHydrophobe'
    assert types[4] == 'NitrogenXSAcceptor'                         # pyridine N
    assert types[9] == 'OxygenXSAcceptor' and types[10] == 'NitrogenXSDonor'   # amide O, NH2
    assert types[7] == 'AliphaticCarbonXSHydrophobe'                # CH2 between ring and carbonyl
    assert {t for t, s in zip(types, sym) if s == 'H'} == {'Hydrogen', 'PolarHydrogen'}
    scheme = T.TYPING_SCHEMES['gnina']
    assert len(scheme.protein_channel_names) == 14 and len(scheme.ligand_channel_names) == 14
    coords, ch, radii = T.type_ligand(mol, 'gnina')
    assert ch.shape == (mol.GetNumHeavyAtoms(), 14) and (ch.sum(1) == 1).all()
    assert np.isin(np.round(radii.astype(float), 2), [1.9, 1.8, 1.7]).all()


def test_metal_and_water(tmp_path):
    pdb = tmp_path / 'zn.pdb'
    pdb.write_text(
        "ATOM      1  NE2 HIS A   1       0.000   0.000   0.000  1.00  0.00           N\n"
        "HETATM    2 ZN    ZN A 101       2.100   0.000   0.000  1.00  0.00          ZN\n"
        "HETATM    3  O   HOH A 201       5.000   0.000   0.000  1.00  0.00           O\n"
        "END\n")
    coords, ch, radii = T.type_protein(str(pdb))
    assert len(coords) == 2                                    # water dropped
    assert ch[1, K['metal']] and ch[1, K['excluded_volume']] and not ch[1, K['hydrophobic']]
    assert not ch[0, K['metal']]
    _, chg, _ = T.type_protein(str(pdb), 'gnina')
    zinc = T.TYPING_SCHEMES['gnina'].protein_channel_names.index('Zinc')
    assert chg[1, zinc]
    coords_w, _, _ = T.type_protein(str(pdb), keep_waters=True)
    assert len(coords_w) == 3
    # Real pocket: 1imx's waters are dropped by default.
    path = os.path.join(ROOT, '1imx', '1imx_pocket.pdb')
    with open(path) as fh:
        n_water = sum(1 for ln in fh if ln.startswith('HETATM') and ln[17:20] == 'HOH' and ln[76:78].strip() == 'O')
    c_dry, _, _ = T.type_protein(path)
    c_wet, _, _ = T.type_protein(path, keep_waters=True)
    assert n_water > 10 and len(c_wet) - len(c_dry) == n_water


# ---------------------------------------------------------------------------------------------------------
# Voxel grids
# ---------------------------------------------------------------------------------------------------------

def test_voxelize_matches_numpy(complexes):
    cpx = complexes['1k9q']
    coords, ch, radii, mask, centroid = F.complex_arrays(cpx)
    rot = np.asarray(F.random_rotation(jax.random.PRNGKey(3)))
    ref = F.voxelize_numpy(coords, ch, radii, mask, centroid, rot)
    for block in (1, 64):
        g = F.voxelize(coords.astype(np.float64), ch, radii, mask, centroid, rot, atom_block=block)
        assert g.dtype == jnp.float32 and g.shape == (24, 24, 24, 16)
        np.testing.assert_allclose(np.asarray(g), ref, atol=2e-5)
    g = F.voxelize(coords, ch, radii, mask, centroid, rot, cutoff=4.5)
    # Neglected density beyond the window: 1 - exp(-(1.8/4.5)^12) < 2e-5 for the largest radius here.
    np.testing.assert_allclose(np.asarray(g), ref, atol=3e-5)
    assert 0.5 < ref.max() <= 1.0 and ref[..., 8:].max() > 0.99      # the ligand sits in the box


def test_grid_translation_invariance(complexes):
    cpx = complexes['1nlo']
    shift = np.array([13.7, -40.2, 7.1], np.float32)
    moved = cpx._replace(protein_coords=cpx.protein_coords + shift, ligand_coords=cpx.ligand_coords + shift)
    g0, g1 = np.asarray(F.complex_grid(cpx)), np.asarray(F.complex_grid(moved))
    assert g0.shape == (24, 24, 24, 16)
    np.testing.assert_allclose(g1, g0, atol=1e-4)
    assert g0.sum() > 100


def test_grid_rotation(complexes):
    cpx = complexes['10gs']
    g0 = np.asarray(F.complex_grid(cpx))
    rz = np.array([[0., -1., 0.], [1., 0., 0.], [0., 0., 1.]], np.float32)      # 90 degrees about z
    g1 = np.asarray(F.complex_grid(cpx, rotation=rz))
    # Atom x -> R x, so new[p] = old[R^T p]: (px, py, pz) -> (py, -px, pz), i.e. new[i, j, k] = old[j, G-1-i, k].
    n = g0.shape[0]
    i, j, k = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing='ij')
    np.testing.assert_allclose(g1, g0[j, n - 1 - i, k], atol=1e-6)
    assert not np.allclose(g1, g0, atol=1e-3)
    # A random rotation keeps the ligand's total density (the ligand stays inside the box) approximately.
    totals = []
    for seed in range(4):
        r = F.random_rotation(jax.random.PRNGKey(seed))
        totals.append(np.asarray(F.complex_grid(cpx, rotation=r))[..., 8:].sum(axis=(0, 1, 2)))
    ref = g0[..., 8:].sum(axis=(0, 1, 2))
    live = ref > 5
    rel = np.abs(np.array(totals)[:, live] / ref[live] - 1)
    assert rel.max() < 0.08, rel.max()    # measured: mean 2%, max 4.5% over 20 rotations


def test_random_rotation_and_batches(complexes):
    rots = np.asarray(jax.vmap(F.random_rotation)(jax.random.split(jax.random.PRNGKey(0), 2000)))
    np.testing.assert_allclose(np.einsum('nij,nkj->nik', rots, rots), np.broadcast_to(np.eye(3), rots.shape),
                               atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rots), 1.0, atol=1e-5)
    assert np.abs(rots.mean(axis=0)).max() < 0.05            # uniform on SO(3): E[R] = 0
    t = np.asarray(F.random_translation(jax.random.PRNGKey(1)))
    assert t.shape == (3,) and np.abs(t).max() <= 2.0
    batch = [complexes[c] for c in ('1k9q', '4yef', '10gs')]
    plain = np.asarray(F.batch_grids(batch, augment=False))
    assert plain.shape == (3, 24, 24, 24, 16) and plain.dtype == np.float32
    np.testing.assert_allclose(plain[2], np.asarray(F.complex_grid(batch[2])), atol=1e-6)
    aug = np.asarray(F.batch_grids(batch, jax.random.PRNGKey(5), augment=True))
    aug2 = np.asarray(F.batch_grids(batch, jax.random.PRNGKey(5), augment=True))
    np.testing.assert_array_equal(aug, aug2)
    assert not np.allclose(aug, plain, atol=1e-3)
    local = np.asarray(F.batch_grids(batch, jax.random.PRNGKey(5), augment=True, cutoff=4.5))
    np.testing.assert_allclose(local, aug, atol=1e-4)
    with pytest.raises(ValueError):
        F.batch_grids(batch, augment=True)


def test_featurization_speed(complexes):
    """Complexes/s after jit for the JAX voxelizer (exact and local window) vs the NumPy reference."""
    batch = [complexes[c] for c in CODES]
    rates = {}
    for label, kw in (('jax exact', {}), ('jax cutoff 4.5', {'cutoff': 4.5})):
        F.batch_grids(batch, jax.random.PRNGKey(0), augment=True, **kw).block_until_ready()
        t0 = time.perf_counter()
        F.batch_grids(batch, jax.random.PRNGKey(1), augment=True, **kw).block_until_ready()
        rates[label] = len(batch) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for c in batch[:3]:
        F.voxelize_numpy(*F.complex_arrays(c)[:4], F.complex_arrays(c)[4])
    rates['numpy'] = 3 / (time.perf_counter() - t0)
    print('featurization complexes/s:', {k: round(v, 1) for k, v in rates.items()})
    assert all(v > 0 for v in rates.values())


# ---------------------------------------------------------------------------------------------------------
# INDEX files, directories, CSV, store
# ---------------------------------------------------------------------------------------------------------

def test_index_formats_agree():
    files = {
        2007: os.path.join(ROOT, 'INDEX.2007.general.data'),
        2013: os.path.join(ROOT, 'INDEX_general_PL_data.2013'),
        2016: os.path.join(ROOT, 'index', 'INDEX_general_PL_data.2016'),
    }
    parsed = {v: {r.code: r for r in D.parse_index(p)} for v, p in files.items()}
    for v in files:
        found = D.find_index_files(ROOT, v)
        assert set(found) == {'general', 'refined', 'core'} and found['general'] == files[v]
    assert D.find_index_files(ROOT)['general'] == files[2016]              # newest by default
    shared = set.intersection(*(set(p) for p in parsed.values()))
    assert shared == set(CODES)
    for code in shared:
        assert len({parsed[v][code].pK for v in parsed}) == 1
    r = parsed[2007]['1k9q']
    assert (r.pK, r.year, r.method, r.affinity, r.ligand) == (3.15, 2001, 'NMR', 'Kd=700uM', '7-mer')
    assert math.isnan(r.resolution)
    r = parsed[2016]['4yef']
    assert (r.resolution, r.pK, r.affinity, r.ligand) == (1.72, 5.35, 'Kd=4.44uM', '4CQ')
    records, members = D.read_index(ROOT)
    assert sorted(members['core']) == ['10gs', '4yef'] and len(members['general']) == 6
    assert records['10gs'].pK == 6.40


def test_index_malformed(tmp_path):
    bad = tmp_path / 'INDEX_general_PL_data.2016'
    bad.write_text("# header\n1abc  2.00  2001  Kd=1uM\n")
    with pytest.raises(InputError, match='line 2'):
        D.parse_index(str(bad))


def _bad_set(tmp_path):
    """A PDBbind copy with two good complexes, a corrupt SDF, a missing ligand and a far-away ligand."""
    root = tmp_path / 'pdbbind'
    root.mkdir()
    for code in ('1k9q', '1imx', '4yef', '1nlo', '1nlp'):
        shutil.copytree(os.path.join(ROOT, code), root / code)
    shutil.copytree(os.path.join(ROOT, 'index'), root / 'index')
    # Corrupt: a five-valent carbon that RDKit refuses to sanitize.
    lines = (root / '4yef' / '4yef_ligand.sdf').read_text().splitlines()
    (root / '4yef' / '4yef_ligand.sdf').write_text(
        "bad\n  corrupt\n\n  6  5  0  0  0  0  0  0  0  0999 V2000\n"
        + ''.join(f"    0.{i}000    0.0000    0.0000 {e:<3} 0  0  0  0  0  0  0  0  0  0  0  0\n"
                  for i, e in enumerate('CFFFFF'))
        + ''.join(f"  1  {j}  1  0\n" for j in range(2, 7)) + "M  END\n$$$$\n")
    assert lines  # the original existed
    os.remove(root / '1nlo' / '1nlo_ligand.sdf')
    # Ligand moved 200 Å away from its pocket: nothing left after cropping.
    sdf = (root / '1nlp' / '1nlp_ligand.sdf').read_text().splitlines()
    out = []
    for ln in sdf:
        parts = ln.split()
        if len(parts) >= 10 and len(ln) >= 34 and parts[3].isalpha() and '.' in parts[0]:
            ln = f"{float(ln[0:10]) + 200:10.4f}" + ln[10:]
        out.append(ln)
    (root / '1nlp' / '1nlp_ligand.sdf').write_text('\n'.join(out) + '\n')
    return root


def test_bad_complexes_are_skipped(tmp_path):
    root = _bad_set(tmp_path)
    with pytest.warns(D.SkippedComplexWarning) as rec:
        cpx, skipped = D.load_pdbbind(str(root))
    reasons = {s['name']: s['reason'] for s in skipped}
    assert sorted(c.name for c in cpx) == ['1imx', '1k9q']
    assert set(reasons) == {'4yef', '1nlo', '1nlp', '10gs'}
    assert 'sanitize' in reasons['4yef'] and 'missing file' in reasons['1nlo']
    assert 'empty pocket' in reasons['1nlp'] and 'missing file' in reasons['10gs']   # 10gs: in INDEX only
    assert all('\n' not in r for r in reasons.values())
    assert len(rec) == 4 and all(s['name'] in str(w.message) for s, w in zip(skipped, rec))
    # The same complexes through a CSV (paths relative to the CSV).
    csv_path = root / 'set.csv'
    csv_path.write_text("protein,ligand,pK\n"
                        "1k9q/1k9q_pocket.pdb,1k9q/1k9q_ligand.sdf,3.15\n"
                        "4yef/4yef_pocket.pdb,4yef/4yef_ligand.sdf,5.35\n"
                        "1imx/1imx_pocket.pdb,1imx/1imx_ligand.sdf,\n"
                        "nope/nope.pdb,1imx/1imx_ligand.sdf,1.0\n")
    with pytest.warns(D.SkippedComplexWarning):
        cpx, skipped = D.load_csv(str(csv_path))
    assert [c.name for c in cpx] == ['1k9q_ligand', '1imx_ligand']
    assert cpx[0].pK == 3.15 and math.isnan(cpx[1].pK)
    assert [s['name'] for s in skipped] == ['1imx_ligand#5', '4yef_ligand']
    (root / 'bad.csv').write_text("protein,ligand\na.pdb,b.sdf\n")
    with pytest.raises(InputError, match="missing column 'pK'"):
        D.load_csv(str(root / 'bad.csv'))
    with pytest.raises(InputError, match='unknown typing scheme'):
        D.load_csv(str(csv_path), scheme='autodock')


def test_pocket_vs_protein_and_crop(complexes):
    full, skipped = D.load_pdbbind(ROOT, codes=['1imx'], pocket=False)
    assert skipped == [] and len(full[0].protein_coords) > len(complexes['1imx'].protein_coords)
    small, _ = D.load_pdbbind(ROOT, codes=['1imx'], pocket=False, radius=8.0)
    lc = small[0].ligand_coords.mean(0)
    assert np.linalg.norm(small[0].protein_coords - lc, axis=1).max() <= 8.0 + 1e-4
    assert len(small[0].protein_coords) < len(full[0].protein_coords)


def test_hdf5_store_round_trip(tmp_path, monkeypatch):
    root = _bad_set(tmp_path)
    store = str(tmp_path / 'features.h5')
    with pytest.warns(D.SkippedComplexWarning):
        first, skipped = D.load_dataset(str(root), store=store)
    assert os.path.exists(store) and len(first) == 2 and len(skipped) == 4
    stored, stored_skipped, meta = D.read_store(store)
    assert meta['scheme'] == 'kdeep' and meta['version'] == D.FEATURE_VERSION
    assert {s['name'] for s in stored_skipped} == {s['name'] for s in skipped}
    by_name = {c.name: c for c in stored}
    for c in first:
        for field in c._fields:
            a, b = getattr(c, field), getattr(by_name[c.name], field)
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and np.array_equal(a, b), field
            else:
                assert a == b, field
    # A matching store is reused without parsing anything.
    def boom(*a, **k):
        raise AssertionError('re-parsed a stored complex')
    monkeypatch.setattr(T, 'type_ligand', boom)
    with pytest.warns(D.SkippedComplexWarning):
        again, skipped2 = D.load_dataset(str(root), store=store)
    assert [c.name for c in again] == [c.name for c in first] and skipped2 == skipped
    monkeypatch.undo()
    # Other settings (the gnina scheme) rebuild it.
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter('always')
        gn, _ = D.load_dataset(str(root), scheme='gnina', store=store)
    assert any('rebuilding' in str(w.message) for w in rec)
    assert gn[0].protein_channels.shape[1] == 14 and D.read_store(store)[2]['scheme'] == 'gnina'


# ---------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------

def _nw_score_reference(a, b, match=1.0, mismatch=-1.0, gap=-1.0):
    h = np.zeros((len(a) + 1, len(b) + 1))
    h[:, 0] = gap * np.arange(len(a) + 1)
    h[0, :] = gap * np.arange(len(b) + 1)
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            h[i, j] = max(h[i - 1, j - 1] + (match if a[i - 1] == b[j - 1] else mismatch),
                          h[i - 1, j] + gap, h[i, j - 1] + gap)
    return h[-1, -1]


def test_alignment_identity():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = ''.join(rng.choice(list('ACDEG'), rng.integers(1, 25)))
        b = ''.join(rng.choice(list('ACDEG'), rng.integers(1, 25)))
        score, same = S.nw_align(a, b)
        assert score == _nw_score_reference(a, b)
        assert 0 <= same <= min(len(a), len(b))
    assert S.nw_identity('ACDEFGHIK', 'ACDEFGHIK') == 1.0
    assert S.nw_identity('ACDEFGHIK', 'ACDEGHIK') == 1.0            # one deletion
    assert S.nw_identity('AAAAAAAA', 'CCCCCCCC') == 0.0
    seq = S.protein_sequence(os.path.join(ROOT, '1imx', '1imx_protein.pdb'))
    assert seq.startswith('ETLCGAELVDALQFVCGDRGFYFNKPTGYG') and len(seq) == 56


def test_casf_and_random_splits():
    _, members = D.read_index(ROOT)
    sp = S.casf_split(members)
    assert sorted(sp['test']) == ['10gs', '4yef']
    assert not set(sp['train']) & set(members['core']) and sorted(sp['train']) == ['1imx', '1k9q', '1nlo', '1nlp']
    sp = S.casf_split(members, available=['1imx', '1k9q', '4yef'])
    assert sp['test'] == ['4yef'] and sorted(sp['train']) == ['1imx', '1k9q']
    r1, r2 = S.random_split(CODES, (0.5, 0.25, 0.25), seed=3), S.random_split(CODES, (0.5, 0.25, 0.25), seed=3)
    assert r1 == r2 and sorted(sum(r1.values(), [])) == sorted(CODES)
    assert all(len(v) >= 1 for v in r1.values()) and r1 != S.random_split(CODES, (0.5, 0.25, 0.25), seed=4)
    with pytest.raises(InputError):
        S.random_split(CODES, (0.5, 0.5, 0.5))


@pytest.mark.parametrize('method', ['nw', 'kmer'])
def test_leak_aware_split(method):
    seqs = {c: S.protein_sequence(os.path.join(ROOT, c, f"{c}_{'pocket' if c == '10gs' else 'protein'}.pdb"))
            for c in CODES}
    ligs = {c: T.read_ligand(os.path.join(ROOT, c, f'{c}_ligand.sdf')) for c in CODES}
    assert seqs['1nlo'] == seqs['1nlp']
    # Extra synthetic entries: a point mutant of 1imx's protein (same family) and an unrelated protein.
    mutant = seqs['1imx'][:10] + 'W' + seqs['1imx'][11:]
    seqs.update({'mut1': mutant, 'alien': 'WWWWPPPPGGGGHHHHKKKK' * 3})
    codes = CODES + ['mut1', 'alien']
    ident = S.nw_identity if method == 'nw' else S.kmer_jaccard
    for seed in range(6):
        sp = S.leak_aware_split(codes, seqs, ligs, fractions=(0.5, 0.25, 0.25), seed=seed, method=method)
        where = {c: name for name, members in sp.items() for c in members}
        assert sorted(where) == sorted(codes)
        assert where['1nlo'] == where['1nlp'] and where['1imx'] == where['mut1']
        for i, a in enumerate(codes):
            for b in codes[i + 1:]:
                if ident(seqs[a], seqs[b]) >= 0.4:
                    assert where[a] == where[b], (a, b)
    sp = S.pdbbind_leak_aware_split(ROOT, CODES, fractions=(0.5, 0.25, 0.25), seed=0, method=method)
    where = {c: name for name, members in sp.items() for c in members}
    assert where['1nlo'] == where['1nlp']
