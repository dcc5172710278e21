"""Train/valid/test splits for binding-affinity sets: random, CASF (core set held out) and leak-aware.

The leak-aware split links two complexes when their proteins are similar (sequence identity from a global
Needleman-Wunsch alignment, or a 3-mer Jaccard proxy for large sets) **or** their ligands are similar
(RDKit Morgan fingerprint radius 2, 2048 bits, Tanimoto), takes connected components as clusters, and assigns
whole clusters to train/valid/test, so no protein or ligand family spans two sets.

Identity (``method='nw'``): global alignment with match +1, mismatch -1, linear gap -1 (numpy, one row at a
time), identity = identical aligned pairs / length of the shorter sequence. O(len^2) per pair and O(n^2)
pairs: fine for a few hundred complexes; ``method='kmer'`` (Jaccard of 3-mer sets) scales to PDBbind sizes.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from jmlsim.errors import InputError

THREE_TO_ONE = {
    'ALA': 'A', 'ARG': 'R', 'ASN': 'N', 'ASP': 'D', 'CYS': 'C', 'GLN': 'Q', 'GLU': 'E', 'GLY': 'G', 'HIS': 'H',
    'ILE': 'I', 'LEU': 'L', 'LYS': 'K', 'MET': 'M', 'PHE': 'F', 'PRO': 'P', 'SER': 'S', 'THR': 'T', 'TRP': 'W',
    'TYR': 'Y', 'VAL': 'V', 'MSE': 'M', 'HID': 'H', 'HIE': 'H', 'HIP': 'H', 'HSD': 'H', 'HSE': 'H', 'HSP': 'H',
    'CYX': 'C', 'CYM': 'C', 'ASH': 'D', 'GLH': 'E', 'LYN': 'K', 'SEC': 'U', 'PYL': 'O'}


def _check_fractions(fractions) -> np.ndarray:
    f = np.asarray(fractions, float)
    if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise InputError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    return f


def random_split(codes: Sequence[str], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> Dict[str, List[str]]:
    """{'train', 'valid', 'test'}: a seeded random partition of ``codes`` in the given proportions."""
    f = _check_fractions(fractions)
    codes = list(codes)
    order = np.random.default_rng(seed).permutation(len(codes))
    n_test = int(round(f[2] * len(codes)))
    n_valid = int(round(f[1] * len(codes)))
    pick = [codes[i] for i in order]
    return {'test': pick[:n_test], 'valid': pick[n_test:n_test + n_valid], 'train': pick[n_test + n_valid:]}


def casf_split(members: Mapping[str, Sequence[str]], available: Optional[Iterable[str]] = None,
               valid_fraction: float = 0.0, seed: int = 0) -> Dict[str, List[str]]:
    """CASF protocol: test = core set; train = (general + refined) minus core (minus ``valid`` if asked).

    ``members`` is the set -> codes map of :func:`jmlsim.affinity.data.read_index`; ``available`` restricts
    to codes that actually loaded. ``valid_fraction`` of the training codes are held out at random.
    """
    if 'core' not in members:
        raise InputError("CASF split needs the core-set INDEX file (INDEX_core_data / INDEX.*.core.data)")
    avail = None if available is None else set(available)
    core = [c for c in dict.fromkeys(members['core']) if avail is None or c in avail]
    core_set = set(members['core'])
    pool = [c for s in ('general', 'refined') for c in members.get(s, ())]
    train = [c for c in dict.fromkeys(pool) if c not in core_set and (avail is None or c in avail)]
    order = np.random.default_rng(seed).permutation(len(train))
    n_valid = int(round(valid_fraction * len(train)))
    valid = sorted(train[i] for i in order[:n_valid])
    valid_set = set(valid)
    return {'train': [c for c in train if c not in valid_set], 'valid': valid, 'test': core}


# ----------------------------------------------------------------------------------------------------------
# Similarities
# ----------------------------------------------------------------------------------------------------------

def protein_sequence(pdb_path: str) -> str:
    """One-letter sequence of the amino-acid residues of a PDB file, chains concatenated in file order."""
    seq, last = [], None
    with open(pdb_path) as fh:
        for line in fh:
            if line.startswith(('ATOM', 'HETATM')):
                res = line[17:20].strip()
                key = (line[21], line[22:27])
                if key != last and res in THREE_TO_ONE:
                    seq.append(THREE_TO_ONE[res])
                last = key
    return ''.join(seq)


def nw_identity(a: str, b: str, match: float = 1.0, mismatch: float = -1.0, gap: float = -1.0) -> float:
    """Sequence identity of a global (Needleman-Wunsch, linear gap) alignment: matches / min(len(a), len(b))."""
    if not a or not b:
        return 0.0
    return nw_align(a, b, match, mismatch, gap)[1] / min(len(a), len(b))


def nw_align(a: str, b: str, match: float = 1.0, mismatch: float = -1.0, gap: float = -1.0):
    """(optimal global alignment score, identical pairs on one optimal path) of two sequences.

    Each DP row is vectorised: the in-row gap chain is a running maximum of (t_j - gap*j) + gap*j. The number of
    identical pairs is carried along the chosen path (ties broken toward the diagonal).
    """
    x = np.frombuffer(a.encode(), np.uint8)
    y = np.frombuffer(b.encode(), np.uint8)
    m = len(y)
    if len(x) == 0 or m == 0:
        return gap * (len(x) + m), 0
    j = np.arange(m + 1)
    h = gap * j.astype(float)          # scores of row i-1
    cnt = np.zeros(m + 1)              # identical pairs on the best path to each cell
    for i in range(1, len(x) + 1):
        eq = (y == x[i - 1])
        diag = h[:-1] + np.where(eq, match, mismatch)
        up = h[1:] + gap
        use_diag = diag >= up
        t = np.empty(m + 1)
        t[0] = gap * i
        t[1:] = np.where(use_diag, diag, up)
        tc = np.empty(m + 1)
        tc[0] = 0.0
        tc[1:] = np.where(use_diag, cnt[:-1] + eq, cnt[1:])
        # Horizontal gaps: best over k <= j of t_k + gap*(j-k).
        v = t - gap * j
        run = np.maximum.accumulate(v)
        src = np.maximum.accumulate(np.where(v >= run, j, 0))
        h = run + gap * j
        cnt = tc[src]
    return float(h[-1]), int(cnt[-1])


def kmer_jaccard(a: str, b: str, k: int = 3) -> float:
    """Jaccard index of the k-mer sets of two sequences (an alignment-free identity proxy)."""
    sa = {a[i:i + k] for i in range(len(a) - k + 1)}
    sb = {b[i:i + k] for i in range(len(b) - k + 1)}
    if not sa or not sb:
        return float(a == b)
    return len(sa & sb) / len(sa | sb)


def morgan_fingerprints(mols: Mapping[str, object], radius: int = 2, n_bits: int = 2048) -> Dict[str, object]:
    """Morgan bit vectors of RDKit molecules (hydrogens removed first), keyed like ``mols``."""
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = {}
    for k, m in mols.items():
        try:
            heavy = Chem.RemoveHs(m)
        except Exception:  # unusual valences: fingerprint the molecule as it is
            heavy = m
        out[k] = gen.GetFingerprint(heavy)
    return out


def _components(n: int, edges) -> np.ndarray:
    parent = np.arange(n)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in edges:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)])


def similarity_clusters(codes: Sequence[str], sequences: Mapping[str, str],
                        ligands: Optional[Mapping[str, object]] = None, identity_threshold: float = 0.4,
                        tanimoto_threshold: float = 0.6, method: str = 'nw') -> np.ndarray:
    """(n,) cluster label per code: connected components of 'protein identity >= identity_threshold or
    ligand Tanimoto >= tanimoto_threshold'. ``method``: 'nw' (alignment identity) or 'kmer' (3-mer Jaccard)."""
    from rdkit import DataStructs
    if method not in ('nw', 'kmer'):
        raise InputError(f"unknown sequence similarity method {method!r} (use 'nw' or 'kmer')")
    codes = list(codes)
    ident = nw_identity if method == 'nw' else kmer_jaccard
    seqs = [sequences.get(c, '') for c in codes]
    fps = morgan_fingerprints({c: ligands[c] for c in codes if c in ligands}) if ligands else {}
    edges = []
    for i in range(len(codes)):
        # Identical sequences need no alignment; empty ones link nothing.
        for j in range(i + 1, len(codes)):
            si, sj = seqs[i], seqs[j]
            if si and sj and (si == sj or ident(si, sj) >= identity_threshold):
                edges.append((i, j))
                continue
            fi, fj = fps.get(codes[i]), fps.get(codes[j])
            if fi is not None and fj is not None and DataStructs.TanimotoSimilarity(fi, fj) >= tanimoto_threshold:
                edges.append((i, j))
    return _components(len(codes), edges)


