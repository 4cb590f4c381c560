"""The training loop: the book's four steps (forward, loss, backward, update), repeated.

Everything around the four steps is bookkeeping: evaluate on fixed batches every
eval_interval steps and at the end, write each eval to metrics.jsonl (and W&B), save a full
checkpoint atomically, stop clearly on a NaN, and resume bit-exactly from any checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from trainer import checkpoint, distributed
from trainer.config import h_params_of, plain, validate
from trainer.data import BatchSampler, Corpus, fixed_eval_windows, load_corpus, to_device
from trainer.device import autocast, autocast_dtype, configure, peak_flops, resolve_device
from trainer.errors import UserError
from trainer.model import GPT
from trainer.optim import build_optimizer, learning_rate_at
from trainer.resume import load_state
from trainer.tracking import MetricsLog, WandbRun

log = logging.getLogger("trainer")

# Keys whose change makes a checkpoint's weights meaningless for the requested model.
SHAPE_KEYS = ("vocab_size", "d_model", "num_blocks", "num_heads", "context_length", "tie_weights")


class Diverged(UserError):
    """The loss became NaN or Inf: the run stops, the last good checkpoint stays."""

    exit_code = 3


@dataclass
class RunInfo:
    """What the launcher knows about this job: for W&B grouping and thread sharing."""

    group: str = ""  # the sweep this job belongs to ("" for a single run)
    name: str = ""  # the job's overrides, e.g. "learning_rate=0.0003"
    parallel_jobs: int = 1  # jobs running side by side on this machine


def eval_rows_per_forward(device: torch.device, context_length: int, vocab_size: int) -> int:
    """Windows per eval forward: as many as keep the (rows, T, V) fp32 logits under a budget:
    8 MB on CPU, where a bigger forward is no faster (measured: 1 to 20 windows of the book's
    model, same time) and only raises the peak memory; 1 GB on a GPU, where bigger is faster."""
    budget = (8 << 20) if device.type == "cpu" else (1 << 30)
    return max(1, budget // (context_length * vocab_size * 4))


def train_flops_per_token(model: GPT, h: dict[str, Any]) -> float:
    """6 FLOPs per weight (the embedding lookup is free) plus attention's 12 * L * T * C."""
    n = model.num_params() - model.tok.weight.numel()
    if model.head.weight is model.tok.weight:
        n += model.tok.weight.numel()
    return 6 * n + 12 * h["num_blocks"] * h["context_length"] * h["d_model"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
             device: torch.device, amp: Optional[torch.dtype], rows_per_forward: int,
             d: distributed.Dist) -> dict[str, float]:
    """Mean loss over each split's fixed windows, in eval mode (no dropout); ranks share the work."""
    model.eval()
    out = {}
    for split, (x, y) in eval_sets.items():
        rows = torch.arange(d.rank, len(x), d.world_size)  # this rank's share of the windows
        total = torch.zeros(2, device=device)  # (sum of losses, number of rows)
        for chunk in rows.split(rows_per_forward):
            xb, yb = x[chunk].to(device), y[chunk].to(device)
            with autocast(device, amp):
                _, loss = model(xb, yb)
            total += torch.stack([loss.float() * len(chunk), torch.tensor(float(len(chunk)), device=device)])
        total = distributed.mean(total, d)
        out[split] = (total[0] / total[1]).item()
    model.train()
    return out


def _check_resume(state: dict[str, Any], h: dict[str, Any], vocab: Optional[torch.Tensor], where: str) -> None:
    checkpoint.require_resumable(state, where)
    for key in SHAPE_KEYS:
        if state["h_params"].get(key) != h.get(key):
            raise UserError(f"resume={where}: the checkpoint's {key}={state['h_params'].get(key)} "
                            f"does not match this run's {key}={h.get(key)}")
    saved = state.get("vocab")
    if (saved is None) != (vocab is None) or (vocab is not None and not torch.equal(saved, vocab)):
        # Same size, other tokens: each model id would now mean a different token.
        raise UserError(f"resume={where}: the checkpoint's vocabulary differs from this run's data "
                        f"(data_path={h.get('data_path')}, vocab_compaction={h.get('vocab_compaction')})")


