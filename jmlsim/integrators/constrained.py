"""Constraint hooks shared by the integrators (SHAKE/SETTLE on drifts, RATTLE on velocities).

With ``constraints=None`` both are the identity, so unconstrained systems pay nothing. Positions handed to
:func:`drift` must be the constrained positions of the previous step (the reference directions of SHAKE).
"""

from __future__ import annotations

from typing import Any


def project_velocities(constraints: Any, positions, velocities, masses):
    """Remove velocity components along the constraints (RATTLE's second half / SETTLE velocities)."""
    if constraints is None:
        return velocities
    return constraints.velocities(positions, velocities, masses)


def drift(constraints: Any, positions, velocities, masses, dt: float):
    """x' = x + dt v, projected onto the constraint surface; v absorbs the correction (v' = (x' - x) / dt).

    Returns (x', v'). Without constraints this is the plain drift.
    """
    moved = positions + dt * velocities
    if constraints is None:
        return moved, velocities
    fixed = constraints.positions(moved, positions, masses)
    return fixed, velocities + (fixed - moved) / dt


def removed_dof(constraints: Any) -> int:
    return 0 if constraints is None else int(constraints.n_constraints)
