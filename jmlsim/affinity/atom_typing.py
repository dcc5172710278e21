"""Atom typing for binding-affinity grids: KDEEP's 8 property channels and gnina/smina atom types.

Coordinates and radii are in **Ångström** (PDB/SDF units; see :mod:`jmlsim.affinity`).

Two steps. First every atom gets a small chemistry record (:class:`AtomChemistry`: element, aromatic,
hydrogen count, heavy neighbours, H-bond donor/acceptor, ionizable at pH 7). Then a typing scheme turns the
record into boolean channels and radii. Both schemes share the record, so they agree on the chemistry.

Where the chemistry comes from:

- **Ligands** (SDF/MOL2): RDKit, sanitized. Donor/acceptor atoms are RDKit's feature factory
  (``BaseFeatures.fdef``, families Donor/Acceptor); ionizable groups at pH 7 use the SMARTS in
  :data:`POSITIVE_SMARTS` / :data:`NEGATIVE_SMARTS` (aliphatic amines, amidines/guanidines, cationic N;
  carboxylic, phosphoric/phosphonic, sulfonic/sulfuric acids, tetrazoles, anionic O/S/N), plus formal charges.
  MDL query features some PDBbind SDFs carry (hydrogen-count/substitution queries) are stripped before
  sanitization. Hydrogens in the file are used for hydrogen counts and dropped from the grid.
- **Proteins** (PDB): RDKit reads the file (``proximityBonding=True``, not sanitized) for residues, elements
  and the bond graph. RDKit's PDB perception knows no protonation states or charges, so the 20 standard amino
  acids (plus HID/HIE/HIP/HSD/HSE/HSP, ASH, GLH, LYN, CYX/CYM, MSE) are typed from residue/atom-name
  templates (:data:`RESIDUE_TEMPLATES`): aromatic rings of Phe/Tyr/Trp/His, donors/acceptors by atom name,
  Arg/Lys positive, Asp/Glu and a C-terminal OXT carboxylate negative; His is neutral with both ring N
  donor+acceptor (tautomer unknown) unless named HIP/HID/HIE. Peptide N-termini are not charged (pocket files
  cut chains, so a first residue is usually not a real terminus). Atoms of other residues (cofactors, modified
  residues) get element/valence rules: N/O with hydrogens are donors, O and H-free uncharged N with < 3
  neighbours are acceptors, charges from the file, no aromaticity (PDB files carry no bond orders). Waters are
  dropped unless asked for. Hydrophobicity comes from the bond graph in both cases.

KDEEP channels (:data:`jmlsim.affinity.featurize.KDEEP_CHANNELS`), AutoDock-4-like as KDEEP used them:
hydrophobic = carbon with no N/O neighbour, and Cl/Br/I; aromatic = aromatic atoms; hbond_acceptor /
hbond_donor as above; positive/negative_ionizable at pH 7; metal = metal elements (:data:`METALS`);
excluded_volume = every heavy atom. Radii: RDKit's periodic-table van der Waals radii.

gnina scheme: smina atom types (:data:`GNINA_TYPES`, smina/libmolgrid ``GninaIndexTyper`` rules: carbon
hydrophobe unless bonded to a heteroatom (anything but C and H), N/O donor when it carries H, N acceptor per
H-bond acceptor perception, O always acceptor, Se typed as S) grouped into libmolgrid's default 14 receptor and
14 ligand channels (:data:`GNINA_RECEPTOR_CHANNELS`, :data:`GNINA_LIGAND_CHANNELS`), radii = smina's
``xs_radius``. Not reproduced exactly: OpenBabel's acceptor perception for N/S (RDKit's is used; N acceptor and
non-acceptor share a channel in both default maps, and S is never typed SulfurAcceptor, which shares the Sulfur
channel), and gnina's hydrogen addition (hydrogen counts come from templates/RDKit instead).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from jmlsim.affinity.featurize import KDEEP_CHANNELS
from jmlsim.errors import InputError

# ----------------------------------------------------------------------------------------------------------
# Chemistry record
# ----------------------------------------------------------------------------------------------------------

NONMETALS = frozenset([1, 2, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17, 18, 33, 34, 35, 36, 52, 53, 54, 85, 86])
METALS = frozenset(z for z in range(3, 104) if z not in NONMETALS)
HYDROPHOBIC_HALOGENS = frozenset([17, 35, 53])
WATER_NAMES = frozenset(['HOH', 'WAT', 'H2O', 'DOD', 'TIP', 'TIP3', 'TP3', 'SOL', 'SPC'])


@dataclasses.dataclass(frozen=True)
class AtomChemistry:
    """Per-atom chemistry of one molecule (host numpy, A atoms including hydrogens; coordinates in Å)."""
    coords: np.ndarray            # (A, 3) Å
    atomic_num: np.ndarray        # (A,) int
    aromatic: np.ndarray          # (A,) bool
    n_hydrogens: np.ndarray       # (A,) int, bonded H, explicit or implied
    bonded_to_n_or_o: np.ndarray  # (A,) bool, a heavy neighbour is N or O (KDEEP hydrophobicity)
    bonded_to_hetero: np.ndarray  # (A,) bool, a neighbour is neither C nor H (gnina hydrophobicity)
    donor: np.ndarray             # (A,) bool
    acceptor: np.ndarray          # (A,) bool
    positive: np.ndarray          # (A,) bool, positive ionizable at pH 7
    negative: np.ndarray          # (A,) bool, negative ionizable at pH 7

    @property
    def heavy(self) -> np.ndarray:
        return self.atomic_num > 1

    def subset(self, keep: np.ndarray) -> "AtomChemistry":
        return AtomChemistry(**{f.name: getattr(self, f.name)[keep] for f in dataclasses.fields(self)})

    def __len__(self) -> int:
        return len(self.atomic_num)


def _neighbour_flags(mol) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bonded_to_n_or_o, bonded_to_hetero, explicit H neighbour count) from the bond graph."""
    n = mol.GetNumAtoms()
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], int)
    no = np.zeros(n, bool)
    het = np.zeros(n, bool)
    nh = np.zeros(n, int)
    if mol.GetNumBonds():
        ij = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()], int)
        for a, b in ((ij[:, 0], ij[:, 1]), (ij[:, 1], ij[:, 0])):
            zb = z[b]
            np.logical_or.at(no, a, (zb == 7) | (zb == 8))
            np.logical_or.at(het, a, (zb != 6) & (zb != 1))
            np.add.at(nh, a, zb == 1)
    return no, het, nh