def _check_world_size(state: dict[str, Any], where: str) -> None:
    """Each rank resumes its own RNG state, so a distributed run resumes with as many ranks as it had."""
    saved, now = state["h_params"].get("world_size", 1), distributed.world_size()
    if saved != now:
        how = f"{saved} ranks (e.g. torchrun --nproc_per_node={saved})" if saved > 1 else "a single process (no torchrun)"
        raise UserError(f"resume={where}: the checkpoint was trained with world_size={saved}, this run has "
                        f"world_size={now}; resume it with {how}")


def train(cfg: DictConfig, run_dir: Path, info: Optional[RunInfo] = None) -> dict[str, Any]:
    """Train as cfg says, writing into run_dir; return the run's summary (best_valid_loss, ...)."""
    info = info or RunInfo()
    validate(cfg)
    device = resolve_device(plain(cfg.device))
    resume_state = load_state(cfg.resume) if cfg.resume else None  # fails before any work
    if resume_state is not None:
        _check_world_size(resume_state, cfg.resume)
    d, device = distributed.setup(device)
    try:
        run_dir = distributed.broadcast(str(run_dir), d)  # rank 0's: the only dir this job has
        summary = _train(cfg, Path(run_dir), info, device, d, resume_state)
        distributed.barrier(d)  # no rank leaves while another still talks to it (gloo aborts otherwise)
        return summary
    finally:
        distributed.teardown(d)


