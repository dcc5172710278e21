"""gnina atom typing as libmolgrid/gnina actually produce it (scheme ``'gnina-molgrid'``), from RDKit chemistry.

Coordinates and radii in **Ångström** (see :mod:`jmlsim.affinity`).

:mod:`jmlsim.affinity.atom_typing`'s ``'gnina'`` scheme follows smina's typing *rules* on chemically ideal
input. gnina itself reads receptors with OpenBabel, which perceives bond orders from the PDB geometry and then
adds hydrogens; its typers (libmolgrid ``defaultGninaReceptorTyper`` / ``defaultGninaLigandTyper``, 14 + 14
channels) see the result. This scheme reproduces what that pipeline does to standard residues, so the pretrained
gnina CNNs see the input they were trained on:

- **Carboxylates are neutral acids**: OpenBabel's functional-group pass (bondtyp.txt) makes the first oxygen
  in the carboxyl carbon's bond list the C=O; hydrogen addition then protonates the other, which gnina types as
  an H-bond donor-acceptor oxygen. The bond list follows the CONECT records when the file has them (so Asp OD1 /
  Glu OE1 / C-terminal O is C=O); otherwise OpenBabel's ConnectTheDots adds bonds in order of increasing z
  coordinate, so the oxygen with the larger z is the protonated one.
- **Arginine** in a file without hydrogens: the C=N double bond goes to NE, the first guanidine N, so NE gets
  no hydrogen and is not a donor (NH1/NH2 stay donors). With hydrogens in the file, NE keeps its own.
- **Pyrrole-type rings** (Trp indole, His imidazole): OpenBabel perceives them aromatic only when a ring N
  carries a hydrogen in the file; otherwise the ring atoms are typed aliphatic and the ring N are not donors.
- **Waters are kept** (gnina grids every receptor atom; OpenBabel types water O as a donor-acceptor).
- Per-atom radii are smina's ``xs_radius`` of the atom's own type (libmolgrid's per-atom radii).

Measured against libmolgrid 0.5.5 on tests/data/pdbbind-mini (6 pockets, 5 whole-protein files and their
ligands: 4,988 typed heavy atoms, fixtures in tests/data/gnina/): every atom gets molgrid's channel and radius
(tests/test_gnina.py). Rules of
OpenBabel's perception that these fixtures do not exercise (e.g. non-standard residues, cofactors, metals with
unusual valences) fall back to :mod:`atom_typing`'s element rules and may differ.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import numpy as np

from jmlsim.affinity import atom_typing as at
from jmlsim.affinity.featurize import Complex
from jmlsim.errors import InputError

SCHEME_NAME = "gnina-molgrid"
RESOLUTION = 0.5     # Å, gnina's grid spacing
DIMENSION = 23.5     # Å, gnina's grid span (first to last point); 48 points per axis
MAX_DENSITY_RADIUS = 1.5 * 2.2  # Å, molgrid density reaches 1.5 x radius; iodine's xs radius is the largest


def _residue_atoms(mol):
    """[(resname, {atom name: atom index})] per residue of a PDB-derived RDKit molecule, in file order.

    A residue is a run of consecutive atoms with the same (chain, number, insertion code, name): pocket files
    often repeat residue numbers in chains without IDs, so a dictionary keyed on the label would merge them.
    """
    out = []
    last = None
    for a in mol.GetAtoms():
        info = a.GetPDBResidueInfo()
        if info is None:
            last = None
            continue
        key = (info.GetChainId(), info.GetResidueNumber(), info.GetInsertionCode(), info.GetResidueName().strip())
        if key != last:
            out.append((key[3], {}))
            last = key
        out[-1][1].setdefault(info.GetName().strip(), a.GetIdx())
    return out


_HIS_RING = (("CG", "ND1", "CD2", "CE1", "NE2"), ("ND1", "NE2"))
_PYRROLE_RINGS = {
    "TRP": (("CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3", "CH2"), ("NE1",)),
    **{name: _HIS_RING for name in ("HIS", "HID", "HIE", "HIP", "HSD", "HSE", "HSP")},
}


def _carboxyl(res, first_o: str, second_o: str, nh, acceptor, coords, conect) -> None:
    """Protonate one carboxyl oxygen as OpenBabel does (unless the file already protonates one).

    OpenBabel's functional-group pass makes the first oxygen in the carbon's bond list C=O; hydrogen addition
    then puts H on the other. With CONECT records the bond list follows the file (``first_o`` first); without
    them ConnectTheDots adds bonds in order of increasing z, so the oxygen with the larger z gets the H.
    """
    if first_o not in res or second_o not in res:
        return
    o1, o2 = res[first_o], res[second_o]
    if nh[o1] > 0 or nh[o2] > 0:
        return
    if o1 in conect and o2 in conect:
        protonated = o2
    else:
        protonated = o1 if coords[o1, 2] > coords[o2, 2] else o2
    nh[protonated] = 1
    acceptor[o1] = acceptor[o2] = True


def _conect_atoms(mol) -> set:
    """Indices of atoms whose PDB serial number appears in a CONECT record of the file RDKit read."""
    path = mol.GetProp("_jmlsim_pdb_path") if mol.HasProp("_jmlsim_pdb_path") else None
    if path is None:
        return set()
    serials = set()
    with open(path) as fh:
        for line in fh:
            if line.startswith("CONECT"):
                body = line[6:].rstrip("\n")
                for k in range(0, len(body), 5):
                    field = body[k:k + 5].strip()
                    if field.isdigit():
                        serials.add(int(field))
    out = set()
    for a in mol.GetAtoms():
        info = a.GetPDBResidueInfo()
        if info is not None and info.GetSerialNumber() in serials:
            out.add(a.GetIdx())
    return out


def protein_chemistry_molgrid(mol) -> at.AtomChemistry:
    """:func:`atom_typing.protein_chemistry` adjusted to OpenBabel's perception as gnina sees it.

    ``mol`` should come from :func:`read_receptor` (which records the file path, so CONECT records can be read).
    """
    import dataclasses

    chem = at.protein_chemistry(mol)
    coords = chem.coords
    z = chem.atomic_num
    nh = chem.n_hydrogens.copy()
    donor = chem.donor.copy()
    acceptor = chem.acceptor.copy()
    aromatic = chem.aromatic.copy()
    has_h = bool(np.any(z == 1))
    conect = _conect_atoms(mol)
    # Explicit hydrogens bonded to each atom (proximity bonds of the PDB reader).
    explicit_h = np.zeros(len(z), int)
    for b in mol.GetBonds():
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        if z[i] == 1:
            explicit_h[j] += 1
        if z[j] == 1:
            explicit_h[i] += 1
    for resname, res in _residue_atoms(mol):
        if resname == "ASP":
            _carboxyl(res, "OD1", "OD2", nh, acceptor, coords, conect)
        elif resname == "GLU":
            _carboxyl(res, "OE1", "OE2", nh, acceptor, coords, conect)
        elif resname == "ARG" and "NE" in res and not has_h:
            nh[res["NE"]] = 0
            donor[res["NE"]] = False
        ring = _PYRROLE_RINGS.get(resname)
        if ring is not None:
            ring_n = [res[n] for n in ring[1] if n in res]
            if ring_n and all(explicit_h[i] == 0 for i in ring_n):
                for n in ring[0]:
                    if n in res:
                        aromatic[res[n]] = False
                for i in ring_n:
                    nh[i] = 0
                    donor[i] = False
        if "OXT" in res:
            _carboxyl(res, "O", "OXT", nh, acceptor, coords, conect)
    donor |= (np.isin(z, (7, 8)) & (nh > 0))
    return dataclasses.replace(chem, n_hydrogens=nh, donor=donor, acceptor=acceptor, aromatic=aromatic)


def _typed(chem: at.AtomChemistry, groups) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(channel index (A,) int, -1 for untyped atoms such as hydrogens; radii (A,) Å; smina type names)."""
    names = at.gnina_type_names(chem)
    onehot = at._group_channels(names, groups)
    index = np.where(onehot.any(axis=1), onehot.argmax(axis=1), -1)
    radii = np.array([at.GNINA_XS_RADII[t] for t in names], np.float32)
    return index, radii, np.array(names)


