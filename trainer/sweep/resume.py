"""Resuming a stopped sweep: `python -m trainer -m resume=<sweep dir>` finishes what it left.

A sweep dir holds Hydra's multirun.yaml (the sweep's overrides) and one dir per job, numbered in
the order the basic sweeper expands those overrides. Resuming runs the same sweep into the same
dir, and each job does what its dir says:
- finished (summary.json): never launched, so not a byte of its dir changes;
- stopped or failed with a checkpoint: continues from it, in its own dir, as `resume=<run dir>`
  continues a single run (trainer.resume): its own overrides, what earlier resumes changed, then
  the ones typed now; its .hydra/ stays as the job started it;
- never started, or failed before its first checkpoint: runs from the start.

The steps:
1. `prepare_argv` (from trainer.argv, before Hydra starts): check the dir, refuse what cannot be
   resumed, and hand Hydra the sweep's own command line, the new overrides after it, and our sweeper.
2. `run`, called by the ResumingSweeper (hydra_plugins/trainer_resume_sweeper: Hydra loads sweepers
   only from there): `plan` the jobs, then launch the unfinished ones in runs of consecutive
   numbers, because a launcher numbers the jobs it is handed consecutively: job N stays in dir N.

Overrides typed on the resume apply to the jobs it runs, not to the finished ones (one line says
which); the keys the sweep varies are refused, as each job is named by its value in the summary, and
so are new values to sweep (start a new sweep for them) and another sweeper or sweep dir.

Any launcher resumes a sweep; summary.csv, jobs.csv and summary.md are then rewritten over all its
jobs, and a job that continues logs to its own W&B run. A sweep still running is refused (trainer.lock).
Only the basic sweeper's sweeps resume: an Optuna search cannot (its study lived in the stopped
process's memory). A job continues bit for bit only with the threads it trained with: the same
launcher on the same machine gives it the same share of the cores (trainer.sweep.threads), or fix
the count with num_threads=N.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from trainer import rundir
from trainer.errors import UserError
from trainer.sweep.threads import BATCH_ENV

if TYPE_CHECKING:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

log = logging.getLogger(__name__)

SWEEPER = "hydra_plugins.trainer_resume_sweeper.ResumingSweeper"
EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"
# Hydra overrides of the sweep's own command line that the resume sets again itself.
RESET = ("hydra.sweep.dir=", "hydra.mode=", f"{EXCLUDE_KEYS}=")
# Keys that say which sweep this is and where it lives: the resumed one keeps them.
FIXED = ("hydra.sweep", "hydra/sweeper", "hydra.sweeper", "hparams_search")

FINISHED, CONTINUES, STARTS = "finished", "continues", "starts"


def is_sweep_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / rundir.MULTIRUN_YAML).is_file()


# ----------------------------------------------------------------------------- before Hydra


def prepare_argv(argv: list[str], overrides: list[str], where: str) -> list[str]:
    """Hydra's command line for resuming the sweep in `where`: its own, then what is typed now."""
    saved = load_sweep(where)
    task = list(saved.hydra.overrides.task)
    added = [o for o in overrides if not o.startswith("resume=") and o not in task]
    check_added(where, saved, added)
    if importlib.util.find_spec(SWEEPER.rsplit(".", 1)[0]) is None:
        raise UserError(f"resume={where}: the trainer's Hydra plugin is not on the path; "
                        "reinstall the project (pip install -e .) or run from its checkout")
    new_keys = {key(o) for o in added}
    hydra_overrides = [o for o in saved.hydra.overrides.hydra if not o.startswith(RESET) and key(o) not in new_keys]
    exclude = {*saved.hydra.job.config.override_dirname.exclude_keys, "resume", "progress",
               *(k for k in new_keys if not k.startswith("hydra"))}
    flags = [a for a in argv if a.startswith("-")]
    if "-m" not in flags and "--multirun" not in flags:
        flags.append("-m")
    return [*flags, *hydra_overrides, *(o for o in task if key(o) not in new_keys), *added,
            f"hydra.sweep.dir={Path(where).resolve()}", f"hydra.sweeper._target_={SWEEPER}",
            f"{EXCLUDE_KEYS}=[{','.join(sorted(exclude))}]"]


