"""Protein-ligand binding affinity (issue 8): atom typing, voxel features, PDBbind data, splits, 3D-CNN models.

Modules (import them directly; this package imports nothing so RDKit/h5py load only when used):

- ``atom_typing``: KDEEP's 8 property channels and gnina/smina atom types, from RDKit chemistry
- ``featurize``: the ``Complex`` record and the JAX voxelizer (KDEEP density, max over atoms), augmentation
- ``data``: PDBbind INDEX files (2007/2013/2016+ layouts), PDBbind directories, CSV lists, the HDF5 feature store
- ``splits``: random, CASF (core set held out) and leak-aware (protein sequence + ligand similarity clusters) splits

Coordinates in this package are in **Ångström** (a data-format border: PDBbind files and voxel grids use Å),
unlike the rest of jmlsim, which works in nm.
"""
