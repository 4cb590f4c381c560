"""`plan=true`: preview a sweep (or one run) before spending the compute: every job's overrides,
parameter count, training FLOPs per token and an estimated wall time, then exit 0, having
trained nothing and written nothing under outputs/.

    python -m trainer -m learning_rate=1e-3,3e-4 model=tiny,small plan=true

The jobs are the basic sweeper's expansion of the command line (and of hydra.sweeper.params), each
composed by Hydra's compose API and checked by `config.validate`, as the sweep would. Sizes come from
the model built on torch's meta device (no memory), over the corpus's real vocabulary (read through
the tokenizer cache). The time: on this machine, a job whose step should be quick gets a few real
training steps and one eval timed (`train.train_step`, `evaluate.evaluate`, on the job's device and
thread count); a bigger one gets its FLOPs divided by the device's peak (the GPU table, or the CPU
rate that `device.cpu_peak_flops` measures and caches) times a typical MFU. Either way: steps x
max_iters + evals; start-up and checkpoints are left out. The output says which estimate each job got.
Grid sweeps only: an Optuna search, which picks its trials as it goes, is refused in one line, as is
plan=true with resume= (which continues a run as it was).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trainer.argv import NO_RUN_FLAGS, value_of
from trainer.config import CONF_DIR, plain, validate
from trainer.device import resolve_device
from trainer.errors import UserError

MFU_GUESS = 0.3  # measured on this project's 2-vCPU VM: 23% for the book's model, 36% for model=small
TIME_IT_BELOW_S = 1.0  # time real steps when a step should take less than this (else the peak-based guess)
TIMED_STEPS = 3  # after one warm-up step; their median counts
# What changes the numbers a step computes but not how long it takes: jobs differing only in these are timed once.
SPEED_NEUTRAL = {"learning_rate", "weight_decay", "beta1", "beta2", "eps", "momentum", "lr_schedule", "warmup_iters",
                 "min_lr", "TORCH_SEED", "max_iters", "eval_interval", "checkpoint_interval", "progress", "wandb",
                 "resume", "plan", "prepare", "final_eval_windows"}


@dataclass
class Cost:
    """What one job's model costs on this machine."""

    params: int
    flops_per_token: float
    step_s: float  # one optimizer step
    eval_s: float  # one eval (both splits)
    how: str  # "timed" or "peak"
    where: str  # the device and threads it would train with, e.g. "cpu, 1 thread"

    def wall_s(self, cfg: DictConfig) -> float:
        """max_iters steps and every eval (at step 0, each eval_interval, and the last step)."""
        evals = len(range(0, cfg.max_iters + 1, cfg.eval_interval)) + (cfg.max_iters % cfg.eval_interval != 0)
        return cfg.max_iters * self.step_s + evals * self.eval_s


def previewed(argv: list[str]) -> bool:
    """Preview the jobs and return True when the command line says plan=true; else False (train)."""
    jobs = composed_jobs(argv, "plan")
    if jobs is None:
        return False
    base, overrides, configs, multirun = jobs
    for cfg in configs:  # every mistake before the first line of the table
        validate(cfg)
        resolve_device(plain(cfg.device))
    print_plan(base, overrides, configs, multirun)
    return True


def composed_jobs(argv: list[str], flag: str) -> Optional[tuple[DictConfig, list[list[str]], list[DictConfig], bool]]:
    """When the command line sets `flag` (plan, prepare) true: the shared config, and each job's
    overrides and composed config, as the sweep would make them (one job for a single run); else None."""
    overrides = [a for a in argv if not a.startswith("-")]
    if value_of(overrides, flag) is None or any(a.split("=")[0] in NO_RUN_FLAGS for a in argv):
        return None
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        base = compose("config", overrides=fixed_overrides(overrides), return_hydra_config=True)
        if not base[flag]:
            return None
        if value_of(overrides, "resume") is not None:
            what = {"plan": "previews new runs", "prepare": "tokenizes new runs' corpora"}[flag]
            raise UserError(f"{flag}=true: {what}; resume= continues one as it was (drop {flag}=true)")
        multirun = "-m" in argv or "--multirun" in argv or OmegaConf.select(base, "hydra.mode") == RunMode.MULTIRUN
        jobs = expand(base, overrides) if multirun else [overrides]
        configs = [compose("config", overrides=job) for job in jobs]
    return base, jobs, configs, multirun


