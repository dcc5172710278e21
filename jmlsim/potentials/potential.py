"""NeuralPotential: a trained network plus everything needed to turn its output into kJ/mol.

    E = sum_i mask_i * (scale * y_i + shift[Z_i])

where y_i is the model's dimensionless per-atom output on the atoms' graph (all pairs within ``cutoff``, minimum
image when a box is given), ``shift`` the per-element energy offsets (kJ/mol) fitted to the training labels and
``scale`` (kJ/mol) the training data's spread. Forces are -dE/dr by autodiff.

A NeuralPotential is a pytree whose only leaves are the network parameters; everything else (architecture
config, elements, shifts, scale, cutoff, metadata) is static. So it can be passed into jitted functions, and
gradients with respect to it are gradients with respect to the weights.

Saved as a directory (``save``/``load``): ``config.json`` (format, architecture config, elements, shifts, scale,
cutoff, metadata) and ``params.msgpack`` (Flax msgpack of the parameters; no pickle), each written atomically.
``load_potential(name)`` also finds pretrained models shipped in ``jmlsim/potentials/pretrained/<name>/``.

For simulations, ``as_energy_term`` wraps a potential as a jmlsim energy term (``energy(params, positions, box,
nbrs)``) acting on a subset of a System's atoms (ML/MM), and ``system_from_xyz`` builds a System of one molecule
from an XYZ file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim import units
from jmlsim.errors import InputError
from jmlsim.io.atomic import atomic_write
from jmlsim.io.datasets import MAX_ATOMIC_NUMBER, check_elements_known

Array = jnp.ndarray

FORMAT = "jmlsim-potential-1"
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")


@functools.lru_cache(maxsize=64)
def _module_from_json(config_json: str):
    from jmlsim.potentials.architectures import model_from_config

    return model_from_config(json.loads(config_json))


def _atomic_write(path: str, data: bytes) -> None:
    """Write bytes to ``path`` atomically (see :func:`jmlsim.io.atomic.atomic_write`)."""
    atomic_write(path, data)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class NeuralPotential:
    """A neural-network potential in OpenMM units.

    config: the architecture config (``architectures.model_config`` output; JSON types).
    params: the Flax ``params`` collection (a pytree of arrays; the only pytree leaves).
    elements: atomic numbers the model knows; species index i <-> elements[i].
    shifts: (n_elements,) per-element energy shifts, kJ/mol (float64).
    scale: kJ/mol per unit of network output.
    cutoff: nm (the graph's edge cutoff; the module's own cutoff).
    metadata: JSON-able information (training settings and results).
    """

    config: dict
    params: Any
    elements: tuple
    shifts: np.ndarray
    scale: float
    cutoff: float
    metadata: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "elements", tuple(int(z) for z in self.elements))
        object.__setattr__(self, "shifts", np.asarray(self.shifts, np.float64).reshape(-1))
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "cutoff", float(self.cutoff))
        if self.shifts.shape != (len(self.elements),):
            raise InputError(f"potential: {len(self.shifts)} shifts for {len(self.elements)} elements")

    # -- pytree: params are children, the rest is hashable aux data
    def _aux(self):
        return (json.dumps(self.config, sort_keys=True), self.elements, tuple(self.shifts.tolist()), self.scale,
                self.cutoff, json.dumps(self.metadata, sort_keys=True))

    def tree_flatten(self):
        return (self.params,), self._aux()

    @classmethod
    def tree_unflatten(cls, aux, children):
        config, elements, shifts, scale, cutoff, metadata = aux
        obj = object.__new__(cls)
        for name, value in (("config", json.loads(config)), ("params", children[0]), ("elements", elements),
                            ("shifts", np.asarray(shifts, np.float64)), ("scale", scale), ("cutoff", cutoff),
                            ("metadata", json.loads(metadata))):
            object.__setattr__(obj, name, value)
        return obj

    def replace(self, **changes) -> "NeuralPotential":
        return dataclasses.replace(self, **changes)

    @property
    def module(self):
        """The Flax module (rebuilt from ``config``, cached)."""
        return _module_from_json(json.dumps(self.config, sort_keys=True))

    @property
    def species_table(self) -> np.ndarray:
        """(119,) int32: atomic number -> species index (-1 for elements the model does not know)."""
        table = np.full(MAX_ATOMIC_NUMBER + 1, -1, np.int32)
        table[list(self.elements)] = np.arange(len(self.elements), dtype=np.int32)
        return table

    def species(self, atomic_numbers, atom_mask=None, source: str = "atomic_numbers") -> Array:
        """Species indices for atomic numbers (..., N); InputError for unknown elements when not traced."""
        if _is_concrete(atomic_numbers) and (atom_mask is None or _is_concrete(atom_mask)):
            z = np.asarray(atomic_numbers)
            mask = np.ones(z.shape, bool) if atom_mask is None else np.asarray(atom_mask, bool)
            if np.any(mask & ((z < 0) | (z > MAX_ATOMIC_NUMBER))):
                raise InputError(f"{source}: atomic numbers outside 0..{MAX_ATOMIC_NUMBER}")
            check_elements_known(z, mask, self.elements, "potential input", "atomic_numbers")
        z = jnp.clip(jnp.asarray(atomic_numbers, jnp.int32), 0, MAX_ATOMIC_NUMBER)
        return jnp.maximum(jnp.asarray(self.species_table)[z], 0)

    # -- single structures
    def network_energy(self, positions: Array, species: Array, atom_mask: Optional[Array] = None,
                       box: Optional[Array] = None, nbrs=None) -> Array:
        """scale * sum of masked network outputs, kJ/mol (the energy without the element shifts).

        positions (N, 3) nm; species (N,) indices into ``elements``; atom_mask (N,) bool or None; box (3, 3) nm
        or None; nbrs: a jmlsim NeighborList over these N atoms (list cutoff >= ``cutoff``) or None for all
        pairs.
        """
        from jmlsim.potentials.graph import dense_graph, neighbor_graph

        positions = jnp.asarray(positions)
        n = positions.shape[0]
        mask = jnp.ones((n,), bool) if atom_mask is None else jnp.asarray(atom_mask, bool)
        if nbrs is None:
            graph = dense_graph(positions, species, mask, self.cutoff, box)
        else:
            graph = neighbor_graph(positions, species, mask, nbrs, box, self.cutoff)
        out = self.module.apply({"params": self.params}, graph)
        return self.scale * jnp.sum(jnp.where(mask, out, 0.0))

    def shift_energy(self, species: Array, atom_mask: Optional[Array] = None, dtype=None) -> Array:
        """Sum of the element shifts of the masked-in atoms, kJ/mol."""
        shifts = jnp.asarray(self.shifts, dtype)[species]
        return jnp.sum(shifts if atom_mask is None else jnp.where(atom_mask, shifts, 0.0), axis=-1)

    def energy(self, positions: Array, atomic_numbers: Array, atom_mask: Optional[Array] = None,
               box: Optional[Array] = None, nbrs=None) -> Array:
        """Potential energy, kJ/mol, of one structure: positions (N, 3) nm, atomic_numbers (N,), atom_mask (N,)
        bool or None (all real), box (3, 3) nm rows = lattice vectors or None. Dtype follows positions."""
        species = self.species(atomic_numbers, atom_mask)
        return _energy(self, jnp.asarray(positions), species, _mask(atom_mask, positions), box, nbrs)

    def energy_and_forces(self, positions: Array, atomic_numbers: Array, atom_mask: Optional[Array] = None,
                          box: Optional[Array] = None, nbrs=None) -> tuple[Array, Array]:
        """(energy kJ/mol, forces (N, 3) kJ/mol/nm = -dE/dr; zero on padding atoms)."""
        species = self.species(atomic_numbers, atom_mask)
        return _energy_and_forces(self, jnp.asarray(positions), species, _mask(atom_mask, positions), box, nbrs)

    # -- batches (leading frame axis B)
    def energy_batch(self, positions: Array, atomic_numbers: Array, atom_mask: Optional[Array] = None,
                     box: Optional[Array] = None) -> Array:
        """(B,) energies, kJ/mol, for positions (B, N, 3), atomic_numbers (B, N), atom_mask (B, N), box (B, 3, 3)."""
        species = self.species(atomic_numbers, atom_mask)
        mask = _mask(atom_mask, positions)
        positions = jnp.asarray(positions)
        return jax.vmap(lambda r, s, m, b: self.network_energy(r, s, m, b) + self.shift_energy(s, m, r.dtype),
                        in_axes=(0, 0, 0, None if box is None else 0))(positions, species, mask, box)

    def energy_and_forces_batch(self, positions: Array, atomic_numbers: Array, atom_mask: Optional[Array] = None,
                                box: Optional[Array] = None) -> tuple[Array, Array]:
        """((B,) energies kJ/mol, (B, N, 3) forces kJ/mol/nm) for a batch (see ``energy_batch``); jitted."""
        species = self.species(atomic_numbers, atom_mask)
        return _energy_and_forces_batch(self, jnp.asarray(positions), species, _mask(atom_mask, positions),
                                        None if box is None else jnp.asarray(box))

    def stress(self, positions: Array, atomic_numbers: Array, box: Array, atom_mask: Optional[Array] = None,
               nbrs=None) -> Array:
        """(3, 3) stress sigma = (1/V) dE/d(strain), kJ/mol/nm^3, for a periodic structure.

        The strain eps (symmetric) deforms positions and lattice vectors alike, r -> r (1 + eps) (rows are
        vectors). Sign convention as in ASE: the potential's contribution to the pressure is -trace(sigma)/3.
        """
        positions = jnp.asarray(positions)
        box = jnp.asarray(box, positions.dtype)
        eye = jnp.eye(3, dtype=positions.dtype)

        def strained(eps):
            deform = eye + 0.5 * (eps + eps.T)
            return self.energy(positions @ deform, atomic_numbers, atom_mask, box @ deform, nbrs)

        return jax.grad(strained)(jnp.zeros((3, 3), positions.dtype)) / jnp.abs(jnp.linalg.det(box))

    # -- simulations
    def as_energy_term(self, atom_indices: Optional[Sequence[int]], atomic_numbers: Sequence[int],
                       use_neighbor_list: bool = False) -> "NeuralPotentialTerm":
        """An energy term for a jmlsim System acting on ``atom_indices`` (None = all atoms, in order).

        atomic_numbers: (M,) one per selected atom. The term's parameters (what goes in ``System.params``) are
        this potential's ``params``. ``use_neighbor_list`` evaluates through the System's neighbor list instead
        of all pairs; only for a term on all atoms, with the System's neighbor cutoff >= ``cutoff``.
        """
        z = np.asarray(atomic_numbers, np.int64).reshape(-1)
        idx = None if atom_indices is None else np.asarray(atom_indices, np.int64).reshape(-1)
        if idx is not None and idx.shape != z.shape:
            raise InputError(f"as_energy_term: {len(idx)} atom indices but {len(z)} atomic numbers")
        if idx is not None and len(np.unique(idx)) != len(idx):
            raise InputError("as_energy_term: atom_indices has duplicates")
        if use_neighbor_list and idx is not None and not np.array_equal(idx, np.arange(len(idx))):
            raise InputError("as_energy_term: use_neighbor_list needs the term to cover all atoms in order")
        species = np.asarray(self.species(z), np.int32)
        return NeuralPotentialTerm(potential=self.replace(params=None), atom_indices=idx, species=species,
                                   use_neighbor_list=use_neighbor_list)

    # -- files
    def save(self, directory: str) -> None:
        """Write ``config.json`` and ``params.msgpack`` into ``directory`` (created), each atomically."""
        from flax import serialization

        os.makedirs(directory, exist_ok=True)
        params = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), self.params)
        _atomic_write(os.path.join(directory, PARAMS_FILE), serialization.msgpack_serialize(params))
        config = {"format": FORMAT, "architecture": self.config, "elements": list(self.elements),
                  "shifts_kj_per_mol": self.shifts.tolist(), "scale_kj_per_mol": self.scale,
                  "cutoff_nm": self.cutoff, "metadata": self.metadata}
        _atomic_write(os.path.join(directory, CONFIG_FILE), (json.dumps(config, indent=2) + "\n").encode())

    @classmethod
    def load(cls, directory: str) -> "NeuralPotential":
        """Read a directory written by ``save`` (InputError naming the file and key when malformed)."""
        from flax import serialization

        cfg_path = os.path.join(directory, CONFIG_FILE)
        par_path = os.path.join(directory, PARAMS_FILE)
        for p in (cfg_path, par_path):
            if not os.path.isfile(p):
                raise InputError(f"{p}: no such file (not a saved potential directory)")
        try:
            with open(cfg_path) as handle:
                cfg = json.load(handle)
        except (OSError, ValueError) as exc:
            raise InputError(f"{cfg_path}: not valid JSON ({exc})") from None
        if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
            raise InputError(f"{cfg_path}: key 'format' must be {FORMAT!r}")
        for key in ("architecture", "elements", "shifts_kj_per_mol", "scale_kj_per_mol", "cutoff_nm"):
            if key not in cfg:
                raise InputError(f"{cfg_path}: missing key {key!r}")
        try:
            with open(par_path, "rb") as handle:
                params = serialization.msgpack_restore(handle.read())
        except Exception as exc:  # msgpack raises several unrelated types on corrupt input
            raise InputError(f"{par_path}: not a Flax msgpack parameter file ({exc})") from None
        try:
            pot = cls(config=cfg["architecture"], params=params, elements=tuple(cfg["elements"]),
                      shifts=np.asarray(cfg["shifts_kj_per_mol"], np.float64), scale=cfg["scale_kj_per_mol"],
                      cutoff=cfg["cutoff_nm"], metadata=cfg.get("metadata", {}))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{cfg_path}: malformed value ({exc})") from None
        try:
            module = pot.module
        except InputError as exc:
            raise InputError(f"{cfg_path}: key 'architecture': {exc}") from None
        if int(pot.config.get("n_species", -1)) != len(pot.elements):
            raise InputError(f"{cfg_path}: architecture n_species {pot.config.get('n_species')} != "
                             f"{len(pot.elements)} elements")
        expected = jax.eval_shape(lambda k: init_params(module, k, jnp.float32), jax.random.PRNGKey(0))
        got = jax.tree_util.tree_map(lambda x: (tuple(np.shape(x))), params)
        want = jax.tree_util.tree_map(lambda x: tuple(x.shape), expected)
        if got != want:
            raise InputError(f"{par_path}: parameter shapes do not match the architecture in {CONFIG_FILE}")
        return pot


def _mask(atom_mask, positions) -> Array:
    shape = np.shape(positions)[:-1]
    return jnp.ones(shape, bool) if atom_mask is None else jnp.asarray(atom_mask, bool)


@jax.jit
def _energy(pot: NeuralPotential, positions, species, mask, box, nbrs):
    # jitted: eagerly, a network is hundreds of separately dispatched (and compiled) operations
    return pot.network_energy(positions, species, mask, box, nbrs) + pot.shift_energy(species, mask, positions.dtype)


@jax.jit
def _energy_and_forces(pot: NeuralPotential, positions, species, mask, box, nbrs):
    def e(r):
        return pot.network_energy(r, species, mask, box, nbrs) + pot.shift_energy(species, mask, r.dtype)

    energy, grad = jax.value_and_grad(e)(positions)
    return energy, -grad


@jax.jit
def _energy_and_forces_batch(pot: NeuralPotential, positions, species, mask, box):
    return jax.vmap(lambda r, s, m, b: _energy_and_forces(pot, r, s, m, b, None),
                    in_axes=(0, 0, 0, None if box is None else 0))(positions, species, mask, box)


def init_params(module, key, dtype=jnp.float32, n_atoms: int = 3):
    """Initialise a module's ``params`` on a small dummy molecule; every leaf cast to ``dtype`` (concrete)."""
    from jmlsim.potentials.architectures import model_config

    return _init_fn(json.dumps(model_config(module), sort_keys=True), np.dtype(dtype).name, n_atoms)(key)