def read_receptor(path: str, keep_waters: bool = True):
    """(RDKit molecule, keep mask) of a receptor PDB, remembering the path (CONECT records are consulted)."""
    mol, keep = at.read_protein(path, keep_waters=keep_waters)
    mol.SetProp("_jmlsim_pdb_path", os.fspath(path))
    return mol, keep


def receptor_types(path: str, keep_waters: bool = True):
    """Heavy atoms of a receptor PDB as gnina types them: coords (P, 3) Å, channel (P,) int, radii (P,) Å.

    Raises FileNotFoundError / ValueError like :func:`atom_typing.read_protein`.
    """
    mol, keep = read_receptor(path, keep_waters)
    chem = protein_chemistry_molgrid(mol)
    index, radii, _ = _typed(chem, at.GNINA_RECEPTOR_CHANNELS)
    sel = keep & chem.heavy & (index >= 0)
    return chem.coords[sel], index[sel], radii[sel]


def receptor_channels(path: str, keep_waters: bool = True):
    """Heavy atoms of a receptor PDB for a :class:`Complex`: coords (P, 3) Å, channels (P, 14) float32 one-hot
    (libmolgrid's receptor channel order), radii (P,) Å."""
    coords, index, radii = receptor_types(path, keep_waters)
    return coords, _onehot(index, len(at.GNINA_RECEPTOR_CHANNELS)).astype(np.float32), radii


