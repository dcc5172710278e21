"""An ASE calculator around a NeuralPotential (ASE is optional: imported only when a calculator is made).

ASE works in eV and Å; jmlsim in kJ/mol and nm. The conversion happens here:
energy eV = kJ/mol / 96.485..., forces eV/Å = kJ/mol/nm / 964.85..., stress eV/Å^3 = kJ/mol/nm^3 / 96485.3...
"""

from __future__ import annotations

import numpy as np

from jmlsim import units
from jmlsim.errors import InputError


def make_calculator(potential):
    """An ``ase.calculators.calculator.Calculator`` computing energy, forces (and stress for periodic cells)."""
    try:
        from ase.calculators.calculator import Calculator, all_changes
    except ImportError:
        raise InputError("the ASE calculator needs the 'ase' package (pip install ase)") from None

    ev = units.KJ_PER_MOL_PER_EV

    class JmlsimCalculator(Calculator):
        implemented_properties = ["energy", "free_energy", "forces", "stress"]

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.potential = potential

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            z = self.atoms.get_atomic_numbers()
            positions = self.atoms.get_positions() * units.NM_PER_ANGSTROM
            periodic = bool(np.all(self.atoms.pbc))
            if np.any(self.atoms.pbc) and not periodic:
                raise InputError("ASE calculator: mixed periodicity (pbc) is not supported")
            box = np.asarray(self.atoms.get_cell()) * units.NM_PER_ANGSTROM if periodic else None
            energy, forces = self.potential.energy_and_forces(positions, z, box=box)
            self.results["energy"] = self.results["free_energy"] = float(energy) / ev
            self.results["forces"] = np.asarray(forces, np.float64) / ev * units.NM_PER_ANGSTROM
            if periodic and "stress" in properties:
                sigma = np.asarray(self.potential.stress(positions, z, box), np.float64)
                sigma = sigma / ev * units.NM_PER_ANGSTROM**3  # kJ/mol/nm^3 -> eV/Å^3
                self.results["stress"] = sigma[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]  # Voigt order

    return JmlsimCalculator()
