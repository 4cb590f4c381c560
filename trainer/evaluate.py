"""Evaluation: loss, its standard error and bits per byte over windows of a split, in eval mode.

During training (trainer.train): every eval scores each split's *fixed* windows, drawn once
from `eval_seed` (trainer.run), so every eval of every run of a sweep is scored on the same text
whatever its TORCH_SEED; `eval_row` makes the row the trackers write. When the run ends,
`final_eval` scores the valid split (every non-overlapping window, or `final_eval_windows` of them
evenly spaced over a big one) and a sample of the train split: that is the run's `final_valid_loss`,
what summary.json, the sweep's summary.csv and jobs.csv, W&B's summary and trainer.compare report and rank
by (`valid_loss_full` in the last row of metrics.jsonl); `best_valid_loss` stays the best of the periodic
evals. A new eval metric goes here: compute it in `score` (or from the run in `eval_row`) and put it in
the row.

After training: `python -m trainer.evaluate RUN_DIR [...]` (`main`, below) scores a run's
checkpoint on the whole split of its own corpus or of another file (a sweep dir: every run in it). It
prints each run's loss, its standard error, perplexity and bits per byte (on the CPU, in float32), and
keeps each result in the run's eval.json under its split, checkpoint and data; checkpoints are only read.
Another file scored by a compacted model (vocab_compaction=true) must hold only tokens that occur in
the run's training corpus, else one line says so: train with vocab_compaction=false to score anything.

Bits per byte = summed nats / ln 2 / the UTF-8 bytes of the scored targets: unlike the loss per
token, it compares runs across corpora, encodings and vocab_compaction.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F

from trainer import checkpoint, distributed, rundir
from trainer.data.batches import Ids, spread_starts, windows
from trainer.data.cache import load_tokens
from trainer.data.corpus import TokenSplit, lookup_table, split_of, token_byte_lengths
from trainer.data.encodings import Encoding, of_checkpoint
from trainer.data.sources import Source
from trainer.device import autocast
from trainer.errors import UserError

if TYPE_CHECKING:
    from trainer.run import Run
    from trainer.speed import Speedometer

# The train split's final score samples as many windows as the valid split has (evenly spaced),
# at most this many: the two final losses then carry about the same noise, and the final eval
# costs twice the valid split, not more.
FINAL_TRAIN_WINDOWS = 256


@dataclass
class EvalSet:
    """Windows of one split to score, read as they are scored (a whole big split never sits in memory)."""

    data: Ids  # the split's model ids
    starts: torch.Tensor  # (N,) where each window starts
    T: int  # context_length
    token_bytes: torch.Tensor  # (vocab_size,) UTF-8 bytes of each model id

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The windows at these rows: inputs and targets (B, T), and each window's target bytes (B,)."""
        x, y = windows(self.data, self.starts[rows], self.T)
        return x, y, self.token_bytes[y].sum(dim=1)


EvalSets = dict[str, EvalSet]  # split -> its windows


@dataclass
class Score:
    """A split scored over its windows."""

    loss: float  # mean cross-entropy per target token (nats)
    se: float  # the standard error of that mean over the windows (nan for a single window)
    nats: float  # summed over every target
    nbytes: int  # UTF-8 bytes of the targets
    windows: int
    tokens: int

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.nbytes if self.nbytes else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))


def eval_rows_per_forward(device: torch.device, context_length: int, vocab_size: int) -> int:
    """Windows per eval forward: as many as keep the (rows, T, V) fp32 logits under a budget:
    8 MB on CPU, where a bigger forward is no faster (measured: 1 to 20 windows of the book's
    model, same time) and only raises the peak memory; 1 GB on a GPU, where bigger is faster."""
    budget = (8 << 20) if device.type == "cpu" else (1 << 30)
    return max(1, budget // (context_length * vocab_size * 4))


@torch.no_grad()
def score(model: torch.nn.Module, s: EvalSet, device: torch.device, amp: Optional[torch.dtype],
          rows_per_forward: int, d: distributed.Dist) -> Score:
    """The split's Score, in eval mode (no dropout); ranks share the windows."""
    was_training = model.training
    model.eval()
    rows = torch.arange(d.rank, len(s), d.world_size)  # this rank's share of the windows
    # (sum of window losses, sum of their squares, windows, bytes); float64 for the variance's
    # difference of sums, except on MPS, which has none
    wide = torch.float32 if device.type == "mps" else torch.float64
    total = torch.zeros(4, device=device, dtype=wide)
    with autocast(device, amp):  # one autocast for every forward: it casts each weight once, not per chunk
        for chunk in rows.split(rows_per_forward):
            xb, yb, nbytes = s.batch(chunk)
            xb, yb = xb.to(device), yb.to(device)  # (B, T) each
            logits, _ = model(xb)  # (B, T, V)
            per_window = F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="none")
            per_window = per_window.view(len(chunk), -1).mean(dim=1)  # (B,)
            per_window = per_window.to(wide)
            total += torch.stack([per_window.sum(), per_window.square().sum(),
                                  torch.tensor(float(len(chunk)), device=device, dtype=wide),
                                  nbytes.sum().to(device=device, dtype=wide)])
    sum_loss, sum_sq, n, nbytes = distributed.total(total, d).tolist()
    model.train(was_training)
    mean = sum_loss / n
    var = (sum_sq - n * mean * mean) / (n - 1) if n > 1 else math.nan
    return Score(mean, math.sqrt(max(var, 0.0) / n), sum_loss * s.T, int(nbytes), int(n), int(n) * s.T)