def load_sweep(where: str) -> DictConfig:
    """The sweep's multirun.yaml; one line when `where` is not a sweep dir or cannot be resumed."""
    if not is_sweep_dir(where):
        what = "a single run's dir: resume it without -m" if (Path(where) / rundir.CONFIG).is_file() \
            else f"expected the dir of a sweep, e.g. {rundir.OUTPUTS / rundir.MULTIRUN}/<date>/<time>"
        raise UserError(f"resume={where}: not a sweep dir (no {rundir.MULTIRUN_YAML} there); {what}")
    try:
        saved = OmegaConf.load(Path(where) / rundir.MULTIRUN_YAML)
    except (yaml.YAMLError, OSError) as e:
        raise UserError(f"resume={where}: unreadable {rundir.MULTIRUN_YAML} ({str(e).splitlines()[0]})") from None
    sweeper = str(OmegaConf.select(saved, "hydra.sweeper._target_", default=""))
    if sweeper.endswith("OptunaSweeper"):
        raise UserError(f"resume={where}: an Optuna sweep cannot be resumed (its study lived in the stopped "
                        "process's memory); start a new one")
    if not sweeper.endswith("BasicSweeper"):
        raise UserError(f"resume={where}: only sweeps of Hydra's basic sweeper can be resumed, not {sweeper}")
    return saved


def interrupted(sweep_dir: str) -> str:
    """The line a sweep stopped by Ctrl-C ends with: how to finish it, where it can be finished."""
    try:
        load_sweep(sweep_dir)
    except UserError:  # stopped before it began, or an Optuna sweep
        return "interrupted"
    return f"interrupted; finish the sweep with: python -m trainer -m resume={sweep_dir}"


def check_added(where: str, saved: DictConfig, added: list[str]) -> None:
    """New overrides may change how the remaining jobs run, never which jobs the sweep has."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept = swept_keys(saved)
    for o in OverridesParser.create().parse_overrides(added):
        if o.is_sweep_override():
            raise UserError(f"{o.input_line}: a resumed sweep runs the jobs it had; start a new sweep for new values")
        if o.key_or_group in swept:
            raise UserError(f"{o.input_line}: {o.key_or_group} is what the sweep in {where} varies, and each job "
                            "keeps its own value; start a new sweep to try others")
        if o.key_or_group.startswith(FIXED):
            raise UserError(f"{o.input_line}: a resumed sweep keeps its sweeper and its dir ({where})")


def swept_keys(saved: DictConfig) -> set[str]:
    """The keys the sweep varies: on its command line, or in hydra.sweeper.params."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (OmegaConf.select(saved, "hydra.sweeper.params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*params, *saved.hydra.overrides.task])
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def key(override: str) -> str:
    """`+model=small` -> `model`: the key or group an override sets."""
    return override.split("=", 1)[0].lstrip("+~")


# ----------------------------------------------------------------------------- inside Hydra


@dataclass
class Job:
    """One job of the sweep, and what this resume does with it."""

    num: int
    dir: Path
    state: str  # finished | continues | starts
    overrides: list[str] = field(default_factory=list)  # what the launcher composes it from
    step: Optional[int] = None  # the checkpoint's, for a job that continues

    def clear(self) -> None:
        """A stopped attempt's leftovers: its error, and the rows of a start that reached no checkpoint
        (a job that continues keeps its rows up to its checkpoint: trainer.resume)."""
        (self.dir / rundir.ERROR).unlink(missing_ok=True)
        if self.state == STARTS:
            (self.dir / rundir.METRICS).unlink(missing_ok=True)


def run(sweeper: BasicSweeper, arguments: list[str]) -> list[Any]:
    """ResumingSweeper.sweep: launch the jobs that have not finished, under their own numbers."""
    sweep_dir = Path(sweeper.config.hydra.sweep.dir)
    saved = load_sweep(str(sweep_dir))
    task = list(saved.hydra.overrides.task)
    expanded = expand(sweeper, arguments)
    exclude = list(sweeper.config.hydra.job.config.override_dirname.exclude_keys)
    jobs = plan(sweep_dir, expanded, swept_keys(saved), [a for a in arguments if a not in task], exclude)
    todo = [j for j in jobs if j.state != FINISHED]
    groups = [g for run_ in consecutive(todo) for g in chunks(run_, sweeper.max_batch_size)]
    for group in groups:  # every job's config composes before any job starts
        sweeper.validate_batch_is_legal([j.overrides for j in group])
    # As many jobs at once as the sweep first ran, so each job trains with the threads it had.
    os.environ[BATCH_ENV] = str(len(chunks(jobs, sweeper.max_batch_size)[0]))
    returns = []
    for group in groups:
        for job in group:
            job.clear()
        returns.append(sweeper.launcher.launch([j.overrides for j in group], initial_job_idx=group[0].num))
    for result in itertools.chain(*returns):
        _ = result.return_value  # a failed job fails the sweep (as Hydra's does), once all have run
    return returns


