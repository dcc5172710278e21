"""OpenMM System -> jmlsim System, and loaders for AMBER, PDB + force-field XML and GROMACS inputs.

OpenMM's app layer does all parsing and template matching (``AmberPrmtopFile``, ``ForceField``,
``GromacsTopFile``); this module only reads the resulting ``openmm.System`` force by force into static index
arrays plus a differentiable parameter pytree. Terms are named after OpenMM's force classes
(``HarmonicBondForce``, ``NonbondedForce``, ...; a second force of the same class gets a ``#2`` suffix) so energies
can be compared term by term. Every force in the System must be understood: anything else is an error naming it,
never silently dropped. ``CMMotionRemover`` is the one exception (it is a dynamics aid, not an energy term).

openmm is imported lazily, so the core runs where only JAX is installed.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from jmlsim.errors import InputError
from jmlsim.system import System

NONBONDED_CHOICES = ("nocutoff", "cutoff", "reaction-field", "pme")
CONSTRAINT_CHOICES = ("none", "hbonds", "allbonds", "hangles")
HMR_HYDROGEN_MASS = 3.024  # amu: the usual repartitioned hydrogen mass (H + 2 amu), allows 4 fs with HBonds
KB_KJ_PER_MOL_K = 0.00831446261815324


def _box_matrix(omm_system, box_vectors=None) -> Optional[np.ndarray]:
    """(3, 3) nm, rows = lattice vectors, from OpenMM box vectors (or the System's defaults when periodic)."""
    import openmm.unit as u

    if box_vectors is None:
        if not omm_system.usesPeriodicBoundaryConditions():
            return None
        box_vectors = omm_system.getDefaultPeriodicBoxVectors()
    if hasattr(box_vectors, "value_in_unit"):
        box_vectors = box_vectors.value_in_unit(u.nanometer)
    rows = []
    for v in box_vectors:
        if hasattr(v, "value_in_unit"):
            v = v.value_in_unit(u.nanometer)
        rows.append([float(v[0]), float(v[1]), float(v[2])])
    return np.array(rows)


def _term_name(terms: dict, cls: str) -> str:
    if cls not in terms:
        return cls
    k = 2
    while f"{cls}#{k}" in terms:
        k += 1
    return f"{cls}#{k}"


def _bonds(force):
    from jmlsim.energy.bonded import HarmonicBond, HarmonicBondParams

    rows = [force.getBondParameters(i) for i in range(force.getNumBonds())]
    atoms = np.array([[r[0], r[1]] for r in rows], dtype=np.int32).reshape(-1, 2)
    length = np.array([_value(r[2]) for r in rows], dtype=np.float64)
    k = np.array([_value(r[3]) for r in rows], dtype=np.float64)
    return HarmonicBond(atoms), HarmonicBondParams(k=k, length=length)


def _angles(force):
    from jmlsim.energy.bonded import HarmonicAngle, HarmonicAngleParams

    rows = [force.getAngleParameters(i) for i in range(force.getNumAngles())]
    atoms = np.array([r[:3] for r in rows], dtype=np.int32).reshape(-1, 3)
    angle = np.array([_value(r[3]) for r in rows], dtype=np.float64)
    k = np.array([_value(r[4]) for r in rows], dtype=np.float64)
    return HarmonicAngle(atoms), HarmonicAngleParams(k=k, angle=angle)


def _torsions(force):
    from jmlsim.energy.bonded import PeriodicTorsion, PeriodicTorsionParams

    rows = [force.getTorsionParameters(i) for i in range(force.getNumTorsions())]
    atoms = np.array([r[:4] for r in rows], dtype=np.int32).reshape(-1, 4)
    periodicity = np.array([r[4] for r in rows], dtype=np.int32)
    phase = np.array([_value(r[5]) for r in rows], dtype=np.float64)
    k = np.array([_value(r[6]) for r in rows], dtype=np.float64)
    return PeriodicTorsion(atoms, periodicity), PeriodicTorsionParams(k=k, phase=phase)


def _value(x) -> float:
    """A float in OpenMM's default units from a Quantity or a plain number (OpenMM returns both)."""
    return float(x._value) if hasattr(x, "_value") else float(x)


def _nonbonded(force, n_atoms: int, box: Optional[np.ndarray]):
    import openmm as mm

    from jmlsim.energy.nonbonded import Nonbonded, NonbondedParams, dispersion_classes
    from jmlsim.energy.pme import PMEReciprocal, pme_parameters

    if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
        raise InputError("NonbondedForce parameter offsets (alchemical global parameters) are not supported")
    particles = [force.getParticleParameters(i) for i in range(force.getNumParticles())]
    charge = np.array([_value(p[0]) for p in particles])
    sigma = np.array([_value(p[1]) for p in particles])
    epsilon = np.array([_value(p[2]) for p in particles])
    exceptions = [force.getExceptionParameters(i) for i in range(force.getNumExceptions())]
    pairs = np.array([[e[0], e[1]] for e in exceptions], dtype=np.int32).reshape(-1, 2)
    params = NonbondedParams(
        charge=charge, sigma=sigma, epsilon=epsilon,
        exception_charge_product=np.array([_value(e[2]) for e in exceptions]),
        exception_sigma=np.array([_value(e[3]) for e in exceptions]),
        exception_epsilon=np.array([_value(e[4]) for e in exceptions]))
    method_id = force.getNonbondedMethod()
    kwargs = {}
    if method_id == mm.NonbondedForce.NoCutoff:
        method = "nocutoff"
    elif method_id in (mm.NonbondedForce.CutoffNonPeriodic, mm.NonbondedForce.CutoffPeriodic):
        method = "cutoff"
        kwargs["reaction_field_dielectric"] = force.getReactionFieldDielectric()
    elif method_id == mm.NonbondedForce.PME:
        method = "pme"
    else:
        name = {mm.NonbondedForce.Ewald: "Ewald", mm.NonbondedForce.LJPME: "LJPME"}.get(method_id, str(method_id))
        raise InputError(f"NonbondedForce method {name} is not supported (use PME, cutoff or no cutoff)")
    periodic = method_id in (mm.NonbondedForce.CutoffPeriodic, mm.NonbondedForce.PME)
    if periodic and box is None:
        raise InputError("a periodic nonbonded method needs box vectors (none in the input)")
    cutoff = None if method == "nocutoff" else _value(force.getCutoffDistance())
    if periodic:
        if cutoff > 0.5 * float(np.min(np.abs(np.diag(box)))) + 1e-12:
            raise InputError(f"cutoff {cutoff:g} nm exceeds half the box ({0.5 * np.min(np.diag(box)):g} nm)")
        kwargs["triclinic"] = bool(np.any(np.abs(box[np.tril_indices(3, -1)]) > 0))
        if force.getUseDispersionCorrection():
            kwargs["dispersion"] = dispersion_classes(sigma, epsilon)
    if method == "pme":
        alpha, nx, ny, nz = force.getPMEParameters()
        alpha = _value(alpha)
        if alpha == 0.0:
            alpha, grid = pme_parameters(box, cutoff, force.getEwaldErrorTolerance())
        else:
            grid = (nx, ny, nz)
        kwargs["pme"] = PMEReciprocal(alpha=float(alpha), grid=tuple(int(g) for g in grid))
    if method != "nocutoff" and force.getUseSwitchingFunction():
        kwargs["switch_distance"] = _value(force.getSwitchingDistance())
    term = Nonbonded.create(method, n_atoms, pairs, cutoff=cutoff, periodic=periodic, **kwargs)
    return term, params, cutoff


def from_openmm(omm_system, positions, topology=None, box_vectors=None, name: str = "system") -> System:
    """Convert an ``openmm.System`` (with its positions, nm, and optional app Topology) into a jmlsim System."""
    import openmm as mm
    import openmm.unit as u

    n = omm_system.getNumParticles()
    if hasattr(positions, "value_in_unit"):
        positions = positions.value_in_unit(u.nanometer)
    positions = np.asarray([[p[0], p[1], p[2]] for p in positions], dtype=np.float64).reshape(-1, 3)
    if positions.shape != (n, 3):
        raise InputError(f"{positions.shape[0]} positions for a system of {n} particles")
    if not np.all(np.isfinite(positions)):
        raise InputError("positions contain non-finite values")
    masses = np.array([_value(omm_system.getParticleMass(i)) for i in range(n)])
    for i in range(n):
        if omm_system.isVirtualSite(i) or masses[i] == 0.0:
            raise InputError(f"particle {i} is a virtual site or massless (e.g. 4-site water models): not supported")
    box = _box_matrix(omm_system, box_vectors)
    terms, params = {}, {}
    neighbor_cutoff = None
    for force in omm_system.getForces():
        cls = force.__class__.__name__
        if isinstance(force, mm.CMMotionRemover):
            continue
        if isinstance(force, mm.HarmonicBondForce):
            term, p = _bonds(force)
        elif isinstance(force, mm.HarmonicAngleForce):
            term, p = _angles(force)
        elif isinstance(force, mm.PeriodicTorsionForce):
            term, p = _torsions(force)
        elif isinstance(force, mm.NonbondedForce):
            term, p, cutoff = _nonbonded(force, n, box)
            if term.method != "nocutoff":
                neighbor_cutoff = max(neighbor_cutoff or 0.0, cutoff)
        elif isinstance(force, mm.CMAPTorsionForce):
            from jmlsim.energy.cmap import cmap_from_openmm
            term, p = cmap_from_openmm(force)
        elif isinstance(force, mm.GBSAOBCForce):
            from jmlsim.energy.gbsa_obc import gbsa_from_openmm
            term, p = gbsa_from_openmm(force)
        elif isinstance(force, (mm.CustomTorsionForce, mm.CustomBondForce, mm.CustomNonbondedForce)):
            from jmlsim.energy.custom_forces import term_from_custom_force
            periodic = box is not None and force.usesPeriodicBoundaryConditions()
            triclinic = box is not None and bool(np.any(np.abs(box[np.tril_indices(3, -1)]) > 0))
            try:
                term, p = term_from_custom_force(force, periodic, triclinic)
            except ValueError as exc:
                raise InputError(str(exc)) from None
            if getattr(term, "cutoff", None) is not None:
                neighbor_cutoff = max(neighbor_cutoff or 0.0, term.cutoff)
        elif isinstance(force, mm.MonteCarloBarostat) or isinstance(force, mm.MonteCarloAnisotropicBarostat):
            continue  # the barostat is a simulation option in jmlsim (--pressure), not an energy term
        else:
            raise InputError(f"OpenMM force {cls} is not supported by jmlsim")
        key = _term_name(terms, cls)
        terms[key], params[key] = term, p
    from jmlsim.constraints import constraints_from_openmm
    constraints = constraints_from_openmm(omm_system)
    md_topology, molecules = None, None
    if topology is not None:
        import mdtraj
        md_topology = mdtraj.Topology.from_openmm(topology)
        molecules = connected_components(n, [(a.index, b.index) for a, b in topology.bonds()])
    return System(terms=terms, params=params, masses=masses, positions=positions, box=box,
                  neighbor_cutoff=neighbor_cutoff, kB=KB_KJ_PER_MOL_K, topology=md_topology, name=name,
                  constraints=constraints, molecules=molecules)


def connected_components(n_atoms: int, pairs) -> np.ndarray:
    """(N,) int32 component label per atom for the graph whose edges are ``pairs`` (P, 2) (scipy's csgraph)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_atoms, n_atoms))
    return components(graph, directed=False)[1].astype(np.int32)


def _create_system_args(nonbonded: Optional[str], periodic: bool, cutoff: float, constraints: str, hmr: bool,
                        switch_distance: Optional[float] = None) -> dict:
    import openmm.app as app
    import openmm.unit as u

    if nonbonded is None:
        nonbonded = "pme" if periodic else "nocutoff"
    if nonbonded not in NONBONDED_CHOICES:
        raise InputError(f"unknown --nonbonded {nonbonded!r} (choose {', '.join(NONBONDED_CHOICES)})")
    if constraints not in CONSTRAINT_CHOICES:
        raise InputError(f"unknown --constraints {constraints!r} (choose {', '.join(CONSTRAINT_CHOICES)})")
    if nonbonded == "pme" and not periodic:
        raise InputError("--nonbonded pme needs a periodic box (the input has no box vectors)")
    method = {"nocutoff": app.NoCutoff, "pme": app.PME,
              "cutoff": app.CutoffPeriodic if periodic else app.CutoffNonPeriodic,
              "reaction-field": app.CutoffPeriodic if periodic else app.CutoffNonPeriodic}[nonbonded]
    kwargs = dict(nonbondedMethod=method, nonbondedCutoff=cutoff * u.nanometer,
                  constraints={"none": None, "hbonds": app.HBonds, "allbonds": app.AllBonds,
                               "hangles": app.HAngles}[constraints],
                  rigidWater=constraints != "none")
    if hmr:
        kwargs["hydrogenMass"] = HMR_HYDROGEN_MASS * u.amu
    if switch_distance is not None:
        kwargs["switchDistance"] = switch_distance * u.nanometer
    return kwargs


def _plain_cutoff(omm_system, nonbonded: Optional[str]) -> None:
    """``--nonbonded cutoff`` means truncated Coulomb without a reaction field (dielectric 1); OpenMM's cutoff
    methods always apply a reaction field, so set its dielectric to 1 (``reaction-field`` keeps OpenMM's 78.3)."""
    import openmm as mm

    if nonbonded == "cutoff":
        for f in omm_system.getForces():
            if isinstance(f, mm.NonbondedForce):
                f.setReactionFieldDielectric(1.0)


def _result(system: System, omm_system, return_openmm: bool):
    return (system, omm_system) if return_openmm else system


def _check_bonds_parameterized(topology, omm_system, source: str) -> None:
    """Every bond of the topology must be a bond term or a constraint. OpenMM's ForceField leaves out a bond
    whose atom classes have no HarmonicBondForce entry without a word; jmlsim refuses instead."""
    import openmm as mm

    covered = set()
    for i in range(omm_system.getNumConstraints()):
        a, b, _ = omm_system.getConstraintParameters(i)
        covered.add((min(a, b), max(a, b)))
    for force in omm_system.getForces():
        if isinstance(force, mm.HarmonicBondForce):
            for i in range(force.getNumBonds()):
                a, b = force.getBondParameters(i)[:2]
                covered.add((min(a, b), max(a, b)))
        elif isinstance(force, mm.CustomBondForce) and "r0" in [force.getPerBondParameterName(k) for k in
                                                                 range(force.getNumPerBondParameters())]:
            for i in range(force.getNumBonds()):
                a, b = force.getBondParameters(i)[:2]
                covered.add((min(a, b), max(a, b)))
    for bond in topology.bonds():
        a, b = bond[0], bond[1]
        if (min(a.index, b.index), max(a.index, b.index)) not in covered:
            res = a.residue
            raise InputError(f"missing bond parameters in {source}: bond {a.name}-{b.name} of residue "
                             f"{res.name} {res.id} (chain {res.chain.id}) has no HarmonicBondForce entry for its "
                             f"atom types")


def _old_or_truncated_prmtop(path: str, exc: Exception) -> Optional[str]:
    """A one-line diagnosis for prmtops OpenMM cannot read, or None."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if b"%FLAG" not in head:
        return f"{path} is not a modern AMBER prmtop (no %FLAG sections: old pre-Amber 7 format or not a prmtop); " \
               f"convert it with ParmEd or cpptraj"
    if isinstance(exc, (KeyError, IndexError, ValueError)):
        missing = str(exc).strip("'\"")
        return f"{path} is truncated or incomplete (cannot read section {missing})" if isinstance(exc, KeyError) \
            else f"{path} is truncated or malformed: {_one_line(exc)}"
    return None


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise InputError(f"{what} file {path} not found")


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) < 400 else text[:400] + "..."


def load_amber(prmtop: str, inpcrd: str, nonbonded: Optional[str] = None, cutoff: float = 0.9,
               constraints: str = "hbonds", hmr: bool = False, implicit_solvent: Optional[str] = None,
               switch_distance: Optional[float] = None, return_openmm: bool = False):
    """System from AMBER prmtop + inpcrd/rst7 (OpenMM's parser). implicit_solvent: None or 'obc2'.

    With ``return_openmm`` the result is (System, openmm.System) — for term-by-term checks."""
    import openmm.app as app

    _require_file(prmtop, "prmtop")
    _require_file(inpcrd, "coordinate")
    try:
        top = app.AmberPrmtopFile(prmtop)
    except Exception as exc:
        raise InputError(_old_or_truncated_prmtop(prmtop, exc) or f"cannot read prmtop {prmtop}: {_one_line(exc)}") \
            from None
    try:
        crd = app.AmberInpcrdFile(inpcrd)
    except Exception as exc:
        raise InputError(f"cannot read coordinates {inpcrd}: {_one_line(exc)}") from None
    box_vectors = crd.getBoxVectors() if crd.boxVectors is not None else None
    kwargs = _create_system_args(nonbonded, box_vectors is not None, cutoff, constraints, hmr, switch_distance)
    if implicit_solvent is not None:
        if implicit_solvent.lower() != "obc2":
            raise InputError(f"unknown implicit solvent {implicit_solvent!r} (only obc2)")
        kwargs["implicitSolvent"] = app.OBC2
    if box_vectors is not None:
        top.topology.setPeriodicBoxVectors(box_vectors)
    try:
        omm = top.createSystem(**kwargs)
    except Exception as exc:
        raise InputError(_old_or_truncated_prmtop(prmtop, exc)
                         or f"cannot build a system from {prmtop}: {_one_line(exc)}") from None
    if omm.getNumParticles() != len(crd.positions):
        raise InputError(f"{inpcrd} has {len(crd.positions)} atoms but {prmtop} has {omm.getNumParticles()}")
    _plain_cutoff(omm, nonbonded)
    return _result(from_openmm(omm, crd.positions, top.topology, box_vectors, name=os.path.basename(prmtop)), omm,
                   return_openmm)


def load_pdb(pdb: str, forcefields: Sequence[str], nonbonded: Optional[str] = None, cutoff: float = 0.9,
             constraints: str = "hbonds", hmr: bool = False, switch_distance: Optional[float] = None,
             return_openmm: bool = False):
    """System from a PDB (or PDBx/mmCIF) file and OpenMM force-field XMLs (``amber14-all.xml`` ...)."""
    import openmm.app as app

    _require_file(pdb, "PDB")
    try:
        structure = app.PDBxFile(pdb) if pdb.lower().endswith((".cif", ".pdbx")) else app.PDBFile(pdb)
    except Exception as exc:
        raise InputError(f"cannot read {pdb}: {_one_line(exc)}") from None
    if structure.topology.getNumAtoms() == 0:
        raise InputError(f"{pdb} contains no atoms")
    try:
        ff = app.ForceField(*forcefields)
    except Exception as exc:
        raise InputError(f"cannot load force field {' '.join(forcefields)}: {_one_line(exc)}") from None
    box_vectors = structure.topology.getPeriodicBoxVectors()
    kwargs = _create_system_args(nonbonded, box_vectors is not None, cutoff, constraints, hmr, switch_distance)
    try:
        omm = ff.createSystem(structure.topology, **kwargs)
    except Exception as exc:
        raise InputError(f"cannot apply the force field to {pdb}: {_one_line(exc)}") from None
    _check_bonds_parameterized(structure.topology, omm, pdb)
    _plain_cutoff(omm, nonbonded)
    return _result(from_openmm(omm, structure.positions, structure.topology, box_vectors,
                               name=os.path.basename(pdb)), omm, return_openmm)


def load_gromacs(gro: str, top: str, nonbonded: Optional[str] = None, cutoff: float = 0.9,
                 constraints: str = "hbonds", hmr: bool = False, include_dir: Optional[str] = None,
                 switch_distance: Optional[float] = None, return_openmm: bool = False):
    """System from GROMACS .gro + .top (OpenMM's GromacsTopFile; include_dir holds the force-field .itp files)."""
    import openmm.app as app

    _require_file(gro, "gro")
    _require_file(top, "top")
    try:
        coords = app.GromacsGroFile(gro)
    except Exception as exc:
        raise InputError(f"cannot read {gro}: {_one_line(exc)}") from None
    box_vectors = coords.getPeriodicBoxVectors()
    try:
        extra = {} if include_dir is None else {"includeDir": include_dir}
        topology = app.GromacsTopFile(top, periodicBoxVectors=box_vectors, **extra)
    except Exception as exc:
        raise InputError(f"cannot read {top}: {_one_line(exc)}") from None
    kwargs = _create_system_args(nonbonded, box_vectors is not None, cutoff, constraints, hmr, switch_distance)
    try:
        omm = topology.createSystem(**kwargs)
    except Exception as exc:
        raise InputError(f"cannot build a system from {top}: {_one_line(exc)}") from None
    if omm.getNumParticles() != len(coords.positions):
        raise InputError(f"{gro} has {len(coords.positions)} atoms but {top} has {omm.getNumParticles()}")
    _plain_cutoff(omm, nonbonded)
    return _result(from_openmm(omm, coords.positions, topology.topology, box_vectors, name=os.path.basename(top)),
                   omm, return_openmm)
