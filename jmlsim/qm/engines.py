"""Quantum-chemistry single points: GFN2-xTB (tblite) and DFT (PySCF), in jmlsim's units.

``qm_energy_forces(numbers, positions_nm, method)`` returns the energy in kJ/mol and the forces in kJ/mol/nm.
Both engines are imported lazily: jmlsim runs without them, and asking for one that is missing raises
:class:`jmlsim.errors.InputError` naming the package to install.

Methods:
  "gfn2"  GFN2-xTB (Bannwarth, Ehlert, Grimme 2019) via tblite's Python interface; about 10 ms per call for
          a 22-atom molecule.
  "dft"   B3LYP-D3(BJ)/def2-SVP via PySCF (restricted Kohn-Sham for singlets, unrestricted otherwise), with
          density fitting (def2-universal-jkfit) for speed. The D3(BJ) correction needs the
          ``pyscf-dispersion`` package; without it the method is plain B3LYP/def2-SVP and
          :func:`dft_method_name` says so. Seconds to minutes per call: a reference, not a workhorse.
"""

from __future__ import annotations

import numpy as np

from jmlsim.errors import InputError

# CODATA 2018: 1 hartree in kJ/mol, 1 bohr in nm.
KJ_PER_MOL_PER_HARTREE = 2625.4996394798254
NM_PER_BOHR = 0.0529177210903

METHODS = ("gfn2", "dft")
DFT_FUNCTIONAL = "b3lyp"
DFT_BASIS = "def2-svp"


def _check_inputs(numbers, positions_nm, charge: int, multiplicity: int):
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    positions = np.asarray(positions_nm, dtype=np.float64)
    if positions.shape != (numbers.shape[0], 3):
        raise InputError(f"qm: positions have shape {positions.shape}, expected ({numbers.shape[0]}, 3)")
    if numbers.size == 0 or numbers.min() < 1 or numbers.max() > 86:
        raise InputError("qm: atomic numbers must lie in 1..86")
    if not np.all(np.isfinite(positions)):
        raise InputError("qm: positions contain non-finite values")
    multiplicity = int(multiplicity)
    if multiplicity < 1:
        raise InputError(f"qm: multiplicity must be >= 1, got {multiplicity}")
    electrons = int(numbers.sum()) - int(charge)
    if (electrons - (multiplicity - 1)) % 2 != 0 or electrons < multiplicity - 1:
        raise InputError(
            f"qm: {electrons} electrons (charge {charge}) cannot have multiplicity {multiplicity}")
    return numbers, positions, int(charge), multiplicity


def _gfn2(numbers, positions_nm, charge, multiplicity):
    import os
    import sys

    if "tblite.interface" not in sys.modules:
        # OpenMP threads cost more than they gain on molecules of tens of atoms (and thrash on a loaded
        # machine: 1.2 s instead of 0.06 s per alanine-dipeptide call); the user's own setting wins.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        from tblite.interface import Calculator
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError("qm: method 'gfn2' needs tblite (pip install tblite)") from exc
    calc = Calculator("GFN2-xTB", numbers, positions_nm / NM_PER_BOHR, charge=float(charge),
                      uhf=multiplicity - 1)
    calc.set("verbosity", 0)
    # Fermi smearing at 300 K is tblite's default; keep it (it makes SCF robust on stretched geometries).
    try:
        result = calc.singlepoint()
    except RuntimeError as exc:
        raise InputError(f"qm: GFN2-xTB SCF failed: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    energy = float(result.get("energy")) * KJ_PER_MOL_PER_HARTREE
    gradient = np.asarray(result.get("gradient"), dtype=np.float64)  # hartree/bohr
    return energy, -gradient * (KJ_PER_MOL_PER_HARTREE / NM_PER_BOHR)


def _has_d3() -> bool:
    try:
        import pyscf.dispersion  # noqa: F401
        return True
    except ImportError:
        return False


def dft_method_name() -> str:
    """The DFT model :func:`qm_energy_forces` uses with method="dft" in this environment."""
    return f"B3LYP{'-D3(BJ)' if _has_d3() else ''}/def2-SVP"


def _dft(numbers, positions_nm, charge, multiplicity):
    try:
        from pyscf import dft, gto
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError("qm: method 'dft' needs pyscf (pip install pyscf)") from exc
    atoms = [(int(z), tuple(float(c) for c in xyz)) for z, xyz in zip(numbers, positions_nm / NM_PER_BOHR)]
    mol = gto.M(atom=atoms, unit="Bohr", basis=DFT_BASIS, charge=charge, spin=multiplicity - 1, verbose=0)
    mf = dft.RKS(mol) if multiplicity == 1 else dft.UKS(mol)
    mf.xc = DFT_FUNCTIONAL
    if _has_d3():
        mf.disp = "d3bj"
    mf = mf.density_fit()
    mf.conv_tol = 1e-9
    energy = mf.kernel()
    if not mf.converged:
        raise InputError("qm: PySCF SCF did not converge")
    gradient = np.asarray(mf.nuc_grad_method().kernel(), dtype=np.float64)  # hartree/bohr
    return float(energy) * KJ_PER_MOL_PER_HARTREE, -gradient * (KJ_PER_MOL_PER_HARTREE / NM_PER_BOHR)


def qm_energy_forces(numbers, positions_nm, method: str = "gfn2", charge: int = 0, multiplicity: int = 1):
    """One QM single point.

    numbers: (n,) atomic numbers. positions_nm: (n, 3) in nm. method: "gfn2" or "dft" (see module docstring).
    charge: total charge in e. multiplicity: 2S+1.
    Returns (energy kJ/mol as a float, forces (n, 3) kJ/mol/nm as float64 numpy array).
    """
    if method not in METHODS:
        raise InputError(f"qm: unknown method {method!r} (choose from {', '.join(METHODS)})")
    numbers, positions, charge, multiplicity = _check_inputs(numbers, positions_nm, charge, multiplicity)
    engine = _gfn2 if method == "gfn2" else _dft
    return engine(numbers, positions, charge, multiplicity)