def expand(sweeper: BasicSweeper, arguments: list[str]) -> list[list[str]]:
    """Every job's overrides, in job order: the basic sweeper's own expansion."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    parsed = parser.parse_overrides([*sweeper._parse_config(), *arguments])
    return [job for batch in sweeper.split_arguments(parsed, None) for job in batch]


def plan(sweep_dir: Path, expanded: list[list[str]], swept: set[str], added: list[str],
         exclude: list[str]) -> list[Job]:
    """What each job's dir says it needs, and the overrides it is launched with."""
    dirs = {job_number(d): d for d in rundir.runs_under(sweep_dir)}
    strays = sorted(str(d) for n, d in dirs.items() if n not in range(len(expanded)))
    if strays:
        raise UserError(f"resume={sweep_dir}: {', '.join(strays)} is no job of this sweep's {len(expanded)}")
    jobs = [plan_job(n, dirs.get(n, sweep_dir / str(n)), ov, swept, added, exclude) for n, ov in enumerate(expanded)]
    say(sweep_dir, jobs, added)
    return jobs


def job_number(job_dir: Path) -> Optional[int]:
    """From its hydra.yaml; from its name if the job was killed before Hydra wrote that."""
    return rundir.hydra_job(job_dir).get("num", int(job_dir.name) if job_dir.name.isdigit() else None)


def plan_job(num: int, job_dir: Path, overrides: list[str], swept: set[str], added: list[str],
             exclude: list[str]) -> Job:
    from trainer.resume import ResumePoint

    saved = rundir.read_overrides(job_dir)
    if saved is not None:  # the dir must be this job's: the swept values say which job it is
        mine, theirs = ([o for o in ov if key(o) in swept] for ov in (overrides, saved))
        if not set(mine) <= set(theirs):
            raise UserError(f"resume={job_dir.parent}: job dir {job_dir.name} ran {' '.join(theirs)}, but job {num} "
                            f"of the sweep in its {rundir.MULTIRUN_YAML} is {' '.join(mine)}")
    if (job_dir / rundir.SUMMARY).is_file():
        return Job(num, job_dir, FINISHED)
    if not (job_dir / rundir.CKPT).is_file():
        return Job(num, job_dir, STARTS, overrides)
    point = ResumePoint.load(str(job_dir))  # read again by the job itself: it may run in another process
    own = point.config_overrides()
    # The job keeps its name (W&B's, the summary's): what the resume adds is left out of it.
    names = sorted({*exclude, *(key(o) for o in own if o not in (saved or []))})
    return Job(num, job_dir, CONTINUES, [*own, *added, f"resume={point.path}", "hydra.output_subdir=null",
                                         f"{EXCLUDE_KEYS}=[{','.join(names)}]"], point.state["step"])


def consecutive(jobs: list[Job]) -> list[list[Job]]:
    """[1, 2, 4] -> [[1, 2], [4]]: a launcher numbers the jobs of one call consecutively."""
    runs: list[list[Job]] = []
    for job in jobs:
        if runs and runs[-1][-1].num == job.num - 1:
            runs[-1].append(job)
        else:
            runs.append([job])
    return runs


def chunks(jobs: list[Job], size: Optional[int]) -> list[list[Job]]:
    """hydra.sweeper.max_batch_size: at most this many jobs handed to the launcher at once."""
    size = size if size and size > 0 else max(1, len(jobs))
    return [jobs[i:i + size] for i in range(0, len(jobs), size)] or [[]]


def say(sweep_dir: Path, jobs: list[Job], added: list[str]) -> None:
    """One line for what happens to each job; one for where the new overrides apply."""
    of = {s: [j for j in jobs if j.state == s] for s in (FINISHED, CONTINUES, STARTS)}
    parts = [f"{numbers(of[FINISHED])} finished (left untouched)" if of[FINISHED] else "",
             *(f"job {j.num} continues from step {j.step}" for j in of[CONTINUES]),
             f"{numbers(of[STARTS])} {'start' if len(of[STARTS]) > 1 else 'starts'}" if of[STARTS] else ""]
    log.info("Resuming the sweep in %s (%d jobs): %s", sweep_dir, len(jobs), "; ".join(p for p in parts if p))
    if added:
        runs = sorted(of[CONTINUES] + of[STARTS], key=lambda j: j.num)
        log.warning("%s: applies to the jobs this resume runs (%s), from where each goes on; finished jobs keep "
                    "what they ran with", " ".join(added), numbers(runs) or "none")


def numbers(jobs: list[Job]) -> str:
    """`job 3`, `jobs 0-2, 5`: job numbers, runs of three or more shortened."""
    listed = ", ".join(f"{r[0].num}-{r[-1].num}" if len(r) > 2 else ", ".join(str(j.num) for j in r)
                       for r in consecutive(jobs))
    return f"job {listed}" if len(jobs) == 1 else f"jobs {listed}"
