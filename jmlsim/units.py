"""Units. jmlsim works in OpenMM's units everywhere inside:

    length nm, time ps, energy kJ/mol, mass amu (g/mol), charge e, temperature K.

Conversion happens only at I/O borders (file readers/writers, CLI flags), and names that carry another
unit say so (``timestep_fs``, ``force_mae_mev_per_angstrom``).

Lennard-Jones fluids are run in reduced units (sigma = epsilon = m = k_B = 1); ``ARGON`` maps them onto
argon for reporting figures such as ns/day.
"""

from __future__ import annotations

import dataclasses

# CODATA 2018 via OpenMM's constants: N_A * k_B in kJ/mol/K.
BOLTZMANN_KJ_PER_MOL_K = 0.00831446261815324
AVOGADRO = 6.02214076e23

NM_PER_ANGSTROM = 0.1
ANGSTROM_PER_NM = 10.0
PS_PER_FS = 1e-3
FS_PER_PS = 1e3
KJ_PER_KCAL = 4.184
KCAL_PER_KJ = 1.0 / KJ_PER_KCAL
KJ_PER_MOL_PER_EV = 96.48533212331002  # kJ/mol in one eV per particle
MEV_PER_KJ_PER_MOL = 1000.0 / KJ_PER_MOL_PER_EV
BAR_TO_KJ_PER_MOL_NM3 = 0.0602214076  # 1 bar * 1 nm^3 * N_A, in kJ/mol
NS_PER_PS = 1e-3
SECONDS_PER_DAY = 86400.0


def kT_kj_per_mol(temperature_k: float) -> float:
    """Thermal energy k_B T in kJ/mol for a temperature in K."""
    return BOLTZMANN_KJ_PER_MOL_K * temperature_k


@dataclasses.dataclass(frozen=True)
class ReducedUnits:
    """A mapping of Lennard-Jones reduced units onto a real substance (for reporting only)."""

    sigma_nm: float
    epsilon_over_kb_k: float
    mass_amu: float

    @property
    def epsilon_kj_per_mol(self) -> float:
        return BOLTZMANN_KJ_PER_MOL_K * self.epsilon_over_kb_k

    @property
    def tau_ps(self) -> float:
        """Time unit sqrt(m sigma^2 / epsilon) in ps (amu nm^2 / (kJ/mol) = ps^2)."""
        return (self.mass_amu * self.sigma_nm**2 / self.epsilon_kj_per_mol) ** 0.5


# Rowley, Nicholson & Parsonage (1975) argon parameters, the usual mapping of reduced LJ units.
ARGON = ReducedUnits(sigma_nm=0.3405, epsilon_over_kb_k=119.8, mass_amu=39.948)


def ns_per_day(timestep_ps: float, steps_per_second: float) -> float:
    """Simulated nanoseconds per wall-clock day."""
    return timestep_ps * NS_PER_PS * steps_per_second * SECONDS_PER_DAY