def _coords(mol) -> np.ndarray:
    if mol.GetNumConformers() == 0:
        raise ValueError("molecule has no 3D coordinates")
    return np.asarray(mol.GetConformer().GetPositions(), np.float64)


# ----------------------------------------------------------------------------------------------------------
# Ligands (RDKit, sanitized)
# ----------------------------------------------------------------------------------------------------------

POSITIVE_SMARTS = (
    # Cationic nitrogen (already protonated or quaternary), not nitro/N-oxide.
    '[#7+;!$([#7+]~[#8-]);!$([#7+]=[#8])]',
    # Basic aliphatic amines: sp3 N, not amide/sulfonamide/carbamate, aniline, enamine, hydrazine, N-O.
    '[NX3;!$(N~[!#6;!#1]);!$(N-[#6,#16,#15]=[#8,#16,#7]);!$(N-a);!$(N-C=[#6,#7]);!$(N-C#*)]',
    # Amidines and guanidines (both N of the N-C=N unit), not acylated/sulfonylated or on an aryl ring.
    '[NX3;!$(N-C=O);!$(N-S(=O)=O)]-[CX3;!$(C-[#8,#16])]=[NX2;!$(N~[#8]);!$(N-C=O);!$(N-S(=O)=O);!$(N-a)]',
    '[NX3;!$(N-C=O)]-[CX3]=[NX3+]',                     # amidinium / guanidinium drawn charged
)
NEGATIVE_SMARTS = (
    '[#8-,#16-,#7-;!$(*~[#7+])]',                       # anionic O/S/N (not nitro / N-oxide)
    '[OX1]=[CX3]-[OX2H1,OX1-]',                         # carboxylic acid / carboxylate
    '[OX1]=[PX4]-[OX2H1,OX1-]',                         # phosphate / phosphonate (P=O and P-OH)
    '[OX2H1,OX1-]-[PX4]-[OX2H1,OX1-]',
    '[OX1]=[SX4](=[OX1])-[OX2H1,OX1-]',                 # sulfonate / sulfate
    'c1nn[nH]n1', 'c1nnn[nH]1',                          # tetrazoles
)


