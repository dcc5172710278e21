"""jmlsim: differentiable, batchable molecular simulation in JAX.

Internal units are OpenMM's (nm, ps, kJ/mol, amu, e, K); see :mod:`jmlsim.units`.
"""

__version__ = "0.1.0"
