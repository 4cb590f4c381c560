"""`python -m trainer`: Hydra composes the config, this module turns every mistake into one line.

Before Hydra starts, the command line gets what Hydra cannot decide alone:
- a run dir that no other run shares, even one started in the same second (Hydra issue #2925);
- under torchrun, no dir at all for ranks other than 0 (Hydra issue #2070);
- for `resume=...`, the original run's dir and overrides, so the run continues in place.
Errors from Hydra, OmegaConf and the trainer are printed as one line on stderr, exit code 2,
no traceback (set HYDRA_FULL_ERROR=1 for the full one).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainer import checkpoint
from trainer.config import register_configs
from trainer.distributed import env_rank
from trainer.errors import UserError
from trainer.train import RunInfo, train

log = logging.getLogger("trainer")

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
OUTPUTS = Path("outputs")
SUMMARY_NAME = "summary.json"
_FRESH_DIR_ENV = "TRAINER_FRESH_RUN_DIR"  # the dir made for this run, removed if it fails before training


# ----------------------------------------------------------------------------- the command line


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


def _find_auto_resume(overrides: list[str]) -> Path:
    """The newest run (with a checkpoint) whose config equals the one these overrides compose."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        wanted = OmegaConf.to_container(compose("config", overrides=overrides), resolve=False)
    ignore = {"resume", "progress"}
    wanted = {k: v for k, v in wanted.items() if k not in ignore}
    candidates = sorted(OUTPUTS.glob(f"*/*/{checkpoint.CKPT_NAME}"), key=lambda p: p.stat().st_mtime)
    candidates += sorted(OUTPUTS.glob(f"multirun/*/*/*/{checkpoint.CKPT_NAME}"), key=lambda p: p.stat().st_mtime)
    for ckpt in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        saved = ckpt.parent / ".hydra" / "config.yaml"
        if saved.exists():
            cfg = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
            if {k: v for k, v in cfg.items() if k not in ignore} == wanted:
                return ckpt.parent
    raise UserError(f"resume=auto: no run under {OUTPUTS}/ has a checkpoint and this config")


def prepare_argv(argv: list[str]) -> list[str]:
    """The overrides Hydra should see: user's, plus the run dir (and resume) decisions above."""
    multirun = "-m" in argv or "--multirun" in argv
    overrides = [a for a in argv if not a.startswith("-")]
    extra: list[str] = []
    resume = _value_of(overrides, "resume")
    if resume and not multirun:
        others = [o for o in overrides if not o.startswith("resume=")]
        ckpt = checkpoint.resolve(_find_auto_resume(others) if resume == "auto" else resume, key="resume")
        run_dir = ckpt.parent
        saved = run_dir / ".hydra" / "overrides.yaml"
        original = [o for o in OmegaConf.load(saved) if not o.startswith(("resume=", "hydra"))] if saved.exists() else []
        # The original overrides first, so what the user adds now (max_iters=1000) wins.
        argv = [a for a in argv if not a.startswith("resume=")]
        extra += original + [f"resume={ckpt}", f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]
        argv = [a for a in argv if a.startswith("-")] + extra + [a for a in argv if not a.startswith("-")]
        return argv
    if env_rank() > 0:  # torchrun: only rank 0 owns a run dir; the others write nothing
        return argv + ["hydra.run.dir=.", "hydra.output_subdir=null",
                       "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    now = datetime.now()
    if multirun and _value_of(overrides, "hydra.sweep.dir") is None:
        path = unique_dir(OUTPUTS / "multirun" / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S"))
        extra.append(f"hydra.sweep.dir={path}")
    elif not multirun and _value_of(overrides, "hydra.run.dir") is None:
        path = unique_dir(OUTPUTS / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S"))
        os.environ[_FRESH_DIR_ENV] = str(path.resolve())
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
    key = getattr(ex.__cause__, "full_key", None) or getattr(ex, "full_key", None)
    text = _lines(str(ex))
    if isinstance(ex.__cause__, OmegaConfBaseException):
        text = f"{text}: {_lines(str(ex.__cause__))}" if text else _lines(str(ex.__cause__))
    return f"{key}: {text}" if key and not text.startswith(f"{key}") else text


def _lines(text: str) -> str:
    keep = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.strip().startswith(_NOISE)]
    return "; ".join(keep).rstrip(".")


def _fail(message: str, code: int) -> None:
    _remove_fresh_dir_if_unused()
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


# ----------------------------------------------------------------------------- the Hydra task


def _parallel_jobs(hc) -> int:
    """How many jobs of this sweep share the machine (joblib's n_jobs; -1 means one per core)."""
    n_jobs = OmegaConf.select(hc, "launcher.n_jobs")
    if not isinstance(n_jobs, int) or n_jobs == 0:
        return 1
    cores = os.cpu_count() or 1
    return n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)


def run_info(hc) -> RunInfo:
    multirun = hc.mode == RunMode.MULTIRUN
    group = "_".join(Path(hc.sweep.dir).parts[-2:]) if multirun else ""
    return RunInfo(group=group, name=hc.job.override_dirname, parallel_jobs=_parallel_jobs(hc) if multirun else 1)


def _remove_fresh_dir_if_unused() -> None:
    """A run that failed before training leaves no dir behind (only ever the one made for it)."""
    fresh = os.environ.pop(_FRESH_DIR_ENV, None)
    if fresh and not any((Path(fresh) / name).exists() for name in (checkpoint.CKPT_NAME, "metrics.jsonl")):
        logging.shutdown()
        shutil.rmtree(fresh, ignore_errors=True)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def task(cfg: DictConfig) -> float:
    """One job: train, write the summary, return the best valid loss (what a sweeper minimises)."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        summary = train(cfg, run_dir, run_info(hc))
    except UserError as e:
        log.debug("error: %s", e)
        if hc.mode == RunMode.MULTIRUN:
            raise  # Hydra goes on with the sweep's other jobs and reports this one at the end
        _fail(str(e), e.exit_code)
    if env_rank() == 0:
        (run_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary["best_valid_loss"]


def main() -> None:
    register_configs()
    user_wants_traceback = bool(os.environ.get("HYDRA_FULL_ERROR"))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us, to be printed as one line
    try:
        sys.argv = [sys.argv[0], *prepare_argv(sys.argv[1:])]
        gc.freeze()  # the imports' ~180k objects live to the end: no collection need scan them again
        task()
        gc.freeze()  # and the run's: the exit skips a last full scan, 0.3 s of every run's teardown
    except UserError as e:
        if user_wants_traceback:
            raise
        _fail(str(e), e.exit_code)
    except (OmegaConfBaseException, Exception) as e:
        from hydra.errors import HydraException

        if user_wants_traceback or not isinstance(e, (HydraException, OmegaConfBaseException)):
            raise
        _fail(one_line(e), 2)
