"""Data-parallel training under torchrun: one process per device, rank 0 owns the run dir.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything here is a no-op and
the trainer runs as a single process. gloo on CPU, nccl on CUDA, one device per rank.

    torchrun --standalone --nproc_per_node=4 -m trainer model=small batch_size=8     # 4 GPUs
    torchrun --standalone --nproc_per_node=gpu -m trainer model=small                 # every visible GPU

Rank 0 alone writes the run dir (checkpoint, metrics.jsonl, train.log, summary.json, W&B) and prints
the loss lines; the other ranks print warnings only. batch_size is per rank and micro-step: the
effective batch, batch_size x gradient_accumulation_steps x world_size, is in the first log line and in
h_params (effective_batch_size, next to world_size). Every rank draws the same global batch and trains
on its slice (trainer.data.batches), so 2 ranks of batch_size=1, one process with batch_size=1
gradient_accumulation_steps=2 and one with batch_size=2 train on the same windows (dropout off: the
same loss curve). From 1 GPU to 4 at the same effective batch, divide batch_size by 4; keeping it makes
the effective batch 4x larger (consider a larger learning_rate). On CPU the ranks share the cores
(cores / ranks threads each), and data parallelism pays off on GPUs rather than on a small CPU.

A mistake prints rank 0's one `error:` line; torchrun then adds its own failure report (and, for a
preempted run, a traceback) and exits with 1, not 2. A Hydra sweep (-m) under torchrun is refused:
sweep with a launcher and give each job its own devices. A run resumes with as many ranks as it had.

Several machines: the same torchrun on every node, with `--nnodes=N --rdzv_backend=c10d
--rdzv_endpoint=<a node>:29500 --rdzv_id=<a name>` alike on all. The run dir lands on the node of
global rank 0; data_path must be readable on every node, and so must the checkpoint for resume= (a
shared file system; name the run dir, as resume=auto looks under each node's own outputs/). If NCCL
picks the wrong network interface, set NCCL_SOCKET_IFNAME (e.g. ib0). In a SLURM batch job, one srun
task per node (--ntasks-per-node=1) starts torchrun there, --rdzv_endpoint the first host of
`scontrol show hostnames "$SLURM_JOB_NODELIST"` and --rdzv_id=$SLURM_JOB_ID.
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
