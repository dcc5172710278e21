"""Label geometries with a QM engine and build a :class:`jmlsim.io.datasets.QMDataset` / HDF5 file from them.

Frames whose SCF fails (stretched geometries can defeat it) are dropped and counted, not fatal; a molecule whose
every frame fails raises the engine's last error (then the input, e.g. charge and multiplicity, is the problem).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable, Optional, Sequence

import numpy as np

from jmlsim.errors import InputError
from jmlsim.io.datasets import QMDataset, concatenate, save_hdf5

# (numbers, positions_nm, method, charge, multiplicity) -> (energy kJ/mol, forces (N, 3) kJ/mol/nm)
Engine = Callable[..., tuple]


@dataclasses.dataclass
class Labels:
    """Labels of one molecule's frames: energy (F,) kJ/mol, forces (F, N, 3) kJ/mol/nm, positions (F, N, 3) nm of
    the frames that succeeded, and the failures as (frame index, message)."""

    positions: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    failures: list


def _default_engine() -> Engine:
    from jmlsim.qm.engines import qm_energy_forces
    return qm_energy_forces


def method_description(method: str) -> str:
    """The QM model behind a method name, as recorded in the dataset (e.g. "GFN2-xTB (tblite)"); InputError if
    the method's package is not installed (checked without importing it)."""
    import importlib.util

    package = {"gfn2": "tblite", "dft": "pyscf"}.get(method)
    if package is None:
        raise InputError(f"qm: unknown method {method!r} (choose from gfn2, dft)")
    if importlib.util.find_spec(package) is None:
        raise InputError(f"qm: method {method!r} needs {package} (pip install {package})")
    if method == "gfn2":
        return "GFN2-xTB (tblite)"
    from jmlsim.qm.engines import dft_method_name
    return f"{dft_method_name()} (PySCF)"


def _label_one(engine: Engine, atomic_numbers, x, method, charge, multiplicity) -> tuple:
    """("ok", energy, forces) or ("failed", message) for one frame (the engine reports SCF failures as
    InputError)."""
    try:
        e, f = engine(atomic_numbers, x, method=method, charge=charge, multiplicity=multiplicity)
    except InputError as exc:
        return ("failed", str(exc))
    f = np.asarray(f, np.float64)
    if not (np.isfinite(e) and np.all(np.isfinite(f))):
        return ("failed", "non-finite energy or forces")
    return ("ok", float(e), f)


def _worker_init() -> None:
    # One OpenMP thread per worker process: processes over frames scale better than threads inside one small
    # molecule's SCF. Set before the engine's library loads (it is imported lazily, on the first frame).
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["OPENBLAS_NUM_THREADS"] = "1"


def _label_one_default(args: tuple) -> tuple:
    return _label_one(_default_engine(), *args)


def label_frames(atomic_numbers: np.ndarray, positions_nm: np.ndarray, method: str = "gfn2", charge: int = 0,
                 multiplicity: int = 1, bar=None, engine: Optional[Engine] = None, workers: int = 1) -> Labels:
    """QM energies and forces of ``positions_nm`` (F, N, 3) for one molecule (``atomic_numbers`` (N,)).

    bar: an optional tqdm bar advanced once per frame. engine: defaults to
    :func:`jmlsim.qm.engines.qm_energy_forces`. workers: processes labelling frames in parallel (default engine
    only; each uses one OpenMP thread). Frames keep their order whatever the number of workers.
    """
    positions_nm = np.asarray(positions_nm, np.float64)
    z = np.asarray(atomic_numbers)
    if workers > 1 and engine is None and len(positions_nm) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent may hold JAX/OpenMP threads that a forked child would inherit broken.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init) as pool:
            jobs = [(z, x, method, charge, multiplicity) for x in positions_nm]
            outcomes = []
            for outcome in pool.map(_label_one_default, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                outcomes.append(outcome)
                if bar is not None:
                    bar.update(1)
    else:
        engine = engine or _default_engine()
        outcomes = []
        for x in positions_nm:  # one QM single point per frame: milliseconds to minutes, not a hot loop
            outcomes.append(_label_one(engine, z, x, method, charge, multiplicity))
            if bar is not None:
                bar.update(1)
    kept = [i for i, o in enumerate(outcomes) if o[0] == "ok"]
    failures = [(i, o[1]) for i, o in enumerate(outcomes) if o[0] != "ok"]
    if not kept:
        raise InputError(failures[-1][1] if failures else f"qm: no frames to label with {method}")
    n = positions_nm.shape[1]
    return Labels(positions=positions_nm[kept], energy=np.asarray([outcomes[i][1] for i in kept]),
                  forces=np.stack([outcomes[i][2] for i in kept]).reshape(len(kept), n, 3), failures=failures)


def to_dataset(atomic_numbers: Sequence[np.ndarray], labels: Sequence[Labels], source: str = "<qm>") -> QMDataset:
    """One padded :class:`QMDataset` from the labels of several molecules (in order)."""
    parts = []
    for z, lab in zip(atomic_numbers, labels):
        frames, n = lab.energy.shape[0], len(z)
        parts.append(QMDataset(atomic_numbers=np.broadcast_to(np.asarray(z, np.int32), (frames, n)).copy(),
                               positions=lab.positions, energy=lab.energy, forces=lab.forces,
                               atom_mask=np.ones((frames, n), bool), box=None, source=source))
    return concatenate(parts, source=source)


def write_dataset(dataset: QMDataset, path: str, attrs: Optional[dict] = None) -> None:
    """Write ``dataset`` with :func:`jmlsim.io.datasets.save_hdf5`, plus provenance ``attrs`` on the root
    (method, inputs, sampling), atomically: the file appears complete or not at all."""
    import h5py

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.qm{os.getpid()}.h5")
    try:
        save_hdf5(dataset, tmp)
        if attrs:
            with h5py.File(tmp, "a") as h5:
                for key, value in attrs.items():
                    h5.attrs[key] = value
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def progress_bar(total: int, method: str, enabled: bool = True):
    """A tqdm bar over frames on stderr (None when disabled)."""
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="frame", desc=f"{method} labels", file=sys.stderr, dynamic_ncols=True)
