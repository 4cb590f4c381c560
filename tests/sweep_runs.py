"""Helpers for tests that share one real sweep between several checks (module-scoped fixtures).

The `cli` fixture in conftest.py runs in each test's own tmp_path; a sweep of several jobs is
worth running once per module, so these build the same environment for a module's tmp dir.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def trainer_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    """What conftest's `env` fixture gives: no W&B/Hydra settings leaking in, this checkout first."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    e.update(TRAINER_CACHE_DIR=str(cache_dir), WANDB_SILENT="true", PYTHONUNBUFFERED="1",
             PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    e.pop("RANK", None)
    e.pop("WORLD_SIZE", None)
    e.update(extra)
    return e


def run_module(module: str, *args: str, cwd: Path, env: dict[str, str], timeout: float = 600):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def sweep_dir(root: Path) -> Path:
    """The one sweep dir under root/outputs/multirun/<date>/<time>."""
    (sweep,) = [p for p in (root / "outputs" / "multirun").glob("*/*") if p.is_dir()]
    return sweep


def job_dirs(sweep: Path) -> list[Path]:
    """The sweep's job dirs (0, 1, ...), in job order."""
    return sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name))


def threads_used(job_dir: Path) -> int:
    """The CPU threads the job trained with, from its log line 'Training on cpu (N threads)'."""
    return int(re.search(r"on cpu \((\d+) threads?\)", (job_dir / "train.log").read_text()).group(1))
