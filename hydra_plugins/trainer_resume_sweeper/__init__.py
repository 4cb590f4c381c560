"""The sweeper that resumes a stopped sweep: `python -m trainer -m resume=<sweep dir>`.

Hydra loads sweepers only from the `hydra_plugins` namespace, so the class is here; what it does
is in trainer.sweep.resume, which trainer.argv selects it for.
"""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class ResumingSweeper(BasicSweeper):
    """The basic sweeper's jobs, under the numbers it gives them, less the ones that finished."""

    def sweep(self, arguments: list[str]) -> Any:
        from trainer.sweep import resume  # at sweep time: Hydra imports every plugin whenever it starts

        return resume.run(self, arguments)
