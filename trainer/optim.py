"""The optimizers (AdamW as in the book, Adam, SGD) and the learning-rate schedule.

Adding an optimizer takes two things: an entry in `OPTIMIZERS` below (its torch class and the
config keys it reads) and a file conf/optimizer/<name>.yaml (`# @package _global_`, then
`optimizer: <name>` and its defaults); `optimizer=<name>` then works and is checked: the config check
(`trainer.config.validate`) accepts exactly the names here.

The schedule: lr_schedule=constant (the book's, the default) or cosine, which peaks at learning_rate
and decays to min_lr at max_iters; warmup_iters ramps up linearly before either.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from trainer.config import plain


def _adam_kwargs(cfg: DictConfig) -> dict[str, Any]:
    return dict(lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)


def _sgd_kwargs(cfg: DictConfig) -> dict[str, Any]:
    return dict(lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@dataclass(frozen=True)
class OptimizerSpec:
    cls: type[torch.optim.Optimizer]  # a torch.optim class (one with a fused or foreach kernel is fastest)
    kwargs: Callable[[DictConfig], dict[str, Any]]  # its constructor's arguments from the config


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec(torch.optim.AdamW, _adam_kwargs),
    "adam": OptimizerSpec(torch.optim.Adam, _adam_kwargs),
    "sgd": OptimizerSpec(torch.optim.SGD, _sgd_kwargs),
}


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, device: torch.device,
                    eager: bool = True) -> torch.optim.Optimizer:
    """torch's optimizer with its fused kernel (CUDA and CPU alike: one kernel per tensor instead of
    ~10 per-tensor ops, 3x faster on CPU). eager=True (nothing compiled) also skips the
    `import torch._dynamo` that torch.optim does on first use (1 s of CPU at startup)."""
    params = param_groups(cfg, model)
    spec = OPTIMIZERS[plain(cfg.optimizer)]  # the name was checked by trainer.config.validate
    cls, kwargs = spec.cls, spec.kwargs(cfg)
    if eager:
        cls = _without_dynamo_import(cls)
    for kernel in ("fused", "foreach"):
        try:
            return cls(params, **{kernel: True}, **kwargs)
        except (RuntimeError, TypeError):  # a device, dtype or class without that kernel
            continue
    return cls(params, **kwargs)


def param_groups(cfg: DictConfig, model: torch.nn.Module) -> list:
    """What weight decay applies to. weight_decay_on=all (the book's): every parameter, one group,
    as checkpoints from before this key hold. matrices (GPT-2's, nanoGPT's): only the 2-D weights,
    the Linears' and the embeddings'; biases and norm gains are not pulled towards zero."""
    params = [p for p in model.parameters() if p.requires_grad]
    if plain(cfg.weight_decay_on) == "all":
        return params
    return [{"params": [p for p in params if p.dim() >= 2]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def learning_rate_at(step: int, cfg: DictConfig) -> float:
    """constant (the book's), or linear warmup then cosine decay to min_lr at max_iters."""
    lr, warmup = cfg.learning_rate, cfg.warmup_iters
    schedule = plain(cfg.lr_schedule)
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, cfg.max_iters - warmup)
    return cfg.min_lr + 0.5 * (lr - cfg.min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------- startup time

# torch.optim shields its methods from torch.compile by importing torch._dynamo on their first
# call (add_param_group, zero_grad, state_dict, load_state_dict through torch._disable_dynamo,
# step through _use_grad_for_differentiable): about 1 s of CPU and 200 MB of imports that an
# eager run never uses. Here the methods run undecorated; the maths is torch's own, unchanged.
_SHIELDED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


@functools.cache
def _without_dynamo_import(cls: type) -> type:
    if not hasattr(torch, "_disable_dynamo"):
        return cls  # another torch: nothing to skip
    for name in _SHIELDED:
        raw = inspect.unwrap(getattr(torch.optim.Optimizer, name))
        # torch._disable_dynamo caches its dynamo-disabled version of the function under this
        # attribute and calls it; the raw function itself means "call straight through".
        if not hasattr(raw, "__dynamo_disable"):
            setattr(raw, "__dynamo_disable", raw)
    raw_step = inspect.unwrap(cls.step)

    def step(self, closure=None):
        with torch.no_grad():  # what the decorator does for differentiable=False, minus the import
            return raw_step(self, closure)

    return type(cls.__name__, (cls,), {"step": step, "__module__": __name__, "__doc__": cls.__doc__})
