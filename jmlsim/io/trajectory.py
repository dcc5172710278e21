"""Trajectory writers that mdtraj reads: HDF5 (default), DCD and XTC.

HDF5 is written with h5py in mdtraj's layout ("Pande" conventions 1.1: coordinates nm, time ps, cell lengths nm
and angles degrees, a JSON topology), into resizable datasets flushed after every chunk; ``mdtraj.load`` reads it
(mdtraj needs PyTables for that). DCD and XTC go through mdtraj's own writers. On resume a file is cut back to
the frames the checkpoint accounts for, so no frame is lost or doubled.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Optional

import numpy as np

from jmlsim import space

FORMATS = {".h5": "hdf5", ".hdf5": "hdf5", ".dcd": "dcd", ".xtc": "xtc"}


def trajectory_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"unknown trajectory format {ext!r} for {path} (use .h5, .dcd or .xtc)")
    return FORMATS[ext]


def generic_topology(n_atoms: int, element: str = "Ar", residue: str = "LJ"):
    """An mdtraj Topology of n_atoms single-atom residues (for systems without a chemical topology)."""
    import mdtraj

    top = mdtraj.Topology()
    chain = top.add_chain()
    el = mdtraj.element.get_by_symbol(element)
    for i in range(n_atoms):
        top.add_atom(residue, el, top.add_residue(residue, chain, resSeq=i + 1))
    return top


def _topology_json(topology) -> bytes:
    """mdtraj's JSON topology dict (what mdtraj.formats.HDF5TrajectoryFile stores)."""
    chains = []
    for chain in topology.chains:
        residues = []
        for res in chain.residues:
            atoms = [{"index": a.index, "name": a.name,
                      "element": a.element.symbol if a.element is not None else "VS"} for a in res.atoms]
            residues.append({"index": res.index, "name": res.name, "resSeq": res.resSeq, "segmentID": "",
                             "atoms": atoms})
        chains.append({"index": chain.index, "chain_id": getattr(chain, "chain_id", None) or "A",
                       "residues": residues})
    bonds = [[b[0].index, b[1].index] for b in topology.bonds]
    return json.dumps({"chains": chains, "bonds": bonds}).encode("ascii")


class HDF5Writer:
    """Append frames to an mdtraj-layout HDF5 file; ``keep_frames`` cuts an existing file back first."""

    def __init__(self, path: str, topology, keep_frames: Optional[int] = None):
        import h5py

        self.path = path
        if keep_frames is None:
            self.file = h5py.File(path, "w")
            root = self.file
            root.attrs.update({"conventions": "Pande", "conventionVersion": "1.1", "program": "jmlsim",
                               "programVersion": "0.1.0", "application": "jmlsim", "title": "jmlsim trajectory"})
            n = topology.n_atoms
            root.create_dataset("topology", data=np.array([_topology_json(topology)]))
            for name, shape, unit in (("coordinates", (n, 3), "nanometers"), ("time", (), "picoseconds")):
                self._dataset(name, shape, unit)
            # the unit cell only for periodic systems (created with the first box): a cell of zeros would make
            # mdtraj apply periodic images to an open system
        else:
            self.file = h5py.File(path, "a")
            for name in ("coordinates", "time", "cell_lengths", "cell_angles"):
                if name in self.file:
                    self.file[name].resize(keep_frames, axis=0)
        self.file.flush()

    def _dataset(self, name: str, shape: tuple, unit: str) -> None:
        ds = self.file.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape, dtype="f4",
                                      chunks=(1,) + shape if shape else (1024,))
        ds.attrs["units"] = unit

    def write(self, positions: np.ndarray, time: float, box: Optional[np.ndarray]) -> None:
        """positions (N, 3) nm, time ps, box (3, 3) nm or None (an open system: no unit cell is stored)."""
        f = self.file
        i = f["coordinates"].shape[0]
        names = ("coordinates", "time")
        if box is not None:
            if "cell_lengths" not in f:
                if i:
                    raise ValueError(f"{self.path}: a box appeared after {i} frames without one")
                self._dataset("cell_lengths", (3,), "nanometers")
                self._dataset("cell_angles", (3,), "degrees")
            names += ("cell_lengths", "cell_angles")
        for name in names:
            f[name].resize(i + 1, axis=0)
        f["coordinates"][i] = positions
        f["time"][i] = time
        if box is not None:
            lengths, angles = space.lengths_and_angles(box)
            f["cell_lengths"][i] = lengths
            f["cell_angles"][i] = angles
        f.flush()

    def close(self) -> None:
        self.file.close()


class MDTrajWriter:
    """DCD or XTC through mdtraj's writers (DCD wants Angstrom, XTC nm: converted here)."""

    def __init__(self, path: str, topology, keep_frames: Optional[int] = None):
        import mdtraj

        self.path = path
        self.kind = trajectory_format(path)
        cls = mdtraj.formats.DCDTrajectoryFile if self.kind == "dcd" else mdtraj.formats.XTCTrajectoryFile
        self.step = 0
        if not keep_frames:
            self.file = cls(path, "w", force_overwrite=True)
            return
        # mdtraj opens DCD and XTC files for reading or writing only, never appending: the kept frames go into a
        # new file that stays open and then replaces the old one (a crash before the replace leaves the old file)
        kept = mdtraj.load(path, top=topology)[:keep_frames]
        fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1], dir=os.path.dirname(os.path.abspath(path)))
        os.close(fd)
        try:
            self.file = cls(tmp, "w", force_overwrite=True)
            for k in range(kept.n_frames):
                box = None if kept.unitcell_vectors is None else kept.unitcell_vectors[k]
                self.write(kept.xyz[k], float(kept.time[k]), box)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def write(self, positions: np.ndarray, time: float, box: Optional[np.ndarray]) -> None:
        xyz = np.asarray(positions, np.float32)[None]
        if self.kind == "dcd":
            lengths, angles = space.lengths_and_angles(box) if box is not None else (None, None)
            self.file.write(xyz * 10.0, cell_lengths=None if lengths is None else lengths[None] * 10.0,
                            cell_angles=None if angles is None else angles[None])
        else:
            self.file.write(xyz, time=np.array([time], np.float32), step=np.array([self.step], np.int32),
                            box=None if box is None else np.asarray(box, np.float32)[None])
        self.step += 1
        if hasattr(self.file, "flush"):
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def open_writer(path: str, topology, keep_frames: Optional[int] = None):
    """A writer for path's format; keep_frames (resume) keeps that many existing frames and appends."""
    return HDF5Writer(path, topology, keep_frames) if trajectory_format(path) == "hdf5" else \
        MDTrajWriter(path, topology, keep_frames)
