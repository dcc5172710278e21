"""A tqdm progress bar for runs: steps done, speed (ns/day in MD units, steps/s always), temperature, energy."""

from __future__ import annotations

import sys
import time

import numpy as np

from jmlsim import units


class ProgressBar:
    """Wraps tqdm (imported lazily); a no-op when disabled. Writes to stderr so --json stdout stays clean."""

    def __init__(self, total_steps: int, simulation, enabled: bool = True):
        self.sim = simulation
        self.bar = None
        self.t0 = time.perf_counter()
        self.c0 = simulation.compile_seconds
        self.done = 0
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, unit="step", file=sys.stderr, dynamic_ncols=True,
                            desc=simulation.system.name)

    def update(self, n: int, frame) -> None:
        self.done += n
        if self.bar is None:
            return
        elapsed = time.perf_counter() - self.t0 - (self.sim.compile_seconds - self.c0)
        steps_per_s = self.done / max(elapsed, 1e-9)
        dt_ps = self.sim.integrator.timestep
        if self.sim.system.reduced_units:
            dt_ps *= units.ARGON.tau_ps
        postfix = {"ns/day": f"{units.ns_per_day(dt_ps, steps_per_s):.3g}"}
        if frame is not None:  # None between reports (chunks cut short by Monte Carlo moves)
            postfix.update({"T": f"{float(np.mean(frame.temperature)):.3g}",
                            "E": f"{float(np.mean(frame.potential + frame.kinetic)):.5g}"})
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
