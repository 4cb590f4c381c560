"""`python -m trainer`: Hydra composes the config, this module turns every mistake into one line.

Before Hydra starts, the command line gets what Hydra cannot decide alone:
- a run dir that no other run shares, even one started in the same second (Hydra issue #2925);
- under torchrun, no dir at all for ranks other than 0 (Hydra issue #2070);
- for `resume=...`, the original run's dir and overrides, so the run continues in place.
Errors from Hydra, OmegaConf and the trainer are printed as one line on stderr, exit code 2,
no traceback (set HYDRA_FULL_ERROR=1 for the full one).
"""

from __future__ import annotations

import dataclasses
import difflib
import gc
import json
import logging
import os
import re
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from trainer import checkpoint, sweep
from trainer.config import CONF_DIR, OUTPUTS, register_configs
from trainer.distributed import env_rank, world_size
from trainer.errors import UserError
from trainer.resume import resume_overrides
from trainer.train import RunInfo, train

log = logging.getLogger("trainer")

_FRESH_DIR_ENV = "TRAINER_FRESH_RUN_DIR"  # the dir made for this run, removed if it fails before training


# ----------------------------------------------------------------------------- the command line


_NO_RUN_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                 "--resolve", "--package", "-p"}


def _value_of(argv: list[str], key: str) -> Optional[str]:
    for arg in argv:
        if arg.startswith(f"{key}="):
            return arg.split("=", 1)[1]
    return None


