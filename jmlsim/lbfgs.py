"""L-BFGS energy minimization (optax) on the constraint surface.

With constraints (SHAKE bonds, SETTLE waters) the search runs on the constraint surface itself: the objective is
E(pi(y)), where pi moves y onto the surface by SHAKE/SETTLE with the current iterate as reference, and its gradient
is the system's forces pulled back through pi (implicit differentiation of the SHAKE solve, autodiff of SETTLE). Each
iterate is projected, so every one satisfies the constraints, and L-BFGS sees a smooth function of the free degrees
of freedom only. Convergence is judged on the forces projected onto the surface (the components along constraints
are carried by the constraint forces).

This is stricter than OpenMM's LocalEnergyMinimizer, which minimizes the energy plus a stiff harmonic penalty on
the constrained distances and then projects once: the projection strains the structure by about F/k. On solvated
alanine dipeptide (PME, HBonds, rigid water) OpenMM's result at tolerance 10 kJ/mol/nm carries about 290 kJ/mol/nm of
projected force; this search reaches the tolerance itself (benchmarks/RESULTS.md).

Runs in jit-compiled chunks of iterations; the neighbor list is rebuilt (and regrown on overflow) between
chunks and kept current inside them. The gradient is the system's own (analytic where terms provide it), fed
to optax through a custom VJP, so no scatter-heavy autodiff of the pair sum is needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.distributed import to_host


def _objective(energy_forces):
    """A scalar objective x -> E(x) whose gradient is minus the given forces (custom VJP, so the system's analytic
    forces are used instead of autodiff of the energy). energy_forces(x) -> (E, F, ...)."""
    @jax.custom_vjp
    def objective(x):
        return energy_forces(x)[0]
    objective.defvjp(lambda x: tuple(energy_forces(x)[:2]), lambda f, g: (-g * f,))
    return objective


def _lbfgs_step(optimizer, objective, x, opt_state):
    """One optax L-BFGS iteration (with its line search) on ``objective``; returns (x', opt_state')."""
    import optax

    value, grad = optax.value_and_grad_from_state(objective)(x, state=opt_state)
    updates, opt_state = optimizer.update(grad, opt_state, x, value=value, grad=grad, value_fn=objective)
    return optax.apply_updates(x, updates), opt_state


def _search_step(optimizer, energy_forces, x, opt_state, project=None):
    """One L-BFGS iteration from x -> (x', opt_state'). energy_forces(x) -> (E, F, ...). With constraints,
    ``project(y, reference)`` (SHAKE/SETTLE) puts y on the constraint surface: the search then minimizes E(pi(y)),
    pi = project(., x), whose gradient is minus the forces pulled back through pi, and x' is projected too."""
    if project is None:
        return _lbfgs_step(optimizer, _objective(energy_forces), x, opt_state)

    def surface_energy_forces(y):
        on_surface, pull = jax.vjp(lambda z: project(z, x), y)
        e, f, *rest = energy_forces(on_surface)
        return (e, pull(f.astype(on_surface.dtype))[0], *rest)  # forces may be float32 under float64 positions
    y, opt_state = _lbfgs_step(optimizer, _objective(surface_energy_forces), x, opt_state)
    return project(y, x), opt_state


