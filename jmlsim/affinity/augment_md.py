"""MD augmentation: extra training poses of a complex from the frames of a (jmlsim) MD trajectory.

Each selected frame becomes a copy of the base ``Complex`` carrying the same label (pK), atom channels and radii,
with the protein and ligand coordinates of that frame. Only coordinates change, so the atom typing of the base
complex is reused and must correspond atom-for-atom with trajectory atoms.

Correspondence (the assumption this module checks): frame 0 of the trajectory is in the same coordinate frame
as the complex (e.g. the run started from the complex's structure and was not re-centred or superposed), so
each complex atom has exactly one trajectory atom within ``tolerance`` (Angstrom) of it in frame 0 -- ligand
atoms among the ``ligand_selection`` atoms, protein atoms among the rest. Extra trajectory atoms (hydrogens,
water, ions, protein beyond the pocket) are ignored. Any complex atom without a partner, or two complex atoms
claiming the same partner, raises InputError. jmlsim writes unwrapped positions, so molecules stay whole
across the periodic boundary; wrapped trajectories from other engines must be imaged first.

Units: trajectories are in nm (mdtraj), Complex coordinates in Angstrom; the conversion happens here only.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Optional, Sequence, Union

import numpy as np

from jmlsim.errors import InputError

NM_TO_ANGSTROM = 10.0


def _topology_from_json(blob) -> "mdtraj.Topology":  # noqa: F821
    """mdtraj Topology from the JSON stored in an mdtraj-layout HDF5 file (read without PyTables)."""
    import mdtraj

    data = json.loads(blob.decode() if isinstance(blob, bytes) else str(blob))
    top = mdtraj.Topology()
    atoms = []
    for chain in data["chains"]:
        c = top.add_chain()
        for res in chain["residues"]:
            r = top.add_residue(res["name"], c, resSeq=res.get("resSeq"))
            for atom in res["atoms"]:
                try:
                    element = mdtraj.element.get_by_symbol(atom["element"])
                except KeyError:
                    element = mdtraj.element.virtual
                atoms.append(top.add_atom(atom["name"], element, r))
    for i, j in data.get("bonds", []):
        top.add_bond(atoms[i], atoms[j])
    return top


def _read_frames(traj_path: str, topology_path: Optional[str], stride: int):
    """(mdtraj Topology, frame indices (F,), xyz (F, N, 3) nm) of every ``stride``-th frame from 0."""
    import mdtraj

    if not os.path.isfile(traj_path):
        raise InputError(f"trajectory {traj_path} does not exist")
    if topology_path is not None and not os.path.isfile(topology_path):
        raise InputError(f"topology {topology_path} does not exist")
    ext = os.path.splitext(traj_path)[1].lower()
    try:
        if ext in (".h5", ".hdf5"):
            # mdtraj reads its HDF5 layout through PyTables; h5py reads the same datasets without it
            import h5py

            with h5py.File(traj_path, "r") as f:
                xyz = np.asarray(f["coordinates"][::stride], dtype=np.float64)
                top = (mdtraj.load_topology(topology_path) if topology_path is not None
                       else _topology_from_json(f["topology"][0]))
        else:
            if topology_path is None:
                raise InputError(f"trajectory {traj_path}: a topology file is needed for {ext} files")
            traj = mdtraj.load(traj_path, top=topology_path, stride=stride)
            top, xyz = traj.topology, np.asarray(traj.xyz, dtype=np.float64)
    except InputError:
        raise
    except Exception as exc:  # unreadable or mismatched files: report them as the user's input
        raise InputError(f"trajectory {traj_path}: cannot read ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if xyz.ndim != 3 or xyz.shape[1] != top.n_atoms or xyz.shape[0] == 0:
        raise InputError(f"trajectory {traj_path}: {xyz.shape[1] if xyz.ndim == 3 else '?'} atoms per frame vs "
                         f"{top.n_atoms} in the topology, or no frames")
    frames = np.arange(xyz.shape[0]) * stride
    return top, frames, xyz


def _match(reference: np.ndarray, candidates: np.ndarray, candidate_index: np.ndarray, tolerance: float,
           what: str, source: str) -> np.ndarray:
    """Trajectory atom index of every reference atom: its unique nearest candidate within tolerance (A)."""
    from scipy.spatial import cKDTree

    if len(reference) == 0:
        return np.zeros(0, dtype=int)
    if len(candidates) == 0:
        raise InputError(f"{source}: no trajectory atoms to match the complex's {what} atoms")
    dist, nearest = cKDTree(candidates).query(reference, k=1)
    bad = np.flatnonzero(dist > tolerance)
    if bad.size:
        raise InputError(f"{source}: {bad.size} of {len(reference)} {what} atoms of the complex have no trajectory "
                         f"atom within {tolerance} A in frame 0 (worst {dist.max():.2f} A); the trajectory must "
                         f"start from the complex's coordinates")
    if len(np.unique(nearest)) != len(nearest):
        raise InputError(f"{source}: two {what} atoms of the complex match the same trajectory atom")
    return candidate_index[nearest]


def poses_from_trajectory(traj_path: str, topology_path: Optional[str], complex,
                          ligand_selection: Union[str, Sequence[int]], stride: int = 1, *,
                          tolerance: float = 0.5, max_frames: Optional[int] = None) -> list:
    """Extra poses of ``complex`` from trajectory frames 0, stride, 2*stride, ...

    Args:
      traj_path: .h5 (jmlsim/mdtraj HDF5), .dcd, .xtc or anything else mdtraj.load reads (coordinates nm).
      topology_path: topology file mdtraj reads (PDB, prmtop, ...); optional for .h5 (its own topology is used).
      complex: the base Complex (coordinates Angstrom); its label and atom typing are copied.
      ligand_selection: mdtraj selection string (e.g. "resname LIG") or atom indices of the ligand.
      stride: use every stride-th frame.
      tolerance: frame-0 matching distance, Angstrom (see the module docstring).
      max_frames: keep at most this many poses (the first ones).

    Returns: list of Complex, one per frame, named ``<name>_md<frame>``, same pK; InputError when the
    trajectory cannot be read or its atoms do not map onto the complex's.
    """
    if int(stride) < 1:
        raise InputError(f"trajectory {traj_path}: stride must be >= 1, got {stride}")
    top, frames, xyz = _read_frames(traj_path, topology_path, int(stride))
    if isinstance(ligand_selection, str):
        try:
            ligand = np.asarray(top.select(ligand_selection), dtype=int)
        except Exception as exc:
            raise InputError(f"trajectory {traj_path}: bad ligand selection {ligand_selection!r} ({exc})") from None
    else:
        ligand = np.asarray(ligand_selection, dtype=int).reshape(-1)
        if ligand.size and (ligand.min() < 0 or ligand.max() >= top.n_atoms):
            raise InputError(f"trajectory {traj_path}: ligand atom index out of range 0..{top.n_atoms - 1}")
    if ligand.size == 0:
        raise InputError(f"trajectory {traj_path}: ligand selection {ligand_selection!r} selects no atoms")
    rest = np.setdiff1d(np.arange(top.n_atoms), ligand)

    frame0 = xyz[0] * NM_TO_ANGSTROM
    lig_coords = np.asarray(complex.ligand_coords, dtype=np.float64).reshape(-1, 3)
    prot_coords = np.asarray(complex.protein_coords, dtype=np.float64).reshape(-1, 3)
    lig_map = _match(lig_coords, frame0[ligand], ligand, tolerance, "ligand", traj_path)
    prot_map = _match(prot_coords, frame0[rest], rest, tolerance, "protein", traj_path)

    lig_dtype = np.asarray(complex.ligand_coords).dtype
    prot_dtype = np.asarray(complex.protein_coords).dtype
    poses = []
    for frame, coords in zip(frames, xyz):
        coords = coords * NM_TO_ANGSTROM
        changes = {"name": f"{complex.name}_md{int(frame)}",
                   "protein_coords": coords[prot_map].astype(prot_dtype),
                   "ligand_coords": coords[lig_map].astype(lig_dtype)}
        if hasattr(complex, "_replace"):  # the Complex NamedTuple of jmlsim.affinity.featurize
            poses.append(complex._replace(**changes))
        elif dataclasses.is_dataclass(complex):
            poses.append(dataclasses.replace(complex, **changes))
        else:
            pose = copy.copy(complex)
            for key, value in changes.items():
                setattr(pose, key, value)
            poses.append(pose)
        if max_frames is not None and len(poses) >= max_frames:
            break
    return poses
