"""Trajectory storage at scale: bytes per frame and write speed of the formats and compression choices.

The data: DHFR (JAC benchmark, 23,558 atoms) with a random-walk trajectory (every atom moves by a Gaussian step of
``--step-nm`` per frame, a stand-in for thermal motion between saved frames; real MD compresses similarly because
what compressors exploit is the limited number of significant digits, not correlations between frames).

Candidates (all write the same frames; each is timed end to end, file closed):

* DCD, float32 uncompressed (mdtraj) — the **reference**, measured in the same run;
* XTC at mdtraj's fixed precision 1000 (0.001 nm), and, if MDAnalysis is installed, XTC at precision 100 / 1000 /
  10000;
* HDF5 (h5py), float32: frames-per-chunk 1 / 10 / 100, compression none / gzip level 4 / lzf, with the shuffle
  filter where compressed;
* HDF5 with h5py's scale-offset filter at 3 decimal digits (lossy to about 0.001 nm, like XTC 1000) + gzip;
* jmlsim's own HDF5 writer (``jmlsim.io.trajectory.HDF5Writer``, mdtraj layout, frame-by-frame, flushed after every
  frame as the run loop does).

For each: bytes per frame, write throughput (frames/s, MB/s of raw float32 input) and the largest coordinate
error after reading back (nm). Run from the repository root::

    python benchmarks/storage.py                 # 200 frames
    python benchmarks/storage.py --frames 50 --json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PDB = os.path.join(ROOT, "tests", "data", "amber", "dhfr", "system.pdb")


def random_walk(n_frames: int, step_nm: float, seed: int = 0):
    import mdtraj

    pdb = mdtraj.load(PDB)
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, step_nm, (n_frames, pdb.n_atoms, 3)).astype(np.float32)
    steps[0] = 0.0
    return pdb.topology, pdb.xyz[0][None] + np.cumsum(steps, axis=0)


def _h5py_writer(chunk_frames: int, compression, shuffle: bool = False, scaleoffset=None):
    def write(path, xyz, topology):
        import h5py

        n, a, _ = xyz.shape
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("coordinates", shape=(0, a, 3), maxshape=(None, a, 3), dtype="f4",
                                  chunks=(min(chunk_frames, n), a, 3), compression=compression,
                                  shuffle=shuffle, scaleoffset=scaleoffset)
            # append in blocks of one chunk, as a run loop that buffers chunk_frames frames would
            for i in range(0, n, chunk_frames):
                block = xyz[i:i + chunk_frames]
                ds.resize(i + len(block), axis=0)
                ds[i:i + len(block)] = block
        return path

    def read(path, topology):
        import h5py

        with h5py.File(path, "r") as f:
            return f["coordinates"][:]
    return write, read, ".h5"


def _dcd():
    def write(path, xyz, topology):
        import mdtraj

        with mdtraj.formats.DCDTrajectoryFile(path, "w", force_overwrite=True) as f:
            f.write(xyz * 10.0)  # Angstrom
    def read(path, topology):
        import mdtraj

        with mdtraj.formats.DCDTrajectoryFile(path) as f:
            return f.read()[0] / 10.0
    return write, read, ".dcd"


def _xtc_mdtraj():
    def write(path, xyz, topology):
        import mdtraj

        with mdtraj.formats.XTCTrajectoryFile(path, "w", force_overwrite=True) as f:
            f.write(xyz, time=np.arange(len(xyz), dtype=np.float32))
    def read(path, topology):
        import mdtraj

        with mdtraj.formats.XTCTrajectoryFile(path) as f:
            return f.read()[0]
    return write, read, ".xtc"


def _xtc_mdanalysis(precision: int):
    def write(path, xyz, topology):
        from MDAnalysis.lib.formats.libmdaxdr import XTCFile

        box = np.eye(3, dtype=np.float32) * 10.0  # nm: the low-level XDR writer takes XTC's own units
        with XTCFile(path, "w") as f:
            for i, frame in enumerate(xyz):
                f.write(frame, box, i, float(i), precision=precision)
    def read(path, topology):
        import mdtraj

        with mdtraj.formats.XTCTrajectoryFile(path) as f:
            return f.read()[0]
    return write, read, ".xtc"


def _jmlsim_hdf5():
    def write(path, xyz, topology):
        from jmlsim.io.trajectory import HDF5Writer

        w = HDF5Writer(path, topology)
        for i, frame in enumerate(xyz):
            w.write(frame, float(i), None)
        w.close()
    def read(path, topology):
        import h5py

        with h5py.File(path, "r") as f:
            return f["coordinates"][:]
    return write, read, ".h5"


def candidates(include_mdanalysis: bool):
    out = [("DCD float32 (reference)", _dcd()), ("XTC precision 1000 (mdtraj)", _xtc_mdtraj())]
    if include_mdanalysis:
        out += [(f"XTC precision {p} (MDAnalysis)", _xtc_mdanalysis(p)) for p in (100, 1000, 10000)]
    for chunk in (1, 10, 100):
        out.append((f"HDF5 f32 chunk {chunk} none", _h5py_writer(chunk, None)))
        out.append((f"HDF5 f32 chunk {chunk} gzip4+shuffle", _h5py_writer(chunk, "gzip", True)))
        out.append((f"HDF5 f32 chunk {chunk} lzf+shuffle", _h5py_writer(chunk, "lzf", True)))
    out.append(("HDF5 scaleoffset 3 digits + gzip4, chunk 10", _h5py_writer(10, "gzip", False, 3)))
    out.append(("jmlsim HDF5Writer (per frame, flushed)", _jmlsim_hdf5()))
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--step-nm", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many writes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        import MDAnalysis  # noqa: F401
        have_mda = True
    except ImportError:
        have_mda = False
    topology, xyz = random_walk(args.frames, args.step_nm)
    raw_mb = xyz.nbytes / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (write, read, ext) in candidates(have_mda):
            path = os.path.join(tmp, "t" + ext)
            best = np.inf
            for _ in range(args.repeats):
                if os.path.exists(path):
                    os.remove(path)
                t0 = time.perf_counter()
                write(path, xyz, topology)
                best = min(best, time.perf_counter() - t0)
            size = os.path.getsize(path)
            back = read(path, topology)
            err = float(np.max(np.abs(back.reshape(xyz.shape) - xyz)))
            rows.append({"format": name, "bytes_per_frame": size / args.frames, "frames_per_s": args.frames / best,
                         "mb_per_s_raw": raw_mb / best, "max_error_nm": err})
    ref = rows[0]
    print(f"# {args.frames} frames of {xyz.shape[1]} atoms (DHFR), random walk {args.step_nm} nm/frame; "
          f"raw float32 {xyz.shape[1] * 12} bytes/frame; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.node()}, {os.cpu_count()} CPUs; MDAnalysis XTC precisions: {'yes' if have_mda else 'not installed'}")
    print(f"{'format':46s} {'bytes/frame':>12s} {'vs DCD':>7s} {'frames/s':>9s} {'MB/s raw':>9s} {'max err nm':>11s}")
    for r in rows:
        print(f"{r['format']:46s} {r['bytes_per_frame']:12.0f} {r['bytes_per_frame'] / ref['bytes_per_frame']:7.3f} "
              f"{r['frames_per_s']:9.1f} {r['mb_per_s_raw']:9.1f} {r['max_error_nm']:11.2e}")
    result = {"atoms": int(xyz.shape[1]), "frames": args.frames, "rows": rows}
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
