"""L-BFGS energy minimization (optax) that respects constraints.

Constraints are handled as OpenMM's LocalEnergyMinimizer does: L-BFGS minimizes the energy plus a stiff harmonic
penalty k (r - r0)^2 on every constrained distance (rigid waters included), and the result is projected
exactly onto the constraint surface with SHAKE/SETTLE. Convergence is judged on the forces projected onto that
surface (the components along constraints are carried by the constraint forces). The projection moves atoms by
about F/k, which strains stiff terms: when the projected structure's forces are still above the tolerance, the
search goes on from it with a 10x stiffer penalty (up to :data:`PENALTY_STAGES` stages), as OpenMM does.

Runs in jit-compiled chunks of iterations; the neighbor list is rebuilt (and regrown on overflow) between
chunks and kept current inside them. The gradient is the system's own (analytic where terms provide it), fed
to optax through a custom VJP, so no scatter-heavy autodiff of the pair sum is needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jmlsim.distributed import to_host

PENALTY = 2.0e5  # kJ/mol/nm^2: as stiff as the stiffest bonds, soft enough for a well-conditioned search
PENALTY_STAGES = 3  # penalties k, 10 k, 100 k: each stage cuts the strain the final projection leaves by ~10x


def _stage_limit(stage: int, steps: int, max_iterations: int, chunk: int) -> int:
    """Iteration count at which penalty stage ``stage`` stops: the first may use the whole budget; a later one
    only relaxes the strain of a projection, so it gets max(8 chunks, a tenth of the budget) more."""
    if stage == 0:
        return max_iterations
    return min(max_iterations, steps + max(8 * chunk, max_iterations // 10))


def _constraint_pairs(constraints):
    """(i, j, length) arrays for every constrained distance, waters as three distances each."""
    o, h1, h2 = constraints.waters[:, 0], constraints.waters[:, 1], constraints.waters[:, 2]
    i = np.concatenate([constraints.pairs[:, 0], o, o, h1]).astype(np.int32)
    j = np.concatenate([constraints.pairs[:, 1], h1, h2, h2]).astype(np.int32)
    length = np.concatenate([constraints.distances, np.full(len(o), constraints.water_oh),
                             np.full(len(o), constraints.water_oh), np.full(len(o), constraints.water_hh)])
    return i, j, length


def _penalty_energy(x, i, j, lengths, penalty: float):
    """penalty * sum (|x_i - x_j| - L)^2 over the constrained distances (kJ/mol)."""
    r = jnp.linalg.norm(x[i] - x[j], axis=-1)
    return penalty * jnp.sum((r - jnp.asarray(lengths, x.dtype)) ** 2)


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


def minimize_lbfgs(sim, tolerance: float, max_iterations: int = 2000, chunk: int = 25, memory_size: int = 10,
                   penalty: float = PENALTY) -> dict:
    """Minimize a ``Simulation`` in place (positions and forces; velocities kept).

    tolerance: largest per-atom (constraint-projected) force norm to stop at, kJ/mol/nm.
    Returns {'steps', 'initial_potential', 'final_potential', 'max_force', 'converged', 'method'}; for a replica
    batch (see :func:`_minimize_lbfgs_replicas`) the potentials, max_force and converged are per replica (R,).
    """
    import optax

    if sim.replicas is not None:
        return _minimize_lbfgs_replicas(sim, tolerance, max_iterations, chunk, memory_size, penalty)
    system = sim.system
    constraints = getattr(sim.integrator, "constraints", None)
    masses = sim.state.masses
    box = sim.state.box
    if constraints is not None:
        ci, cj, clen = _constraint_pairs(constraints)
        ones = jnp.ones_like(masses)

    def penalty_energy(x, k):
        if constraints is None:
            return jnp.zeros((), x.dtype)
        return _penalty_energy(x, ci, cj, clen, k)

    def projected(x, f):
        return f if constraints is None else constraints.velocities(x, f, ones)

    def make_objective(params, nbrs, k):
        """Energy (+ penalty of stiffness k) with the system's forces as its gradient (custom VJP)."""
        force_fn = sim._force_fn(params, box)

        def energy_forces(x):
            f, nb = force_fn(x, nbrs)
            xf = x.astype(sim.force_dtype)
            bf = None if box is None else box.astype(sim.force_dtype)
            e = system.energy(params, xf, bf, nb).astype(x.dtype)
            pe, pg = jax.value_and_grad(penalty_energy)(x, k)
            return e + pe, f - pg, nb
        return _objective(energy_forces), energy_forces

    optimizer = optax.lbfgs(memory_size=memory_size)

    def run(params, x, opt_state, nbrs, k):  # k traced: every penalty stage runs the same compiled chunk
        if sim.spec is not None:
            nbrs = sim.spec.update(nbrs, x.astype(sim.force_dtype), None if box is None else box.astype(sim.force_dtype))
        _, energy_forces = make_objective(params, nbrs, k)

        def body(carry, _):
            x, opt_state, nb = carry
            if sim.spec is not None:  # keep the list valid as atoms move (rebuild past skin/2)
                nb = sim.spec.update(nb, x.astype(sim.force_dtype), None if box is None else box.astype(sim.force_dtype))
            x, opt_state = _lbfgs_step(optimizer, make_objective(params, nb, k)[0], x, opt_state)
            return (x, opt_state, nb), None
        (x, opt_state, nbrs), _ = jax.lax.scan(body, (x, opt_state, nbrs), None, length=chunk)
        _, f, nbrs = energy_forces(x)
        fmax = jnp.max(jnp.linalg.norm(projected(x, f), axis=-1))
        return x, opt_state, nbrs, fmax

    # compiled once for all penalty stages (the force function per neighbor spec: it closes over the spec)
    shake = None if constraints is None else jax.jit(constraints.positions)
    largest_projected = jax.jit(lambda x, f: jnp.max(jnp.linalg.norm(projected(x, f), axis=-1)))
    forces_at: dict = {}

    def on_surface(x):
        """x projected onto the constraints, its forces, list, and largest projected force."""
        if shake is not None:
            x = shake(x, x, masses)
        nb = sim._rebuild(sim.state._replace(positions=x))
        if sim.spec not in forces_at:
            forces_at[sim.spec] = jax.jit(sim._force_fn(sim.params, box))
        forces, nb = forces_at[sim.spec](x, nb)
        return x, forces, nb, float(largest_projected(x, forces))

    energy0 = float(sim._energy(sim.params, sim.state, sim.nbrs))
    x = sim.state.positions
    nbrs, steps, fmax, done = sim.nbrs, 0, float("nan"), False
    compiled: dict = {}
    for stage in range(PENALTY_STAGES if constraints is not None else 1):
        k = jnp.asarray(penalty * 10.0 ** stage, x.dtype)
        opt_state = optimizer.init(x)  # a new objective: the curvature history of the last one does not fit
        done, limit = False, _stage_limit(stage, steps, max_iterations, chunk)
        while steps < limit and not done:
            if sim.spec not in compiled:
                compiled[sim.spec] = jax.jit(run)
            new_x, new_state, new_nbrs, new_fmax = compiled[sim.spec](sim.params, x, opt_state, nbrs, k)
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
        x, forces, nbrs, fmax = on_surface(x)
        done = fmax < tolerance
        if done or steps >= max_iterations:
            break
    sim.state, sim.nbrs = sim.state._replace(positions=x, forces=forces), nbrs
    energy = float(sim._energy(sim.params, sim.state, sim.nbrs))
    return {"steps": steps, "initial_potential": energy0, "final_potential": energy, "max_force": fmax,
            "converged": bool(done), "method": "lbfgs"}