def unique_dir(base: Path) -> Path:
    """base, or base_1, base_2, ...: the first that this process creates itself (atomic mkdir)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for i in range(10_000):
        path = base if i == 0 else base.with_name(f"{base.name}_{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"{base}: could not find a free run dir name")


# Ranks other than 0 under torchrun: no .hydra/ dir, no train.log (the console only, warnings up).
_QUIET_RANK = ["hydra.output_subdir=null", "hydra/job_logging=stdout", "hydra.job_logging.root.level=WARNING",
               "hydra/hydra_logging=disabled"]


def prepare_argv(argv: list[str]) -> list[str]:
    """The overrides Hydra should see: user's, plus the run dir (and resume) decisions above."""
    if any(a.split("=")[0] in _NO_RUN_FLAGS for a in argv):
        return argv  # Hydra only prints (help, config, info): no run, so no run dir
    overrides = [a for a in argv if not a.startswith("-")]
    multirun = "-m" in argv or "--multirun" in argv or sweep.is_sweep(overrides)
    extra: list[str] = []
    resume = _value_of(overrides, "resume")
    if multirun and world_size() > 1:
        raise UserError("--multirun under torchrun: launch one torchrun per sweep job instead "
                        "(e.g. hydra/launcher=submitit_slurm), or run the sweep without torchrun")
    if resume and not multirun:
        extra += resume_overrides(resume, overrides)
        argv = [a for a in argv if not a.startswith("resume=")]
        argv = [a for a in argv if a.startswith("-")] + extra + [a for a in argv if not a.startswith("-")]
        return argv + _QUIET_RANK if env_rank() > 0 else argv
    if env_rank() > 0:  # torchrun: only rank 0 owns a run dir; the others write nothing
        return argv + ["hydra.run.dir=.", *_QUIET_RANK]
    if multirun:  # jobs named by what varies (learning_rate=0.001), not by what all share
        extra += sweep.sweep_overrides(overrides)
    now = datetime.now()
    if multirun and _value_of(overrides, "hydra.sweep.dir") is None:
        path = unique_dir(OUTPUTS / "multirun" / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S"))
        extra.append(f"hydra.sweep.dir={path}")
    elif not multirun and _value_of(overrides, "hydra.run.dir") is None:
        base = OUTPUTS / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")
        new_parents = [p for p in base.parents if not p.exists()]  # e.g. today's date dir, made for this run
        path = unique_dir(base)
        os.environ[_FRESH_DIR_ENV] = os.pathsep.join(str(p.resolve()) for p in [path, *new_parents])
        extra.append(f"hydra.run.dir={path}")
    return argv + extra


# ----------------------------------------------------------------------------- errors as one line

_NOISE = ("full_key:", "object_type=", "reference_type=", "Config search path", "Set the environment variable",
          "provider=", "path=", "See https://")


def one_line(ex: BaseException) -> str:
    """A Hydra, OmegaConf or trainer exception as one readable line naming the culprit."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(ex, MissingConfigException) and ex.options is not None and ex.missing_cfg_file:
        group, _, option = str(ex.missing_cfg_file).rpartition("/")
        return f"{group}={option}: unknown option (choose from {', '.join(sorted(ex.options))})"
    if isinstance(ex, OverrideParseException):
        return f"{ex.override}: {_lines(ex.message)}"
    unknown = re.match(r"Could not override '([^']+)'", str(ex))
    if unknown and isinstance(ex.__cause__, (ConfigAttributeError, ConfigKeyError)):
        # A typo; Hydra's "+key=..." hint would not work on the typed schema.
        hint = _did_you_mean(ex.__cause__) if ex.__cause__.full_key == unknown.group(1) else ""
        return f"{unknown.group(1)}: no such key{hint}"
    key = getattr(ex.__cause__, "full_key", None) or getattr(ex, "full_key", None)
    text = _lines(str(ex))
    if isinstance(ex.__cause__, OmegaConfBaseException):
        text = f"{text}: {_lines(str(ex.__cause__))}" if text else _lines(str(ex.__cause__))
    return f"{key}: {text}" if key and not text.startswith(f"{key}") else text


def _did_you_mean(e: OmegaConfBaseException) -> str:
    known = [f.name for f in dataclasses.fields(e.object_type)] if dataclasses.is_dataclass(e.object_type) else []
    close = difflib.get_close_matches(str(e.key), known, n=1)
    prefix = str(e.full_key)[: -len(str(e.key))] if str(e.full_key).endswith(str(e.key)) else ""
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _lines(text: str) -> str:
    keep = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.strip().startswith(_NOISE)]
    return "; ".join(keep).rstrip(".")


def _fail(message: str, code: int) -> None:
    _remove_fresh_dir_if_unused()
    if env_rank() == 0:  # under torchrun every rank meets the same mistake: say it once
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


# ----------------------------------------------------------------------------- the Hydra task


def run_info(hc) -> RunInfo:
    multirun = hc.mode == RunMode.MULTIRUN
    group = "_".join(Path(hc.sweep.dir).parts[-2:]) if multirun else ""
    return RunInfo(group=group, name=hc.job.override_dirname, parallel_jobs=sweep.parallel_jobs(hc) if multirun else 1)


def _remove_fresh_dir_if_unused() -> None:
    """A run that failed before training leaves no dir behind (only ever the one made for it)."""
    fresh, *parents = os.environ.pop(_FRESH_DIR_ENV, "").split(os.pathsep)
    if fresh and not any((Path(fresh) / name).exists() for name in (checkpoint.CKPT_NAME, "metrics.jsonl")):
        logging.shutdown()
        shutil.rmtree(fresh, ignore_errors=True)
        for parent in parents:  # innermost first; only dirs this run made, and only while empty
            try:
                os.rmdir(parent)
            except OSError:
                break


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def task(cfg: DictConfig) -> float:
    """One job: train, write the summary, return the best valid loss (what a sweeper minimises)."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        summary = train(cfg, run_dir, run_info(hc))
    except UserError as e:
        log.debug("error: %s", e)
        if hc.mode == RunMode.MULTIRUN or _user_wants_traceback:
            raise  # a sweep goes on with its other jobs; HYDRA_FULL_ERROR=1 asked for the traceback
        _fail(str(e), e.exit_code)
    except KeyboardInterrupt:  # Ctrl-C: a way to stop, not a crash; say how to go on
        if hc.mode == RunMode.MULTIRUN or _user_wants_traceback or env_rank() > 0:
            raise
        ckpt = run_dir / checkpoint.CKPT_NAME
        _fail(f"interrupted; continue with: python -m trainer resume={run_dir}" if ckpt.exists()
              else "interrupted before the first checkpoint", 130)
    if env_rank() == 0:
        (run_dir / sweep.JOB_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary["best_valid_loss"]


_user_wants_traceback = False  # HYDRA_FULL_ERROR=1 as the user set it (main() sets it for itself)


def main() -> None:
    global _user_wants_traceback
    register_configs()
    user_wants_traceback = _user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us, to be printed as one line
    try:
        sys.argv = [sys.argv[0], *prepare_argv(sys.argv[1:])]
        gc.freeze()  # the imports' ~180k objects live to the end: no collection need scan them again
        task()
        gc.freeze()  # and the run's: the exit skips a last full scan, 0.3 s of every run's teardown
    except UserError as e:
        if user_wants_traceback:
            _remove_fresh_dir_if_unused()
            raise
        _fail(str(e), e.exit_code)
    except (OmegaConfBaseException, Exception) as e:
        from hydra.errors import HydraException

        if user_wants_traceback or not isinstance(e, (HydraException, OmegaConfBaseException)):
            raise
        _fail(one_line(e), 2)
