"""Building a run: the corpus, model, optimizer, batch sampler and eval sets, from the config.

`build_run` makes everything the loop needs before its first step, in the order that keeps a
run exactly repeatable (seed, corpus, the same initial weights on every rank and every resume,
optimizer, sampler), restores a checkpoint into it when resuming, and returns it as one `Run`.
The loop (trainer.train) then only reads it and advances its step.

The budgets (max_time, max_tokens, early_stopping_patience; 0 = off) end the run where the first runs
out, or at max_iters (`Run.stop_reason`): evaluated and saved at that step, with `stopped` in
summary.json saying which. max_tokens or max_time make a sweep compute-matched (every job stops at the
same data or wall time); early stopping ends the jobs that stopped improving.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from trainer import distributed, init_from, provenance
from trainer.config import h_params_of, plain
from trainer.data.batches import BatchSampler, fixed_starts
from trainer.data.corpus import Corpus, load_corpus
from trainer.device import autocast_dtype, configure
from trainer.distributed import Dist
from trainer.evaluate import EvalSet, EvalSets, Score, eval_rows_per_forward
from trainer.memory import check_fits
from trainer.model import GPT
from trainer.optim import build_optimizer
from trainer.resume import ResumePoint

log = logging.getLogger("trainer")


@dataclass
class RunInfo:
    """What the launcher knows about this job: for W&B grouping and thread sharing."""

    group: str = ""  # the sweep this job belongs to ("" for a single run)
    name: str = ""  # the job's overrides, e.g. "learning_rate=0.0003,TORCH_SEED=2"
    point: str = ""  # the same without TORCH_SEED: its seed replicates share it (trainer.replicates)
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
    scores: dict[str, Score] = field(default_factory=dict)  # the last eval's scores by split
    final: dict[str, Score] = field(default_factory=dict)  # the whole-split scores, when the run ends
    elapsed_before: float = 0.0  # seconds trained before this process (by the runs it resumes)
    wandb_id: Optional[str] = None
    resumed_at: Optional[int] = None  # the step this process resumed at: evaluated and saved already
    tokens_before: int = 0  # training tokens seen up to resumed_at (from the checkpoint)
    evals_since_best: int = 0  # evals in a row that did not improve the best valid loss (early stopping)
    stopped: Optional[str] = None  # why the loop stops at this step (stop_reason), None while it goes on
    provenance: dict[str, Any] = field(default_factory=dict)  # which code and machine (trainer.provenance)

    @property
    def effective_batch(self) -> int:
        """Windows behind one update: batch_size x accumulation steps x ranks."""
        return self.cfg.batch_size * self.cfg.gradient_accumulation_steps * self.dist.world_size

    @property
    def tokens_per_step(self) -> int:
        return self.effective_batch * self.cfg.context_length

    @property
    def tokens_seen(self) -> int:
        """Training tokens consumed so far, all ranks, the runs this one resumes included."""
        return self.tokens_before + (self.step - (self.resumed_at or 0)) * self.tokens_per_step

    def stop_reason(self, elapsed_s: float) -> Optional[str]:
        """Why the run ends at this step, or None: early_stopping, max_iters, max_tokens (the next step
        would pass it) or max_time (training seconds of the whole run, resumed parts included).
        Worked out from the run's state alone, so a resumed run that is already done stops at once,
        for the same reason, and one resumed with a larger budget goes on."""
        cfg = self.cfg
        if self._patience_spent():
            return "early_stopping"
        if self.step >= cfg.max_iters:
            return "max_iters"
        if cfg.max_tokens and self.tokens_seen + self.tokens_per_step > cfg.max_tokens:
            return "max_tokens"
        if cfg.max_time and elapsed_s >= cfg.max_time:
            return "max_time"
        return None

    def check_budgets(self, elapsed_s: float) -> None:
        """Set `stopped`. Ranks' clocks differ: rank 0's decision holds for all (else one rank would
        wait forever for the others' next step)."""
        reason = self.stop_reason(elapsed_s)
        self.stopped = distributed.broadcast(reason, self.dist) if self.cfg.max_time else reason

    def note_eval(self) -> bool:
        """Take the eval just made into account; True when it is the best valid loss so far. After
        early_stopping_patience evals without one, the run stops here."""
        improved = self.last["valid"] < self.best
        self.best = min(self.best, self.last["valid"])
        self.evals_since_best = 0 if improved else self.evals_since_best + 1
        if self.stopped is None and self._patience_spent():
            self.stopped = "early_stopping"
        return improved

    def _patience_spent(self) -> bool:
        patience = self.cfg.early_stopping_patience
        return patience > 0 and self.evals_since_best >= patience

    def eval_due(self) -> bool:
        """Every eval_interval steps and where the run stops (not again at the step a resume starts from)."""
        return self.step != self.resumed_at and (self.step % self.cfg.eval_interval == 0 or self.stopped is not None)

    def checkpoint_due(self) -> bool:
        """At every eval (checkpoint_interval=0) or every checkpoint_interval steps, and where the run stops."""
        if self.step == self.resumed_at:
            return False
        every = self.cfg.checkpoint_interval
        return (self.eval_due() if every == 0 else self.step % every == 0) or self.stopped is not None


def build_run(cfg: DictConfig, run_dir: Path, info: RunInfo, device: torch.device, d: Dist,
              resume: Optional[ResumePoint]) -> Run:
    threads = configure(device, cfg.num_threads, info.parallel_jobs * d.local_world_size)
    seed = cfg.TORCH_SEED
    torch.manual_seed(seed)
    tokenizer = resume.tokenizer_if_gone(cfg.encoding) if resume is not None else None
    corpus = _with_pretrained_vocab(cfg, load_corpus(cfg, progress=plain(cfg.progress) if d.is_main else False,
                                                     tokenizer=tokenizer), resume)
    h = _h_params(cfg, corpus, device, d)
    if resume is not None:
        resume.check(h, corpus.vocab, corpus.enc.saved)
    check_fits(cfg, corpus.vocab_size, device)  # far too big: one line now, not the OOM killer later
    torch.manual_seed(seed)  # the same initial weights on every rank and for every resume
    model = GPT(h)
    if cfg.init_from and resume is None:  # a resume's checkpoint holds newer weights
        init_from.load_into(model, cfg.init_from)
    model = model.to(device)
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


def _with_pretrained_vocab(cfg: DictConfig, corpus: Corpus, resume: Optional[ResumePoint]) -> Corpus:
    """With init_from, the model's vocabulary is the pretrained one, whatever ids the corpus holds."""
    if not cfg.init_from:
        return corpus
    size = resume.state["h_params"]["vocab_size"] if resume is not None else \
        init_from.vocab_size(cfg.init_from, corpus.max_token_value)
    return dataclasses.replace(corpus, vocab_size=size)


def _h_params(cfg: DictConfig, corpus: Corpus, device: torch.device, d: Dist) -> dict[str, Any]:
    """The config's hyperparameters, plus what only the run knows (the book adds max_token_value)."""
    h = h_params_of(cfg)
    h.update(device=device.type, max_token_value=corpus.max_token_value, vocab_size=corpus.vocab_size,
             world_size=d.world_size,
             effective_batch_size=cfg.batch_size * cfg.gradient_accumulation_steps * d.world_size)
    return h


def _eval_sets(cfg: DictConfig, corpus: Corpus, effective_batch: int) -> EvalSets:
    """eval_iters global batches of fixed windows per split, shared out among the ranks at eval time.
    Drawn from eval_seed, not TORCH_SEED: every run of a sweep is scored on the same windows."""
    n, seed, T = cfg.eval_iters * effective_batch, cfg.eval_seed, cfg.context_length
    return {split: EvalSet(data, fixed_starts(len(data), n, T, seed + offset), T, corpus.token_bytes)
            for split, data, offset in (("train", corpus.train, 1), ("valid", corpus.valid, 2))}


def _wrapped(run: Run) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The model as the steps call it (compiled, in DDP) and as evaluation calls it (compiled)."""
    model = torch.compile(run.model) if run.cfg.compile else run.model
    if not run.dist.enabled:
        return model, model
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    # The only buffers (the sinusoidal table, RoPE's cos/sin) are constants: no need to re-broadcast them.
    # Set as an attribute: the constructor argument's name differs across torch versions.
    ddp.broadcast_buffers = False
    return ddp, model


def describe(run: Run) -> str:
    """The run's first log line: device, threads, ranks, sizes, the corpus and its cache file, batch and run dir."""
    d, cfg, c = run.dist, run.cfg, run.corpus
    ranks = f" x {d.world_size} ranks ({'nccl' if run.device.type == 'cuda' else 'gloo'})" if d.enabled else ""
    gpu = f"{run.provenance.get('hardware')}, " if run.device.type == "cuda" else ""  # which GPU, in the log too
    return (f"{'Resuming' if run.resumed_at is not None else 'Training'} on {run.device} ({gpu}{run.threads} "
            f"thread{'' if run.threads == 1 else 's'}){ranks}: {run.model.num_params():,} parameters, "
            f"{c.n_tokens:,} tokens (vocab {c.vocab_size:,} of {c.max_token_value:,} ids) from {_documents(c)}, "
            f"effective batch {run.effective_batch} (batch_size {cfg.batch_size} x {cfg.gradient_accumulation_steps} accumulation "
            f"x {d.world_size} ranks), run dir {run.dir}")


def _documents(c: Corpus) -> str:
    t = c.tokens
    return f"{t.documents:,} document{'' if t.documents == 1 else 's'} of {t.bytes:,} bytes (cache {t.path})"