def _minimize_lbfgs_replicas(sim, tolerance: float, max_iterations: int, chunk: int, memory_size: int,
                             penalty: float) -> dict:
    """Every replica of a batch minimized on its own, in one vmapped L-BFGS (a library of molecules padded to one
    size, or replicas with per-replica parameters). Needs a batch without neighbor list.

    Constraints (a molecule batch's :class:`jmlsim.constraints.ConstraintsBatch`) are handled as for one system:
    a stiff penalty on every constrained distance during the search, one SHAKE projection at the end, and
    convergence judged on the forces projected onto the constraint surface. A replica that has converged keeps
    its positions while the others go on. Returns lists (R,) for initial_potential, final_potential, max_force,
    converged, and the iterations run (the slowest replica's).
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

    def energy_forces(params, x, box, cons, k):
        """Energy + constraint penalty (stiffness k) and its forces, (), (N, 3)."""
        xf = x.astype(fdt)
        bf = None if box is None else box.astype(fdt)
        e = system.energy(params, xf, bf, None).astype(x.dtype)
        f = system.forces(params, xf, bf, None).astype(x.dtype)
        if cons:
            pairs, lengths = cons[0], cons[1]
            pe, pg = jax.value_and_grad(_penalty_energy)(x, pairs[:, 0], pairs[:, 1], lengths, k)
            e, f = e + pe, f - pg
        return e, f

    def projected(x, f, cons):
        if not cons:
            return f
        return constraints._one(*cons)._velocities_one(x, f, jnp.ones(x.shape[0], x.dtype))

    def run_one(params, x, opt_state, box, cons, k):
        objective = _objective(lambda y: energy_forces(params, y, box, cons, k))
        (x, opt_state), _ = jax.lax.scan(lambda c, _: (_lbfgs_step(optimizer, objective, *c), None), (x, opt_state),
                                         None, length=chunk)
        _, f = energy_forces(params, x, box, cons, k)
        return x, opt_state, jnp.max(jnp.linalg.norm(projected(x, f, cons), axis=-1))

    def final_one(params, y, b, cons):
        f = system.forces(params, y.astype(fdt), None if b is None else b.astype(fdt), None).astype(y.dtype)
        return f, jnp.max(jnp.linalg.norm(projected(y, f, cons), axis=-1))

    run = jax.jit(jax.vmap(run_one, (params_axis, 0, 0, box_axis, 0, None)))
    final = jax.jit(jax.vmap(final_one, (params_axis, 0, box_axis, 0)))
    init = jax.jit(jax.vmap(optimizer.init))
    shake = None if constraints is None else jax.jit(constraints.positions)
    x, box = sim.state.positions, sim.state.box
    energy0 = np.asarray(sim.potential(), float)
    settled = np.zeros(sim.replicas, bool)  # converged on the constraint surface: kept as they are
    steps = 0
    for stage in range(PENALTY_STAGES if constraints is not None else 1):
        k = jnp.asarray(penalty * 10.0 ** stage, x.dtype)
        opt_state = init(x)
        done = settled.copy()
        fmax = np.full(sim.replicas, np.nan)
        limit = _stage_limit(stage, steps, max_iterations, chunk)
        while steps < limit and not done.all():
            new_x, new_state, new_fmax = run(sim.params, x, opt_state, box, cons_arrays, k)
            new_fmax = np.asarray(to_host(new_fmax), float)  # gathered when the batch spans processes
            if not np.all(np.isfinite(new_fmax[~done])):
                bad = int(np.flatnonzero(~np.isfinite(new_fmax) & ~done)[0])
                raise FloatingPointError(f"minimization produced non-finite forces in replica {bad} by iteration "
                                         f"{steps + chunk}")
            keep = sim.put(jnp.asarray(done))  # converged replicas stay where they converged

            def pick(old, new):
                return jnp.where(keep.reshape(keep.shape + (1,) * (old.ndim - 1)), old, new)
            x = pick(x, new_x)
            opt_state = jax.tree_util.tree_map(pick, opt_state, new_state)
            fmax = np.where(done, fmax, new_fmax)
            done = fmax < tolerance
            steps += chunk
        if constraints is not None:
            x = shake(x, x, sim.state.masses)
        forces, fmax = final(sim.params, x, box, cons_arrays)
        fmax = np.asarray(to_host(fmax), float)
        settled = fmax < tolerance
        if settled.all() or steps >= max_iterations:
            break
    done = settled
    sim.state = sim.state._replace(positions=x, forces=forces)
    energy = np.asarray(sim.potential(), float)
    return {"steps": steps, "initial_potential": energy0.tolist(), "final_potential": energy.tolist(),
            "max_force": fmax.tolist(), "converged": done.tolist(), "method": "lbfgs"}
