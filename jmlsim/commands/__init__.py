"""Subcommands of ``jmlsim`` beyond energy/minimize/simulate, one module per command group.

Each module here defines ``add_commands(sub) -> dict`` that adds its parsers to the argparse subparsers ``sub``
(whose parser class already reports errors as one line and exit status 2) and returns ``{name: handler}``,
where ``handler(args)`` does the work. Modules must import heavy libraries (flax, optax, deeptime, tblite...)
inside their handlers, so that ``jmlsim --help`` and the core run where only JAX is installed.
Shared argument types and output helpers live in :mod:`jmlsim.cli` (``_finite``, ``_integer``, ``_emit``,
``_check_writable``).
"""

import importlib
import pkgutil


def add_all(sub) -> dict:
    """Add every command group's parsers to ``sub``; returns {command name: handler}."""
    handlers = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "add_commands"):
            handlers.update(module.add_commands(sub))
    return handlers