def leak_aware_split(codes: Sequence[str], sequences: Mapping[str, str],
                     ligands: Optional[Mapping[str, object]] = None, fractions=(0.8, 0.1, 0.1), seed: int = 0,
                     identity_threshold: float = 0.4, tanimoto_threshold: float = 0.6,
                     method: str = 'nw') -> Dict[str, List[str]]:
    """{'train', 'valid', 'test'} with whole similarity clusters per set (see :func:`similarity_clusters`).

    Clusters are shuffled (seeded) and dealt to test, then valid, until each reaches its share of complexes;
    the rest go to train. Large clusters can make the realised fractions differ from the targets.
    """
    f = _check_fractions(fractions)
    codes = list(codes)
    labels = similarity_clusters(codes, sequences, ligands, identity_threshold, tanimoto_threshold, method)
    clusters: Dict[int, List[str]] = {}
    for c, lab in zip(codes, labels):
        clusters.setdefault(int(lab), []).append(c)
    order = np.random.default_rng(seed).permutation(sorted(clusters))
    targets = {'test': f[2] * len(codes), 'valid': f[1] * len(codes)}
    out: Dict[str, List[str]] = {'train': [], 'valid': [], 'test': []}
    for lab in order:
        members = clusters[int(lab)]
        for name in ('test', 'valid'):
            if len(out[name]) + len(members) / 2 <= targets[name]:
                out[name].extend(members)
                break
        else:
            out['train'].extend(members)
    return out


