"""Checkpoints: what one holds, written atomically, read back safely.

A checkpoint is one `torch.save`d dict. It keeps the book's two keys, `model_state_dict` and
`h_params`, so the book's loader still works, and adds what an exact resume needs: the
optimizer, the step, every RNG state, the best valid loss, the vocabulary mapping and the
W&B run id (`save_run` writes them; `trainer.resume` puts them back). `save_best` writes
best.ckpt, the weights at the best eval so far; `resolve(..., which=)` picks one of the two for
every command. Every load uses `weights_only=True`, so a checkpoint cannot run code.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import OmegaConf

from trainer import distributed
from trainer.errors import UserError, writing
from trainer.rundir import BEST_CKPT, CKPT

if TYPE_CHECKING:
    from trainer.run import Run


def save_run(run: Run, elapsed_s: float) -> None:
    """Rank 0 writes the run's whole state, every rank's RNG states gathered to it, so that a resumed
    rank draws exactly what it would have drawn."""
    rng = distributed.gather(capture_rng(run.sampler.generator), run.dist)
    if not run.dist.is_main:
        return
    save({
        "model_state_dict": run.model.state_dict(),
        "h_params": run.h,
        "optimizer_state_dict": run.optimizer.state_dict(),
        "step": run.step,
        "best_valid_loss": run.best,
        "last_losses": run.last,
        "rng": rng if run.dist.enabled else rng[0],
        "vocab": run.corpus.vocab,
        "tokenizer": run.corpus.enc.saved,  # what decodes an hf encoding's ids wherever its file went
        "wandb_run_id": run.wandb_id,
        "elapsed_s": elapsed_s,
        "tokens_seen": run.tokens_seen,
        "evals_since_best": run.evals_since_best,
        "stopped": run.stopped,  # why the run ended here (max_iters, max_time, ...), None while it goes on
        "config": OmegaConf.to_container(run.cfg, resolve=True, enum_to_str=True),
        "provenance": run.provenance,  # resuming with other code warns (trainer.provenance)
    }, run.dir / CKPT)


def save_best(run: Run) -> None:
    """best.ckpt, at an eval that improved the valid loss: the weights and what sampling and
    evaluating them needs (no optimizer or RNG: model.ckpt is the one to resume from)."""
    if not run.dist.is_main:
        return
    save({
        "model_state_dict": run.model.state_dict(),
        "h_params": run.h,
        "step": run.step,
        "tokens_seen": run.tokens_seen,
        "valid_loss": run.last["valid"],
        "last_losses": run.last,
        "vocab": run.corpus.vocab,
        "tokenizer": run.corpus.enc.saved,
        "config": OmegaConf.to_container(run.cfg, resolve=True, enum_to_str=True),
    }, run.dir / BEST_CKPT)


def save(state: dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same dir, fsync, then rename: a crash never leaves half a file."""
    from trainer.preempt import uninterrupted  # here: trainer.preempt imports this module

    path = Path(path)
    _remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with uninterrupted():  # a first Ctrl-C lands once the file is in place, not inside torch.save's write
        try:
            with writing(path), open(tmp, "wb") as f:  # a full disk or a size limit: one line, the old file kept
                try:
                    torch.save(state, f)
                except RuntimeError as e:
                    raise _why_short(f, e) from None
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)


def _why_short(f, e: RuntimeError) -> BaseException:
    """torch reports a short write as "unexpected pos"; one more byte written says why (EFBIG, ENOSPC)."""
    try:
        os.pwrite(f.fileno(), b"\0", os.fstat(f.fileno()).st_size)
    except OSError as cause:
        return cause
    return e


def _remove_stale_temps(path: Path) -> None:
    """Temp files left by a process killed mid-save (named by its pid), once that process is gone."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# A run dir's checkpoints by what commands call them (`--which last|best`).
WHICH = {"last": CKPT, "best": BEST_CKPT}


def resolve(path_or_run_dir: str | os.PathLike, key: str = "checkpoint", which: str = "last") -> Path:
    """A checkpoint file, or the run dir's model.ckpt (which="last": the latest, what resume uses) or
    best.ckpt (which="best": the lowest valid loss); `key` names the culprit in errors."""
    if which not in WHICH:
        raise UserError(f"--which {which}: must be one of {', '.join(WHICH)}")
    path = Path(path_or_run_dir)
    if path.is_dir():
        path = path / WHICH[which]
        if which == "best" and not path.is_file():
            raise UserError(f"{key}={path_or_run_dir}: no best checkpoint ({path} does not exist; it is written "
                            "at each eval that improves the valid loss)")
    elif which == "best" and path.is_file():
        raise UserError(f"{key}={path_or_run_dir}: --which best needs a run dir (a .ckpt file is itself the choice)")
    if not path.is_file():
        raise UserError(f"{key}={path_or_run_dir}: no checkpoint there (expected a run dir or a .ckpt file)")
    return path


def load(path_or_run_dir: str | os.PathLike, key: str = "checkpoint", which: str = "last") -> dict[str, Any]:
    """torch.load with weights_only=True, turning every failure into one clear line."""
    path = resolve(path_or_run_dir, key, which)
    if path.stat().st_size == 0:
        raise UserError(f"{path}: corrupt checkpoint (the file is empty)")
    try:
        with warnings.catch_warnings():  # torch warns (on stderr) before some failures it then raises
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = _BLOCKED_GLOBAL.search(str(e))
        if code:  # a class or function to import and call: exactly what weights_only exists to refuse
            raise UserError(f"{path}: refused: the checkpoint carries pickled code ({code.group(1)}), "
                            f"which weights_only loading does not run") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        raise UserError(f"{path}: corrupt or not a torch checkpoint "
                        f"({detail.group(1).strip() if detail else first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - the unpickler fails on hostile bytes with any type (IndexError, KeyError...)
        raise UserError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(state, dict) or "model_state_dict" not in state or "h_params" not in state:
        raise UserError(f"{path}: not a trainer checkpoint (no model_state_dict / h_params)")
    return state


# How torch names the global a pickle wanted to import, e.g. "Unsupported global: GLOBAL posix.system"
_BLOCKED_GLOBAL = re.compile(r"(?:unsupported|not an allowed)\s+global:?\s*(?:GLOBAL\s+)?([\w.]+)", re.I)

# What resuming needs beyond the book's two keys; a weights-only checkpoint can be sampled, not resumed.
RESUME_KEYS = ("optimizer_state_dict", "step", "rng")


def require_resumable(state: dict[str, Any], where: str) -> None:
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise UserError(f"resume={where}: this checkpoint holds weights only (no {', '.join(missing)}), "
                        "so training cannot continue from it")


def first_line(e: BaseException) -> str:
    """The first sentence of an exception's message (torch's go on for a paragraph)."""
    text = str(e).strip()
    return re.split(r"(?<=\.)\s", text.splitlines()[0])[0].rstrip(".") if text else type(e).__name__


def capture_rng(batch_generator: torch.Generator) -> dict[str, Any]:
    """Every RNG a step draws from (dropout uses torch's global one), as weights_only-safe values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
        "batches": batch_generator.get_state(),
    }


def restore_rng(rng: dict[str, Any], batch_generator: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(rng["python"])
    batch_generator.set_state(rng["batches"])
