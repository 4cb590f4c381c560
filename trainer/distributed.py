"""Data-parallel training under torchrun: one process per device, rank 0 owns the run dir.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything here is a no-op and
the trainer runs as a single process. gloo on CPU, nccl on CUDA, one device per rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # ranks on this machine, which share its CPU cores

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_rank() -> int:
    """This process's rank as torchrun announces it (0 when not under torchrun)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many ranks torchrun started (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun; return the rank info and this rank's device."""
    if world_size() <= 1:
        return Dist(), device
    d = Dist(env_rank(), int(os.environ.get("LOCAL_RANK", "0")), world_size(),
             int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return d, device


def broadcast(obj: Any, d: Dist) -> Any:
    """Rank 0's value of obj, on every rank (e.g. the run dir that rank 0 made)."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's obj, in rank order, on every rank ([obj] when not distributed)."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def total(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """The sum of a tensor across ranks (eval sums and counts)."""
    if d.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def mean(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """The mean of a tensor across ranks (eval losses)."""
    if d.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= d.world_size
    return values


def largest(value: int, d: Dist, device: torch.device) -> int:
    """The largest of an int across ranks (a stop signal that any rank got)."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def teardown(d: Optional[Dist]) -> None:
    if d is not None and d.enabled and dist.is_initialized():
        dist.destroy_process_group()
