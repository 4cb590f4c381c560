"""Evaluation: the mean loss over fixed windows of each split, in eval mode, without gradients,
and the row each eval writes to metrics.jsonl and W&B.

The windows are drawn once per run (trainer.run), so every eval of a run, and every run with
the same seed, is scored on the same text. A new eval metric goes here: compute it in
`evaluate` (or from the run in `eval_row`) and put it in `eval_row`'s row; the loop hands the
row to every tracker (the console line, metrics.jsonl, W&B).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch

from trainer import distributed
from trainer.device import autocast

if TYPE_CHECKING:
    from trainer.run import Run
    from trainer.speed import Speedometer

EvalSets = dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (inputs, targets), each (N, T)


def eval_rows_per_forward(device: torch.device, context_length: int, vocab_size: int) -> int:
    """Windows per eval forward: as many as keep the (rows, T, V) fp32 logits under a budget:
    8 MB on CPU, where a bigger forward is no faster (measured: 1 to 20 windows of the book's
    model, same time) and only raises the peak memory; 1 GB on a GPU, where bigger is faster."""
    budget = (8 << 20) if device.type == "cpu" else (1 << 30)
    return max(1, budget // (context_length * vocab_size * 4))


@torch.no_grad()
def evaluate(model: torch.nn.Module, eval_sets: EvalSets, device: torch.device, amp: Optional[torch.dtype],
             rows_per_forward: int, d: distributed.Dist) -> dict[str, float]:
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


def eval_row(run: Run, lr: float, speed: Speedometer) -> dict[str, Any]:
    """One eval's row of metrics.jsonl (and W&B): the losses, the learning rate, the training speed."""
    rate = speed.close_window()
    row = {"step": run.step, "tokens_seen": run.tokens_seen, "train_loss": run.last["train"], "valid_loss": run.last["valid"],
           "learning_rate": lr, "tokens_per_s": round(rate, 1), "elapsed_s": round(speed.elapsed(), 3)}
    mfu = speed.mfu(rate)
    if mfu is not None:
        row["mfu"] = round(mfu, 4)
    return row
