"""Machine-learned interatomic potentials.

``graph``: the edge-list ``Graph`` the models read (dense all-pairs or from a neighbor list).
``ani``, ``schnet``, ``painn``, ``nequip``: Flax models mapping a ``Graph`` to (N,) dimensionless per-atom outputs.
``architectures``: name -> model registry, JSON-able configs to rebuild a model from a checkpoint.
``potential``: ``NeuralPotential`` (network + element shifts, kJ/mol), save/load, energy terms, ``system_from_xyz``.
``training``: optax training and evaluation; ``ase_calculator``: an ASE calculator; ``pretrained/``: shipped models.
"""


def system_from_xyz(xyz_path, model_dir_or_name):
    """A ``jmlsim.system.System`` of the molecule in ``xyz_path`` (Å) driven by a neural potential alone.

    model_dir_or_name: a saved model directory, a pretrained name (e.g. 'rmd17-aspirin') or a NeuralPotential.
    Raises ``jmlsim.errors.InputError`` (file and line named) for a bad file or an element the model lacks.
    """
    from jmlsim.potentials.potential import system_from_xyz as _build  # flax/jax imported only when used

    return _build(xyz_path, model_dir_or_name)


def load_potential(model_dir_or_name):
    """A saved NeuralPotential: a directory or a pretrained name (see ``potential.load_potential``)."""
    from jmlsim.potentials.potential import load_potential as _load

    return _load(model_dir_or_name)
