"""Where training runs: device resolution, precision, CPU threads and the peak FLOP/s for MFU."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from typing import Optional

import torch

from trainer.errors import UserError

# Dense bf16 peak FLOP/s (no sparsity) of common GPUs, for MFU; matched against the device name.
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,  # before "H100": the first key in the name wins
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM ("NVIDIA H100 80GB HBM3")
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
    """The autocast dtype for the forward pass, or None to train in float32.

    auto = bf16 where the hardware multiplies bf16 natively: CUDA GPUs that support it, and CPUs
    with AVX512-BF16 or AMX, where oneDNN's bf16 matmuls (fp32 accumulation) make the book's
    model's step 1.4x faster with the same valid loss (scripts/bench.py). The weights, the
    optimizer and the loss stay fp32. dtype=float32 turns it off.
    """
    if dtype == "float32":
        return None
    if dtype == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu" and _cpu_has_native_bf16():
        return torch.bfloat16
    return None


def _cpu_has_native_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def available_cores() -> int:
    """The CPU cores this process may run on (a SLURM or taskset allocation, not the whole machine)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def configure(device: torch.device, num_threads: int, parallel_jobs: int = 1) -> int:
    """Set torch's CPU threads so parallel jobs share the cores instead of oversubscribing them.

    num_threads=0 (auto): the cores divided among the parallel jobs, leaving one core free. An
    OpenMP step waits at every op for all its threads: when another process holds one of them,
    the step stalls. Measured on a 2-core machine with other jobs running, the book's model:
    1 thread 36-38 ms a step, 2 threads 27 ms in a quiet moment but 150-750 ms when both cores
    were busy. The count is fixed by the machine, not by its load, since it changes the float
    rounding: a run repeats exactly only with the same count.
    """
    if num_threads <= 0:
        cores = available_cores()
        num_threads = max(1, min(cores // max(1, parallel_jobs), cores - 1))
    torch.set_num_threads(num_threads)
    keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return num_threads


def keep_freed_memory() -> None:
    """Let glibc's malloc reuse freed blocks instead of returning them to the kernel.

    By default a block over ~32 MB (and, once the heap trims, smaller ones) is mmap'd fresh and
    unmapped on free, so every step's logits and their gradients (7.7 MB each for the book's model)
    are page-faulted in again: 5,000 faults and 15-20% of a CPU step. A fixed, high threshold
    keeps them in the heap; the peak memory stays the same. Only glibc has mallopt: elsewhere
    this does nothing.
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    if not mallopt(M_MMAP_THRESHOLD, 256 << 20):
        mallopt(M_MMAP_THRESHOLD, 32 << 20)  # older glibc caps the threshold at 32 MB
    mallopt(M_TRIM_THRESHOLD, 1 << 30)


PEAK_FLOPS_ENV = "TRAINER_PEAK_FLOPS"


def peak_flops(device: torch.device) -> Optional[float]:
    """The device's peak FLOP/s, for MFU: $TRAINER_PEAK_FLOPS (0 = unknown), the GPU table, or on
    CPU the measured fp32 matmul rate (once per machine, cached) times the threads; else None."""
    if os.environ.get(PEAK_FLOPS_ENV):
        return float(os.environ[PEAK_FLOPS_ENV]) or None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return flops
    if device.type == "cpu":
        return cpu_peak_flops()
    return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_peak_flops(n: int = 1024, repeats: int = 8) -> float:
    """The CPU's practical fp32 peak for torch's current thread count: one core's best n x n
    matmul rate (what its BLAS reaches, not the datasheet's) times the threads. One core is
    measured, not all, because a busy machine spoils a many-thread measurement (here: 74 instead
    of 208 GFLOP/s for two threads) but rarely leaves no core free. About 0.3 s on a machine's
    first run, then read back from the cache (keyed by CPU, core count and torch version)."""
    from trainer.data.cache import cache_dir  # the token cache's dir; imported here: a light module

    threads = torch.get_num_threads()
    key = f"{cpu_name()}|{os.cpu_count()} cores|one core|torch {torch.__version__}|n={n}"
    path = cache_dir() / "cpu-peak-flops.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached.get(key), (int, float)):
        return float(cached[key]) * threads
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)  # never the global one: training draws dropout from it
        a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        a @ b  # warm-up: BLAS buffers
        per_core = 2 * n**3 / min(_timed(lambda: a @ b) for _ in range(repeats))
    finally:
        torch.set_num_threads(threads)
    try:
        cached[key] = per_core
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the measurement next time
    return per_core * threads


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
