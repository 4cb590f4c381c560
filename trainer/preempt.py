"""Preemption: SIGTERM or SIGUSR1 (what SLURM and most schedulers send before they kill a job)
end the run at the end of the current step, with a checkpoint at that step, so that nothing
trained is lost and `resume=` continues exactly.

    watch(run_dir)        while training: the handlers in place, the previous ones put back after
    stop_if_signalled()   the loop's check before each step: save here and raise Preempted
    uninterrupted()       a block (a checkpoint's write) that a first Ctrl-C interrupts only at its end
A signal only sets a flag; the loop reads it between steps (under torchrun every rank learns
whether any rank got one, so all stop at the same step and rank 0 saves). A second signal
exits at once (exit code 128 + its number), as does SIGINT after any of them; the first SIGINT
stays Ctrl-C (KeyboardInterrupt, exit code 130, nothing saved: resume= continues from the last
checkpoint, the last eval's by default). The same signal again within REPEAT_S is the same request.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from trainer import checkpoint, distributed, rundir

if TYPE_CHECKING:
    from trainer.run import Run

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# The same signal again this soon is the same request, not a second one: SLURM signals every
# process of a job step and torchrun forwards the signal to its workers, so each worker gets it twice.
REPEAT_S = 1.0


class Preempted(BaseException):
    """The run stopped on a signal, its checkpoint saved at `step`. A BaseException, as Ctrl-C's
    KeyboardInterrupt is: it ends a sweep too rather than counting as one failed job."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        self.exit_code = 128 + signum  # 143 for SIGTERM, 138 for SIGUSR1, as a shell reports a kill by them
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step} (checkpoint saved)")


_first: Optional[tuple[int, float]] = None  # the first signal since watch() began, and when
_run_dir: Optional[Path] = None
_holding = False  # in uninterrupted(): a first Ctrl-C waits for the block's end
_held = False  # a Ctrl-C came while holding


@contextlib.contextmanager
def watch(run_dir: Path) -> Iterator[None]:
    """SIGTERM, SIGUSR1 and SIGINT handled as this module says, while the block runs (main thread only:
    Python lets no other thread set handlers, and a launcher's worker thread keeps the defaults)."""
    global _first, _run_dir
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _first, _run_dir = None, run_dir
    previous = {s: signal.signal(s, _on_signal) for s in (*STOP_SIGNALS, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _first = None


def _on_signal(signum: int, frame) -> None:
    global _first, _held
    now = time.monotonic()
    if _first is None:
        _first = (signum, now)
        if signum == signal.SIGINT:
            if _holding:
                _held = True
                return
            raise KeyboardInterrupt  # Ctrl-C as ever
        return
    if signum == _first[0] and signum != signal.SIGINT and now - _first[1] < REPEAT_S:
        return
    _exit_now(signum)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A block a first Ctrl-C must not cut short (a checkpoint being written: torch.save turns an
    interrupted write into an "unexpected pos" RuntimeError and the Ctrl-C is lost): its
    KeyboardInterrupt comes when the block ends. A second signal still exits at once."""
    global _holding, _held
    if _holding:  # nested: the outer block delivers it
        yield
        return
    _holding, _held = True, False
    try:
        yield
    finally:
        _holding = False
    if _held:  # the block ended normally (an error from it wins over the Ctrl-C)
        _held = False
        raise KeyboardInterrupt


def _exit_now(signum: int) -> None:
    """The second signal: no more saving or closing (model.ckpt is whole: saves are atomic)."""
    if distributed.env_rank() == 0:
        name = signal.Signals(signum).name
        how = (f"continue from the last checkpoint with: python -m trainer resume={_run_dir}"
               if _run_dir is not None and (_run_dir / rundir.CKPT).exists() else "no checkpoint was saved yet")
        os.write(sys.stderr.fileno(), f"error: stopped at once by a second signal ({name}); {how}\n".encode())
    os._exit(128 + signum)


def pending(run: Run) -> int:
    """The stop signal any rank got (0 for none). Under torchrun one small all-reduce a step: the
    ranks get a signal at different moments, and must all stop at the same step."""
    mine = _first[0] if _first is not None and _first[0] in STOP_SIGNALS else 0
    return distributed.largest(mine, run.dist, run.device)


def stop_if_signalled(run: Run, elapsed_s: float) -> None:
    """Before the next step: after a stop signal, save the run as it is now (unless this step's
    checkpoint is saved already) and raise Preempted. The run is not finished: no final eval,
    no summary.json, so resume= (and a sweep's resume) continue it."""
    signum = pending(run)
    if not signum:
        return
    if not run.checkpoint_due() and run.step != run.resumed_at:
        checkpoint.save_run(run, elapsed_s)
    raise Preempted(signum, run.step, run.dir)