@functools.lru_cache(maxsize=None)
def _feature_factory():
    from rdkit import RDConfig
    from rdkit.Chem import ChemicalFeatures
    return ChemicalFeatures.BuildFeatureFactory(os.path.join(RDConfig.RDDataDir, 'BaseFeatures.fdef'))


@functools.lru_cache(maxsize=None)
def _patterns(smarts: Tuple[str, ...]):
    from rdkit import Chem
    pats = tuple(Chem.MolFromSmarts(s) for s in smarts)
    assert all(p is not None for p in pats), smarts
    return pats


def _match_heteroatoms(mol, smarts: Tuple[str, ...]) -> np.ndarray:
    """Atoms (N, O, S) inside any match of any pattern; carbons of a matched group stay unmarked."""
    hit = np.zeros(mol.GetNumAtoms(), bool)
    for pat in _patterns(smarts):
        for match in mol.GetSubstructMatches(pat):
            for i in match:
                if mol.GetAtomWithIdx(i).GetAtomicNum() in (7, 8, 16):
                    hit[i] = True
    return hit


def ligand_chemistry(mol) -> AtomChemistry:
    """Chemistry record of a sanitized RDKit molecule with 3D coordinates (Å); hydrogens included if present."""
    n = mol.GetNumAtoms()
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], int)
    no, het, _ = _neighbour_flags(mol)
    donor = np.zeros(n, bool)
    acceptor = np.zeros(n, bool)
    for feat in _feature_factory().GetFeaturesForMol(mol):
        fam = feat.GetFamily()
        if fam in ('Donor', 'Acceptor'):
            target = donor if fam == 'Donor' else acceptor
            target[list(feat.GetAtomIds())] = True
    charge = np.array([a.GetFormalCharge() for a in mol.GetAtoms()], int)
    metal = np.isin(z, list(METALS))
    positive = (_match_heteroatoms(mol, POSITIVE_SMARTS) | ((charge > 0) & ~metal)) & (z > 1)
    negative = (_match_heteroatoms(mol, NEGATIVE_SMARTS) | (charge < 0)) & (z > 1)
    positive &= ~negative  # zwitterion atoms keep the sign of their own group (e.g. nitro-like cases)
    return AtomChemistry(
        coords=_coords(mol), atomic_num=z,
        aromatic=np.array([a.GetIsAromatic() for a in mol.GetAtoms()], bool),
        n_hydrogens=np.array([a.GetTotalNumHs(includeNeighbors=True) for a in mol.GetAtoms()], int),
        bonded_to_n_or_o=no, bonded_to_hetero=het, donor=donor, acceptor=acceptor,
        positive=positive, negative=negative)


def _strip_query_features(mol):
    """Replace MDL query atoms/bonds (H-count, substitution, 'aromatic' bond queries) with plain ones."""
    from rdkit import Chem
    if not any(a.HasQuery() for a in mol.GetAtoms()) and not any(b.HasQuery() for b in mol.GetBonds()):
        return mol
    rw = Chem.RWMol(mol)
    for a in mol.GetAtoms():
        if a.HasQuery():
            plain = Chem.Atom(a.GetAtomicNum())
            plain.SetFormalCharge(a.GetFormalCharge())
            plain.SetIsotope(a.GetIsotope())
            plain.SetNumRadicalElectrons(a.GetNumRadicalElectrons())
            rw.ReplaceAtom(a.GetIdx(), plain, preserveProps=True)
    for b in [b for b in mol.GetBonds() if b.HasQuery()]:
        i, j, t = b.GetBeginAtomIdx(), b.GetEndAtomIdx(), b.GetBondType()
        rw.RemoveBond(i, j)
        rw.AddBond(i, j, t)
        if t == Chem.BondType.AROMATIC:
            rw.GetBondBetweenAtoms(i, j).SetIsAromatic(True)
            rw.GetAtomWithIdx(i).SetIsAromatic(True)
            rw.GetAtomWithIdx(j).SetIsAromatic(True)
    return rw.GetMol()


