"""The training loop: the book's four steps (forward pass, loss, backpropagation, parameter
update), repeated until max_iters (or a budget, or early stopping), with an eval and a checkpoint
when they are due.

    train()           set up the device (and torchrun's ranks), build the run, fit it
    fit_and_report()  fit, with the console, metrics.jsonl and W&B opened and always closed
    fit()             the loop itself, top to bottom as in the book
    train_step()  the four steps on one global batch
Everything else has a module of its own: building the run (trainer.run), evaluating and the
eval's row of metrics (trainer.evaluate), saving (trainer.checkpoint), resuming (trainer.resume), reporting
(trainer.tracking) and timing (trainer.speed).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from trainer import checkpoint, distributed, preempt, rundir
from trainer.config import plain, validate
from trainer.data.batches import to_device
from trainer.device import autocast, resolve_device
from trainer.errors import Diverged
from trainer.evaluate import eval_fixed, eval_row, final_eval
from trainer.optim import learning_rate_at
from trainer.resume import ResumePoint
from trainer.run import Run, RunInfo, build_run, describe
from trainer.speed import Speedometer
from trainer.tracking import Trackers


def train(cfg: DictConfig, run_dir: Path, info: Optional[RunInfo] = None,
          resume: Optional[ResumePoint] = None) -> dict[str, Any]:
    """Train as cfg says, writing into run_dir; return the run's summary (best_valid_loss, ...).

    `resume` is the checkpoint trainer.argv already read for `resume=...`; called directly with
    cfg.resume set and no `resume`, the checkpoint is read here.
    """
    info = info or RunInfo()
    validate(cfg)
    device = resolve_device(plain(cfg.device))
    if cfg.resume and resume is None:
        resume = ResumePoint.load(cfg.resume)
    if resume is not None:
        resume.check_world_size(distributed.world_size())  # before the ranks start talking
    d, device = distributed.setup(device)
    try:
        run_dir = Path(distributed.broadcast(str(run_dir), d))  # rank 0's: the only dir this job has
        run = build_run(cfg, run_dir, info, device, d, resume)
        with preempt.watch(run_dir):  # SIGTERM, SIGUSR1: save at the end of this step, stop
            summary = fit_and_report(run, info)
        distributed.barrier(d)  # no rank leaves while another still talks to it (gloo aborts otherwise)
        return {**summary, "provenance": run.provenance}
    finally:
        distributed.teardown(d)


def fit_and_report(run: Run, info: RunInfo) -> dict[str, Any]:
    """fit(), with every tracker closed however it ends (W&B's run with exit code 1 on a failure,
    marked preempted when a signal stopped it)."""
    out = Trackers(run, info, describe(run))
    summary, preempted = None, None
    try:
        summary = fit(run, out)
        return summary
    except preempt.Preempted as e:
        preempted = e
        raise
    finally:
        code = 0 if summary else preempted.exit_code if preempted else 1
        out.close(code, summary or {"best_valid_loss": run.best}, preempted=preempted is not None)


def fit(run: Run, out: Trackers) -> dict[str, Any]:
    """Evaluate and checkpoint when due, then take a step, until the run stops (max_iters, a budget,
    early stopping: evaluated and saved where it stops); return the summary."""
    speed = Speedometer(run)
    while True:
        lr = learning_rate_at(run.step, run.cfg)
        run.check_budgets(speed.elapsed())
        if run.eval_due():
            run.last = eval_fixed(run)
            check_finite(run, lr, run.last)
            if run.note_eval():  # a new best valid loss (no improvement for too long stops the run)
                checkpoint.save_best(run)
            out.eval(eval_row(run, lr, speed))
        if run.checkpoint_due():
            checkpoint.save_run(run, speed.elapsed())
        if run.stopped:
            break
        preempt.stop_if_signalled(run, speed.elapsed())
        with speed.step():
            loss = train_step(run, lr)
        run.step += 1
        check_finite(run, lr, {"train": loss})
        out.step(loss, speed.rate(), speed.mfu(speed.rate()))
    final_start = speed.wall()
    out.amend_last_row(final_eval(run))
    valid = run.final["valid"]
    return {"best_valid_loss": run.best, "final_valid_loss": valid.loss, "final_valid_loss_se": valid.se,
            "final_bits_per_byte": valid.bits_per_byte, "final_valid_windows": valid.windows,
            "final_train_loss": run.final["train"].loss,
            "steps": run.step, "tokens_seen": run.tokens_seen, "stopped": run.stopped,
            "tokens_per_s": speed.last_rate, "final_eval_s": round(speed.wall() - final_start, 3),
            "wall_s": round(speed.wall(), 3)}


def train_step(run: Run, lr: float) -> float:
    """The four steps on one global batch: forward pass -> loss -> backpropagation -> parameter update.
    Returns the batch's mean loss over all ranks (the same number on every rank)."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    # Gradient accumulation: the micro-batches' gradients add up (each loss scaled by 1/steps), and
    # DDP averages them across ranks once, in the last backward; the inner ones skip it (no_sync).
    micro_batches = run.sampler.step()
    step_loss = torch.zeros((), device=run.device)
    for micro, (x, y) in enumerate(micro_batches):
        x, y = to_device(x, run.device), to_device(y, run.device)  # (B, T) each; pinned + non_blocking on a GPU
        inner = micro < len(micro_batches) - 1
        with run.train_model.no_sync() if run.dist.enabled and inner else contextlib.nullcontext():
            with autocast(run.device, run.amp):
                _, loss = run.train_model(x, y)  # forward pass and loss
            (loss / len(micro_batches)).backward()  # backpropagation
        step_loss += loss.detach().float() / len(micro_batches)
    if run.cfg.grad_clip > 0:  # on the averaged gradient, identical on every rank
        torch.nn.utils.clip_grad_norm_(run.train_model.parameters(), run.cfg.grad_clip)
    run.optimizer.step()  # parameter update
    run.optimizer.zero_grad(set_to_none=True)
    return distributed.mean(step_loss, run.dist).item()  # the global batch's: a NaN stops every rank


def check_finite(run: Run, lr: float, losses: dict[str, float]) -> None:
    """A NaN or Inf loss stops the run (exit code 3); the last checkpoint, saved before it, stays good."""
    if all(math.isfinite(v) for v in losses.values()):
        return
    ckpt = run.dir / rundir.CKPT
    kept = f"the last good checkpoint is {ckpt}" if ckpt.exists() else "no checkpoint was saved yet"
    which = ", ".join(f"{k} loss {v}" for k, v in losses.items())
    raise Diverged(f"learning_rate={lr:g}: training diverged at step {run.step} ({which}); {kept}")
