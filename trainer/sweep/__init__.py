"""Sweeps (`python -m trainer -m learning_rate=1e-3,3e-4`), one module per job:

- `overrides`: what a sweep's command line gets before Hydra starts (job names that say what
  varies; a refusal of what cannot work);
- `threads`: how many jobs share this machine's cores, so each takes its share of threads;
- `summary`: the Hydra callback that keeps summary.csv / summary.md current at the sweep root;
- `resume`: `-m resume=<sweep dir>`, finishing the jobs a stopped sweep left;
- `slurm`: the check of a `hydra/launcher=slurm` request before anything is submitted.
"""
