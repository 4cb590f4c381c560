"""Which code, on which machine, made a run: the `provenance` object of summary.json and W&B's config.

    {"commit": "44cd23e...", "dirty": false,         the trainer's own git checkout (left out elsewhere)
     "versions": {"python": ..., "torch": ..., ...},  from the installed packages' metadata
     "host": "vm", "device": "cpu", "hardware": "Intel(R) Xeon(R) ...", "threads": 1,
     "command": "python -m trainer learning_rate=3e-4"}  the line as typed, before trainer.argv adds to it

The checkpoint keeps it too, so that resuming with other code says so (`warn_if_code_changed`).
Cheap by design: one `git` subprocess per process (~10 ms, cached), package versions read from
metadata (never importing wandb for its version), nothing when git is missing or the trainer is
an installed package rather than a checkout.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import torch

from trainer.device import cpu_name

log = logging.getLogger("trainer")

PACKAGES = ("torch", "hydra-core", "omegaconf", "tiktoken", "wandb")
CHECKOUT = Path(__file__).resolve().parent.parent  # the repo holding trainer/, whatever the cwd


def collect(device: torch.device, threads: int, argv: Optional[list[str]] = None) -> dict[str, Any]:
    """This process's provenance for a run on `device` with `threads` CPU threads; `argv` is the
    user's command line after `python -m trainer` (None: this process's own command line)."""
    command = shlex.join(["python", "-m", "trainer", *argv]) if argv is not None else shlex.join(sys.orig_argv)
    return {**git_state(), "versions": versions(), "host": platform.node(), "device": device.type,
            "hardware": hardware(device), "threads": threads, "command": command}


@functools.cache
def git_state(checkout: Path = CHECKOUT) -> dict[str, Any]:
    """{"commit": sha, "dirty": bool} of the checkout the trainer runs from; {} when it is not one
    (an installed package, a copied tree) or git is missing or refuses (e.g. another user's repo).

    Only this checkout's own .git counts, never a repo further up that happens to contain it (a
    virtualenv inside someone's project). Untracked files do not make it dirty (outputs/, caches).
    """
    if not (checkout / ".git").exists():  # a dir, or a file in a worktree
        return {}
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(checkout.parent)}  # a broken .git: no search above
    try:
        out = subprocess.run(["git", "--no-optional-locks", "-C", str(checkout), "status", "--porcelain=v2",
                              "--branch", "--untracked-files=no"], capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.SubprocessError):
        return {}
    lines = out.stdout.splitlines()
    commit = next((ln.split()[2] for ln in lines if ln.startswith("# branch.oid ")), None)
    if out.returncode != 0 or commit in (None, "(initial)"):
        return {}
    return {"commit": commit, "dirty": any(not ln.startswith("#") for ln in lines)}


@functools.cache
def versions() -> dict[str, str]:
    """Python's and the main packages' versions, those installed (metadata only: no imports)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def hardware(device: torch.device) -> str:
    """The CPU's or GPU's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return cpu_name()


def warn_if_code_changed(saved: Optional[dict[str, Any]], now: dict[str, Any]) -> None:
    """One warning line when a run resumes with other code than its checkpoint was saved with."""
    before, after = (saved or {}).get("commit"), now.get("commit")
    if before and after and before != after:
        log.warning("warning: resuming with other code: the checkpoint was saved at commit %s, this is %s%s; "
                    "the rest of the run trains with this code", before[:8], after[:8],
                    " with uncommitted changes" if now.get("dirty") else "")
