"""Dense numpy reference for constraint projections, independent of jmlsim's solvers (test helper)."""

import numpy as np


def all_pairs(constraints) -> np.ndarray:
    """(C + 3 W, 2) every constrained distance of a jmlsim Constraints, rigid waters as their three sides."""
    waters = np.asarray(constraints.waters).reshape(-1, 3)
    return np.concatenate([np.asarray(constraints.pairs).reshape(-1, 2), waters[:, [0, 1]], waters[:, [0, 2]],
                           waters[:, [1, 2]]])


def dense_projection(pairs, x, v, masses):
    """(N, 3) vectors v with every constraint's relative component along its bond removed:
    v - M^-1 B^T (B M^-1 B^T)^-1 B v, B the constraint Jacobian at positions x (N, 3); masses (N,)."""
    n = x.shape[0]
    jac = np.zeros((len(pairs), 3 * n))
    for row, (i, j) in enumerate(pairs):
        d = x[i] - x[j]
        jac[row, 3 * i:3 * i + 3], jac[row, 3 * j:3 * j + 3] = d, -d
    inv_m = np.repeat(1.0 / np.asarray(masses, float), 3)
    flat = np.asarray(v, float).reshape(-1)
    mu = np.linalg.lstsq((jac * inv_m) @ jac.T, -jac @ flat, rcond=None)[0]
    return (flat + inv_m * (jac.T @ mu)).reshape(n, 3)
