"""Features of trajectories for kinetic models, computed by mdtraj.

All functions take ``mdtraj.Trajectory`` objects (positions in nm) and return float arrays of shape
(frames, features). Torsions enter as (sin, cos) pairs so that features are continuous across +-180 degrees.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from jmlsim.errors import InputError


def load_trajectories(paths: Sequence[str], top: Optional[str] = None) -> list:
    """mdtraj.Trajectory per file (any mdtraj format; ``top`` a PDB/prmtop/... where the format needs one).

    Raises InputError naming the file for a missing or unreadable file, or an empty trajectory list.
    """
    import mdtraj

    if not paths:
        raise InputError("no trajectories given")
    if top is not None and not os.path.isfile(top):
        raise InputError(f"topology file {top} does not exist")
    trajs = []
    for path in paths:
        if not os.path.isfile(path):
            raise InputError(f"trajectory {path} does not exist")
        try:
            traj = mdtraj.load(path, top=top) if top is not None else mdtraj.load(path)
        except Exception as exc:  # mdtraj raises many types; all mean the file cannot be used
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"cannot read trajectory {path}: {first}") from None
        if traj.n_frames == 0:
            raise InputError(f"trajectory {path} has no frames")
        trajs.append(traj)
    n_atoms = {t.n_atoms for t in trajs}
    if len(n_atoms) > 1:
        raise InputError(f"trajectories have different atom counts {sorted(n_atoms)}")
    return trajs


def from_positions(positions_nm: np.ndarray, topology, timestep_ps: float = 1.0):
    """An mdtraj.Trajectory from (frames, atoms, 3) positions in nm (frame spacing ``timestep_ps``)."""
    import mdtraj

    xyz = np.asarray(positions_nm, np.float32).reshape(-1, topology.n_atoms, 3)
    return mdtraj.Trajectory(xyz, topology, time=np.arange(len(xyz)) * timestep_ps)


def torsion_indices(topology) -> tuple:
    """(phi atoms (n_phi, 4), psi atoms (n_psi, 4)) of the backbone, in mdtraj's definition."""
    import mdtraj

    empty = from_positions(np.zeros((1, topology.n_atoms, 3)), topology)
    return mdtraj.compute_phi(empty)[0], mdtraj.compute_psi(empty)[0]


def phi_psi(traj) -> np.ndarray:
    """(frames, 2) backbone phi and psi in degrees of the first residue that has both (e.g. alanine dipeptide).

    Raises InputError when the topology has no backbone phi/psi pair.
    """
    import mdtraj

    phi_idx, psi_idx = torsion_indices(traj.topology)
    if len(phi_idx) == 0 or len(psi_idx) == 0:
        raise InputError("topology has no backbone phi/psi torsions (not a peptide?)")
    # phi of residue i shares its CA-N... with psi of the same residue: pick the psi whose N/CA match phi's
    target = phi_idx[0]
    match = [k for k, q in enumerate(psi_idx) if q[0] == target[2] and q[1] == target[3]] or [0]
    angles = mdtraj.compute_dihedrals(traj, np.stack([phi_idx[0], psi_idx[match[0]]]), periodic=False)
    return np.degrees(angles)


def backbone_torsions(traj) -> np.ndarray:
    """(frames, 2 * (n_phi + n_psi)) sin and cos of all backbone phi and psi torsions."""
    import mdtraj

    phi_idx, psi_idx = torsion_indices(traj.topology)
    idx = np.concatenate([phi_idx, psi_idx]) if len(phi_idx) + len(psi_idx) else np.zeros((0, 4), int)
    if len(idx) == 0:
        raise InputError("topology has no backbone torsions (not a peptide?)")
    angles = mdtraj.compute_dihedrals(traj, idx, periodic=False)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def residue_contacts(traj, cutoff_nm: Optional[float] = 0.45, scheme: str = "closest-heavy") -> np.ndarray:
    """(frames, pairs) residue-residue contacts (mdtraj.compute_contacts, all pairs at least 3 apart; for a chain
    shorter than that, all pairs). ``cutoff_nm`` None gives the distances (nm); otherwise 1.0 / 0.0 indicators."""
    import mdtraj

    if traj.topology.n_residues < 2:
        raise InputError("contacts need at least two residues")
    pairs = "all" if traj.topology.n_residues > 3 else [
        (i, j) for i in range(traj.topology.n_residues) for j in range(i + 1, traj.topology.n_residues)]
    distances, _ = mdtraj.compute_contacts(traj, pairs, scheme=scheme)
    return distances if cutoff_nm is None else (distances < cutoff_nm).astype(np.float64)


def heavy_atom_distances(traj, min_separation: int = 3) -> np.ndarray:
    """(frames, pairs) distances (nm) between heavy atoms at least ``min_separation`` atom indices apart."""
    import mdtraj

    heavy = [a.index for a in traj.topology.atoms if a.element is None or a.element.symbol != "H"]
    pairs = np.array([(i, j) for k, i in enumerate(heavy) for j in heavy[k + 1:] if j - i >= min_separation])
    if len(pairs) == 0:
        raise InputError("no heavy-atom pairs to measure")
    return mdtraj.compute_distances(traj, pairs, periodic=False)


def default_features(traj) -> tuple:
    """(features (frames, d), name): backbone torsions for peptides, heavy-atom distances otherwise."""
    try:
        return backbone_torsions(traj), "backbone torsions (sin, cos)"
    except InputError:
        return heavy_atom_distances(traj), "heavy-atom distances (nm)"
