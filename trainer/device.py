"""Where training runs: device resolution, precision, CPU threads and the peak FLOP/s for MFU."""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from trainer.errors import UserError

# Dense bf16 peak FLOP/s (no sparsity) of common GPUs, for MFU; matched against the device name.
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card peaks at 756e12
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 125e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def resolve_device(name: str) -> torch.device:
    """auto = cuda, then mps, then cpu; naming a device that is not there is a user error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise UserError(f"device=cuda: CUDA is not available here (torch {torch.__version__}); "
                        "use device=cpu or device=auto")
    if name == "mps" and not mps:
        raise UserError("device=mps: Apple MPS is not available here; use device=cpu or device=auto")
    return torch.device(name)


def autocast_dtype(device: torch.device, dtype: str) -> Optional[torch.dtype]:
    """The autocast dtype for the forward pass, or None to train in float32."""
    if dtype == "float32":
        return None
    if dtype == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure(device: torch.device, num_threads: int, parallel_jobs: int = 1) -> int:
    """Set torch's CPU threads so parallel jobs share the cores instead of oversubscribing them."""
    if num_threads <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        num_threads = max(1, cores // max(1, parallel_jobs))
    torch.set_num_threads(num_threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return num_threads


def peak_flops(device: torch.device) -> Optional[float]:
    """The device's peak FLOP/s where known (GPU table, or $TRAINER_PEAK_FLOPS), else None."""
    if os.environ.get("TRAINER_PEAK_FLOPS"):
        return float(os.environ["TRAINER_PEAK_FLOPS"])
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return flops
    return None