def read_ligand(path: str):
    """Sanitized RDKit molecule (hydrogens kept) from an SDF/MOL (first record) or MOL2 file.

    Raises FileNotFoundError for a missing file and ValueError (reason in the message) when RDKit cannot
    parse or sanitize it.
    """
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing file {path}")
    ext = os.path.splitext(path)[1].lower()
    with BlockLogs():
        if ext in ('.sdf', '.mol', '.sd'):
            with open(path) as fh:
                block = fh.read().split('$$$$')[0]
            mol = Chem.MolFromMolBlock(block, sanitize=False, removeHs=False, strictParsing=False)
        elif ext == '.mol2':
            mol = Chem.MolFromMol2File(path, sanitize=False, removeHs=False)
        else:
            raise ValueError(f"unknown ligand format {ext!r} (expected .sdf, .mol or .mol2)")
        if mol is None or mol.GetNumAtoms() == 0:
            raise ValueError("RDKit could not parse the ligand")
        mol = _strip_query_features(mol)
        try:
            Chem.SanitizeMol(mol)
        except Exception as exc:  # RDKit raises several exception types (valence, kekulization)
            raise ValueError(f"RDKit cannot sanitize the ligand: {str(exc).splitlines()[0]}") from None
    if mol.GetNumConformers() == 0:
        raise ValueError("ligand has no coordinates")
    return mol


# ----------------------------------------------------------------------------------------------------------
# Proteins (PDB, residue templates)
# ----------------------------------------------------------------------------------------------------------

def _template(spec: str) -> Dict[str, str]:
    """'NE:d+ NH1:d+' -> {'NE': 'd+', ...}; flags: a aromatic, d donor, A acceptor, + positive, - negative."""
    out = {}
    for item in spec.split():
        name, _, flags = item.partition(':')
        out[name] = flags
    return out


_PHE_RING = 'CG:a CD1:a CD2:a CE1:a CE2:a CZ:a'
_HIS_RING = 'CG:a CD2:a CE1:a'
RESIDUE_TEMPLATES: Dict[str, Dict[str, str]] = {k: _template(v) for k, v in {
    'ALA': '', 'GLY': '', 'ILE': '', 'LEU': '', 'VAL': '', 'MET': '', 'MSE': '', 'PRO': '', 'CYS': '',
    'CYX': '', 'CYM': 'SG:A-',
    'ARG': 'NE:d+ NH1:d+ NH2:d+',
    'ASN': 'OD1:A ND2:d',
    'ASP': 'OD1:A- OD2:A-', 'ASH': 'OD1:A OD2:dA',
    'GLN': 'OE1:A NE2:d',
    'GLU': 'OE1:A- OE2:A-', 'GLH': 'OE1:A OE2:dA',
    'HIS': _HIS_RING + ' ND1:adA NE2:adA', 'HID': _HIS_RING + ' ND1:ad NE2:aA',
    'HIE': _HIS_RING + ' ND1:aA NE2:ad', 'HIP': _HIS_RING + ' ND1:ad+ NE2:ad+',
    'HSD': _HIS_RING + ' ND1:ad NE2:aA', 'HSE': _HIS_RING + ' ND1:aA NE2:ad',
    'HSP': _HIS_RING + ' ND1:ad+ NE2:ad+',
    'LYS': 'NZ:d+', 'LYN': 'NZ:dA',
    'PHE': _PHE_RING,
    'SER': 'OG:dA', 'THR': 'OG1:dA',
    'TRP': 'CG:a CD1:a CD2:a NE1:ad CE2:a CE3:a CZ2:a CZ3:a CH2:a',
    'TYR': _PHE_RING + ' OH:dA',
}.items()}
_BACKBONE = {'N': 'd', 'CA': '', 'C': '', 'O': 'A', 'OXT': 'A-'}


def read_protein(path: str, keep_waters: bool = False):
    """RDKit molecule of a PDB file (proximity bonds, unsanitized) and the atoms to keep (bool mask).

    Raises FileNotFoundError / ValueError like :func:`read_ligand`.
    """
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing file {path}")
    with BlockLogs():
        mol = Chem.MolFromPDBFile(path, sanitize=False, removeHs=False, proximityBonding=True)
    if mol is None or mol.GetNumAtoms() == 0:
        raise ValueError("RDKit could not parse the protein PDB")
    mol.UpdatePropertyCache(strict=False)
    keep = np.ones(mol.GetNumAtoms(), bool)
    if not keep_waters:
        for a in mol.GetAtoms():
            info = a.GetPDBResidueInfo()
            if info is not None and info.GetResidueName().strip() in WATER_NAMES:
                keep[a.GetIdx()] = False
    return mol, keep


