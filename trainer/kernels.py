"""Cheaper CPU versions of three pieces of the training step, with the same maths.

A training step of the book's model on a CPU spends less than half its time in matmuls; the rest
went to three places, each replaced here on CPU in eager mode (on a GPU, and in code torch.compile
traces, which fuses these itself, torch's own ops are used):

- dropout masks: torch draws one Mersenne-Twister number per element through bernoulli_; here one
  64-bit draw makes four 16-bit uniforms, kept where they pass the threshold p * 2**16. Same places,
  same rate p to within 2**-17 (p = 0.1 drops 0.1000061 of the elements); the masks come from the
  global generator, so a checkpoint's RNG state still resumes them exactly.
- attention with dropout: F.scaled_dot_product_attention has no fused CPU kernel that takes a
  dropout, and its fallback adds a dozen small ops per call; here it is the textbook formula,
  softmax(q k^T / sqrt(hs) + causal mask) with dropout, then @ v.
- the output head's cross-entropy: log_softmax + nll_loss materialise the (B*T, V) log-probs, a
  zero-filled gradient and a scatter; here the forward pass computes softmax - one_hot once, which
  is the gradient of the loss wrt the logits, and the backward pass only scales it.
"""

from __future__ import annotations

import functools
import math

import torch
from torch.nn import functional as F


def _eager_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool mask of `shape`, each element True with probability 1 - p, from the global generator."""
    n = math.prod(shape)
    # full-range 64-bit draws (two 32-bit outputs of the generator), read as four int16 uniforms:
    # the generator is most of a mask's cost, and this takes half an output a mask element, where
    # bernoulli_ takes one
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    uniform = bits.view(torch.int16)[:n].view(shape)  # in [-2**15, 2**15)
    return uniform >= keep_threshold(p)


def keep_threshold(p: float) -> int:
    """The least 16-bit uniform kept: round(p * 2**16) of the 2**16 values fall below it."""
    return -(2**15) + round(p * 2**16)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout: zero each element with probability p, scale the rest by 1 / (1 - p)."""
    if not training or p == 0.0:
        return x
    if not _eager_cpu(x) or p >= 1.0:
        return F.dropout(x, p, training)
    return x * keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1.0 / (1.0 - p))


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs), causal) @ v with dropout p on the attention weights; (B, nh, T, hs) each."""
    if not training or p == 0.0 or p >= 1.0 or not _eager_cpu(q):  # p = 1: torch's zeros, as dropout()
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p if training else 0.0)
    B, nh, T, hs = q.shape
    q, k, v = (t.reshape(B * nh, T, hs) for t in (q, k, v))  # batched matmuls take 3-D
    # scores, scaled and causally masked in one op: -inf above the diagonal, 0 elsewhere, added
    att = torch.baddbmm(_future_bias(T, q.dtype, q.device), q, k.transpose(1, 2), alpha=1.0 / math.sqrt(hs))
    att = att.softmax(dim=-1)
    # dropout on the weights: the kept ones times 1 / (1 - p), the scale applied to the (T, hs) rows
    # of the product instead of the (T, T) weights (same product, a sixth of the elements at hs=20)
    y = (att * keep_mask(att.shape, p, att.device).to(att.dtype)) @ v  # (B * nh, T, hs)
    return y.mul_(1.0 / (1.0 - p)).view(B, nh, T, hs)


@functools.lru_cache(maxsize=8)
def _future_bias(T: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(T, T): -inf where a query would see a later key, else 0."""
    return torch.full((T, T), float("-inf"), dtype=dtype, device=device).triu_(1)


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (N, V) logits, computed in float32 whatever their dtype (bf16 under
    autocast). The forward pass keeps softmax - one_hot, the gradient of each row's loss wrt its
    logits; the backward pass scales it, once, into the logits' dtype."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ctx.used, ctx.dtype = False, logits.dtype
        rows = torch.arange(logits.shape[0], device=logits.device)
        grad = torch.softmax(logits, dim=1, dtype=torch.float32)  # (N, V): one fused pass per row
        p_target = grad[rows, targets]  # (N,)
        if p_target.min() > 0:
            loss = -p_target.log().mean()
        else:  # a target's probability underflowed (a loss over ~87 nats): the exact way
            logits = logits.float()
            loss = (torch.logsumexp(logits, dim=1) - logits[rows, targets]).mean()
        grad[rows, targets] -= 1.0
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.used:
            raise RuntimeError("kernels.cross_entropy: backward through the same loss twice")
        ctx.used = True
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_loss / grad.shape[0]).to(ctx.dtype), None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(logits, targets) for (N, V) float logits and (N,) class ids, mean over N.
    Targets with F.cross_entropy's ignore_index (-100, a padding convention) take torch's own path."""
    if (not _eager_cpu(logits) or not torch.is_grad_enabled() or not logits.requires_grad
            or targets.min() < 0):
        return F.cross_entropy(logits, targets)
    return _SoftmaxCrossEntropy.apply(logits, targets)


class Dropout(torch.nn.Dropout):
    """nn.Dropout with the cheaper CPU masks of `dropout` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
