"""Many different small systems in one compiled program: padding, masks and per-system topology arrays.

A library of molecules (ligands, peptides; in vacuum or GBSA-OBC2 implicit solvent) runs as one replica batch of
B "replicas" whose atoms, masses and *topologies* differ. Each molecule is padded to the same atom count
N = max(n_b) + 4 with padding atoms that carry no charge, no Lennard-Jones well, no descreening and no surface
term, sit far from everything (1,000 nm, 10 nm apart) and are heavy (1e6 amu) so they do not drift. Each term's
index arrays (bonds, angles, torsions, exceptions, exclusion band) are padded to the longest molecule with
entries of zero force constant that point at padding atoms, and travel in the *parameter* pytree (a
``{"topology": ..., "values": ...}`` dict per term), so one vmapped program evaluates B different topologies.
The padded energy of molecule b equals its own energy exactly (the padding contributes exact zeros).

Supported terms: harmonic bonds and angles, periodic torsions, NonbondedForce with NoCutoff, GBSA-OBC2 (NoCutoff)
— what ligands and peptides in vacuum or implicit solvent use. Bond constraints (HBonds, AllBonds, HAngles; not
rigid water) differ per molecule too (:class:`jmlsim.constraints.ConstraintsBatch`): each molecule's list is padded
with constraints between pairs of its own padding atoms, so a molecule with fewer constraints gets at least two
padding atoms per missing row. Langevin dynamics only. Per-molecule trajectories carry each molecule's own
topology (real atoms only); kinetic energies and temperatures count real atoms only.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.energy.bonded import HarmonicAngle, HarmonicBond, PeriodicTorsion
from jmlsim.energy.gbsa_obc import GBSAOBC
from jmlsim.energy.nonbonded import Nonbonded, exclusion_band
from jmlsim.errors import InputError
from jmlsim.simulation import as_float_dtype
from jmlsim.system import System, coordinate_sensitive

N_PADDING = 4  # an angle needs 3 and a torsion 4 distinct, non-collinear padding atoms
PADDING_MASS = 1.0e6  # amu: thermal drift over 1 ns ~ 0.1 nm
PADDING_ORIGIN = 1000.0  # nm


@dataclasses.dataclass(frozen=True, eq=False)
class TopologyFromParams:
    """A term whose index arrays come from ``params["topology"]`` (so they can differ per batched system).

    template: a term instance with correctly shaped (padded) arrays; params: {"topology": {field: array},
    "values": the term's own parameters}.
    """

    template: Any

    @property
    def coordinate_sensitive(self) -> bool:
        return coordinate_sensitive(self.template)

    def _term(self, params):
        return dataclasses.replace(self.template, **params["topology"])

    def energy(self, params, positions, box=None, nbrs=None):
        return self._term(params).energy(params["values"], positions, box, nbrs)

    def forces(self, params, positions, box=None, nbrs=None):
        term = self._term(params)
        if hasattr(term, "forces"):
            return term.forces(params["values"], positions, box, nbrs)
        return -jax.grad(lambda x: term.energy(params["values"], x, box, nbrs))(positions)

    def batched_forces(self, params, components: tuple, params_batched: bool, box=None, nbrs=None):
        """Replica-minor forces of the whole batch (see :meth:`jmlsim.system.System.batched_forces`) for GBSA, whose
        only per-molecule topology is the surface mask (B, N), given to the term as (N, B); None for the other
        terms (their index arrays differ per molecule: they run under vmap)."""
        if not (params_batched and isinstance(self.template, GBSAOBC)):
            return None
        term = dataclasses.replace(self.template, surface_mask=params["topology"]["surface_mask"].T)
        return term.batched_forces(params["values"], components, True, box, nbrs)


class MoleculeBatch(NamedTuple):
    """B molecules padded to N atoms.

    system: the padded template System (terms wrapped in :class:`TopologyFromParams`; its own params and
    positions are molecule 0's). params: parameter pytree with leading axis B. positions (B, N, 3) nm;
    masses (B, N) amu; atom_mask (B, N) bool (real atoms); n_atoms (B,); names (B,); topologies: each molecule's
    own mdtraj Topology (real atoms); constraints: a ConstraintsBatch, or None when no molecule has constraints.
    """

    system: System
    params: Any
    positions: np.ndarray
    masses: np.ndarray
    atom_mask: np.ndarray
    n_atoms: np.ndarray
    names: list
    topologies: list
    constraints: Any = None


def _padding_positions(count: int) -> np.ndarray:
    """(count, 3) nm: far from the molecule and from each other; the first four neither collinear nor coplanar."""
    k = np.arange(count, dtype=np.float64)
    first = np.minimum(k, N_PADDING - 1)
    return np.stack([PADDING_ORIGIN + 10.0 * k, 10.0 * first * first, 10.0 * first ** 3], axis=1)


def _pad_rows(a: np.ndarray, rows: int, fill: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    extra = rows - a.shape[0]
    if extra <= 0:
        return a
    return np.concatenate([a, np.broadcast_to(fill, (extra,) + a.shape[1:]).astype(a.dtype)], axis=0)


def _pad_params(p, count: int, zero_fields: Sequence[str], one_fields: Sequence[str] = ()):
    """Pad every (count_b, ...) leaf of a NamedTuple of parameters to ``count`` rows: zeros (or ones)."""
    values = {}
    for field in p._fields:
        leaf = getattr(p, field)
        if leaf is None:
            values[field] = None
            continue
        leaf = np.asarray(leaf)
        fill = np.ones((), leaf.dtype) if field in one_fields else np.zeros((), leaf.dtype)
        values[field] = _pad_rows(leaf, count, fill)
    return type(p)(**values)


def _kind(term) -> str:
    for cls, kind in ((HarmonicBond, "bond"), (HarmonicAngle, "angle"), (PeriodicTorsion, "torsion"),
                      (Nonbonded, "nonbonded"), (GBSAOBC, "gbsa")):
        if type(term) is cls:
            return kind
    raise InputError(f"molecule batches do not support the term {type(term).__name__}")


def _static_settings(term) -> dict:
    return {f.name: getattr(term, f.name) for f in dataclasses.fields(term)
            if not isinstance(getattr(term, f.name), np.ndarray)}


def batch_systems(systems: Sequence[System], names: Optional[Sequence[str]] = None) -> MoleculeBatch:
    """Pad B Systems (same term names and kinds, open boundaries, no constraints) into one MoleculeBatch."""
    if len(systems) == 0:
        raise InputError("a molecule batch needs at least one system")
    names = list(names) if names is not None else [s.name for s in systems]
    first = systems[0]
    for name, s in zip(names, systems):
        if s.box is not None or s.neighbor_cutoff is not None:
            raise InputError(f"{name}: molecule batches need open boundaries without cutoff (vacuum or OBC2)")
        if s.constraints is not None and s.constraints.waters.shape[0]:
            raise InputError(f"{name}: molecule batches support bond constraints, not rigid waters")
        if set(s.terms) != set(first.terms):
            raise InputError(f"{name}: terms {sorted(s.terms)} differ from {names[0]}'s {sorted(first.terms)}")
    n_atoms = np.array([s.n_atoms for s in systems])
    n_constraints = np.array([0 if s.constraints is None else s.constraints.pairs.shape[0] for s in systems])
    # every padding constraint joins two padding atoms of its own
    n_pad = int(np.max(n_atoms + np.maximum(N_PADDING, 2 * (n_constraints.max() - n_constraints))))
    B = len(systems)

    positions = np.zeros((B, n_pad, 3))
    masses = np.full((B, n_pad), PADDING_MASS)
    mask = np.zeros((B, n_pad), bool)
    for b, s in enumerate(systems):
        n = s.n_atoms
        positions[b, :n] = s.positions
        positions[b, n:] = _padding_positions(n_pad - n)
        masses[b, :n] = s.masses
        mask[b, :n] = True

    terms, per_molecule = {}, [dict() for _ in systems]
    for term_name in first.terms:
        kinds = {_kind(s.terms[term_name]) for s in systems}
        if len(kinds) != 1:
            raise InputError(f"term {term_name} has different kinds across the molecules: {sorted(kinds)}")
        kind = kinds.pop()
        statics = [_static_settings(s.terms[term_name]) for s in systems]
        for name, st in zip(names, statics):
            different = {k for k in st if k not in ("n_atoms", "band_width") and st[k] != statics[0][k]}
            if different:
                raise InputError(f"{name}: {term_name} settings {sorted(different)} differ from {names[0]}'s")
        template = _pad_term(kind, [s.terms[term_name] for s in systems], [s.params[term_name] for s in systems],
                             n_atoms, n_pad, per_molecule, term_name)
        terms[term_name] = TopologyFromParams(template)
    params = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *per_molecule)
    system = dataclasses.replace(
        first, terms=terms, params=jax.tree_util.tree_map(lambda a: a[0], params), masses=masses[0],
        positions=positions[0], topology=None, constraints=None, molecules=None, name="molecule-batch")
    constraints = None
    if n_constraints.max() > 0:
        from jmlsim.constraints import ConstraintsBatch
        constraints = ConstraintsBatch.pad([s.constraints for s in systems], [np.arange(n, n_pad) for n in n_atoms],
                                           positions)
    return MoleculeBatch(system, params, positions, masses, mask, n_atoms, names, [s.topology for s in systems],
                         constraints)


def _pad_term(kind, terms, params, n_atoms, n_pad, per_molecule, term_name):
    """Padded template term; fills per_molecule[b][term_name] = {"topology": ..., "values": ...}."""
    pad = [n + np.arange(N_PADDING) for n in n_atoms]  # each molecule's padding atoms (first 4)
    if kind in ("bond", "angle", "torsion"):
        width = {"bond": 2, "angle": 3, "torsion": 4}[kind]
        count = max(max(len(t.atoms) for t in terms), 1)
        for b, (t, p) in enumerate(zip(terms, params)):
            atoms = _pad_rows(np.asarray(t.atoms, np.int32).reshape(-1, width), count, pad[b][:width].astype(np.int32))
            topology = {"atoms": atoms}
            if kind == "torsion":
                topology["periodicity"] = _pad_rows(np.asarray(t.periodicity, np.int32), count, np.int32(1))
            # zero force constants; ones for lengths keep padded bonds' r0 harmless
            values = _pad_params(p, count, zero_fields=p._fields, one_fields=("length",))
            per_molecule[b][term_name] = {"topology": topology, "values": values}
        return dataclasses.replace(terms[0], **per_molecule[0][term_name]["topology"])
    if kind == "nonbonded":
        if any(t.method != "nocutoff" for t in terms):
            raise InputError("molecule batches support NonbondedForce with NoCutoff only")
        n_exc = max(max(len(t.exceptions) for t in terms), 1)
        bands = [exclusion_band(n_pad, t.exceptions) for t in terms]
        width = max(w for _, w, _ in bands)
        n_far = max(max(len(f) for _, _, f in bands), 1)
        for b, (t, p) in enumerate(zip(terms, params)):
            band, w, far = bands[b]
            wide = np.zeros((n_pad, 2 * width + 1), bool)
            wide[:, width - w: width + w + 1] = band
            pair = pad[b][:2].astype(np.int32)
            topology = {"exceptions": _pad_rows(np.asarray(t.exceptions, np.int32).reshape(-1, 2), n_exc, pair),
                        "band": wide, "far_exclusions": _pad_rows(far.reshape(-1, 2), n_far, pair)}
            values = {}
            for field in p._fields:
                leaf = np.asarray(getattr(p, field))
                if field.startswith("exception"):
                    values[field] = _pad_rows(leaf, n_exc, np.zeros((), leaf.dtype))
                elif field == "sigma":  # padding atoms: sigma 0.1 nm, epsilon 0, charge 0
                    values[field] = _pad_rows(leaf, n_pad, np.asarray(0.1, leaf.dtype))
                else:
                    values[field] = _pad_rows(leaf, n_pad, np.zeros((), leaf.dtype))
            per_molecule[b][term_name] = {"topology": topology, "values": type(p)(**values)}
        return dataclasses.replace(terms[0], n_atoms=n_pad, band_width=width, **per_molecule[0][term_name]["topology"])
    if kind == "gbsa":
        if any(t.cutoff is not None for t in terms):
            raise InputError("molecule batches support GBSA-OBC2 with NoCutoff only")
        for b, (t, p) in enumerate(zip(terms, params)):
            n = int(n_atoms[b])
            charge = _pad_rows(np.asarray(p.charge), n_pad, np.zeros((), np.asarray(p.charge).dtype))
            radius = _pad_rows(np.asarray(p.radius), n_pad, np.asarray(0.15, np.asarray(p.radius).dtype))
            scale = _pad_rows(np.asarray(p.scale), n_pad, np.zeros((), np.asarray(p.scale).dtype))
            surface = np.zeros(n_pad, bool)
            surface[:n] = True if t.surface_mask is None else np.asarray(t.surface_mask, bool)
            per_molecule[b][term_name] = {"topology": {"surface_mask": surface},
                                          "values": type(p)(charge=charge, radius=radius, scale=scale)}
        return dataclasses.replace(terms[0], **per_molecule[0][term_name]["topology"])
    raise AssertionError(kind)


def molecule_simulation(batch: MoleculeBatch, temperature_k: float, timestep_ps: float, friction: float = 1.0,
                        **simulation_kwargs):
    """A Langevin Simulation of the whole batch (one replica per molecule); kwargs: seed, precision, devices."""
    from jmlsim.integrators import LangevinBAOAB
    from jmlsim.simulation import Simulation

    system = batch.system
    try:
        return Simulation(system, LangevinBAOAB(timestep_ps, temperature_k * system.kB, friction,
                                                constraints=batch.constraints),
                          replicas=len(batch.names), replica_params=batch.params, replica_positions=batch.positions,
                          replica_masses=batch.masses, atom_mask=batch.atom_mask, **simulation_kwargs)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def molecule_energies(batch: MoleculeBatch, positions=None, precision_dtype=jnp.float64):
    """(B,) potential energies (kJ/mol) and (B, N, 3) forces of every molecule at ``positions`` (default: start)."""
    system = batch.system
    x = jnp.asarray(batch.positions if positions is None else positions, precision_dtype)
    params = jax.tree_util.tree_map(as_float_dtype(precision_dtype), batch.params)

    def one(p, xb):
        return system.energy(p, xb, None, None), system.forces(p, xb, None, None)

    return jax.jit(jax.vmap(one))(params, x)


class MoleculeTrajectoryReporter:
    """One mdtraj-readable trajectory per molecule with its own topology (real atoms only), flushed per report."""

    def __init__(self, paths: Sequence[str], topologies: Sequence[Any], n_atoms: Sequence[int],
                 keep_frames: Optional[int] = None):
        """keep_frames: on resume, keep that many frames of each existing file and append."""
        from jmlsim.io.trajectory import generic_topology, open_writer

        self.paths = list(paths)
        self.n_atoms = [int(n) for n in n_atoms]
        self.writers = [open_writer(path, top if top is not None else generic_topology(n), keep_frames)
                        for path, top, n in zip(self.paths, topologies, self.n_atoms)]

    def report(self, frame) -> None:
        for b, writer in enumerate(self.writers):
            writer.write(np.asarray(frame.positions[b, :self.n_atoms[b]]), frame.time, None)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def read_library(path: str) -> list:
    """Entries of a molecule library: [(name, kind, files)], kind 'amber' (prmtop, coordinates) or 'pdb' (pdb,).

    ``path`` is a directory (every ``*.prmtop`` with a same-stem ``.inpcrd``/``.rst7``/``.crd``, and every ``*.pdb``)
    or a list file with one entry per line: ``name.prmtop name.inpcrd`` or ``name.pdb`` (paths relative to the list
    file; ``#`` starts a comment).
    """
    if not os.path.exists(path):
        raise InputError(f"molecule library {path} does not exist")
    entries = []
    if os.path.isdir(path):
        for fname in sorted(os.listdir(path)):
            stem, ext = os.path.splitext(fname)
            full = os.path.join(path, fname)
            if ext == ".prmtop":
                coords = [os.path.join(path, stem + e) for e in (".inpcrd", ".rst7", ".crd")]
                found = [c for c in coords if os.path.exists(c)]
                if not found:
                    raise InputError(f"{full}: no {stem}.inpcrd, .rst7 or .crd beside it")
                entries.append((stem, "amber", (full, found[0])))
            elif ext == ".pdb":
                entries.append((stem, "pdb", (full,)))
    else:
        base = os.path.dirname(os.path.abspath(path))
        with open(path) as handle:
            for number, line in enumerate(handle, 1):
                fields = line.split("#", 1)[0].split()
                if not fields:
                    continue
                files = tuple(f if os.path.isabs(f) else os.path.join(base, f) for f in fields)
                stem = os.path.splitext(os.path.basename(files[0]))[0]
                if len(files) == 2 and files[0].endswith(".prmtop"):
                    entries.append((stem, "amber", files))
                elif len(files) == 1 and files[0].endswith(".pdb"):
                    entries.append((stem, "pdb", files))
                else:
                    raise InputError(f"{path}:{number}: expected 'X.prmtop X.inpcrd' or 'X.pdb', got {line.strip()!r}")
    if not entries:
        raise InputError(f"molecule library {path} lists no molecules (.prmtop + coordinates, or .pdb)")
    names = [e[0] for e in entries]
    if len(set(names)) != len(names):
        raise InputError(f"molecule library {path} has duplicate names")
    return entries


def load_library(path: str, forcefields: Sequence[str] = ("amber14-all.xml",), implicit_solvent: Optional[str] = None,
                 constraints: str = "none"):
    """Load every molecule of a library (vacuum, or OBC2 implicit solvent) as NoCutoff Systems, flexible or with
    ``constraints`` ('hbonds', 'allbonds', 'hangles').

    Returns (systems, names, skipped) where skipped is [{"name", "error"}] for molecules that failed to load (one
    line each); an InputError if none loads.
    """
    from jmlsim.io.openmm_import import load_amber, load_pdb

    systems, names, skipped = [], [], []
    for name, kind, files in read_library(path):
        try:
            if kind == "amber":
                s = load_amber(files[0], files[1], nonbonded="nocutoff", constraints=constraints,
                               implicit_solvent=implicit_solvent)
            else:
                if implicit_solvent is not None:  # OpenMM's implicit/obc2.xml makes a CustomGBForce
                    raise InputError(f"{files[0]}: implicit solvent needs an AMBER prmtop (GBSAOBCForce); "
                                     "PDB + XML gives a CustomGBForce, which jmlsim does not evaluate")
                s = load_pdb(files[0], list(forcefields), nonbonded="nocutoff", constraints=constraints)
            systems.append(dataclasses.replace(s, name=name))
            names.append(name)
        except InputError as exc:
            skipped.append({"name": name, "error": str(exc).splitlines()[0]})
    if not systems:
        raise InputError(f"no molecule of {path} could be loaded (first error: {skipped[0]['error']})")
    return systems, names, skipped
