"""Building a run: the corpus, model, optimizer, batch sampler and eval sets, from the config.

`build_run` makes everything the loop needs before its first step, in the order that keeps a
run exactly repeatable (seed, corpus, the same initial weights on every rank and every resume,
optimizer, sampler), restores a checkpoint into it when resuming, and returns it as one `Run`.
The loop (trainer.train) then only reads it and advances its step.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from trainer import provenance
from trainer.config import h_params_of, plain
from trainer.data import BatchSampler, Corpus, fixed_eval_windows, load_corpus
from trainer.device import autocast_dtype, configure
from trainer.distributed import Dist
from trainer.evaluate import EvalSets, eval_rows_per_forward
from trainer.model import GPT
from trainer.optim import build_optimizer
from trainer.resume import ResumePoint

log = logging.getLogger("trainer")


@dataclass
class RunInfo:
    """What the launcher knows about this job: for W&B grouping and thread sharing."""

    group: str = ""  # the sweep this job belongs to ("" for a single run)
    name: str = ""  # the job's overrides, e.g. "learning_rate=0.0003"
    parallel_jobs: int = 1  # jobs running side by side on this machine
    command: Optional[list[str]] = None  # the user's arguments to `python -m trainer`, as typed (provenance)


@dataclass
class Run:
    cfg: DictConfig
    h: dict[str, Any]  # the checkpoint's h_params: the flat hyperparameters, resolved, plus the corpus's
    dir: Path
    device: torch.device
    dist: Dist
    threads: int
    corpus: Corpus
    model: GPT  # what gets saved: never the compiled or DDP wrapper (their state_dict keys differ)
    optimizer: torch.optim.Optimizer
    sampler: BatchSampler
    eval_sets: EvalSets
    amp: Optional[torch.dtype]  # the autocast dtype, None = float32
    rows_per_forward: int  # eval windows per forward
    train_model: Optional[torch.nn.Module] = None  # model, compiled and/or in DDP: what a step calls
    eval_model: Optional[torch.nn.Module] = None  # model, compiled: an eval needs no gradient sync
    step: int = 0
    best: float = math.inf  # the best valid loss so far
    last: dict[str, float] = field(default_factory=dict)  # the last eval's losses by split
    elapsed_before: float = 0.0  # seconds trained before this process (by the runs it resumes)
    wandb_id: Optional[str] = None
    resumed_at: Optional[int] = None  # the step this process resumed at: evaluated and saved already
    provenance: dict[str, Any] = field(default_factory=dict)  # which code and machine (trainer.provenance)

    @property
    def effective_batch(self) -> int:
        """Windows behind one update: batch_size x accumulation steps x ranks."""
        return self.cfg.batch_size * self.cfg.gradient_accumulation_steps * self.dist.world_size

    @property
    def tokens_per_step(self) -> int:
        return self.effective_batch * self.cfg.context_length

    def eval_due(self) -> bool:
        """Every eval_interval steps and at the end (not again at the step a resume starts from)."""
        return self.step != self.resumed_at and (self.step % self.cfg.eval_interval == 0
                                                 or self.step == self.cfg.max_iters)

    def checkpoint_due(self) -> bool:
        """At every eval (checkpoint_interval=0) or every checkpoint_interval steps, and at the end."""
        if self.step == self.resumed_at:
            return False
        every = self.cfg.checkpoint_interval
        return (self.eval_due() if every == 0 else self.step % every == 0) or self.step == self.cfg.max_iters


def build_run(cfg: DictConfig, run_dir: Path, info: RunInfo, device: torch.device, d: Dist,
              resume: Optional[ResumePoint]) -> Run:
    threads = configure(device, cfg.num_threads, info.parallel_jobs * d.local_world_size)
    seed = cfg.TORCH_SEED
    torch.manual_seed(seed)
    corpus = load_corpus(cfg.data_path, cfg.text_column, cfg.encoding, cfg.train_split, cfg.context_length,
                         cfg.vocab_compaction)
    h = _h_params(cfg, corpus, device, d)
    if resume is not None:
        resume.check(h, corpus.vocab)
    torch.manual_seed(seed)  # the same initial weights on every rank and for every resume
    model = GPT(h).to(device)
    if d.enabled:
        torch.manual_seed(seed + d.rank)  # the same weights on every rank, but each its own dropout masks
    run = Run(cfg, h, run_dir, device, d, threads, corpus, model,
              optimizer=build_optimizer(cfg, model, device, eager=not cfg.compile),
              # Every rank draws the same global batch and trains on its slice (see BatchSampler).
              sampler=BatchSampler(corpus.train, cfg.batch_size, cfg.context_length, seed,
                                   cfg.gradient_accumulation_steps, d.rank, d.world_size),
              eval_sets=_eval_sets(cfg, corpus, h["effective_batch_size"]),
              amp=autocast_dtype(device, plain(cfg.dtype)),
              rows_per_forward=eval_rows_per_forward(device, cfg.context_length, corpus.vocab_size))
    run.provenance = provenance.collect(device, threads, info.command)
    if resume is not None:
        resume.restore(run)
    run.train_model, run.eval_model = _wrapped(run)
    return run


def _h_params(cfg: DictConfig, corpus: Corpus, device: torch.device, d: Dist) -> dict[str, Any]:
    """The config's hyperparameters, plus what only the run knows (the book adds max_token_value)."""
    h = h_params_of(cfg)
    h.update(device=device.type, max_token_value=corpus.max_token_value, vocab_size=corpus.vocab_size,
             world_size=d.world_size,
             effective_batch_size=cfg.batch_size * cfg.gradient_accumulation_steps * d.world_size)
    return h


def _eval_sets(cfg: DictConfig, corpus: Corpus, effective_batch: int) -> EvalSets:
    """eval_iters global batches of fixed windows per split, shared out among the ranks at eval time."""
    n, seed = cfg.eval_iters * effective_batch, cfg.TORCH_SEED
    return {"train": fixed_eval_windows(corpus.train, n, cfg.context_length, seed + 1),
            "valid": fixed_eval_windows(corpus.valid, n, cfg.context_length, seed + 2)}


def _wrapped(run: Run) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model as the steps call it (compiled, in DDP) and as evaluation calls it (compiled)."""
    model = torch.compile(run.model) if run.cfg.compile else run.model
    if not run.dist.enabled:
        return model, model
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    # The only buffer (the positions) is a constant: no need to re-broadcast it before every forward.
    # Set as an attribute: the constructor argument's name differs across torch versions.
    ddp.broadcast_buffers = False
    return ddp, model


def describe(run: Run) -> str:
    """The run's first log line: device, threads, ranks, sizes, batch and run dir."""
    d, cfg, c = run.dist, run.cfg, run.corpus
    ranks = f" x {d.world_size} ranks ({'nccl' if run.device.type == 'cuda' else 'gloo'})" if d.enabled else ""
    return (f"{'Resuming' if run.resumed_at is not None else 'Training'} on {run.device} ({run.threads} "
            f"thread{'' if run.threads == 1 else 's'}){ranks}: {run.model.num_params():,} parameters, "
            f"{c.n_tokens:,} tokens (vocab {c.vocab_size:,} of {c.max_token_value:,} ids), effective batch "
            f"{run.effective_batch} (batch_size {cfg.batch_size} x {cfg.gradient_accumulation_steps} accumulation "
            f"x {d.world_size} ranks), run dir {run.dir}")