def protein_chemistry(mol) -> AtomChemistry:
    """Chemistry record of a PDB-derived RDKit molecule (see the module docstring for the rules)."""
    n = mol.GetNumAtoms()
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], int)
    no, het, nh_explicit = _neighbour_flags(mol)
    aromatic = np.zeros(n, bool)
    donor = np.zeros(n, bool)
    acceptor = np.zeros(n, bool)
    pos = np.zeros(n, bool)
    neg = np.zeros(n, bool)
    nh = nh_explicit.copy()
    # Residues that carry an OXT: their O is the other carboxylate oxygen.
    cterm = set()
    for a in mol.GetAtoms():
        info = a.GetPDBResidueInfo()
        if info is not None and info.GetName().strip() == 'OXT':
            cterm.add((info.GetChainId(), info.GetResidueNumber(), info.GetInsertionCode()))
    for a in mol.GetAtoms():
        i = a.GetIdx()
        if z[i] <= 1:
            continue
        info = a.GetPDBResidueInfo()
        res = info.GetResidueName().strip() if info is not None else ''
        name = info.GetName().strip() if info is not None else ''
        tmpl = RESIDUE_TEMPLATES.get(res)
        flags = None
        if tmpl is not None:
            flags = tmpl.get(name, _BACKBONE.get(name))
            if res == 'PRO' and name == 'N':
                flags = ''
            if name == 'O' and (info.GetChainId(), info.GetResidueNumber(), info.GetInsertionCode()) in cterm:
                flags = 'A-'
            if flags is None and name.startswith(('CB', 'CG', 'CD', 'CE', 'CZ', 'CH')) and z[i] == 6:
                flags = ''  # an unlisted side-chain carbon is plain
        if flags is not None:
            aromatic[i] = 'a' in flags
            donor[i] = 'd' in flags
            acceptor[i] = 'A' in flags
            pos[i] = '+' in flags
            neg[i] = '-' in flags
            if z[i] in (7, 8, 16):
                nh[i] = max(nh_explicit[i], 1 if 'd' in flags else 0)
        else:  # non-standard residue or atom: element and valence rules
            h = nh_explicit[i] + a.GetNumImplicitHs()
            nh[i] = h
            q = a.GetFormalCharge()
            donor[i] = z[i] in (7, 8) and h > 0
            acceptor[i] = z[i] == 8 or (z[i] == 7 and h == 0 and q <= 0 and a.GetDegree() < 3)
            pos[i] = q > 0 and z[i] not in METALS
            neg[i] = q < 0
            aromatic[i] = a.GetIsAromatic()
    return AtomChemistry(coords=_coords(mol), atomic_num=z, aromatic=aromatic, n_hydrogens=nh,
                         bonded_to_n_or_o=no, bonded_to_hetero=het, donor=donor, acceptor=acceptor,
                         positive=pos, negative=neg)


# ----------------------------------------------------------------------------------------------------------
# Schemes
# ----------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _vdw_radius(z: int) -> float:
    from rdkit import Chem
    return float(Chem.GetPeriodicTable().GetRvdw(int(z)))


def kdeep_channels(chem: AtomChemistry) -> np.ndarray:
    """(A, 8) bool KDEEP channels in :data:`KDEEP_CHANNELS` order (hydrogen rows are all False)."""
    z = chem.atomic_num
    heavy = z > 1
    hydrophobic = ((z == 6) & ~chem.bonded_to_n_or_o) | np.isin(z, list(HYDROPHOBIC_HALOGENS))
    metal = np.isin(z, list(METALS))
    cols = [hydrophobic, chem.aromatic, chem.acceptor, chem.donor, chem.positive, chem.negative, metal, heavy]
    return np.stack(cols, axis=1) & heavy[:, None]


def kdeep_radii(chem: AtomChemistry) -> np.ndarray:
    """(A,) van der Waals radii, Å (RDKit periodic table)."""
    return np.array([_vdw_radius(z) for z in chem.atomic_num], np.float32)


