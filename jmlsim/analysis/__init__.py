"""Trajectory analysis: featurization (mdtraj), TICA/VAMP, clustering and Markov state models (deeptime),
VAMPnets (Flax), plots. deeptime, mdtraj, flax and matplotlib are imported inside the modules that need them."""
