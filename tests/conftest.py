import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Physics checks (finite differences, drift) run in double precision; speed runs use float32.
jax.config.update("jax_enable_x64", True)
