"""Force-field fitting: torsions against QM scans (scan, torsions, export), observables by trajectory
reweighting (reweighting), and gradients through short trajectories (trajectory_gradients)."""
