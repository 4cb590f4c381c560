"""`python -m trainer`: prepare the command line, let Hydra compose the config, train, and turn
every failure into one line on stderr (exit code 2 for a mistake, 3 for a diverged run, 130 for
Ctrl-C, 143 or 138 for a run stopped by SIGTERM or SIGUSR1 with its checkpoint saved: trainer.preempt),
with no traceback; HYDRA_FULL_ERROR=1 shows the full one.

    argv.prepare(sys.argv)  what must be decided before Hydra starts (run dir, resume, sweep names)
    Hydra                   composes conf/ over the typed schema (trainer.config), makes the run dir
    Task(cfg)               one job: train.train(), then summary.json in the run dir
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from trainer import rundir
from trainer.argv import Invocation, prepare, value_of
from trainer.config import CONF_DIR, register_configs
from trainer.distributed import env_rank, world_size
from trainer.errors import UserError, one_line
from trainer.init_from import with_init_from
from trainer.lock import DirLock
from trainer.plan import previewed
from trainer.preempt import Preempted
from trainer.prepare import prepared
from trainer.replicates import point_of
from trainer.resume import finished_before_requeue, requeued
from trainer.run import RunInfo
from trainer.sweep import resume as sweep_resume
from trainer.sweep.threads import parallel_jobs
from trainer.train import train


def objective(summary: dict[str, Any]) -> float:
    """What a sweeper (Optuna) minimises: the final loss on the whole valid split, the yardstick
    the sweep summary and compare rank by; a summary from before it existed gives its best
    periodic valid loss."""
    final = summary.get("final_valid_loss")
    return final if final is not None else summary["best_valid_loss"]


class Task:
    """What Hydra runs for each job. An object, not a closure over globals: what the command line
    decided reaches the job explicitly, and joblib and submitit can pickle it to their workers."""

    def __init__(self, invocation: Invocation, full_error: bool):
        self.invocation = invocation
        self.full_error = full_error  # the user set HYDRA_FULL_ERROR=1: tracebacks, not one line

    def __call__(self, cfg: DictConfig) -> float:
        """One job: train, write the summary, return its objective (what a sweeper minimises).

        A single run's failure exits here, not through Hydra, which would add a line of its own
        ("Error executing job with overrides"); a sweep's job raises, and the sweep goes on.
        """
        hc = HydraConfig.get()
        run_dir = Path(hc.runtime.output_dir)
        single = hc.mode != RunMode.MULTIRUN and not self.full_error
        if not single and finished_before_requeue(run_dir):
            return objective(rundir.read_summary(run_dir))
        resume = self.invocation.resume or (requeued(cfg, run_dir) if hc.mode == RunMode.MULTIRUN else None)
        try:
            with self.holding(run_dir):
                summary = train(cfg, run_dir, run_info(hc, self.invocation.typed), resume=resume)
        except UserError as e:
            if not single:
                raise
            fail(str(e), e.exit_code, self.invocation)
        except KeyboardInterrupt:  # Ctrl-C: a way to stop, not a crash; say how to go on
            if not single or env_rank() > 0:
                raise
            fail(f"interrupted; continue with: python -m trainer resume={run_dir}" if (run_dir / rundir.CKPT).exists()
                 else "interrupted before the first checkpoint", 130, self.invocation)
        except Preempted as e:  # SIGTERM, SIGUSR1: saved at this step, not finished (so no summary.json)
            if not single:
                raise
            fail(f"{e}; continue with: {_command()} resume={run_dir}", e.exit_code, self.invocation)
        if env_rank() == 0:
            rundir.write_summary(run_dir, summary)
        return objective(summary)

    def holding(self, run_dir: Path) -> contextlib.AbstractContextManager:
        """The job's dir locked while it trains: already, by trainer.argv (a single run), or now (a
        sweep's job, or a dir named with hydra.run.dir). Ranks other than 0 write nothing, lock nothing."""
        if env_rank() > 0 or (self.invocation.lock is not None and self.invocation.lock.holds(run_dir)):
            return contextlib.nullcontext()
        return contextlib.closing(DirLock.take(run_dir))


def run_info(hc: DictConfig, command: Optional[list[str]] = None) -> RunInfo:
    multirun = hc.mode == RunMode.MULTIRUN
    group = "_".join(Path(hc.sweep.dir).parts[-2:]) if multirun else ""
    return RunInfo(group=group, name=hc.job.override_dirname, point=point_of(hc.job.override_dirname),
                   parallel_jobs=parallel_jobs(hc) if multirun else 1, command=command)


def main(argv: Optional[list[str]] = None) -> None:
    """Run the command line (sys.argv[1:] by default); every failure exits with its one line."""
    register_configs()
    previous = os.environ.get("HYDRA_FULL_ERROR")
    full_error = previous == "1"  # as the user set it
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then lets errors reach us, to be printed as one line
    invocation = None
    try:
        typed = sys.argv[1:] if argv is None else list(argv)
        args = with_init_from(typed)  # the pretrained model's architecture, before anything composes
        if previewed(args):  # plan=true: the jobs' sizes and times, nothing trained or written
            return
        if prepared(args):  # prepare=true: the corpus tokenized into the cache, nothing trained
            return
        invocation = prepare(args)
        invocation.typed = typed  # the provenance's command line: the user's, not ours
        sys.argv = [sys.argv[0], *invocation.argv]  # what hydra.main parses
        task = Task(invocation, full_error)
        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(task)()
    except Exception as e:
        if full_error or not _reportable(e):
            if invocation is not None:
                invocation.remove_unused_dirs()
            raise
        fail(one_line(e), e.exit_code if isinstance(e, UserError) else 2, invocation)
    except KeyboardInterrupt:  # a sweep's Ctrl-C (a single run's ends in Task): one line, how to go on
        sweep_dir = value_of(invocation.argv, "hydra.sweep.dir") if invocation and not full_error else None
        if not sweep_dir:
            raise
        fail(sweep_resume.interrupted(sweep_dir), 130, invocation)
    except Preempted as e:  # a sweep's job stopped by a signal: the sweep stops there, as on Ctrl-C
        sweep_dir = value_of(invocation.argv, "hydra.sweep.dir") if invocation and not full_error else None
        if not sweep_dir:
            raise
        fail(f"{e}; " + sweep_resume.interrupted(sweep_dir).removeprefix("interrupted; "), e.exit_code, invocation)
    finally:
        if invocation is not None and invocation.lock is not None:
            invocation.lock.close()  # the process may go on (tests call main in-process)
        _restore_env("HYDRA_FULL_ERROR", "1" if full_error else previous)


def fail(message: str, exit_code: int, invocation: Optional[Invocation]) -> NoReturn:
    """Print the one line (once, under torchrun) and exit, leaving no dir made for a run that never trained."""
    if invocation is not None:
        invocation.remove_unused_dirs()
    if env_rank() == 0:  # under torchrun every rank meets the same mistake: say it once
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(exit_code)


def _command() -> str:
    """How the user launched this run: resuming it takes as many ranks (trainer.resume)."""
    n = world_size()
    return f"torchrun --nproc_per_node={n} -m trainer" if n > 1 else "python -m trainer"


def _restore_env(name: str, value: Optional[str]) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _reportable(e: BaseException) -> bool:
    """A mistake to name in one line; anything else is a bug, whose traceback is worth seeing."""
    from hydra.errors import HydraException

    return isinstance(e, (UserError, HydraException, OmegaConfBaseException))