def eval_fixed(run: Run) -> dict[str, float]:
    """Every split scored on its fixed windows; the Scores stay on the run, the losses are returned."""
    run.scores = {split: score(run.eval_model, s, run.device, run.amp, run.rows_per_forward, run.dist)
                  for split, s in run.eval_sets.items()}
    return {split: s.loss for split, s in run.scores.items()}


def final_eval(run: Run) -> dict[str, Any]:
    """The valid split (final_eval_windows of its windows, evenly spaced over all of it; every one
    where it has fewer, or with 0) and a sample of the train split, once, when training ends: the
    run's final numbers, as fields for the last metrics row."""
    c, T = run.corpus, run.cfg.context_length
    valid = EvalSet(c.valid, spread_starts(len(c.valid), T, run.cfg.final_eval_windows), T, c.token_bytes)
    sample = max(1, min(FINAL_TRAIN_WINDOWS, len(valid)))
    sets = {"valid": valid, "train": EvalSet(c.train, spread_starts(len(c.train), T, sample), T, c.token_bytes)}
    run.final = {split: score(run.eval_model, s, run.device, run.amp, run.rows_per_forward, run.dist)
                 for split, s in sets.items()}
    valid = run.final["valid"]
    return {"valid_loss_full": valid.loss, "valid_loss_full_se": _finite_or_none(valid.se),
            "bits_per_byte_full": valid.bits_per_byte, "train_loss_full": run.final["train"].loss}


def eval_row(run: Run, lr: float, speed: Speedometer) -> dict[str, Any]:
    """One eval's row of metrics.jsonl (and W&B): the losses, their noise, the learning rate, the speed."""
    rate = speed.close_window()
    valid = run.scores["valid"]
    row = {"step": run.step, "tokens_seen": run.tokens_seen, "train_loss": run.last["train"],
           "valid_loss": run.last["valid"], "valid_loss_se": _finite_or_none(valid.se),
           "bits_per_byte": valid.bits_per_byte,
           "learning_rate": lr, "tokens_per_s": round(rate, 1), "elapsed_s": round(speed.elapsed(), 3)}
    mfu = speed.mfu(rate)
    if mfu is not None:
        row["mfu"] = round(mfu, 4)
    return row


