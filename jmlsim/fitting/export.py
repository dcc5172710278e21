"""Export fitted torsion terms so that AMBER tools and OpenMM load them: frcmod, and a serialized OpenMM System.

frcmod (AMBER's parameter-modification file): one DIHE line per periodicity for the atom types of the
quadruple, in kcal/mol and degrees, IDIVF 1, a negative periodicity on every line but the last (AMBER's "more
terms follow" flag). A DIHE entry replaces every term of that type quadruple, including generic X-..-X ones,
which is exactly what the fit did for the atom quadruple (see :func:`apply_frcmod`).

OpenMM: :func:`apply_frcmod` applies a frcmod's DIHE entries to an ``openmm.System`` built from the same
prmtop (zeroing the old terms of every matching atom quadruple and adding the new ones), and
:func:`write_system_xml` stores the result with ``openmm.XmlSerializer``; ``XmlSerializer.deserialize`` reloads it.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from jmlsim.errors import InputError
from jmlsim.units import KCAL_PER_KJ, KJ_PER_KCAL


def prmtop_atom_types(prmtop: str) -> list:
    """AMBER atom type names (N,) from a prmtop (OpenMM's parser)."""
    import openmm.app as app

    return [str(t).strip() for t in app.AmberPrmtopFile(prmtop)._prmtop._raw_data["AMBER_ATOM_TYPE"]]


def frcmod_text(types: Sequence[str], periodicities, k_kj, phase_rad, remark: str = "jmlsim torsion fit") -> str:
    """frcmod text with one DIHE block for the type quadruple ``types``; k kJ/mol, phase rad in."""
    if len(types) != 4 or any(len(t) > 2 or not t for t in types):
        raise InputError(f"frcmod atom types must be four names of 1-2 characters, got {list(types)}")
    label = "-".join(f"{t:<2s}" for t in types)
    lines = [remark, "", "DIHE"]
    n = len(periodicities)
    for idx, (per, k, phase) in enumerate(zip(periodicities, k_kj, phase_rad)):
        pn = float(per) if idx == n - 1 else -float(per)
        lines.append(f"{label}{1:4d}{float(k) * KCAL_PER_KJ:15.8f}{np.rad2deg(float(phase)):14.6f}{pn:6.1f}")
    lines += ["", ""]
    return "\n".join(lines)


def read_frcmod_dihedrals(path: str) -> dict:
    """{(t1, t2, t3, t4): [(periodicity, k kJ/mol, phase rad), ...]} from a frcmod's DIHE section."""
    entries, section = {}, None
    with open(path) as fh:
        for line in fh:
            word = line.strip()
            if word in ("MASS", "BOND", "ANGL", "ANGLE", "DIHE", "IMPR", "IMPROPER", "NONB", "NONBON", "CMAP"):
                section = word
                continue
            if section != "DIHE" or not word:
                continue
            types = tuple(t.strip() for t in line[:11].split("-"))
            fields = line[11:].split()
            if len(types) != 4 or len(fields) < 4:
                raise InputError(f"{path}: cannot read DIHE line {line.rstrip()!r}")
            divider, k_kcal, phase_deg, per = (float(f) for f in fields[:4])
            entries.setdefault(types, []).append((int(round(abs(per))), k_kcal / divider * KJ_PER_KCAL,
                                                  np.deg2rad(phase_deg)))
    return entries


def _matches(types: list, quad, key) -> bool:
    names = [types[a] for a in quad]
    return tuple(names) == key or tuple(names[::-1]) == key


def apply_frcmod(omm_system, atom_types: list, entries: dict) -> int:
    """Apply DIHE ``entries`` (from :func:`read_frcmod_dihedrals`) to ``omm_system``'s PeriodicTorsionForce in
    place: every proper torsion whose atom types match loses its old terms and gets the new ones. Returns the
    number of atom quadruples changed."""
    import openmm as mm
    import openmm.unit as u

    forces = [f for f in omm_system.getForces() if isinstance(f, mm.PeriodicTorsionForce)]
    if not forces:
        raise InputError("the OpenMM system has no PeriodicTorsionForce to apply a frcmod to")
    force = forces[0]
    changed = {}
    for idx in range(force.getNumTorsions()):
        a, b, c, d, per, phase, k = force.getTorsionParameters(idx)
        for key, terms in entries.items():
            if _matches(atom_types, (a, b, c, d), key):
                force.setTorsionParameters(idx, a, b, c, d, per, phase, 0.0 * u.kilojoule_per_mole)
                changed.setdefault((a, b, c, d) if (a, b, c, d) < (d, c, b, a) else (d, c, b, a), terms)
    for quad, terms in changed.items():
        for per, k, phase in terms:
            force.addTorsion(*quad, int(per), float(phase), float(k))
    return len(changed)


def write_system_xml(omm_system, path: str) -> None:
    """Serialize an ``openmm.System`` to XML, atomically."""
    import openmm as mm

    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(mm.XmlSerializer.serialize(omm_system))
    os.replace(tmp, path)


def openmm_energies(omm_system, positions) -> np.ndarray:
    """Potential energies (P,) kJ/mol of (P, N, 3) nm geometries on OpenMM's Reference platform."""
    import openmm as mm
    import openmm.unit as u

    context = mm.Context(omm_system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    out = []
    for x in np.asarray(positions, dtype=np.float64):
        context.setPositions(x * u.nanometer)
        out.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole))
    return np.asarray(out)
