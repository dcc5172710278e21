"""Energy terms. Each term is a static object with ``energy(params, positions, box, nbrs) -> scalar`` and,
optionally, an analytic ``forces(params, positions, box, nbrs) -> (N, 3)`` that must equal -grad(energy)
(tests check both against finite differences), and optionally ``batched_forces`` for replica batches of small
molecules, evaluated replica-minor (see :mod:`jmlsim.energy.replica_batch`)."""
