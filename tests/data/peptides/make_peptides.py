"""Regenerate the peptide fixtures: RDKit builds and MMFF-relaxes each sequence, OpenMM adds hydrogens for amber14.

    python tests/data/peptides/make_peptides.py

Free termini (charged at pH 7, as amber14's N/C-terminal templates expect). The files are generated here, part of
this project (MIT); no third-party data.
"""

import io
import os

import openmm.app as app
from rdkit import Chem
from rdkit.Chem import AllChem

SEQUENCES = ["GA", "AGS", "GGG", "KA", "AAA", "SG"]

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    forcefield = app.ForceField("amber14-all.xml")
    for seq in SEQUENCES:
        mol = Chem.AddHs(Chem.MolFromSequence(seq))
        AllChem.EmbedMolecule(mol, randomSeed=1)
        AllChem.MMFFOptimizeMolecule(mol)
        pdb = app.PDBFile(io.StringIO(Chem.MolToPDBBlock(Chem.RemoveHs(mol))))
        modeller = app.Modeller(pdb.topology, pdb.positions)
        modeller.addHydrogens(forcefield)
        with open(os.path.join(here, f"{seq}.pdb"), "w") as handle:
            app.PDBFile.writeFile(modeller.topology, modeller.positions, handle)
