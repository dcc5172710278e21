"""The run loop: a jit-compiled chunk of steps (``lax.scan``) per host round-trip.

Between chunks the host
  * checks the neighbor-list overflow flag; on overflow it enlarges the list and *redoes the chunk* from the
    saved start state, so no pair is ever dropped (also for a replica batch: one capacity serves all);
  * checks for non-finite forces/energies and stops with an error naming the first bad step;
  * hands a frame to the reporters (trajectory, log), advances the progress bar and writes checkpoints.

A run with ``replicas=R`` carries a leading axis R on every state array and steps all replicas in one program.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim import replica_constraints, space
from jmlsim.constraints import Constraints
from jmlsim.decomposition import atom_mesh, splitting_rows
from jmlsim.distributed import host_local, to_host
from jmlsim.energy.differences import DENSE_MAX_ATOMS
from jmlsim.errors import SimulationError
from jmlsim.integrators.layout import ATOM_MAJOR, REPLICA_MINOR
from jmlsim.integrators.state import MDState, kinetic_energy
from jmlsim.neighbors import NeighborList, plan
from jmlsim.system import System


def _replica_minor(state: MDState) -> MDState:
    """Positions, velocities and forces (R, N, 3) <-> (3, N, R): the transpose is its own inverse."""
    t = lambda a: jnp.transpose(a, (2, 1, 0))
    return state._replace(positions=t(state.positions), velocities=t(state.velocities), forces=t(state.forces))


class Frame(NamedTuple):
    """What reporters receive after a chunk, on the host. Arrays carry a replica axis first when batched."""

    step: int
    time: float  # ps (or tau)
    positions: np.ndarray  # (..., N, 3), unwrapped (continuous across the boundary; see space.wrap)
    velocities: np.ndarray
    box: Optional[np.ndarray]  # (..., 3, 3)
    potential: np.ndarray  # (...)
    kinetic: np.ndarray
    temperature: np.ndarray
    volume: Optional[np.ndarray]


# (state dtype, force dtype). Under "mixed" the coordinate-sensitive (bonded) terms run on the float64 state
# positions (System.forces' ``precise``), the rest on positions rounded to float32.
PRECISIONS = {"single": (jnp.float32, jnp.float32), "mixed": (jnp.float64, jnp.float32),
              "double": (jnp.float64, jnp.float64)}


def dtypes(precision: str):
    """(state dtype, force dtype) for a precision name; enables x64 when needed."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (single, mixed, double)")
    if precision != "single":
        jax.config.update("jax_enable_x64", True)
    return PRECISIONS[precision]


def as_float_dtype(dtype):
    """Leaf cast: floating parameter leaves to ``dtype``; integer leaves (topology indices) stay integers."""
    def cast(a):
        a = jnp.asarray(a)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
    return cast


