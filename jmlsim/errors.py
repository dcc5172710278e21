"""Exceptions the CLI maps to exit codes: InputError -> 2 (one line on stderr), everything else -> 1."""


class InputError(ValueError):
    """Bad user input: arguments, files, checkpoints. The message is one line, shown as-is."""


class SimulationError(RuntimeError):
    """The simulation itself failed (blow-up, non-finite values); the message names the step."""