def minimize_lbfgs(sim, tolerance: float, max_iterations: int = 2000, chunk: int = 25, memory_size: int = 10) -> dict:
    """Minimize a ``Simulation`` in place (positions and forces; velocities kept).

    tolerance: largest per-atom (constraint-projected) force norm to stop at, kJ/mol/nm.
    Returns {'steps', 'initial_potential', 'final_potential', 'max_force', 'converged', 'method'}; for a replica
    batch (see :func:`_minimize_lbfgs_replicas`) the potentials, max_force and converged are per replica (R,).
    """
    import optax

    if sim.replicas is not None:
        return _minimize_lbfgs_replicas(sim, tolerance, max_iterations, chunk, memory_size)
    system = sim.system
    constraints = getattr(sim.integrator, "constraints", None)
    masses = sim.state.masses
    box = sim.state.box
    force_box = None if box is None else box.astype(sim.force_dtype)
    ones = jnp.ones_like(masses)

    def projected(x, f):
        return f if constraints is None else constraints.velocities(x, f, ones)

    def energy_forces_of(params, nbrs):
        force_fn = sim._force_fn(params, box)

        def energy_forces(x):
            f, nb = force_fn(x, nbrs)
            e = system.energy(params, x.astype(sim.force_dtype), force_box, nb, precise=x).astype(x.dtype)
            return e, f, nb
        return energy_forces

    optimizer = optax.lbfgs(memory_size=memory_size)

    project = None if constraints is None else (lambda y, reference: constraints.positions(y, reference, masses))

    def run(params, x, opt_state, nbrs):
        def body(carry, _):
            x, opt_state, nb = carry
            if sim.spec is not None:  # keep the list valid as atoms move (rebuild past skin/2)
                nb = sim.spec.update(nb, x.astype(sim.force_dtype), force_box)
            x, opt_state = _search_step(optimizer, energy_forces_of(params, nb), x, opt_state, project)
            return (x, opt_state, nb), None
        (x, opt_state, nbrs), _ = jax.lax.scan(body, (x, opt_state, nbrs), None, length=chunk)
        if sim.spec is not None:
            nbrs = sim.spec.update(nbrs, x.astype(sim.force_dtype), force_box)
        _, f, nbrs = energy_forces_of(params, nbrs)(x)
        return x, opt_state, nbrs, jnp.max(jnp.linalg.norm(projected(x, f), axis=-1))

    energy0 = float(sim._energy(sim.params, sim.state, sim.nbrs))
    x = sim.state.positions
    if constraints is not None:  # start on the surface
        x = jax.jit(constraints.positions)(x, x, masses)
    nbrs = sim._rebuild(sim.state._replace(positions=x))
    steps, fmax, done = 0, float("nan"), False
    opt_state = optimizer.init(x)
    compiled: dict = {}  # one program per neighbor spec (the force function closes over it)
    while steps < max_iterations and not done:
        if sim.spec not in compiled:
            compiled[sim.spec] = jax.jit(run)
        new_x, new_state, new_nbrs, new_fmax = compiled[sim.spec](sim.params, x, opt_state, nbrs)
        if new_nbrs is not None and bool(new_nbrs.overflow):
            sim.spec = sim.spec.regrown(new_nbrs, None if box is None else np.asarray(box))
            sim.regrowths += 1
            nbrs = sim._rebuild(sim.state._replace(positions=x))
            continue
        fmax = float(new_fmax)
        if not np.isfinite(fmax):
            raise FloatingPointError(f"minimization produced non-finite forces by iteration {steps + chunk}")
        x, opt_state, nbrs, steps = new_x, new_state, new_nbrs, steps + chunk
        done = fmax < tolerance
    forces, nbrs = jax.jit(sim._force_fn(sim.params, box))(x, sim._rebuild(sim.state._replace(positions=x)))
    sim.state, sim.nbrs = sim.state._replace(positions=x, forces=forces), nbrs
    energy = float(sim._energy(sim.params, sim.state, sim.nbrs))
    return {"steps": steps, "initial_potential": energy0, "final_potential": energy, "max_force": fmax,
            "converged": bool(done), "method": "lbfgs"}


