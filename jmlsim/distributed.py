"""Multi-host runs with ``jax.distributed``: one jmlsim process per host, the replica axis sharded over all of them.

JAX's own multi-controller model is used, nothing home-made: every process runs the same program
(``jmlsim simulate ... --coordinator HOST:PORT --num-processes P --process-id I``), ``jax.devices()`` lists the
devices of all processes, and the replica axis of a :class:`jmlsim.simulation.Simulation` is sharded over them
with one NamedSharding mesh. Each compiled chunk then runs as one SPMD program; replicas do not talk to each
other inside a chunk, so the hosts only meet when the host loop reads results (reporting, replica exchange),
which :func:`to_host` gathers (``multihost_utils.process_allgather``). Every process keeps the same host-side
state (same seeds, same gathered data, same exchange decisions); only process 0 writes files.

On CPUs the cross-process collectives use gloo; on GPUs JAX picks NCCL itself.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a multi-process run (call before any JAX computation). coordinator: "host:port" of process 0."""
    import jax

    if not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is outside 0..{num_processes - 1}")
    # CPU devices need a collectives backend to form one mesh across processes; harmless on GPU hosts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def process_count() -> int:
    import jax

    return jax.process_count()


def is_main_process() -> bool:
    """True in process 0 (and in a single-process run): the one that writes files and prints results."""
    import jax

    return jax.process_index() == 0


def to_host(tree):
    """A pytree of arrays as host numpy arrays; arrays spread over several processes are gathered first."""
    import jax
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree_util.tree_map(one, tree)


def same_on_all_processes(x: np.ndarray) -> np.ndarray:
    """Process 0's value of a host array, in every process (itself in a single-process run). For results each
    process computes alone that must agree to the bit, e.g. a minimized start structure."""
    if process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(x))


def host_local(x):
    """A process-local jax array as numpy (so device_put can place it on a mesh spanning processes); anything
    else unchanged. Every process holds the same value, as the multi-controller model requires."""
    import jax

    if process_count() > 1 and isinstance(x, jax.Array) and x.is_fully_addressable:
        return np.asarray(x)
    return x


def parse_coordinator(value: Optional[str]) -> Optional[str]:
    """Validate "host:port" (port 1..65535); returns it unchanged."""
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--coordinator must be HOST:PORT, got {value!r}")
    return value
