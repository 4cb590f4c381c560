"""The optimizer (AdamW as in the book, Adam, SGD) and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    name = str(cfg.optimizer.value if hasattr(cfg.optimizer, "value") else cfg.optimizer)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, **fast)
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                weight_decay=cfg.weight_decay, **fast)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {name}")  # unreachable: the schema's enum checks it


def learning_rate_at(step: int, cfg: DictConfig) -> float:
    """constant (the book's), or linear warmup then cosine decay to min_lr at max_iters."""
    lr, warmup = cfg.learning_rate, cfg.warmup_iters
    schedule = str(cfg.lr_schedule.value if hasattr(cfg.lr_schedule, "value") else cfg.lr_schedule)
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, cfg.max_iters - warmup)
    return cfg.min_lr + 0.5 * (lr - cfg.min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))
