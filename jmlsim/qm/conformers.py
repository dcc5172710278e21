"""Molecules for QM labelling: parsed from SMILES or SDF with RDKit, hydrogens added, 3D conformers embedded
with ETKDG (v3) and optimised with MMFF94 (UFF where MMFF94 lacks parameters).

A :class:`Molecule` carries what sampling and labelling need in jmlsim's internal units: atomic numbers, masses
(amu), total charge and spin multiplicity, conformer positions (nm), and the force field as a function
``positions (N, 3) nm -> (energy kJ/mol, forces (N, 3) kJ/mol/nm)``. RDKit works in Å and kcal/mol; the
conversion happens here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import numpy as np

from jmlsim import units
from jmlsim.errors import InputError

# kcal/mol/Å -> kJ/mol/nm
_KJ_NM_PER_KCAL_A = units.KJ_PER_KCAL * units.ANGSTROM_PER_NM

ForceFn = Callable[[np.ndarray], tuple]


@dataclasses.dataclass(frozen=True, eq=False)
class Molecule:
    """One molecule with its conformers.

    mol: the RDKit ``Mol`` with explicit hydrogens and conformers (positions in Å, RDKit's unit).
    name: a label for progress bars and messages. atomic_numbers: (N,) int32. masses: (N,) float64 amu.
    charge: total charge (e). multiplicity: 2S + 1 from RDKit's radical electrons.
    force_field: "MMFF94" or "UFF", the force field of :meth:`force_fn` and of the optimisation.
    """

    mol: Any
    name: str
    atomic_numbers: np.ndarray
    masses: np.ndarray
    charge: int
    multiplicity: int
    force_field: str

    @property
    def n_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def n_conformers(self) -> int:
        return int(self.mol.GetNumConformers())

    def conformer_positions(self) -> np.ndarray:
        """(C, N, 3) float64 positions of all conformers, nm."""
        return np.stack([np.asarray(c.GetPositions(), np.float64) for c in self.mol.GetConformers()]) \
            * units.NM_PER_ANGSTROM

    def bonds(self) -> np.ndarray:
        """(B, 2) int atom index pairs of the chemical bonds."""
        pairs = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in self.mol.GetBonds()]
        return np.asarray(pairs, np.int64).reshape(-1, 2)

    def force_fn(self) -> ForceFn:
        """The molecule's force field as ``positions (N, 3) nm -> (energy kJ/mol, forces (N, 3) kJ/mol/nm)``.

        RDKit's force-field object is built once (for conformer 0: the parameters depend on the graph only).
        """
        ff = _rdkit_force_field(self.mol, self.force_field, conf_id=self.mol.GetConformers()[0].GetId())
        n = self.n_atoms

        def energy_forces(positions_nm: np.ndarray) -> tuple:
            flat = (np.asarray(positions_nm, np.float64) * units.ANGSTROM_PER_NM).ravel().tolist()
            energy = ff.CalcEnergy(flat) * units.KJ_PER_KCAL
            gradient = np.asarray(ff.CalcGrad(flat), np.float64).reshape(n, 3)
            return energy, -gradient * _KJ_NM_PER_KCAL_A

        return energy_forces


def _rdkit_force_field(mol, name: str, conf_id: int = -1):
    from rdkit.Chem import AllChem

    if name == "MMFF94":
        props = AllChem.MMFFGetMoleculeProperties(mol)
        return AllChem.MMFFGetMoleculeForceField(mol, props, confId=conf_id)
    return AllChem.UFFGetMoleculeForceField(mol, confId=conf_id)


def _choose_force_field(mol, where: str) -> str:
    from rdkit.Chem import AllChem

    if AllChem.MMFFHasAllMoleculeParams(mol):
        return "MMFF94"
    if AllChem.UFFHasAllMoleculeParams(mol):
        return "UFF"
    raise InputError(f"{where}: neither MMFF94 nor UFF has parameters for this molecule")


def _embed(mol, n_conformers: int, seed: int, where: str) -> None:
    """Replace mol's conformers by ``n_conformers`` ETKDGv3 embeddings (random coordinates as a fallback)."""
    from rdkit.Chem import AllChem

    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    params.pruneRmsThresh = -1.0  # keep the requested number; sampling spreads them further anyway
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=int(n_conformers), params=params))
    if len(ids) < n_conformers:  # strained or large systems: ETKDG from random coordinates usually works
        params.useRandomCoords = True
        ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=int(n_conformers), params=params))
    if not ids:
        raise InputError(f"{where}: RDKit could not embed 3D coordinates for this molecule")


