"""Quantum-chemistry datasets for training neural potentials: rMD17 ``.npz`` and jmlsim's HDF5 layout.

Inside jmlsim a dataset is a :class:`QMDataset` of padded arrays in OpenMM's units (nm, kJ/mol, kJ/mol/nm), one
row per frame (conformer). Molecules of different sizes share one set of arrays: each frame is padded to the
largest atom count with atomic number 0 and ``atom_mask`` False. Conversion from the files' units happens in the
readers and writers here and nowhere else.

Readers validate what they read and raise :class:`jmlsim.errors.InputError` with a one-line message naming the
file and the key: missing keys, shapes that disagree (frames or atoms), atomic numbers outside 1..118 and
non-finite coordinates or labels.

HDF5 layout (``save_hdf5`` / ``load_hdf5``; ``jmlsim qm label`` writes the same)::

    /                     attrs: format = "jmlsim-qm-1", length_unit = "nm", energy_unit = "kJ/mol",
                                 force_unit = "kJ/mol/nm", n_frames = F
    /molecules/<name>/    one group per distinct molecule (same atomic numbers in the same order)
        atomic_numbers    (N,) int32
        positions         (f, N, 3) float64, length_unit
        energy            (f,) float64, energy_unit
        forces            (f, N, 3) float64, force_unit
        box               (f, 3, 3) float64, length_unit, rows = lattice vectors (only for periodic frames)
        frame_index       (f,) int64, each frame's position in the whole dataset (restores the order)

Readers accept ``length_unit`` nm or angstrom, ``energy_unit`` kJ/mol, kcal/mol or eV and ``force_unit`` the
matching energy per length, and convert.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np

from jmlsim import units
from jmlsim.errors import InputError

MAX_ATOMIC_NUMBER = 118
HDF5_FORMAT = "jmlsim-qm-1"

_LENGTH_TO_NM = {"nm": 1.0, "angstrom": units.NM_PER_ANGSTROM, "A": units.NM_PER_ANGSTROM}
_ENERGY_TO_KJ = {"kJ/mol": 1.0, "kcal/mol": units.KJ_PER_KCAL, "eV": units.KJ_PER_MOL_PER_EV}


class Batch(NamedTuple):
    """A fixed-shape batch of frames (B = batch size, N = the dataset's padded atom count).

    atomic_numbers (B, N) int32 (0 for padding); positions (B, N, 3) nm; energy (B,) kJ/mol;
    forces (B, N, 3) kJ/mol/nm; atom_mask (B, N) bool; frame_mask (B,) bool, False for the padding frames that
    fill the last batch; box (B, 3, 3) nm or None.
    """

    atomic_numbers: np.ndarray
    positions: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    atom_mask: np.ndarray
    frame_mask: np.ndarray
    box: Optional[np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class QMDataset:
    """Frames of molecules with reference energies and forces, padded to a common atom count.

    atomic_numbers: (F, N) int32, 0 in padding. positions: (F, N, 3) float64 nm. energy: (F,) float64 kJ/mol.
    forces: (F, N, 3) float64 kJ/mol/nm (0 in padding). atom_mask: (F, N) bool. box: (F, 3, 3) nm (rows are
    lattice vectors) or None for molecules in vacuum. source: the file it came from (for error messages).
    """

    atomic_numbers: np.ndarray
    positions: np.ndarray
    energy: np.ndarray
    forces: np.ndarray
    atom_mask: np.ndarray
    box: Optional[np.ndarray] = None
    source: str = "<memory>"

    def __post_init__(self):
        f, n = np.shape(self.atomic_numbers)
        expected = {"positions": (f, n, 3), "energy": (f,), "forces": (f, n, 3), "atom_mask": (f, n)}
        if self.box is not None:
            expected["box"] = (f, 3, 3)
        for key, shape in expected.items():
            if np.shape(getattr(self, key)) != shape:
                raise InputError(f"{self.source}: {key} has shape {np.shape(getattr(self, key))}, expected {shape}")

    def __len__(self) -> int:
        return int(self.energy.shape[0])

    @property
    def n_frames(self) -> int:
        return len(self)

    @property
    def max_atoms(self) -> int:
        """Padded atom count N."""
        return int(self.atomic_numbers.shape[1])

    @property
    def n_atoms(self) -> np.ndarray:
        """(F,) real atom count per frame."""
        return self.atom_mask.sum(axis=1)

    @property
    def elements(self) -> tuple:
        """Sorted atomic numbers present in the dataset."""
        return tuple(int(z) for z in np.unique(self.atomic_numbers[self.atom_mask]))

    def subset(self, idx) -> "QMDataset":
        """The frames ``idx`` (an index array, slice or boolean mask), in that order."""
        idx = np.arange(len(self))[idx]
        return dataclasses.replace(
            self, atomic_numbers=self.atomic_numbers[idx], positions=self.positions[idx], energy=self.energy[idx],
            forces=self.forces[idx], atom_mask=self.atom_mask[idx],
            box=None if self.box is None else self.box[idx])

    def split(self, fraction: float, seed: int = 0) -> tuple["QMDataset", "QMDataset"]:
        """Random split into (rest, held out) with ``fraction`` of the frames (at least one) held out."""
        if not 0.0 < fraction < 1.0 or len(self) < 2:
            raise InputError(f"{self.source}: cannot split {len(self)} frame(s) with fraction {fraction}")
        order = np.random.default_rng(seed).permutation(len(self))
        n_out = max(1, int(round(fraction * len(self))))
        return self.subset(np.sort(order[n_out:])), self.subset(np.sort(order[:n_out]))

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[Batch]:
        """Yield fixed-shape batches of ``batch_size`` frames; the last one is filled with masked copies of
        frame 0 (``frame_mask`` False), so a jitted step sees one shape only. ``shuffle`` permutes the frames with
        a NumPy generator seeded by ``seed`` (pass e.g. the epoch number for a reproducible order per epoch)."""
        if batch_size < 1:
            raise InputError(f"batch size must be positive, got {batch_size}")
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for start in range(0, len(self), batch_size):
            idx = order[start:start + batch_size]
            n_real = len(idx)
            idx = np.concatenate([idx, np.full(batch_size - n_real, order[0])])
            frame_mask = np.arange(batch_size) < n_real
            yield Batch(atomic_numbers=self.atomic_numbers[idx], positions=self.positions[idx],
                        energy=self.energy[idx], forces=self.forces[idx], atom_mask=self.atom_mask[idx],
                        frame_mask=frame_mask, box=None if self.box is None else self.box[idx])

    def n_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)


def concatenate(datasets: Sequence[QMDataset], source: Optional[str] = None) -> QMDataset:
    """Join datasets, padding every frame to the largest atom count (boxes must be all present or all absent)."""
    if not datasets:
        raise InputError("no datasets to concatenate")
    n = max(d.max_atoms for d in datasets)
    with_box = [d.box is not None for d in datasets]
    if any(with_box) and not all(with_box):
        raise InputError(f"{source or datasets[0].source}: cannot mix periodic and non-periodic frames")

    def pad(a, fill=0):
        width = [(0, 0), (0, n - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
        return np.pad(a, width, constant_values=fill)

    return QMDataset(
        atomic_numbers=np.concatenate([pad(d.atomic_numbers) for d in datasets]),
        positions=np.concatenate([pad(d.positions) for d in datasets]),
        energy=np.concatenate([d.energy for d in datasets]),
        forces=np.concatenate([pad(d.forces) for d in datasets]),
        atom_mask=np.concatenate([pad(d.atom_mask, False) for d in datasets]),
        box=np.concatenate([d.box for d in datasets]) if all(with_box) else None,
        source=source or datasets[0].source)


# ---------------------------------------------------------------------------------------------- validation

def check_atomic_numbers(z: np.ndarray, mask: np.ndarray, path: str, key: str) -> None:
    """InputError unless every masked-in atomic number is an integer element 1..118."""
    z = np.asarray(z)
    if not np.issubdtype(z.dtype, np.integer):
        if not np.all(np.isfinite(z)) or np.any(z != np.round(z)):
            raise InputError(f"{path}: {key} must be integer atomic numbers")
    bad = np.asarray(z)[np.asarray(mask, bool) & ((z < 1) | (z > MAX_ATOMIC_NUMBER))]
    if bad.size:
        raise InputError(f"{path}: {key} has unknown element(s) {sorted(set(int(b) for b in bad))} "
                         f"(atomic numbers must be 1..{MAX_ATOMIC_NUMBER})")


def check_elements_known(z: np.ndarray, mask: np.ndarray, elements: Sequence[int], path: str,
                         key: str = "atomic_numbers") -> None:
    """InputError if an atom's element is not one of a model's ``elements``."""
    present = set(int(v) for v in np.unique(np.asarray(z)[np.asarray(mask, bool)]))
    missing = sorted(present - set(int(e) for e in elements))
    if missing:
        raise InputError(f"{path}: {key} has element(s) {missing} that the model does not know "
                         f"(it knows {sorted(int(e) for e in elements)})")


def _check_finite(a: np.ndarray, path: str, key: str) -> None:
    if not np.all(np.isfinite(a)):
        raise InputError(f"{path}: {key} contains NaN or infinite values "
                         f"(first at index {tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])})")


def _check_shape(a: np.ndarray, shape: tuple, path: str, key: str, meaning: str) -> None:
    if a.shape != shape:
        raise InputError(f"{path}: {key} has shape {a.shape}, expected {shape} ({meaning})")


# ---------------------------------------------------------------------------------------------- rMD17 npz

# rMD17 key names, then the original MD17 ones.
_RMD17_KEYS = {"z": ("nuclear_charges", "z"), "R": ("coords", "R"), "E": ("energies", "E"), "F": ("forces", "F")}


def load_rmd17(path: str) -> QMDataset:
    """Read an rMD17 ``.npz`` (``nuclear_charges`` (N,), ``coords`` (F, N, 3) Å, ``energies`` (F,) kcal/mol,
    ``forces`` (F, N, 3) kcal/mol/Å) or an original MD17 one (``z``, ``R``, ``E`` (F,) or (F, 1), ``F``).

    Returns a :class:`QMDataset` in nm, kJ/mol and kJ/mol/nm.
    """
    path = os.fspath(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    if not hasattr(data, "files"):
        raise InputError(f"{path}: not an .npz archive (a single array)")
    with data:
        arrays = {}
        for role, names in _RMD17_KEYS.items():
            key = next((k for k in names if k in data.files), None)
            if key is None:
                raise InputError(f"{path}: missing key {names[0]!r} (or MD17's {names[1]!r}); "
                                 f"found {sorted(data.files)}")
            try:
                arrays[role] = (key, np.asarray(data[key]))
            except ValueError as exc:  # object arrays need pickle, which is never allowed
                raise InputError(f"{path}: key {key!r} cannot be read without pickle ({exc})") from None
    (kz, z), (kr, r), (ke, e), (kf, f) = arrays["z"], arrays["R"], arrays["E"], arrays["F"]
    if z.ndim != 1:
        raise InputError(f"{path}: {kz} has shape {z.shape}, expected (n_atoms,)")
    n = z.shape[0]
    if r.ndim != 3 or r.shape[1:] != (n, 3):
        raise InputError(f"{path}: {kr} has shape {r.shape}, expected (n_frames, {n}, 3) "
                         f"({n} atoms from {kz})")
    frames = r.shape[0]
    if e.shape == (frames, 1):
        e = e[:, 0]
    _check_shape(e, (frames,), path, ke, f"{frames} frames from {kr}")
    _check_shape(f, (frames, n, 3), path, kf, f"{frames} frames and {n} atoms")
    check_atomic_numbers(z, np.ones(n, bool), path, kz)
    for key, a in ((kr, r), (ke, e), (kf, f)):
        _check_finite(a, path, key)
    e_kj = e.astype(np.float64) * units.KJ_PER_KCAL
    # kcal/mol/Å -> kJ/mol/nm: times 4.184 per kcal, times 10 Å per nm
    f_kj_nm = f.astype(np.float64) * (units.KJ_PER_KCAL * units.ANGSTROM_PER_NM)
    return QMDataset(
        atomic_numbers=np.broadcast_to(z.astype(np.int32), (frames, n)).copy(),
        positions=r.astype(np.float64) * units.NM_PER_ANGSTROM,
        energy=e_kj, forces=f_kj_nm, atom_mask=np.ones((frames, n), bool), box=None, source=path)


# ---------------------------------------------------------------------------------------------- HDF5

def save_hdf5(dataset: QMDataset, path: str) -> None:
    """Write ``dataset`` in the layout of the module docstring (one group per distinct molecule), atomically."""
    import h5py

    path = os.fspath(path)
    groups: dict = {}
    for i in range(len(dataset)):
        z = dataset.atomic_numbers[i][dataset.atom_mask[i]]
        groups.setdefault(tuple(int(v) for v in z), []).append(i)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as h5:
            h5.attrs.update({"format": HDF5_FORMAT, "length_unit": "nm", "energy_unit": "kJ/mol",
                             "force_unit": "kJ/mol/nm", "n_frames": len(dataset)})
            top = h5.create_group("molecules")
            for k, (z, frames) in enumerate(groups.items()):
                frames = np.asarray(frames)
                atoms = dataset.atom_mask[frames[0]]
                g = top.create_group(f"mol{k:06d}")
                g.create_dataset("atomic_numbers", data=np.asarray(z, np.int32))
                g.create_dataset("positions", data=dataset.positions[frames][:, atoms])
                g.create_dataset("energy", data=dataset.energy[frames])
                g.create_dataset("forces", data=dataset.forces[frames][:, atoms])
                if dataset.box is not None:
                    g.create_dataset("box", data=dataset.box[frames])
                g.create_dataset("frame_index", data=frames.astype(np.int64))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _unit_factor(h5, attr: str, table: dict, path: str, per_length: bool = False) -> float:
    unit = h5.attrs.get(attr)
    if isinstance(unit, bytes):
        unit = unit.decode()
    if per_length:
        energy, _, length = unit.rpartition("/") if isinstance(unit, str) else ("", "", "")
        if energy in _ENERGY_TO_KJ and length in _LENGTH_TO_NM:
            return _ENERGY_TO_KJ[energy] / _LENGTH_TO_NM[length]
    elif unit in table:
        return table[unit]
    raise InputError(f"{path}: attribute {attr!r} = {unit!r} is not a known unit")


def load_hdf5(path: str) -> QMDataset:
    """Read an HDF5 dataset written by :func:`save_hdf5` (or ``jmlsim qm label``); converts to nm, kJ/mol."""
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None
    with h5:
        fmt = h5.attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt != HDF5_FORMAT:
            raise InputError(f"{path}: attribute 'format' is {fmt!r}, expected {HDF5_FORMAT!r}")
        to_nm = _unit_factor(h5, "length_unit", _LENGTH_TO_NM, path)
        to_kj = _unit_factor(h5, "energy_unit", _ENERGY_TO_KJ, path)
        to_kj_nm = _unit_factor(h5, "force_unit", {}, path, per_length=True)
        if "molecules" not in h5 or len(h5["molecules"]) == 0:
            raise InputError(f"{path}: missing group 'molecules' (or it is empty)")
        parts, order = [], []
        for name, g in h5["molecules"].items():
            where = f"molecules/{name}"
            for key in ("atomic_numbers", "positions", "energy", "forces", "frame_index"):
                if key not in g:
                    raise InputError(f"{path}: missing key '{where}/{key}'")
            z = np.asarray(g["atomic_numbers"])
            if z.ndim != 1:
                raise InputError(f"{path}: {where}/atomic_numbers has shape {z.shape}, expected (n_atoms,)")
            n = z.shape[0]
            r = np.asarray(g["positions"], np.float64)
            if r.ndim != 3 or r.shape[1:] != (n, 3):
                raise InputError(f"{path}: {where}/positions has shape {r.shape}, expected (n_frames, {n}, 3)")
            frames = r.shape[0]
            e = np.asarray(g["energy"], np.float64)
            f = np.asarray(g["forces"], np.float64)
            idx = np.asarray(g["frame_index"])
            _check_shape(e, (frames,), path, f"{where}/energy", f"{frames} frames")
            _check_shape(f, (frames, n, 3), path, f"{where}/forces", f"{frames} frames and {n} atoms")
            _check_shape(idx, (frames,), path, f"{where}/frame_index", f"{frames} frames")
            box = None
            if "box" in g:
                box = np.asarray(g["box"], np.float64)
                _check_shape(box, (frames, 3, 3), path, f"{where}/box", f"{frames} frames")
                _check_finite(box, path, f"{where}/box")
                box = box * to_nm
            check_atomic_numbers(z, np.ones(n, bool), path, f"{where}/atomic_numbers")
            for key, a in (("positions", r), ("energy", e), ("forces", f)):
                _check_finite(a, path, f"{where}/{key}")
            parts.append(QMDataset(
                atomic_numbers=np.broadcast_to(z.astype(np.int32), (frames, n)).copy(), positions=r * to_nm,
                energy=e * to_kj, forces=f * to_kj_nm, atom_mask=np.ones((frames, n), bool), box=box,
                source=path))
            order.append(idx)
    data = concatenate(parts, source=path)
    order = np.concatenate(order)
    if not np.array_equal(np.sort(order), np.arange(len(order))):
        raise InputError(f"{path}: frame_index values are not a permutation of 0..{len(order) - 1}")
    return data.subset(np.argsort(order))


def load_dataset(path: str) -> QMDataset:
    """Read a dataset by extension: ``.npz`` (rMD17/MD17) or ``.h5``/``.hdf5`` (jmlsim layout)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".npz":
        return load_rmd17(path)
    if ext in (".h5", ".hdf5"):
        return load_hdf5(path)
    raise InputError(f"{path}: unknown dataset format {ext!r} (use .npz for rMD17 or .h5 for jmlsim HDF5)")


# ---------------------------------------------------------------------------------------------- normalisation

def element_counts(dataset: QMDataset, elements: Sequence[int]) -> np.ndarray:
    """(F, n_elements) number of atoms of each element per frame (InputError for an element not listed)."""
    check_elements_known(dataset.atomic_numbers, dataset.atom_mask, elements, dataset.source)
    z = np.where(dataset.atom_mask, dataset.atomic_numbers, -1)
    return np.stack([(z == e).sum(axis=1) for e in elements], axis=1).astype(np.float64)


def element_shifts(dataset: QMDataset, elements: Sequence[int]) -> np.ndarray:
    """(n_elements,) per-element energy shifts in kJ/mol: the least-squares fit of energy on element counts.

    With a single molecule the counts are collinear; the minimum-norm solution is returned then (any solution
    gives the same per-frame sum, which is all training needs).
    """
    counts = element_counts(dataset, elements)
    shifts, *_ = np.linalg.lstsq(counts, dataset.energy, rcond=None)
    return shifts


def energy_scale(dataset: QMDataset, elements: Sequence[int], shifts: np.ndarray, use_forces: bool = True) -> float:
    """A scale in kJ/mol for the network output: the RMS of the force components (kJ/mol/nm, read as kJ/mol per
    unit length) when ``use_forces``, else the RMS of the per-atom energy residual after the shifts."""
    if use_forces:
        scale = float(np.sqrt(np.mean(dataset.forces[dataset.atom_mask] ** 2)))
    else:
        residual = dataset.energy - element_counts(dataset, elements) @ shifts
        scale = float(np.sqrt(np.mean((residual / dataset.n_atoms) ** 2)))
    return scale if np.isfinite(scale) and scale > 0 else 1.0
