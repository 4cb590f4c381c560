"""Will it fit? A model or batch far too big for the machine is refused before anything is allocated.

`d_model=65536 num_blocks=96` would otherwise allocate until the kernel's OOM killer ends the run
with SIGKILL (no message, exit 137) or CUDA raises mid-step. The estimate counts what a training
step holds in float32: the weights, their gradients and the optimizer's two moments (AdamW's, the
most any registered optimizer keeps), plus one micro-batch's activations. It leaves out
allocator overhead and temporaries, so it errs low: a run is refused only when even this
estimate is over 90% of the memory available now.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from trainer.errors import UserError
from trainer.model import architecture, ffn_widths

FLOAT = 4  # bytes: the weights, gradients, moments and activations are float32 (autocast only shrinks some)
REFUSE_ABOVE = 0.9  # of the memory available: over this even the low estimate cannot fit


def param_count(h: Mapping[str, Any], vocab_size: int) -> int:
    """GPT(h).num_params() without building it (h: the config or h_params): the token embedding, per
    block attention (4 d^2) and the feed-forward (~8 d^2, whatever the activation) and two norms,
    the final norm and the head; learned positions add context_length x d_model."""
    d, V, arch = h["d_model"], vocab_size, architecture(h)
    bias = int(arch["bias"])
    up, hidden = ffn_widths(d, arch["activation"])
    norm = (1 + bias) * d if arch["norm"] == "layernorm" else d  # a gain (and a bias); RMSNorm: a gain only
    attn = 4 * d * d + bias * d  # qkv (never a bias, as in the book) and the output projection
    ffn = (d + bias) * up + (hidden + bias) * d
    positions = h["context_length"] * d if arch["positions"] == "learned" else 0  # the others are no parameters
    head = (0 if arch["tie_weights"] else V * d) + bias * V
    return V * d + positions + h["num_blocks"] * (attn + ffn + 2 * norm) + norm + head


def training_bytes(cfg: DictConfig, vocab_size: int) -> tuple[int, int]:
    """(weights + gradients + AdamW state, one micro-batch's activations) in bytes."""
    params = param_count(cfg, vocab_size)
    tokens = cfg.batch_size * cfg.context_length
    # Per token and block, what backward keeps: ~20 d-wide vectors (qkv, MLP 4d twice, norms,
    # residuals) and 3 attention rows per head (scores, softmax, dropout mask); then the logits twice.
    per_token = cfg.num_blocks * (20 * cfg.d_model + 3 * cfg.num_heads * cfg.context_length) + 2 * vocab_size
    return 4 * params * FLOAT, tokens * per_token * FLOAT


def available_bytes(device: torch.device) -> Optional[int]:
    """Free memory where the run allocates: the GPU's, or the machine's MemAvailable; None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None  # mps, meta (plan=true sizes models on it): nothing to ask
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(cfg: DictConfig, vocab_size: int, device: torch.device) -> None:
    """UserError naming the keys to lower when the estimate is clearly over what the device has free."""
    free = available_bytes(device)
    if free is None:
        return
    state, activations = training_bytes(cfg, vocab_size)
    if state + activations <= REFUSE_ABOVE * free:
        return
    keys = (f"d_model={cfg.d_model} num_blocks={cfg.num_blocks}" if state >= activations
            else f"batch_size={cfg.batch_size} context_length={cfg.context_length}")
    raise UserError(f"{keys}: training needs ~{_gb(state + activations)} ({_gb(state)} for the weights, gradients "
                    f"and AdamW state, {_gb(activations)} for a batch's activations), this machine has "
                    f"{_gb(free)} available on {device.type}")


def _gb(n: float) -> str:
    return f"{n / 1e9:,.0f} GB" if n >= 10e9 else f"{n / 1e9:.1f} GB"
