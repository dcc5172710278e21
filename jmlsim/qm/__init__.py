"""Quantum-chemistry labels for training neural potentials on new molecules.

``conformers``: molecules from SMILES or SDF (RDKit), ETKDG conformers, MMFF94/UFF optimisation and force field.
``sampling``: geometries around a conformer: harmonic normal-mode displacements at a temperature, or Langevin MD
on the force field (NumPy BAOAB) or on a trained neural potential (jmlsim's BAOAB, jitted).
``engines``: single-point QM energies and forces (GFN2-xTB through tblite, DFT through PySCF).
``labels``: label geometries with an engine (optionally in worker processes) and build/write a
:class:`jmlsim.io.datasets.QMDataset` as HDF5 (``jmlsim qm label`` in :mod:`jmlsim.commands.qm`).

RDKit, tblite and PySCF are imported inside the functions that need them.
"""