def fixed_overrides(overrides: list[str]) -> list[str]:
    """The overrides without sweeps (`lr=1e-3,3e-4`): the config every job shares, and Hydra's settings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [o.input_line for o in parsed if not o.is_sweep_override()]


def expand(base: DictConfig, overrides: list[str]) -> list[list[str]]:
    """Each job's overrides, as the basic sweeper makes them (the cartesian product, in its order)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = base.hydra.sweeper
    if not str(OmegaConf.select(sweeper, "_target_", default="")).endswith("BasicSweeper"):
        raise UserError(f"plan=true: previews the basic sweeper's grid; {sweeper._target_.rsplit('.', 1)[-1]} "
                        "picks its jobs as it goes")
    params = [f"{k}={v}" for k, v in (OmegaConf.select(sweeper, "params") or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())  # for glob()
    (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(params + overrides), None)
    return batch


def print_plan(base: DictConfig, jobs: list[list[str]], configs: list[DictConfig], multirun: bool) -> None:
    """The table, one row per job as it is estimated (timing takes a moment), then the total."""
    parallel = _parallel_jobs(base, len(jobs)) if multirun else 1
    varying = _varying(jobs)
    names = [" ".join(o for o in job if o.split("=")[0] in varying) or "(defaults)" for job in jobs]
    shared = [o for o in jobs[0] if o.split("=")[0] not in varying | {"plan"} and not o.startswith("hydra")]
    width = max(len("overrides"), *map(len, names))
    print(f"Plan: {len(jobs)} job{'s' if len(jobs) != 1 else ''}" + (f", {parallel} at a time" if multirun else "")
          + "; nothing is trained or written." + (f"\nEvery job: {' '.join(shared)}" if shared else ""))
    print(f"{'job':>3}  {'overrides':<{width}}  {'params':>12}  {'FLOPs/token':>11}  {'est. time':>9}  estimated from")
    costs: dict[str, Cost] = {}  # by what sets the speed: a learning-rate sweep measures its model once
    total = 0.0
    for i, (name, cfg) in enumerate(zip(names, configs, strict=True)):
        key = json.dumps({k: v for k, v in OmegaConf.to_container(cfg, resolve=True, enum_to_str=True).items()
                          if k not in SPEED_NEUTRAL}, sort_keys=True, default=str)
        c = costs[key] = costs.get(key) or measure(cfg, parallel)
        total += c.wall_s(cfg)
        how = "timed steps" if c.how == "timed" else f"peak x {MFU_GUESS:.0%} MFU"
        print(f"{i:>3}  {name:<{width}}  {c.params:>12,}  {_si(c.flops_per_token):>11}  {_hms(c.wall_s(cfg)):>9}  "
              f"{how}", flush=True)
    print(f"Total: about {_hms(total / parallel)}" + (f" ({parallel} jobs side by side)" if parallel > 1 else ""))
    where = ", ".join(sorted({c.where for c in costs.values()}))
    print(f"Times estimated on this machine ({where}). Timed steps: {TIMED_STEPS} real training steps (after a "
          f"warm-up) and one eval, scaled to max_iters and the evals. Peak x {MFU_GUESS:.0%} MFU: the job's FLOPs at "
          f"{MFU_GUESS:.0%} of the device's peak FLOP/s, for models too big to time quickly. Neither counts start-up "
          f"or checkpoints.")


def measure(cfg: DictConfig, parallel: int) -> Cost:
    """One job's size, and its step's and eval's time on this machine (timed, or from the device's peak)."""
    from trainer.device import peak_flops
    from trainer.distributed import Dist
    from trainer.run import RunInfo, build_run
    from trainer.speed import train_flops_per_token

    device = resolve_device(plain(cfg.device))
    info = RunInfo(parallel_jobs=parallel)
    sized = build_run(cfg, Path("plan"), info, torch.device("meta"), Dist(), None)  # shapes only, no memory
    flops_per_token = train_flops_per_token(sized.model, sized.h)
    step_flops = flops_per_token * sized.tokens_per_step
    eval_flops = 2 * cfg.eval_iters * sized.tokens_per_step * flops_per_token / 3  # forward only: a third
    peak = peak_flops(device)
    guess = step_flops / (peak * MFU_GUESS) if peak else None
    if guess is not None and guess > TIME_IT_BELOW_S:
        step_s, eval_s, how = guess, eval_flops / (peak * MFU_GUESS), "peak"
    else:
        (step_s, eval_s), how = timed(build_run(cfg, Path("plan"), info, device, Dist(), None)), "timed"
    where = device.type + (f", {sized.threads} thread{'s' if sized.threads != 1 else ''}" if device.type == "cpu" else "")
    return Cost(sized.model.num_params(), flops_per_token, step_s, eval_s, how, where)


def timed(run) -> tuple[float, float]:
    """Seconds for one training step (the median of a few, after a warm-up) and for one eval."""
    from trainer.evaluate import eval_fixed
    from trainer.train import train_step

    lr = run.cfg.learning_rate
    train_step(run, lr)  # warm-up: allocations, kernels
    steps = []
    for _ in range(TIMED_STEPS):
        t = time.perf_counter()
        train_step(run, lr)  # ends on .item(): the device is done
        steps.append(time.perf_counter() - t)
    t = time.perf_counter()
    eval_fixed(run)
    return statistics.median(steps), time.perf_counter() - t


def _varying(jobs: list[list[str]]) -> set[str]:
    """The keys whose values differ between the jobs."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for o in job:
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    return {k for k, v in values.items() if len(v) > 1 or (len(jobs) == 1 and not k.startswith("hydra"))} - {"plan"}


def _parallel_jobs(base: DictConfig, n_jobs: int) -> int:
    """How many of the jobs the launcher runs side by side (trainer.sweep.threads decides it for the jobs)."""
    from trainer.sweep.threads import BATCH_ENV, parallel_jobs

    batch = OmegaConf.select(base, "hydra.sweeper.max_batch_size") or n_jobs
    with _env(BATCH_ENV, str(min(batch, n_jobs))):
        return parallel_jobs(base.hydra)


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def _hms(seconds: Optional[float]) -> str:
    s = round(seconds or 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