@functools.lru_cache(maxsize=16)
def _init_fn(config_json: str, dtype_name: str, n_atoms: int):
    """Jitted initialiser per (architecture, dtype): one compiled call instead of hundreds of eager ops, and
    compiled once per process however many trainings start."""
    from jmlsim.potentials.graph import dense_graph

    module = _module_from_json(config_json)
    dtype = np.dtype(dtype_name)

    def init(key):
        positions = 0.1 * jnp.arange(3 * n_atoms, dtype=dtype).reshape(n_atoms, 3) ** 0.5
        graph = dense_graph(positions, jnp.zeros(n_atoms, jnp.int32), jnp.ones(n_atoms, bool), module.cutoff)
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), module.init(key, graph)["params"])

    return jax.jit(init)


@dataclasses.dataclass(frozen=True, eq=False)
class NeuralPotentialTerm:
    """A NeuralPotential as a System energy term on a subset of atoms.

    potential: the potential with ``params`` stripped (the System passes them as this term's params).
    atom_indices: (M,) int indices into the System's atoms, or None for all atoms in order.
    species: (M,) int32 species indices. use_neighbor_list: evaluate through the System's neighbor list.
    """

    potential: NeuralPotential
    atom_indices: Optional[np.ndarray]
    species: np.ndarray
    use_neighbor_list: bool = False

    def energy(self, params, positions: Array, box: Optional[Array] = None, nbrs=None) -> Array:
        """Energy, kJ/mol, of the selected atoms: params = the potential's network parameters."""
        pot = self.potential.replace(params=params)
        x = positions if self.atom_indices is None else positions[self.atom_indices]
        species = jnp.asarray(self.species)
        return (pot.network_energy(x, species, None, box, nbrs if self.use_neighbor_list else None)
                + pot.shift_energy(species, None, positions.dtype))


