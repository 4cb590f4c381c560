"""How fast a run trains: tokens/s over the training steps since the last eval, and MFU.

MFU (model FLOPs utilisation) is the share of the device's peak FLOP/s that the training
steps reach: tokens/s per rank x FLOPs per token / peak. The peak comes from
trainer.device.peak_flops (a GPU table, a measured CPU rate, or $TRAINER_PEAK_FLOPS).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Optional

from trainer.device import peak_flops
from trainer.model import GPT

if TYPE_CHECKING:
    from trainer.run import Run


def train_flops_per_token(model: GPT, h: dict[str, Any]) -> float:
    """6 FLOPs per weight (the embedding lookup is free) plus attention's 12 * L * T * C."""
    n = model.num_params() - model.tok.weight.numel()
    if model.head.weight is model.tok.weight:
        n += model.tok.weight.numel()
    if model.pos_emb is not None:  # positions=learned: a lookup too
        n -= model.pos_emb.weight.numel()
    return 6 * n + 12 * h["num_blocks"] * h["context_length"] * h["d_model"]


class Speedometer:
    """Times the training steps (not the evals or checkpoints between them) in windows that end at
    each eval, and the run's wall time since it started (plus what earlier runs it resumes took)."""

    def __init__(self, run: Run) -> None:
        self.tokens_per_step = run.tokens_per_step
        self.flops_per_token = train_flops_per_token(run.model, run.h)
        self.peak, self.ranks = peak_flops(run.device), run.dist.world_size
        self.elapsed_before = run.elapsed_before
        self.started = time.perf_counter()
        self.tokens, self.seconds = 0, 0.0  # this window's
        self.last_rate = 0.0  # tokens/s of the last closed window

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.seconds += time.perf_counter() - t
        self.tokens += self.tokens_per_step

    def rate(self) -> float:
        """Training tokens/s in the window so far, all ranks together."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def close_window(self) -> float:
        """The window's tokens/s; the next window starts now."""
        self.last_rate = self.rate()
        self.tokens, self.seconds = 0, 0.0
        return self.last_rate

    def mfu(self, rate: float) -> Optional[float]:
        """The share of one device's peak that `rate` means, per rank; None where the peak is unknown."""
        return rate * self.flops_per_token / self.ranks / self.peak if self.peak else None

    def wall(self) -> float:
        """Seconds since this process's loop started."""
        return time.perf_counter() - self.started

    def elapsed(self) -> float:
        """Seconds of training in all, the runs this one resumes included."""
        return self.elapsed_before + self.wall()
