"""Windows of a split: the random training batches and the fixed eval windows.

As in the book, a batch is random windows of context_length + 1 tokens: inputs, and the same
shifted by one as next-token targets. Windows are gathered from a split (a memory-mapped range,
trainer.data.corpus) or from a tensor of ids, by the same index arithmetic.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from trainer.data.corpus import TokenSplit

Ids = Union[TokenSplit, torch.Tensor]  # (N,) model ids


def windows(data: Ids, starts: torch.Tensor, context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets for windows starting at `starts`: both (B, T)."""
    idx = starts[:, None] + torch.arange(context_length + 1)  # (B, T+1)
    chunk = data[idx] if isinstance(data, torch.Tensor) else data.take(idx.numpy())
    return chunk[:, :-1], chunk[:, 1:]


class BatchSampler:
    """Random training windows from a seeded generator whose state goes into checkpoints.

    Each optimizer step draws one global batch of batch_size x micro_steps x world_size windows,
    the same on every rank (same seed), and each rank trains on its own slice: the ranks see
    different windows, and how a global batch is split, over ranks or over gradient accumulation
    steps, never changes which windows a step trains on. With one rank and one micro step this
    draws exactly the book's batch_size random windows.
    """

    def __init__(self, data: Ids, batch_size: int, context_length: int, seed: int,
                 micro_steps: int = 1, rank: int = 0, world_size: int = 1):
        self.data, self.batch_size, self.context_length = data, batch_size, context_length
        self.micro_steps, self.rank, self.world_size = micro_steps, rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches for one optimizer step: micro_steps pairs of (B, T) inputs, targets."""
        n = self.batch_size * self.micro_steps * self.world_size
        starts = torch.randint(len(self.data) - self.context_length, (n,), generator=self.generator)
        mine = starts.view(self.micro_steps, self.world_size, self.batch_size)[:, self.rank]  # (micro, B)
        return [windows(self.data, s, self.context_length) for s in mine]


def spread_starts(n_tokens: int, context_length: int, limit: Optional[int] = None) -> torch.Tensor:
    """The starts of every non-overlapping window of a split of n_tokens, or of `limit` of them,
    evenly spaced over the whole split (0 or None: all)."""
    n = (n_tokens - 1) // context_length
    starts = torch.arange(n) * context_length
    if limit and n > limit:
        starts = starts[torch.linspace(0, n - 1, limit).round().long()]
    return starts


def fixed_starts(n_tokens: int, n: int, context_length: int, seed: int) -> torch.Tensor:
    """n window starts, the same for every eval of every run with this seed, so losses compare."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(n_tokens - context_length, (n,), generator=g)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on the training device. For a GPU it goes through page-locked memory first, so the
    non_blocking copy really overlaps with the GPU's work (from pageable memory it cannot)."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)