def _train(cfg: DictConfig, run_dir: Path, info: RunInfo, device: torch.device, d: distributed.Dist,
           resume_state: Optional[dict[str, Any]]) -> dict[str, Any]:
    threads = configure(device, cfg.num_threads, info.parallel_jobs * d.local_world_size)
    seed = cfg.TORCH_SEED
    torch.manual_seed(seed)
    corpus: Corpus = load_corpus(cfg.data_path, cfg.text_column, cfg.encoding, cfg.train_split,
                                 cfg.context_length, cfg.vocab_compaction)
    h = h_params_of(cfg)
    effective_batch = cfg.batch_size * cfg.gradient_accumulation_steps * d.world_size  # windows per update
    h.update(device=device.type, max_token_value=corpus.max_token_value, vocab_size=corpus.vocab_size,
             world_size=d.world_size, effective_batch_size=effective_batch)
    if resume_state is not None:
        _check_resume(resume_state, h, corpus.vocab, cfg.resume)

    torch.manual_seed(seed)  # the same initial weights on every rank and for every resume
    model = GPT(h).to(device)
    if d.enabled:
        torch.manual_seed(seed + d.rank)  # the same weights on every rank, but each its own dropout masks
    raw_model = model  # what gets saved: never the compiled or DDP wrapper (their keys differ)
    optimizer = build_optimizer(cfg, model, device, eager=not cfg.compile)
    # Every rank draws the same global batch and trains on its slice (see BatchSampler).
    sampler = BatchSampler(corpus.train, cfg.batch_size, cfg.context_length, seed,
                           cfg.gradient_accumulation_steps, d.rank, d.world_size)
    n_eval = cfg.eval_iters * effective_batch  # eval_iters global batches, shared out among the ranks
    eval_sets = {"train": fixed_eval_windows(corpus.train, n_eval, cfg.context_length, seed + 1),
                 "valid": fixed_eval_windows(corpus.valid, n_eval, cfg.context_length, seed + 2)}
    rows_per_forward = eval_rows_per_forward(device, cfg.context_length, corpus.vocab_size)
    amp = autocast_dtype(device, plain(cfg.dtype))

    start_step, best, elapsed_before, wandb_id = 0, math.inf, 0.0, None
    if resume_state is not None:
        raw_model.load_state_dict(resume_state["model_state_dict"])
        optimizer.load_state_dict(resume_state["optimizer_state_dict"])
        checkpoint.restore_rng(resume_state["rng"][d.rank] if isinstance(resume_state["rng"], list)
                               else resume_state["rng"], sampler.generator)
        start_step = resume_state["step"]
        best = resume_state.get("best_valid_loss", math.inf)
        elapsed_before = resume_state.get("elapsed_s", 0.0)
        wandb_id = resume_state.get("wandb_run_id")
        log.info("Resuming from %s at step %d", cfg.resume, start_step)

    if cfg.compile:
        model = torch.compile(model)
    eval_model = model  # evaluation needs no gradient sync, so never the DDP wrapper
    if d.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        # The only buffer (the positions) is a constant: no need to re-broadcast it before every forward.
        # Set as an attribute: the constructor argument's name differs across torch versions.
        model.broadcast_buffers = False

    flops_per_token = train_flops_per_token(raw_model, h)
    peak = peak_flops(device)
    tokens_per_step = cfg.batch_size * cfg.context_length * cfg.gradient_accumulation_steps * d.world_size
    ckpt_path = run_dir / checkpoint.CKPT_NAME
    metrics = MetricsLog(run_dir, keep_up_to_step=start_step if resume_state else None) if d.is_main else None
    tracker = None
    if d.is_main and cfg.wandb.enabled:
        tracker = WandbRun(cfg.wandb, run_dir, h, group=info.group, name=info.name or run_dir.name,
                           resume_id=wandb_id)
    if d.is_main:
        log.info("%s on %s (%d thread%s)%s: %s parameters, %s tokens (vocab %s of %s ids), effective batch %d "
                 "(batch_size %d x %d accumulation x %d ranks), run dir %s",
                 "Resuming" if resume_state else "Training", device, threads, "" if threads == 1 else "s",
                 f" x {d.world_size} ranks ({'nccl' if device.type == 'cuda' else 'gloo'})" if d.enabled else "",
                 f"{raw_model.num_params():,}", f"{corpus.n_tokens:,}", f"{corpus.vocab_size:,}",
                 f"{corpus.max_token_value:,}", effective_batch, cfg.batch_size, cfg.gradient_accumulation_steps,
                 d.world_size, run_dir)

    def save(step: int, losses: dict[str, float]) -> None:
        rng = [checkpoint.capture_rng(sampler.generator)]
        if d.enabled:  # every rank's batch sampler state, so a resumed rank draws what it would have
            gathered = [None] * d.world_size
            torch.distributed.all_gather_object(gathered, rng[0])
            rng = gathered
        if not d.is_main:
            return
        checkpoint.save({
            "model_state_dict": raw_model.state_dict(),
            "h_params": h,
            "optimizer_state_dict": optimizer.state_dict(),
            "step": step,
            "best_valid_loss": best,
            "last_losses": losses,
            "rng": rng if d.enabled else rng[0],
            "vocab": corpus.vocab,
            "wandb_run_id": tracker.id if tracker else wandb_id,
            "elapsed_s": elapsed_before + (time.perf_counter() - t_start),
            "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        }, ckpt_path)

    show_bar = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
    bar, stack = None, contextlib.ExitStack()
    if d.is_main and show_bar:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        bar = stack.enter_context(tqdm(total=cfg.max_iters, initial=start_step, unit="step",
                                       dynamic_ncols=True, leave=False))
        stack.enter_context(logging_redirect_tqdm())  # log lines print above the bar, not through it
    exit_code, summary = 1, {"best_valid_loss": best}
    t_start = t_window = time.perf_counter()
    train_time, window_tokens, tokens_per_s = 0.0, 0, 0.0
    last = dict(resume_state.get("last_losses", {})) if resume_state else {}
    try:
        step = start_step
        while True:
            lr = learning_rate_at(step, cfg)
            resumed_here = resume_state is not None and step == start_step
            if not resumed_here and (step % cfg.eval_interval == 0 or step == cfg.max_iters):
                train_time += time.perf_counter() - t_window
                tokens_per_s = window_tokens / train_time if train_time > 0 else 0.0
                last = evaluate(eval_model, eval_sets, device, amp, rows_per_forward, d)
                if not all(math.isfinite(v) for v in last.values()):
                    _diverged(step, lr, last, ckpt_path)
                best = min(best, last["valid"])
                row = {"step": step, "train_loss": last["train"], "valid_loss": last["valid"],
                       "learning_rate": lr, "tokens_per_s": round(tokens_per_s, 1),
                       "elapsed_s": round(elapsed_before + time.perf_counter() - t_start, 3)}
                if peak:
                    row["mfu"] = round(tokens_per_s * flops_per_token / d.world_size / peak, 4)
                if d.is_main:
                    line = (f"Step: {step}, Training Loss: {last['train']:.3f}, "
                            f"Validation Loss: {last['valid']:.3f}")
                    log.info(line)  # stdout and the run's train.log
                    metrics.write(row)
                    if tracker:
                        tracker.log(row)
                due = cfg.checkpoint_interval == 0 or step % cfg.checkpoint_interval == 0
                if due or step == cfg.max_iters:
                    save(step, last)
                train_time, window_tokens, t_window = 0.0, 0, time.perf_counter()
            elif cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0 and not resumed_here:
                save(step, last)
            if step >= cfg.max_iters:
                break

            # The four steps: forward pass -> loss -> backpropagation -> parameter update.
            for group in optimizer.param_groups:
                group["lr"] = lr
            # Gradient accumulation: the micro-batches' gradients add up (each loss scaled by 1/steps), and
            # DDP averages them across ranks once, in the last backward; the inner ones skip it (no_sync).
            micro_batches = sampler.step()
            step_loss = torch.zeros((), device=device)
            for micro, (x, y) in enumerate(micro_batches):
                x, y = to_device(x, device), to_device(y, device)  # (B, T) each; pinned + non_blocking on a GPU
                inner = micro < len(micro_batches) - 1
                with model.no_sync() if d.enabled and inner else contextlib.nullcontext():
                    with autocast(device, amp):
                        _, loss = model(x, y)
                    (loss / len(micro_batches)).backward()
                step_loss += loss.detach().float() / len(micro_batches)
            if cfg.grad_clip > 0:  # on the averaged gradient, identical on every rank
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_tokens += tokens_per_step
            loss_value = distributed.mean(step_loss, d).item()  # the global batch's: a NaN stops every rank
            if not math.isfinite(loss_value):
                _diverged(step, lr, {"train": loss_value}, ckpt_path)
            if bar:
                rate = window_tokens / max(1e-9, train_time + time.perf_counter() - t_window)
                postfix = {"loss": f"{loss_value:.3f}", "tok_s": f"{rate:,.0f}"}
                if peak:
                    postfix["mfu"] = f"{rate * flops_per_token / d.world_size / peak:.1%}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
        exit_code = 0
        summary = {"best_valid_loss": best, "final_valid_loss": last.get("valid"),
                   "final_train_loss": last.get("train"), "steps": step,
                   "tokens_per_s": tokens_per_s, "wall_s": round(time.perf_counter() - t_start, 3)}
        return summary
    finally:
        stack.close()
        if metrics:
            metrics.close()
        if tracker:  # a failed run still reports the best valid loss it reached
            tracker.finish(exit_code, summary if exit_code == 0 else {"best_valid_loss": best})


def _diverged(step: int, lr: float, losses: dict[str, float], ckpt_path: Path) -> None:
    kept = f"the last good checkpoint is {ckpt_path}" if ckpt_path.exists() else "no checkpoint was saved yet"
    which = ", ".join(f"{k} loss {v}" for k, v in losses.items())
    raise Diverged(f"learning_rate={lr:g}: training diverged at step {step} ({which}); {kept}")