# ---------------------------------------------------------------------------------------------- loading

def available_pretrained() -> list[str]:
    """Names of the pretrained potentials shipped with jmlsim."""
    if not os.path.isdir(PRETRAINED_DIR):
        return []
    return sorted(d for d in os.listdir(PRETRAINED_DIR)
                  if os.path.isfile(os.path.join(PRETRAINED_DIR, d, CONFIG_FILE)))


def load_potential(name_or_dir: str) -> NeuralPotential:
    """A saved potential: a directory path, else the name of a pretrained potential (InputError otherwise)."""
    name_or_dir = os.fspath(name_or_dir)
    if os.path.isdir(name_or_dir):
        return NeuralPotential.load(name_or_dir)
    if name_or_dir in available_pretrained():
        return NeuralPotential.load(os.path.join(PRETRAINED_DIR, name_or_dir))
    names = available_pretrained()
    raise InputError(f"{name_or_dir}: no such potential directory or pretrained name "
                     f"(pretrained: {', '.join(names) if names else 'none installed'})")


def read_xyz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the first frame of an XYZ file: (atomic_numbers (N,), positions (N, 3) nm; the file is in Å)."""
    from openmm.app import element as omm_element

    path = os.fspath(path)
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        n = int(lines[0].split()[0])
    except (IndexError, ValueError):
        raise InputError(f"{path}: line 1 must be the atom count") from None
    if n < 1 or len(lines) < n + 2:
        raise InputError(f"{path}: atom count {n} on line 1 but {max(len(lines) - 2, 0)} atom lines")
    z = np.zeros(n, np.int64)
    xyz = np.zeros((n, 3))
    for i in range(n):
        fields = lines[i + 2].split()
        if len(fields) < 4:
            raise InputError(f"{path}: line {i + 3} needs an element and three coordinates")
        sym = fields[0]
        try:
            z[i] = int(sym) if sym.isdigit() else omm_element.get_by_symbol(sym.capitalize()).atomic_number
        except KeyError:
            raise InputError(f"{path}: line {i + 3}: unknown element {sym!r}") from None
        try:
            xyz[i] = [float(v) for v in fields[1:4]]
        except ValueError:
            raise InputError(f"{path}: line {i + 3}: coordinates are not numbers") from None
    if not np.all(np.isfinite(xyz)):
        raise InputError(f"{path}: coordinates contain NaN or infinite values")
    if np.any((z < 1) | (z > MAX_ATOMIC_NUMBER)):
        raise InputError(f"{path}: atomic numbers must be 1..{MAX_ATOMIC_NUMBER}")
    return z, xyz * units.NM_PER_ANGSTROM


def system_from_xyz(path: str, potential):
    """A jmlsim System of the molecule in an XYZ file (Å), driven by ``potential`` alone; no box.

    potential: a NeuralPotential, or a model directory / pretrained name (``load_potential``).
    Masses are the elements' standard masses (amu); the System's topology is one residue 'MOL'.
    """
    if not isinstance(potential, NeuralPotential):
        potential = load_potential(potential)
    import mdtraj
    from openmm import unit as omm_unit
    from openmm.app import element as omm_element

    from jmlsim.system import System

    z, positions = read_xyz(path)
    try:
        term = potential.as_energy_term(None, z)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    masses = np.array([omm_element.Element.getByAtomicNumber(int(a)).mass.value_in_unit(omm_unit.dalton)
                       for a in z])
    top = mdtraj.Topology()
    chain = top.add_chain()
    residue = top.add_residue("MOL", chain, resSeq=1)
    for i, a in enumerate(z):
        el = mdtraj.element.Element.getByAtomicNumber(int(a))
        top.add_atom(f"{el.symbol}{i + 1}", el, residue)
    return System(terms={"potential": term}, params={"potential": potential.params}, masses=masses,
                  positions=positions, box=None, neighbor_cutoff=None, kB=units.BOLTZMANN_KJ_PER_MOL_K,
                  topology=top, name=os.path.splitext(os.path.basename(path))[0])