def _receptor(path: str, keep_waters: bool = True):
    """(coords, channel index, radii, one-hot channel weights): kept for callers written against an earlier draft;
    use :func:`receptor_channels` / :func:`receptor_types`."""
    coords, index, radii = receptor_types(path, keep_waters)
    return coords, index, radii, _onehot(index, len(at.GNINA_RECEPTOR_CHANNELS)).astype(np.float32)


def ligand_types(mol_or_path):
    """Heavy atoms of a ligand as gnina types them: coords (L, 3) Å, channel (L,) int, radii (L,) Å."""
    mol = at.read_ligand(mol_or_path) if isinstance(mol_or_path, (str, os.PathLike)) else mol_or_path
    chem = at.ligand_chemistry(mol)
    index, radii, _ = _typed(chem, at.GNINA_LIGAND_CHANNELS)
    sel = chem.heavy & (index >= 0)
    return chem.coords[sel], index[sel], radii[sel]


def _onehot(index: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((len(index), n), bool)
    ok = index >= 0
    out[np.nonzero(ok)[0], index[ok]] = True
    return out


def crop_radius(max_shift: float = 0.0) -> float:
    """Å from the ligand centre beyond which a receptor atom cannot touch any (rotated, shifted) grid point."""
    return 0.5 * DIMENSION * math.sqrt(3.0) + MAX_DENSITY_RADIUS + math.sqrt(3.0) * max_shift + 0.5


def complex_from_files(protein: str, ligand: str, name: Optional[str] = None, pK: float = float("nan"),
                       max_shift: float = 2.0) -> Complex:
    """A :class:`Complex` typed for the gnina CNNs (14 + 14 channels), receptor atoms cropped around the ligand.

    Raises InputError naming the file when it is missing or cannot be read/sanitized.
    """
    try:
        lc, li, lr = ligand_types(ligand)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"{ligand}: {exc}") from None
    if len(lc) == 0:
        raise InputError(f"{ligand}: no heavy atoms to score")
    try:
        pc, pi, pr = receptor_types(protein)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"{protein}: {exc}") from None
    center = lc.mean(axis=0)
    near = np.linalg.norm(pc - center, axis=1) <= crop_radius(max_shift)
    n_rec, n_lig = len(at.GNINA_RECEPTOR_CHANNELS), len(at.GNINA_LIGAND_CHANNELS)
    return Complex(name or os.path.splitext(os.path.basename(ligand))[0],
                   pc[near].astype(np.float32), _onehot(pi[near], n_rec), pr[near],
                   lc.astype(np.float32), _onehot(li, n_lig), lr, float(pK))