def _minimize_lbfgs_replicas(sim, tolerance: float, max_iterations: int, chunk: int, memory_size: int) -> dict:
    """Every replica of a batch minimized on its own, in one vmapped L-BFGS (a library of molecules padded to one
    size, or replicas with per-replica parameters). Needs a batch without neighbor list.

    Constraints (a molecule batch's :class:`jmlsim.constraints.ConstraintsBatch`) are handled as for one system:
    the search runs on each replica's constraint surface, and convergence is judged on the forces projected onto
    it. A replica that has converged keeps its positions while the others go on. Returns lists (R,) for
    initial_potential, final_potential, max_force, converged, and the iterations run (the slowest replica's).
    """
    import optax

    if sim.spec is not None:
        raise ValueError("minimizing a replica batch needs a system without neighbor list")
    constraints = getattr(sim.integrator, "constraints", None)
    if constraints is not None and not hasattr(constraints, "counts"):
        raise ValueError("minimizing a replica batch handles per-replica constraints (ConstraintsBatch) only")
    system, fdt = sim.system, sim.force_dtype
    params_axis = 0 if sim.params_batched else None
    box_axis = None if sim.state.box is None else 0
    optimizer = optax.lbfgs(memory_size=memory_size)
    # per replica: its constraint arrays (pairs, lengths, preconditioner), or nothing
    cons_arrays = () if constraints is None else constraints._arrays()

    def energy_forces_of(params, box):
        """x -> (energy, forces) of one replica, (), (N, 3)."""
        bf = None if box is None else box.astype(fdt)

        def energy_forces(x):
            xf = x.astype(fdt)
            return (system.energy(params, xf, bf, None, precise=x).astype(x.dtype),
                    system.forces(params, xf, bf, None, precise=x).astype(x.dtype))
        return energy_forces

    def projected(x, f, cons):
        if not cons:
            return f
        return constraints._one(*cons)._velocities_one(x, f, jnp.ones(x.shape[0], x.dtype))

    def run_one(params, x, opt_state, box, cons, masses):
        energy_forces = energy_forces_of(params, box)

        project = None
        if cons:
            project = lambda y, reference: constraints._one(*cons)._positions_one(y, reference, masses)[0]
        (x, opt_state), _ = jax.lax.scan(
            lambda carry, _: (_search_step(optimizer, energy_forces, *carry, project), None), (x, opt_state), None,
            length=chunk)
        f = energy_forces(x)[1]
        return x, opt_state, f, jnp.max(jnp.linalg.norm(projected(x, f, cons), axis=-1))

    masses_axis = 0 if sim.state.masses.ndim == 2 else None
    run = jax.jit(jax.vmap(run_one, (params_axis, 0, 0, box_axis, 0, masses_axis)))
    init = jax.jit(jax.vmap(optimizer.init))
    x, box, masses = sim.state.positions, sim.state.box, sim.state.masses
    if constraints is not None:  # start on the surface
        x = jax.jit(constraints.positions)(x, x, masses)
    energy0 = np.asarray(sim.potential(), float)
    opt_state = init(x)
    done = np.zeros(sim.replicas, bool)
    fmax = np.full(sim.replicas, np.nan)
    forces = sim.state.forces
    steps = 0
    while steps < max_iterations and not done.all():
        new_x, new_state, new_forces, new_fmax = run(sim.params, x, opt_state, box, cons_arrays, masses)
        new_fmax = np.asarray(to_host(new_fmax), float)  # gathered when the batch spans processes
        if not np.all(np.isfinite(new_fmax[~done])):
            bad = int(np.flatnonzero(~np.isfinite(new_fmax) & ~done)[0])
            raise FloatingPointError(f"minimization produced non-finite forces in replica {bad} by iteration "
                                     f"{steps + chunk}")
        keep = sim.put(jnp.asarray(done))  # converged replicas stay where they converged

        def pick(old, new):
            return jnp.where(keep.reshape(keep.shape + (1,) * (old.ndim - 1)), old, new)
        x, forces = pick(x, new_x), pick(forces, new_forces)
        opt_state = jax.tree_util.tree_map(pick, opt_state, new_state)
        fmax = np.where(done, fmax, new_fmax)
        done = fmax < tolerance
        steps += chunk
    sim.state = sim.state._replace(positions=x, forces=forces)
    energy = np.asarray(sim.potential(), float)
    return {"steps": steps, "initial_potential": energy0.tolist(), "final_potential": energy.tolist(),
            "max_force": fmax.tolist(), "converged": done.tolist(), "method": "lbfgs"}