def _optimize(mol, force_field: str, max_iters: int) -> None:
    from rdkit.Chem import AllChem

    if force_field == "MMFF94":
        AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=max_iters)
    else:
        AllChem.UFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=max_iters)


def prepare(mol, name: str, where: str, n_conformers: Optional[int] = None, seed: int = 0,
            optimize: bool = True, max_iters: int = 2000) -> Molecule:
    """A :class:`Molecule` from an RDKit ``Mol``: add hydrogens (with coordinates when the input has 3D ones),
    embed ``n_conformers`` ETKDG conformers if asked (or if the input has no 3D conformer), optimise them with
    the force field. ``where`` names the input in error messages.
    """
    from rdkit import Chem
    from rdkit.Chem import Descriptors

    has_3d = mol.GetNumConformers() > 0 and mol.GetConformer().Is3D()
    mol = Chem.AddHs(mol, addCoords=has_3d)
    if n_conformers is not None or not has_3d:
        _embed(mol, n_conformers or 1, seed, where)
    force_field = _choose_force_field(mol, where)
    if optimize:
        _optimize(mol, force_field, max_iters)
    z = np.asarray([a.GetAtomicNum() for a in mol.GetAtoms()], np.int32)
    if np.any(z < 1):
        raise InputError(f"{where}: dummy atoms (atomic number 0) cannot be labelled")
    masses = np.asarray([a.GetMass() for a in mol.GetAtoms()], np.float64)
    radicals = Descriptors.NumRadicalElectrons(mol)
    return Molecule(mol=mol, name=name, atomic_numbers=z, masses=masses, charge=int(Chem.GetFormalCharge(mol)),
                    multiplicity=int(radicals) + 1, force_field=force_field)


def from_smiles(smiles: str, n_conformers: int = 1, seed: int = 0, optimize: bool = True) -> Molecule:
    """A molecule with ``n_conformers`` optimised ETKDG conformers from a SMILES string."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # parse errors become one InputError line instead of RDKit's log
    try:
        mol = Chem.MolFromSmiles(smiles) if smiles and smiles.strip() else None
    finally:
        RDLogger.EnableLog("rdApp.*")
    if mol is None:
        raise InputError(f"--smiles {smiles!r}: not a valid SMILES string")
    return prepare(mol, name=smiles, where=f"--smiles {smiles!r}", n_conformers=n_conformers, seed=seed,
                   optimize=optimize)


def from_sdf(path: str, n_conformers: Optional[int] = None, seed: int = 0, optimize: bool = True) -> list:
    """One :class:`Molecule` per record of an SDF file.

    Without ``n_conformers`` a record's own 3D coordinates are its single conformer (2D records are embedded);
    with it, ``n_conformers`` ETKDG conformers are embedded from each record's graph instead.
    """
    from rdkit import Chem, RDLogger

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    RDLogger.DisableLog("rdApp.*")
    try:
        try:
            supplier = Chem.SDMolSupplier(path, removeHs=False, sanitize=True)
        except OSError as exc:
            raise InputError(f"{path}: not a readable SDF file ({exc})") from None
        records = list(supplier)
    finally:
        RDLogger.EnableLog("rdApp.*")
    if not records:
        raise InputError(f"{path}: no molecules in the SDF file")
    molecules = []
    for i, mol in enumerate(records):
        if mol is None:
            raise InputError(f"{path}: record {i + 1} could not be parsed (bad molblock or valence)")
        title = mol.GetProp("_Name") if mol.HasProp("_Name") and mol.GetProp("_Name").strip() else f"record{i + 1}"
        molecules.append(prepare(mol, name=title, where=f"{path}: record {i + 1}", n_conformers=n_conformers,
                                 seed=seed + i, optimize=optimize))
    return molecules
