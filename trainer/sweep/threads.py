"""CPU threads per sweep job: jobs that run side by side on one machine share its cores.

The sweeper knows how many jobs it hands the launcher at once; the jobs (in joblib's or
submitit's worker processes) need to know it to take their share of the cores. The
`SweepSummary` callback writes it into the environment at the sweep's start, which the
workers inherit: `BATCH_ENV`.

The launchers (hydra/launcher=...): by default the jobs run one after another in this process;
`joblib` runs hydra.launcher.n_jobs of them side by side (default -1: one per core), `submitit_local`
each in its own process through submitit, all at once, and `slurm` each as a SLURM job
(trainer.sweep.slurm). Jobs side by side take cores // (jobs at once) threads each, instead of
oversubscribing the cores; num_threads=N sets the count by hand (trainer.device.configure).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from trainer.device import available_cores

log = logging.getLogger(__name__)

BATCH_ENV = "TRAINER_SWEEP_BATCH"  # how many jobs the sweeper hands the launcher at once


def parallel_jobs(hc: DictConfig) -> int:
    """How many jobs of this sweep share this machine's cores right now.

    joblib runs `n_jobs` at once (-1 = one per core); submitit's local executor starts the whole
    batch at once; the basic launcher runs one job at a time, and on SLURM each job has its own
    allocation (available_cores already sees only its CPUs). Never more than the batch itself:
    3 jobs on 16 cores get 5 threads each, not 1.
    """
    target = str(OmegaConf.select(hc, "launcher._target_", default="") or "")
    batch = int(os.environ.get(BATCH_ENV, "0") or 0)
    if target.endswith("JoblibLauncher"):
        n_jobs = OmegaConf.select(hc, "launcher.n_jobs", default=1)
        if not isinstance(n_jobs, int) or n_jobs == 0:
            n_jobs = 1
        n = n_jobs if n_jobs > 0 else max(1, available_cores() + 1 + n_jobs)
    elif target.endswith("submitit_launcher.LocalLauncher"):
        n = batch or 1
    else:
        return 1
    return max(1, min(n, batch) if batch else n)


def first_batch_size(config: DictConfig) -> Optional[int]:
    """How many jobs the sweeper launches together (None when it cannot be told in advance)."""
    sweeper = config.hydra.sweeper
    target = str(OmegaConf.select(sweeper, "_target_", default="") or "")
    try:
        if target.endswith("BasicSweeper"):
            from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
            from hydra.core.override_parser.overrides_parser import OverridesParser

            params = [f"{k}={v}" for k, v in (OmegaConf.select(sweeper, "params") or {}).items()]
            overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
            batches = BasicSweeper.split_arguments(overrides, sweeper.max_batch_size)
            return len(batches[0]) if batches and batches[0] else None
        if target.endswith("OptunaSweeper"):
            return max(1, min(int(sweeper.n_jobs), int(sweeper.n_trials)))
    except Exception as e:  # e.g. glob() sweeps need Hydra's config loader: fall back to n_jobs alone
        log.debug("could not tell the sweep's batch size: %s", e)
    return None