# smina/libmolgrid GninaIndexTyper order, with xs_radius (Å).
GNINA_TYPES: Tuple[str, ...] = (
    'Hydrogen', 'PolarHydrogen', 'AliphaticCarbonXSHydrophobe', 'AliphaticCarbonXSNonHydrophobe',
    'AromaticCarbonXSHydrophobe', 'AromaticCarbonXSNonHydrophobe', 'Nitrogen', 'NitrogenXSDonor',
    'NitrogenXSDonorAcceptor', 'NitrogenXSAcceptor', 'Oxygen', 'OxygenXSDonor', 'OxygenXSDonorAcceptor',
    'OxygenXSAcceptor', 'Sulfur', 'SulfurAcceptor', 'Phosphorus', 'Fluorine', 'Chlorine', 'Bromine', 'Iodine',
    'Magnesium', 'Manganese', 'Zinc', 'Calcium', 'Iron', 'GenericMetal', 'Boron')
GNINA_XS_RADII: Dict[str, float] = dict(zip(GNINA_TYPES, (
    0.37, 0.37, 1.9, 1.9, 1.9, 1.9, 1.8, 1.8, 1.8, 1.8, 1.7, 1.7, 1.7, 1.7, 2.0, 2.0, 2.1, 1.5, 1.8, 2.0, 2.2,
    1.2, 1.2, 1.2, 1.2, 1.2, 1.2, 1.92)))
# libmolgrid defaultGninaReceptorTyper / defaultGninaLigandTyper: each channel is a group of smina types.
GNINA_RECEPTOR_CHANNELS: Tuple[Tuple[str, ...], ...] = (
    ('AliphaticCarbonXSHydrophobe',), ('AliphaticCarbonXSNonHydrophobe',), ('AromaticCarbonXSHydrophobe',),
    ('AromaticCarbonXSNonHydrophobe',), ('Bromine', 'Iodine', 'Chlorine', 'Fluorine'),
    ('Nitrogen', 'NitrogenXSAcceptor'), ('NitrogenXSDonor', 'NitrogenXSDonorAcceptor'),
    ('Oxygen', 'OxygenXSAcceptor'), ('OxygenXSDonorAcceptor', 'OxygenXSDonor'), ('Sulfur', 'SulfurAcceptor'),
    ('Phosphorus',), ('Calcium',), ('Zinc',), ('GenericMetal', 'Boron', 'Manganese', 'Magnesium', 'Iron'))
GNINA_LIGAND_CHANNELS: Tuple[Tuple[str, ...], ...] = (
    ('AliphaticCarbonXSHydrophobe',), ('AliphaticCarbonXSNonHydrophobe',), ('AromaticCarbonXSHydrophobe',),
    ('AromaticCarbonXSNonHydrophobe',), ('Bromine', 'Iodine'), ('Chlorine',), ('Fluorine',),
    ('Nitrogen', 'NitrogenXSAcceptor'), ('NitrogenXSDonor', 'NitrogenXSDonorAcceptor'),
    ('Oxygen', 'OxygenXSAcceptor'), ('OxygenXSDonorAcceptor', 'OxygenXSDonor'), ('Sulfur', 'SulfurAcceptor'),
    ('Phosphorus',), ('GenericMetal', 'Boron', 'Manganese', 'Magnesium', 'Zinc', 'Calcium', 'Iron'))
_GNINA_ELEMENT = {15: 'Phosphorus', 9: 'Fluorine', 17: 'Chlorine', 35: 'Bromine', 53: 'Iodine',
                  12: 'Magnesium', 25: 'Manganese', 30: 'Zinc', 20: 'Calcium', 26: 'Iron', 5: 'Boron'}


def gnina_type_names(chem: AtomChemistry) -> list:
    """Per-atom smina/gnina type names (hydrogens included) following GninaIndexTyper's rules."""
    names = []
    for i, z in enumerate(chem.atomic_num):
        hbonded = chem.n_hydrogens[i] > 0
        if z == 1:
            names.append('PolarHydrogen' if chem.bonded_to_n_or_o[i] else 'Hydrogen')
        elif z == 6:
            kind = 'Aromatic' if chem.aromatic[i] else 'Aliphatic'
            names.append(kind + ('CarbonXSNonHydrophobe' if chem.bonded_to_hetero[i] else 'CarbonXSHydrophobe'))
        elif z == 7:
            if chem.acceptor[i]:
                names.append('NitrogenXSDonorAcceptor' if hbonded else 'NitrogenXSAcceptor')
            else:
                names.append('NitrogenXSDonor' if hbonded else 'Nitrogen')
        elif z == 8:  # smina types every oxygen as an acceptor
            names.append('OxygenXSDonorAcceptor' if hbonded else 'OxygenXSAcceptor')
        elif z in (16, 34):  # selenium is typed as sulfur
            names.append('Sulfur')
        else:
            names.append(_GNINA_ELEMENT.get(int(z), 'GenericMetal'))
    return names


