"""Fixtures: a session-wide tokenizer cache, and the CLI run as a user runs it, in tmp dirs.
Everything else the tests share is in helpers.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import Result, run_in_process, run_module, trainer_env


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One tokenizer cache for the whole session, outside the user's home."""
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture
def env(cache_dir) -> dict[str, str]:
    return trainer_env(cache_dir)


@pytest.fixture
def cli(tmp_path, env):
    """Run `python -m <module> args...` in a child process in tmp_path (where outputs/ lands)."""

    def run(*args: str, module: str = "trainer", cwd: Path | None = None, timeout: float = 300,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return run_module(module, *args, cwd=cwd or tmp_path, env={**env, **(extra_env or {})}, timeout=timeout)

    return run


@pytest.fixture
def trainer_here(tmp_path, cache_dir):
    """Run `python -m trainer args...` in this process, in tmp_path (or cwd=...): for what needs no
    process of its own (argv handling, config checks, one-line errors, most training checks)."""

    def run(*args: str, cwd: Path | None = None) -> Result:
        return run_in_process(*args, cwd=cwd or tmp_path, cache_dir=cache_dir)

    return run