def pdbbind_leak_aware_split(root: str, codes: Sequence[str], fractions=(0.8, 0.1, 0.1), seed: int = 0,
                             identity_threshold: float = 0.4, tanimoto_threshold: float = 0.6,
                             method: str = 'nw') -> Dict[str, List[str]]:
    """Leak-aware split of PDBbind codes, reading sequences (full protein file if present, else the pocket)
    and ligands from the directory. Complexes whose ligand cannot be read are clustered by protein only."""
    from jmlsim.affinity.atom_typing import read_ligand
    from jmlsim.affinity.data import _code_dirs
    dirs = _code_dirs(root)
    seqs, ligs = {}, {}
    for c in codes:
        folder = dirs.get(c, os.path.join(root, c))
        for kind in ('protein', 'pocket'):
            p = os.path.join(folder, f"{c}_{kind}.pdb")
            if os.path.isfile(p):
                seqs[c] = protein_sequence(p)
                break
        for ext in ('sdf', 'mol2'):
            try:
                ligs[c] = read_ligand(os.path.join(folder, f"{c}_ligand.{ext}"))
                break
            except (FileNotFoundError, ValueError):
                continue
    return leak_aware_split(codes, seqs, ligs, fractions, seed, identity_threshold, tanimoto_threshold, method)