def smina_types(mol) -> list:
    """gnina/smina atom type names of every atom of a sanitized RDKit molecule (e.g. 'OxygenXSAcceptor')."""
    return gnina_type_names(ligand_chemistry(mol))


def _group_channels(names: Sequence[str], groups) -> np.ndarray:
    index = {t: c for c, group in enumerate(groups) for t in group}
    out = np.zeros((len(names), len(groups)), bool)
    for i, t in enumerate(names):
        if t in index:
            out[i, index[t]] = True
    return out


@dataclasses.dataclass(frozen=True)
class TypingScheme:
    """A typing scheme: chemistry record -> (channels (A, C) bool, radii (A,) Å) for a protein or a ligand."""
    name: str
    protein_channel_names: Tuple[str, ...]
    ligand_channel_names: Tuple[str, ...]
    protein_fn: Callable[[AtomChemistry], Tuple[np.ndarray, np.ndarray]]
    ligand_fn: Callable[[AtomChemistry], Tuple[np.ndarray, np.ndarray]]

    @property
    def n_channels(self) -> int:
        return len(self.protein_channel_names)


def _kdeep(chem):
    return kdeep_channels(chem), kdeep_radii(chem)


def _gnina_role(groups):
    def fn(chem):
        names = gnina_type_names(chem)
        return _group_channels(names, groups), np.array([GNINA_XS_RADII[t] for t in names], np.float32)
    return fn


def _group_name(group):
    return '_'.join(group)


TYPING_SCHEMES: Dict[str, TypingScheme] = {
    'kdeep': TypingScheme('kdeep', KDEEP_CHANNELS, KDEEP_CHANNELS, _kdeep, _kdeep),
    'gnina': TypingScheme('gnina', tuple(map(_group_name, GNINA_RECEPTOR_CHANNELS)),
                          tuple(map(_group_name, GNINA_LIGAND_CHANNELS)),
                          _gnina_role(GNINA_RECEPTOR_CHANNELS), _gnina_role(GNINA_LIGAND_CHANNELS)),
}


def get_scheme(scheme) -> TypingScheme:
    if isinstance(scheme, TypingScheme):
        return scheme
    try:
        return TYPING_SCHEMES[scheme]
    except KeyError:
        raise InputError(f"unknown typing scheme {scheme!r}; known: {sorted(TYPING_SCHEMES)}") from None


def _heavy_typed(chem: AtomChemistry, fn):
    channels, radii = fn(chem)
    keep = chem.heavy
    return chem.coords[keep], channels[keep], radii[keep]


def type_ligand(mol_or_path, scheme='kdeep'):
    """Heavy-atom coords (L, 3) Å, channels (L, C) bool, radii (L,) Å of a ligand (RDKit mol or file path)."""
    mol = read_ligand(mol_or_path) if isinstance(mol_or_path, (str, os.PathLike)) else mol_or_path
    return _heavy_typed(ligand_chemistry(mol), get_scheme(scheme).ligand_fn)


def type_protein(path: str, scheme='kdeep', keep_waters: bool = False, center: Optional[np.ndarray] = None,
                 radius: Optional[float] = None):
    """Heavy-atom coords (P, 3) Å, channels (P, C) bool, radii (P,) Å of a PDB protein/pocket.

    With ``center`` (3,) and ``radius`` (Å), only atoms within ``radius`` of ``center`` are returned (typing is
    done on the whole file first, so cropping cannot change an atom's chemistry).
    """
    mol, keep = read_protein(path, keep_waters)
    chem = protein_chemistry(mol)
    keep = keep & chem.heavy
    if center is not None and radius is not None:
        keep &= np.linalg.norm(chem.coords - np.asarray(center, np.float64), axis=1) <= radius
    channels, radii = get_scheme(scheme).protein_fn(chem)
    return chem.coords[keep], channels[keep], radii[keep]
