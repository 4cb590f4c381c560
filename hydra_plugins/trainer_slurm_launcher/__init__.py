"""The SLURM launcher of our preset (conf/hydra/launcher/slurm.yaml): the submitit plugin's, which
first checks that a node can run the request and quiets sacct on a cluster without accounting.

Hydra loads launchers only from the `hydra_plugins` namespace, so the class is here; what it
checks is in trainer.sweep.slurm.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class CheckedSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from trainer.sweep import slurm  # at launch time: Hydra imports every plugin whenever it starts

        slurm.before_submitting(self.params)
        return super().launch(job_overrides, initial_job_idx)
