"""The command line Hydra sees: every decision that must be made before Hydra starts, in one place.

Hydra composes the config from the command line and only then makes the run dir; a few things
cannot wait for that, so `prepare` adds overrides for them first:
- a run dir no other run shares, made here atomically: Hydra names dirs by the second, and two
  runs started together would share one (Hydra issue #2925). If the run then fails before
  training, the dir is removed again (`Invocation.remove_unused_dirs`);
- under torchrun every rank runs Hydra: only rank 0 gets a run dir, the others write nothing
  (Hydra issue #2070);
- `resume=...` continues the original run in place, with its dir and its overrides: the
  checkpoint is read now (trainer.resume), so a bad one fails before Hydra writes anything, and
  is handed on to the training run in `Invocation.resume`;
- a sweep's jobs are named by what varies between them (trainer.sweep.overrides);
- `-m resume=<sweep dir>` runs that sweep again in its dir, with its overrides, finishing the jobs
  it left (trainer.sweep.resume);
- one writer per dir (trainer.lock): the dir a run resumes in, a run dir or sweep dir made here, and
  a resumed sweep's dir are locked now, before Hydra writes into them, and held in `Invocation.lock`.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from trainer import rundir
from trainer.distributed import env_rank, world_size
from trainer.errors import UserError
from trainer.lock import DirLock
from trainer.resume import ResumePoint
from trainer.sweep import resume as sweep_resume
from trainer.sweep.overrides import is_sweep, sweep_overrides

# Flags with which Hydra only prints (help, the config, info): no run, so no run dir.
NO_RUN_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                "--resolve", "--package", "-p"}

# Flags Hydra refuses beside --multirun (it allows one mode): each shows one job.
ONE_JOB_FLAGS = {"--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}

# Ranks other than 0 under torchrun: no .hydra/ dir, no train.log (the console only, warnings up).
QUIET_RANK = ["hydra.output_subdir=null", "hydra/job_logging=stdout", "hydra.job_logging.root.level=WARNING",
              "hydra/hydra_logging=disabled"]


@dataclass
class Invocation:
    """What was decided before Hydra started, for the run to use."""

    argv: list[str]  # the command line Hydra parses
    fresh_dirs: list[Path] = field(default_factory=list)  # the run dir made for this run, then its new parents
    resume: Optional[ResumePoint] = None  # the checkpoint `resume=` names, already read
    typed: Optional[list[str]] = None  # the command line as the user typed it (for trainer.provenance)
    lock: Optional[DirLock] = None  # this process's hold on its run dir or sweep dir (trainer.lock)

    def remove_unused_dirs(self) -> None:
        """A run that failed before training leaves no dir behind (only ever the ones made for it)."""
        if not self.fresh_dirs:
            return
        run_dir, *parents = self.fresh_dirs
        if any((run_dir / name).exists() for name in (rundir.CKPT, rundir.METRICS)):
            return
        _close_logs_in(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in parents:  # innermost first, and only while empty
            try:
                os.rmdir(parent)
            except OSError:
                break
        self.fresh_dirs = []


def _close_logs_in(run_dir: Path) -> None:
    """Detach and close Hydra's file handler on train.log in a dir about to go: closing it alone
    (logging.shutdown) leaves it on the root logger, and the next record logged in this process (tests
    call main in-process) would reopen a file in a dir that no longer exists."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(run_dir):
            root.removeHandler(handler)
            handler.close()


def value_of(overrides: list[str], key: str) -> Optional[str]:
    for arg in overrides:
        if arg.startswith(f"{key}="):
            return arg.split("=", 1)[1]
    return None


def prepare(argv: list[str]) -> Invocation:
    """The command line for Hydra: the user's, plus the run dir, rank and resume decisions above."""
    flags = {a.split("=")[0] for a in argv if a.startswith("-")}
    if flags & {"-m", "--multirun"} and flags & ONE_JOB_FLAGS:  # else Hydra's ValueError, with a traceback
        shown = " ".join(sorted(flags & ONE_JOB_FLAGS))
        raise UserError(f"{shown}: shows one job, not a sweep (-m); drop -m to see one job's, or add "
                        "plan=true to preview the sweep's jobs")
    if flags & NO_RUN_FLAGS:
        return Invocation(argv)
    overrides = [a for a in argv if not a.startswith("-")]
    resume = value_of(overrides, "resume")
    multirun = "-m" in argv or "--multirun" in argv or is_sweep(overrides) or \
        bool(resume and sweep_resume.is_sweep_dir(resume))
    if multirun and world_size() > 1:
        raise UserError("--multirun under torchrun: launch one torchrun per sweep job instead "
                        "(e.g. hydra/launcher=submitit_slurm), or run the sweep without torchrun")
    if resume and multirun:
        hydra_argv = sweep_resume.prepare_argv(argv, overrides, resume)
        return Invocation(hydra_argv, lock=DirLock.take(resume))  # two resumes of one sweep: the second refused
    if resume:
        return _resuming(argv, overrides, resume)
    if env_rank() > 0:  # torchrun: only rank 0 owns a run dir
        return Invocation(argv + ["hydra.run.dir=.", *QUIET_RANK])
    if multirun:
        return _sweeping(argv, overrides)
    named = value_of(overrides, "hydra.run.dir")
    if named is not None:  # made now, so that it is locked before Hydra writes its .hydra/ into it
        return Invocation(argv, lock=None if "${" in named else DirLock.take(_made("hydra.run.dir", named)))
    path, new_parents = rundir.new_dir(multirun=False)
    return Invocation(argv + [f"hydra.run.dir={path}"], fresh_dirs=[path.resolve(), *(p.resolve() for p in new_parents)],
                      lock=DirLock.take(path))


def _sweeping(argv: list[str], overrides: list[str]) -> Invocation:
    """A new sweep: its jobs named by what varies, its dir locked (so it cannot be resumed while it runs)."""
    extra = sweep_overrides(overrides)
    path = value_of(overrides, "hydra.sweep.dir")
    if path is None:
        path, _ = rundir.new_dir(multirun=True)
        extra.append(f"hydra.sweep.dir={path}")
    elif "${" in path:  # resolved by Hydra alone (${now:...}): not known here, not locked
        return Invocation(argv + extra)
    return Invocation(argv + extra, lock=DirLock.take(_made("hydra.sweep.dir", path)))  # made now: locked before any job starts


def _made(key: str, path: str) -> Path:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{key}={path}: cannot be made ({e.strerror})") from None
    return Path(path)


def _resuming(argv: list[str], overrides: list[str], resume: str) -> Invocation:
    """The run's own overrides first, then the user's: Hydra lets the last value of a key win."""
    others = [o for o in overrides if not o.startswith("resume=")]
    point = ResumePoint.load(resume, others)
    lock = DirLock.take(point.run_dir) if env_rank() == 0 else None  # two `resume=auto` at once: one trains
    flags = [a for a in argv if a.startswith("-")]
    argv = flags + point.overrides() + [a for a in argv if not a.startswith(("-", "resume="))]
    return Invocation(argv + QUIET_RANK if env_rank() > 0 else argv, resume=point, lock=lock)
