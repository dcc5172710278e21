"""Reporters receive a :class:`jmlsim.simulation.Frame` after every chunk.

``TrajectoryReporter`` writes positions (one file per replica for batched runs); ``LogReporter`` writes a CSV of
step, time, potential, kinetic and total energy, temperature and volume. Both flush after every chunk and can
continue a file after a checkpoint (``keep_frames`` / ``keep_until_step``).
"""

from __future__ import annotations

import csv
import os
import tempfile
from typing import Optional

import numpy as np

from jmlsim.io.trajectory import open_writer


def replica_path(path: str, replica: Optional[int]) -> str:
    """traj.h5 -> traj_r3.h5 for replica 3 (unchanged for a single system)."""
    if replica is None:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}_r{replica}{ext}"


class TrajectoryReporter:
    """Positions to mdtraj-readable files; ``replicas`` R writes R files."""

    def __init__(self, path: str, topology, replicas: Optional[int] = None, keep_frames: Optional[int] = None):
        self.paths = [replica_path(path, r) for r in (range(replicas) if replicas else [None])]
        self.writers = [open_writer(p, topology, keep_frames) for p in self.paths]
        self.batched = replicas is not None

    def report(self, frame) -> None:
        for r, writer in enumerate(self.writers):
            pick = (lambda a: None if a is None else a[r]) if self.batched else (lambda a: a)
            writer.write(pick(frame.positions), frame.time, pick(frame.box))

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


class LogReporter:
    """CSV log; column names carry units ('_tau'/'_eps' suffixes in LJ reduced units)."""

    def __init__(self, path: str, reduced_units: bool = False, replicas: Optional[int] = None,
                 keep_until_step: Optional[int] = None):
        t, e, temp, vol = ("tau", "eps", "reduced", "sigma3") if reduced_units else ("ps", "kj_mol", "k", "nm3")
        self.columns = (["replica"] if replicas else []) + [
            "step", f"time_{t}", f"potential_{e}", f"kinetic_{e}", f"total_{e}", f"temperature_{temp}",
            f"volume_{vol}"]
        self.replicas = replicas
        if keep_until_step is not None and os.path.exists(path):
            _truncate_csv(path, keep_until_step)
            self.handle = open(path, "a", newline="")
            self.writer = csv.writer(self.handle)
        else:
            self.handle = open(path, "w", newline="")
            self.writer = csv.writer(self.handle)
            self.writer.writerow(self.columns)
        self.handle.flush()

    def report(self, frame) -> None:
        rows = range(self.replicas) if self.replicas else [None]
        for r in rows:
            pick = (lambda a: None if a is None else np.asarray(a)[r]) if r is not None else (lambda a: a)
            pot, kin = float(pick(frame.potential)), float(pick(frame.kinetic))
            vol = pick(frame.volume)
            row = ([r] if r is not None else []) + [frame.step, f"{frame.time:.6g}", f"{pot:.8g}", f"{kin:.8g}",
                                                    f"{pot + kin:.8g}", f"{float(pick(frame.temperature)):.6g}",
                                                    "" if vol is None else f"{float(vol):.8g}"]
            self.writer.writerow(row)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _truncate_csv(path: str, keep_until_step: int) -> None:
    """Drop rows logged after ``keep_until_step`` (atomic rewrite)."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    step_col = header.index("step")
    kept = [row for row in body if row and int(row[step_col]) <= keep_until_step]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".csv")
    with os.fdopen(fd, "w", newline="") as handle:
        csv.writer(handle).writerows([header] + kept)
    os.replace(tmp, path)