@dataclasses.dataclass
class Simulation:
    """Drives ``integrator`` on ``system``.

    kT: thermal energy (system units) for initial velocities; defaults to the integrator's kT.
    skin: neighbor-list skin (system length unit); shortened where the box is too small for cutoff + skin.
    Constraints: when the system has them, the integrator gets them (unless it has its own), the start positions
    are constrained and the start velocities projected (``constrain_start``), and the temperature counts
    3N - constraints (- 3 when momentum is conserved) degrees of freedom.
    replicas: None for one system, or R for a batch of R copies; replica r uses the random stream of seed + r (the
    same as a lone run with that seed). A per-replica
    temperature ladder is an integrator whose kT is a tuple of R values (see :mod:`jmlsim.ensemble`).
    replica_params: optional parameter pytree with a leading axis R on every leaf (one force-field parameter
    set per replica, e.g. for Hamiltonian replica exchange); default: the system's params shared by all.
    devices: shard the replica axis over this many devices (``jax.devices()[:devices]``), or None. Without
    replicas: split the rows of the neighbor-list pair sum of the one system over them (atom decomposition, see
    :mod:`jmlsim.decomposition`); the state is replicated.
    replica_positions (R, N, 3), replica_masses (R, N): per-replica starting positions and masses (a batch of
    different molecules padded to N atoms, see :mod:`jmlsim.molecule_batch`); no neighbor list, and constraints
    only as the integrator's per-replica :class:`jmlsim.constraints.ConstraintsBatch`.
    atom_mask (R, N) bool: the real atoms of each replica; padding atoms are left out of the kinetic energy and
    the degrees of freedom.
    neighbor_capacity: starting row width of the neighbor list (None: sized from the start structure).
    """

    system: System
    integrator: Any
    kT: Optional[float] = None
    seed: int = 0
    precision: str = "single"
    skin: float = 0.3
    replicas: Optional[int] = None
    neighbor_capacity: Optional[int] = None
    velocities: Optional[np.ndarray] = None
    constrain_start: bool = True
    replica_params: Any = None
    devices: Optional[int] = None
    replica_positions: Optional[np.ndarray] = None
    replica_masses: Optional[np.ndarray] = None
    atom_mask: Optional[np.ndarray] = None

    def __post_init__(self):
        self.dtype, self.force_dtype = dtypes(self.precision)
        if self.kT is None:
            self.kT = getattr(self.integrator, "kT", None)
            if self.kT is None:
                raise ValueError("give kT for the initial velocities (the integrator has none)")
        self._check_replica_settings()
        sys_ = self.system
        if sys_.constraints is not None and hasattr(self.integrator, "constraints") \
                and self.integrator.constraints is None:
            self.integrator = dataclasses.replace(self.integrator, constraints=sys_.constraints)
        if sys_.neighbor_cutoff is not None and sys_.box is not None:
            # small periodic boxes (216 waters at 0.9 nm) leave less than the default skin below half the width
            room = 0.5 * float(np.min(space.widths(np.asarray(sys_.box)))) - sys_.neighbor_cutoff
            if room <= 0:
                raise ValueError(f"cutoff {sys_.neighbor_cutoff:g} exceeds half the smallest box width "
                                 f"{room + sys_.neighbor_cutoff:g}")
            self.skin = min(self.skin, 0.999 * room)
        self.params_batched = self.replica_params is not None
        self.params = jax.tree_util.tree_map(as_float_dtype(self.force_dtype),
                                             self.replica_params if self.params_batched else sys_.params)
        positions = jnp.asarray(sys_.positions, self.dtype)
        masses = jnp.asarray(sys_.masses, self.dtype)
        per_replica_atoms = self.replica_positions is not None or self.replica_masses is not None
        if per_replica_atoms:
            positions_r = jnp.asarray(self.replica_positions if self.replica_positions is not None else
                                      np.broadcast_to(sys_.positions, (self.replicas,) + sys_.positions.shape),
                                      self.dtype)
            masses_r = jnp.asarray(self.replica_masses if self.replica_masses is not None else
                                   np.broadcast_to(sys_.masses, (self.replicas,) + sys_.masses.shape), self.dtype)
        constraints = getattr(self.integrator, "constraints", None)
        if constraints is not None and self.constrain_start:
            if per_replica_atoms:  # each replica's own atoms (a molecule batch: per-molecule constraints)
                positions_r = jax.jit(constraints.positions)(positions_r, positions_r, masses_r)
            else:
                positions = jax.jit(constraints.positions)(positions, positions, masses)
        box = None if sys_.box is None else jnp.asarray(sys_.box, self.dtype)
        self.regrowths = 0
        if sys_.neighbor_cutoff is not None:
            self.spec, nbrs = plan(positions.astype(self.force_dtype), sys_.box, sys_.neighbor_cutoff, self.skin,
                                   capacity=self.neighbor_capacity)
            if bool(nbrs.overflow):  # the requested starting capacity is too small even for the start
                self.spec = self.spec.regrown(nbrs, sys_.box)
                nbrs = jax.jit(self.spec.build)(positions.astype(self.force_dtype), jnp.asarray(sys_.box, self.force_dtype))
        else:
            self.spec, nbrs = None, None
        key = jax.random.PRNGKey(self.seed)
        if self.replicas is None:
            forces, nbrs = jax.jit(self._force_fn(self.params, box))(positions, nbrs)
            self.state = self.integrator.init(key, positions, masses, forces, box, self.kT, self.velocities)
            self.nbrs = nbrs
        else:
            if per_replica_atoms:  # each replica has its own atoms (and maybe parameters)
                forces = jax.jit(jax.vmap(lambda p, x: self._force_fn(p, box)(x, nbrs)[0],
                                          in_axes=(0 if self.params_batched else None, 0)))(self.params, positions_r)
            elif self.params_batched:  # each replica has its own forces at the common start
                forces = jax.jit(jax.vmap(lambda p: self._force_fn(p, box)(positions, nbrs)[0]))(self.params)
            else:
                forces = jnp.broadcast_to(jax.jit(self._force_fn(self.params, box))(positions, nbrs)[0],
                                          (self.replicas,) + positions.shape)
            # replica r draws from the stream of seed + r, so it reproduces a lone run with that seed
            keys = jax.vmap(jax.random.PRNGKey)(self.seed + jnp.arange(self.replicas))
            kTs = jnp.broadcast_to(jnp.asarray(self.kT, self.dtype), (self.replicas,))
            if per_replica_atoms:
                init = lambda k, kT, f, x, m: self.integrator.init(k, x, m, f, box, kT, self.velocities)
                self.state = jax.vmap(init)(keys, kTs, forces, positions_r, masses_r)
            else:
                init = lambda k, kT, f: self.integrator.init(k, positions, masses, f, box, kT, self.velocities)
                self.state = jax.vmap(init)(keys, kTs, forces)
            self.nbrs = None if nbrs is None else jax.tree_util.tree_map(
                lambda a: jnp.broadcast_to(a, (self.replicas,) + a.shape), nbrs)
        if constraints is not None and self.constrain_start:
            st = self.state
            self.state = st._replace(velocities=jax.jit(constraints.velocities)(st.positions, st.velocities, st.masses))
        n_constraints = 0 if constraints is None else constraints.n_constraints
        momentum = 3 if getattr(self.integrator, "conserves_momentum", False) else 0
        if self.atom_mask is not None:  # per replica: its real atoms only
            self.dof = 3 * np.asarray(self.atom_mask).sum(-1) - n_constraints - momentum
        else:
            self.dof = 3 * sys_.n_atoms - n_constraints - momentum
        self._chunks: dict = {}
        self._potential_fns: dict = {}
        self.compile_seconds = 0.0
        self._sharding = self._replica_sharding()
        self.state, self.nbrs, self.params = self.place(self.state, self.nbrs, self.params)

    def _check_replica_settings(self) -> None:
        """Per-replica settings must match the replica count (ValueError names the mismatch)."""
        R = self.replicas
        if R is not None and R < 1:
            raise ValueError(f"replicas must be at least 1, got {R}")
        for name, value in (("kT", self.kT), ("integrator kT", getattr(self.integrator, "kT", None))):
            if isinstance(value, (tuple, list)):
                if R is None or len(value) != R:
                    raise ValueError(f"{name} has {len(value)} per-replica values but replicas={R}")
                if not hasattr(self.integrator, "friction"):
                    raise ValueError("per-replica temperatures need the Langevin integrator")
        if self.replica_params is not None:
            if R is None:
                raise ValueError("replica_params needs replicas")
            for path, leaf in jax.tree_util.tree_flatten_with_path(self.replica_params)[0]:
                if np.ndim(leaf) == 0 or np.shape(leaf)[0] != R:
                    raise ValueError(f"replica_params{jax.tree_util.keystr(path)} has shape {np.shape(leaf)}; "
                                     f"its leading axis must be replicas={R}")
        n = self.system.n_atoms
        for name, value, shape in (("replica_positions", self.replica_positions, (R, n, 3)),
                                   ("replica_masses", self.replica_masses, (R, n)),
                                   ("atom_mask", self.atom_mask, (R, n))):
            if value is None:
                continue
            if R is None:
                raise ValueError(f"{name} needs replicas")
            if np.shape(value) != shape:
                raise ValueError(f"{name} has shape {np.shape(value)}, expected {shape} (replicas, atoms)")
        if self.replica_positions is not None or self.replica_masses is not None:
            if self.system.neighbor_cutoff is not None or self.system.constraints is not None:
                raise ValueError("per-replica atoms (a molecule batch) need a system without neighbor list and "
                                 "without constraints")
            if not hasattr(self.integrator, "friction"):
                raise ValueError("per-replica atoms (a molecule batch) need the Langevin integrator")
        if self.devices is not None:
            if R is None and self.system.neighbor_cutoff is None:
                raise ValueError("devices without replicas split the neighbor-list pair sum over them: the system "
                                 "needs a cutoff (or give replicas)")
            if R is None and jax.process_count() > 1:
                raise ValueError("a multi-process run shards replicas: give replicas")
            available = len(jax.devices())
            if not 1 <= self.devices <= available:
                raise ValueError(f"devices={self.devices} but {available} are available")
            if R is not None and R % self.devices:
                raise ValueError(f"replicas={R} do not divide evenly over devices={self.devices}")

    def _replica_sharding(self):
        """(sharded along the replica axis, replicated) NamedShardings over the first ``devices`` devices; for one
        system (atom decomposition) both are replicated over the ``"atoms"`` mesh."""
        if self.devices is None:
            return None
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        if self.replicas is None:
            replicated = NamedSharding(atom_mesh(self.devices), PartitionSpec())
            return replicated, replicated
        mesh = Mesh(np.asarray(jax.devices()[: self.devices]), ("replica",))
        return NamedSharding(mesh, PartitionSpec("replica")), NamedSharding(mesh, PartitionSpec())

    def tracing(self):
        """Context to trace compiled pieces in: the ``"atoms"`` mesh for one system over several devices (the pair
        sum splits its rows over it, see :mod:`jmlsim.decomposition`), else nothing."""
        one_system_over_devices = self.devices is not None and self.replicas is None
        return splitting_rows(self._sharding[1].mesh if one_system_over_devices else None)

    def place(self, state, nbrs, params=None):
        """Put (state, nbrs, params) on the devices: replica-axis arrays sharded, the rest replicated.

        A no-op without ``devices``. Called after any host-side edit of the state (checkpoint load, replica
        exchange, barostat) so that compiled chunks always see the shardings they were compiled for.
        """
        if self._sharding is None:
            return state, nbrs, params
        sharded, replicated = self._sharding
        on = lambda tree: None if tree is None else jax.tree_util.tree_map(self.put, tree)
        params = None if params is None else jax.tree_util.tree_map(
            lambda a: jax.device_put(host_local(a), sharded if self.params_batched else replicated), params)
        return on(state), on(nbrs), params

    def put(self, a):
        """One array on the devices as :meth:`place` puts state arrays: sharded when its leading axis is the replica
        axis, else replicated; unchanged without ``devices``."""
        if self._sharding is None:
            return a
        sharded, replicated = self._sharding
        # host_local: a mesh spanning several processes takes host arrays (the same in every process)
        return jax.device_put(host_local(a), sharded if np.ndim(a) >= 1 and np.shape(a)[0] == self.replicas
                              else replicated)

    # -- compiled pieces ------------------------------------------------------------------------------
    def _force_fn(self, params, box) -> Callable:
        """force_fn(positions, nbrs) -> (forces, nbrs) for one system, rebuilding the list where it is stale."""
        sys_, spec, fdt, sdt = self.system, self.spec, self.force_dtype, self.dtype

        def force_fn(x, nbrs):
            xf = x.astype(fdt)
            if spec is not None:
                nbrs = spec.update(nbrs, xf, None if box is None else box.astype(fdt))
            f = sys_.forces(params, xf, None if box is None else box.astype(fdt), nbrs, precise=x)
            return f.astype(sdt), nbrs
        return force_fn

    def _batched_force_fn(self, params, replica_minor: bool = False) -> Callable:
        """As _force_fn for a replica batch: one rebuild decision for all replicas (see update_batch). With
        replica_minor, positions and forces are (3, N, R) (see :meth:`_replica_minor_integrator`)."""
        sys_, spec, fdt, sdt = self.system, self.spec, self.force_dtype, self.dtype

        def force_fn(xb, nbrs, box):
            xf = xb.astype(fdt)
            boxf = None if box is None else box.astype(fdt)
            if replica_minor:
                f = sys_.batched_force_components(params, tuple(xf), boxf, nbrs, self.params_batched,
                                                  precise=tuple(xb))
                return jnp.stack(f).astype(sdt), nbrs
            if spec is not None:
                nbrs = spec.update_batch(nbrs, xf, boxf)
            f = sys_.batched_forces(params, xf, boxf, nbrs, self.params_batched, precise=xb)
            return f.astype(sdt), nbrs
        return force_fn

    def _replica_minor_integrator(self):
        """The integrator set up for the replica-minor layout (:mod:`jmlsim.integrators.layout`), in which a batch
        of a small molecule runs from step to step as (3, N, R) arrays: force terms and constraints gather whole
        rows of R replicas and the integrator's arithmetic vectorises over replicas (256 replicas of alanine
        dipeptide: the forces alone take ~190 instead of ~340 us). None where the batch runs as (R, N, 3): one
        system, more than DENSE_MAX_ATOMS atoms, a neighbor list, an integrator without a layout, or constraints
        that the replica-minor solves do not cover (rigid waters, a molecule library's per-molecule pairs)."""
        integrator = self.integrator
        if (self.replicas is None or self.spec is not None or self.system.n_atoms > DENSE_MAX_ATOMS
                or not hasattr(integrator, "layout")):
            return None
        constraints = integrator.constraints
        if constraints is not None:
            if not (isinstance(constraints, Constraints)
                    and replica_constraints.applies_to(constraints, self.system.n_atoms)):
                return None
            constraints = replica_constraints.ReplicaMinorConstraints(constraints)
        return dataclasses.replace(integrator, layout=REPLICA_MINOR, constraints=constraints)

    def _energy(self, params, state: MDState, nbrs):
        """Potential energy at the state's positions, (...)."""
        sys_, spec, fdt = self.system, self.spec, self.force_dtype

        def one(p, x, box, nb):
            xf = x.astype(fdt)
            boxf = None if box is None else box.astype(fdt)
            if spec is not None:
                nb = spec.update(nb, xf, boxf)
            return sys_.energy(p, xf, boxf, nb, precise=x)
        if self.replicas is None:
            return one(params, state.positions, state.box, nbrs)
        return jax.vmap(one, (0 if self.params_batched else None, 0, None if state.box is None else 0,
                              0 if nbrs is not None else None))(params, state.positions, state.box, nbrs)

    def chunk_fn(self, n_steps: int, state: MDState, nbrs) -> Callable:
        """Compiled (params, state, nbrs) -> (state, nbrs, potential, first_bad_step) advancing n_steps.

        Compiled ahead of time per (neighbor spec, n_steps); compile time accumulates in compile_seconds.
        """
        key = (self.spec, n_steps)
        if key in self._chunks:
            return self._chunks[key]
        integrator = self.integrator
        batched = self.replicas is not None
        minor = self._replica_minor_integrator()
        stepper = integrator if minor is None else minor
        layout = getattr(stepper, "layout", ATOM_MAJOR)

        def run(params, state, nbrs):
            if batched:
                bforce = self._batched_force_fn(params, replica_minor=minor is not None)
                force_fn = lambda x, nb: bforce(x, nb, state.box)
            else:
                force_fn = self._force_fn(params, state.box)

            # An atom that jumps further than the interaction cutoff in one step has blown up (and would
            # outrun any neighbor list); 1 length unit when there is no cutoff.
            jump2 = (self.system.neighbor_cutoff or 1.0) ** 2

            # integrators with a finish() skip their closing velocity projection inside the chunk (see
            # LangevinBAOAB.step) and apply it once at its end
            deferred = {"project_end": False} if hasattr(integrator, "finish") else {}

            # The blow-up check is kept per atom, bad_at (N,), (R, N) or replica-minor (N, R): the step at which
            # each atom first failed, -1 while it has not; one reduction at the end of the chunk, none per step
            # (a whole-batch max every step cost XLA's CPU backend ~0.1 ms at 256 replicas of 22 atoms).
            def body(carry, _):
                st, nb, bad_at = carry
                before = st.positions
                st, nb = stepper.step(st, force_fn, nb, **deferred)
                # NaN or inf positions fail the comparison too; x, y and z are summed elementwise because a
                # reduction over a minor axis of 3 is not fused into the loop on CPU
                d = layout.components(st.positions - before)
                f = layout.components(jnp.isfinite(st.forces))
                ok = (d[0] ** 2 + d[1] ** 2 + d[2] ** 2 < jump2) & f[0] & f[1] & f[2]
                bad_at = jnp.where((bad_at < 0) & ~ok, layout.per_atom_of_replica(st.step), bad_at)
                return (st, nb, bad_at), None
            carried = state if minor is None else _replica_minor(state)
            not_yet = jnp.full(layout.components(carried.positions)[0].shape, -1, jnp.int32)
            (carried, nbrs, bad_at), _ = jax.lax.scan(body, (carried, nbrs, not_yet), None, length=n_steps)
            state = carried if minor is None else _replica_minor(carried)
            failed = bad_at >= 0
            bad = jnp.where(jnp.any(failed), jnp.min(jnp.where(failed, bad_at, jnp.iinfo(jnp.int32).max)), -1)
            if deferred:
                state = integrator.finish(state)
            return state, nbrs, self._energy(params, state, nbrs), bad
        t0 = time.perf_counter()
        with self.tracing():
            fn = jax.jit(run).lower(self.params, state, nbrs).compile()
        self.compile_seconds += time.perf_counter() - t0
        self._chunks[key] = fn
        return fn

    # -- host loop ------------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return int(np.max(to_host(self.state.step)))

    def advance(self, n_steps: int) -> np.ndarray:
        """Run n_steps as one chunk (redone with a larger neighbor list on overflow). Returns the potential."""
        start_state, start_nbrs, _ = self.place(self.state, self.nbrs)
        while True:
            fn = self.chunk_fn(n_steps, start_state, start_nbrs)
            state, nbrs, potential, bad = fn(self.params, start_state, start_nbrs)
            overflow = False if nbrs is None else bool(np.any(to_host(nbrs.overflow)))
            if not overflow:
                break
            # Enlarge the list and redo the whole chunk from where it started: nothing is dropped.
            self.spec = self.spec.regrown(to_host(nbrs), None if start_state.box is None else to_host(start_state.box))
            self.regrowths += 1
            start_nbrs = self.place(start_state, self._rebuild(start_state))[1]
        bad = int(to_host(bad))
        potential = to_host(potential)
        if bad >= 0 or not np.all(np.isfinite(potential)):
            where = f"at step {bad}" if bad >= 0 else f"by step {int(np.max(to_host(state.step)))}"
            raise SimulationError(f"simulation blew up: non-finite forces or an atom jumping past the cutoff {where} "
                                  f"(try a smaller timestep or minimize first)")
        self.state, self.nbrs = state, nbrs
        return potential

    def _rebuild(self, state: MDState) -> Optional[NeighborList]:
        """A fresh list (with the current spec) at the state's positions."""
        if self.spec is None:
            return None
        build = self.spec.build
        x = state.positions.astype(self.force_dtype)
        box = None if state.box is None else state.box.astype(self.force_dtype)
        if self.replicas is None:
            return jax.jit(build)(x, box)
        return jax.jit(jax.vmap(build, (0, None if box is None else 0)))(x, box)

    def potential(self) -> np.ndarray:
        """Potential energy of the current state (per replica when batched)."""
        # one compiled function per neighbor spec (the spec is closed over when traced); a fresh jax.jit of the
        # bound method each call would retrace and recompile every chunk
        if self.spec not in self._potential_fns:
            self._potential_fns[self.spec] = jax.jit(self._energy)
        with self.tracing():  # traced (first call) with the pair sum split over the devices where it is
            return to_host(self._potential_fns[self.spec](self.params, self.state, self.nbrs))

    def frame(self, potential: Optional[np.ndarray] = None) -> Frame:
        """The current state as a host-side Frame (potential computed when not given)."""
        if potential is None:
            potential = self.potential()
        st = to_host(self.state)
        velocities = np.asarray(st.velocities)
        if self.atom_mask is not None:  # padding atoms carry no kinetic energy of the molecule
            velocities = velocities * np.asarray(self.atom_mask)[..., None]
        kinetic = np.asarray(kinetic_energy(velocities, np.asarray(st.masses)))
        box = None if st.box is None else np.asarray(st.box)
        vol = None if box is None else np.abs(np.linalg.det(box))
        return Frame(step=self.step, time=self.step * self.integrator.timestep, positions=np.asarray(st.positions),
                     velocities=np.asarray(st.velocities), box=box, potential=np.asarray(potential),
                     kinetic=kinetic, temperature=2.0 * kinetic / (self.dof * self.system.kB), volume=vol)

    def run(self, n_steps: int, report_interval: int, reporters: Sequence = (), progress: bool = True,
            checkpoint: Optional[Callable[["Simulation"], None]] = None, checkpoint_every: int = 1,
            barostat=None, moves: Sequence = ()) -> dict:
        """Advance to step ``self.step + n_steps``, reporting every ``report_interval`` steps.

        moves: Monte Carlo moves made between chunks, each with ``frequency`` (steps) and ``attempt(sim)`` — a
        :class:`jmlsim.barostat.MonteCarloBarostat` (also accepted as ``barostat``) or a
        :class:`jmlsim.ensemble.ReplicaExchange`. A move is attempted whenever the step count reaches a multiple of
        its frequency; chunks end there. Every ``report_interval`` steps (counted from the start of this call) and
        at the end, every reporter gets ``report(frame)``, and every ``checkpoint_every`` reports
        ``checkpoint(self)`` is called (after the reporters flushed, so a checkpoint never points past data on
        disk). Returns timing figures: wall_s, compile_s, steps_per_s (excluding compilation).
        """
        from jmlsim.progress import ProgressBar  # tqdm is imported lazily

        moves = list(moves) + ([barostat] if barostat is not None else [])
        start = self.step
        target = start + n_steps
        bar = ProgressBar(n_steps, self, enabled=progress)
        wall0 = time.perf_counter()
        compile0 = self.compile_seconds
        reports = 0
        potential = None
        try:
            while self.step < target:
                done = self.step - start
                k = min(report_interval - done % report_interval, target - self.step)
                for move in moves:
                    k = min(k, move.frequency - self.step % move.frequency)
                potential = self.advance(k)
                attempted = [move.attempt(self) for move in moves if self.step % move.frequency == 0]
                if attempted:
                    potential = self.potential()
                if (self.step - start) % report_interval and self.step < target:
                    bar.update(k, None)
                    continue
                reports += 1
                frame = self.frame(potential)
                for reporter in reporters:
                    reporter.report(frame)
                if checkpoint is not None and (reports % checkpoint_every == 0 or self.step >= target):
                    checkpoint(self)
                bar.update(k, frame)
        finally:
            bar.close()
        wall = time.perf_counter() - wall0
        compile_s = self.compile_seconds - compile0
        run_s = max(wall - compile_s, 1e-9)
        return {"wall_s": wall, "compile_s": compile_s, "steps_per_s": n_steps / run_s if n_steps else 0.0,
                "final_potential": None if potential is None else potential}