def _finite_or_none(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- python -m trainer.evaluate


def split_ids(h: dict[str, Any], enc: Encoding, vocab: Optional[torch.Tensor], data: Optional[str],
              text_column: Optional[str], split: str) -> TokenSplit:
    """The split to score, as the model's ids: of the run's own corpus, or of another file (a CSV
    column with text_column, else read raw), split at the run's train_split (split=all: the whole
    file). Read through the token cache, as training reads it."""
    keys = {**h, "data_path": data, "text_column": text_column, "format": "csv" if text_column else "text",
            "document_separator": None} if data else h
    source = Source.of(keys)
    where = f"--data {data}" if data else source.where
    if data and not Path(data).is_file():
        raise UserError(f"{where}: file not found" if not Path(data).exists() else f"{where}: not a file")
    tokens = load_tokens(source, enc)
    lut = lookup_table(vocab.numpy(), len(tokens.counts())) if vocab is not None else None
    part = split_of(tokens, h["train_split"], split, lut)
    if lut is not None:  # the model reads compact ids: a token it never saw has no id
        unknown = sum(int((lut[ids] < 0).sum()) for ids in part.raw_chunks())
        if unknown:
            raise UserError(f"{where}: {unknown} of its {len(part)} tokens never occur in the run's "
                            "training corpus, so this model (vocab_compaction=true) cannot score them")
    if len(part) < h["context_length"] + 1:
        raise UserError(f"{where}: its {split} split has {len(part)} tokens, fewer than one window "
                        f"(context_length+1={h['context_length'] + 1})")
    return part


def evaluate_run(run_dir: Path, data: Optional[str] = None, text_column: Optional[str] = None,
                 split: str = "valid", which: str = "last") -> dict[str, Any]:
    """Score a run's checkpoint over every non-overlapping window of the split; add it to eval.json."""
    from trainer.generate import load_model  # the CLI's needs: kept out of a training run's imports

    model, state = load_model(str(run_dir), which=which)
    h, vocab, enc = state["h_params"], state.get("vocab"), of_checkpoint(state)
    part, T = split_ids(h, enc, vocab, data, text_column, split), h["context_length"]
    cpu = torch.device("cpu")
    s = score(model, EvalSet(part, spread_starts(len(part), T), T,
                             token_byte_lengths(enc, vocab, model.head.out_features)),
              cpu, None, eval_rows_per_forward(cpu, T, model.head.out_features), distributed.Dist())
    result = {"split": split, "which": which, "data": data or h.get("data_path"), "step": state.get("step"),
              "windows": s.windows, "tokens": s.tokens, "bytes": s.nbytes, "loss": s.loss, "loss_se": s.se,
              "perplexity": s.perplexity, "bits_per_byte": s.bits_per_byte}
    _add_to_eval_json(Path(run_dir), result)
    return result


def _add_to_eval_json(run_dir: Path, result: dict[str, Any]) -> None:
    path = run_dir / rundir.EVAL
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise UserError(f"{path}: unreadable ({e}); move it away to evaluate this run again") from None
    if not isinstance(known, dict):
        raise UserError(f"{path}: not the JSON object evaluate writes; move it away to evaluate this run again")
    label = f"{result['split']} {result['which']}" + (f" {result['data']}" if result["data"] else "")
    known[label] = result
    rundir.write_atomic(path, json.dumps(known, indent=2) + "\n")


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m trainer.evaluate",
                                description="Score runs' checkpoints over a whole split: loss, perplexity, bits per byte.")
    p.add_argument("paths", nargs="+", help="run dirs, or a sweep dir (or any dir holding runs)")
    p.add_argument("--data", help="another text file or CSV to score on (default: each run's own corpus)")
    p.add_argument("--text_column", help="with --data: the CSV column to read (default: the file raw)")
    p.add_argument("--split", choices=["valid", "train", "all"], default="valid",
                   help="which part, split at the run's train_split (default valid; all = the whole file)")
    p.add_argument("--which", choices=["last", "best"], default="last", help="model.ckpt or best.ckpt")
    a = p.parse_args(argv)
    from trainer.compare import render

    try:
        rows = [(run, evaluate_run(run, a.data, a.text_column, a.split, a.which)) for run in _runs(a.paths, a.which)]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    print(render(["run", "step", "windows", "tokens", "loss", "± SE", "perplexity", "bits/byte"],
                 [[str(run), str(r["step"]), str(r["windows"]), f"{r['tokens']:,}", f"{r['loss']:.4f}",
                   f"{r['loss_se']:.4f}", f"{r['perplexity']:.2f}", f"{r['bits_per_byte']:.4f}"] for run, r in rows],
                 [False, True, True, True, True, True, True, True]))
    print(f"\n{a.split} split of {a.data or 'each run' + chr(39) + 's own corpus'}, {a.which} checkpoint; "
          f"every non-overlapping window; written to each run's {rundir.EVAL}")


def _runs(paths: list[str], which: str) -> list[Path]:
    """Every run dir under the paths that has the checkpoint asked for."""
    found = []
    for p in paths:
        if not Path(p).is_dir():
            raise UserError(f"{p}: no such directory" if not Path(p).exists() else f"{p}: not a directory")
        runs = rundir.runs_under(Path(p))
        if not runs:
            raise UserError(f"{p}: no runs in it (a run dir has {rundir.CONFIG})")
        found += runs
    name = checkpoint.WHICH[which]
    with_ckpt = [r for r in found if (r / name).is_file()]
    if not with_ckpt:
        raise UserError(f"{paths[0]}: no run there has a {name}")
    return with_ckpt


if __name__ == "__main__":
    main()
