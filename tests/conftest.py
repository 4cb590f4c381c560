"""Shared fixtures: every test trains for real, through the same CLI a user types, in tmp dirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# A model small enough that a run of a few dozen steps takes a second or two on a laptop CPU.
TINY = ["d_model=32", "num_blocks=2", "num_heads=2", "context_length=32", "batch_size=4",
        "max_iters=20", "eval_interval=10", "eval_iters=2", "device=cpu", "num_threads=1"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One tokenizer cache for the whole session, outside the user's home."""
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture
def env(cache_dir) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    # PYTHONPATH: subprocesses import this checkout's trainer, whatever the venv's editable install points at
    e.update(TRAINER_CACHE_DIR=str(cache_dir), WANDB_SILENT="true", PYTHONUNBUFFERED="1",
             PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    e.pop("RANK", None)
    e.pop("WORLD_SIZE", None)
    return e


@pytest.fixture
def cli(tmp_path, env):
    """Run `python -m <module> args...` in tmp_path (where outputs/ lands); returns the CompletedProcess."""

    def run(*args: str, module: str = "trainer", cwd: Path | None = None, timeout: float = 300,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or tmp_path,
                              env={**env, **(extra_env or {})}, capture_output=True, text=True,
                              timeout=timeout)

    return run


def run_dirs(root: Path) -> list[Path]:
    """Every single-run dir under root/outputs/<date>/<time>, oldest first."""
    return sorted(p for p in (root / "outputs").glob("*/*") if p.is_dir() and p.parts[-2] != "multirun")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
