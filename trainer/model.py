"""The book's GPT, written for speed: same architecture, same parameters, fewer kernels.

Pre-LayerNorm transformer blocks (attention, then a ReLU feed-forward), sinusoidal positions
and an output head, as in the book. The differences are all about speed, not maths: the
heads are computed together (one fused QKV projection and F.scaled_dot_product_attention
instead of a Python loop over head modules), the positional table is built once as a buffer
instead of on every forward call, and on a CPU the dropout masks, the attention with dropout and
the loss come from trainer/kernels.py (cheaper kernels for the same formulas).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.nn import functional as F

from trainer.kernels import Dropout, causal_attention, cross_entropy


def sinusoidal_positions(context_length: int, d_model: int) -> torch.Tensor:
    """The book's fixed positional encoding, (T, C)."""
    pos = torch.arange(context_length, dtype=torch.float).unsqueeze(1)  # (T, 1)
    div = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    pe = torch.zeros(context_length, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: d_model // 2])
    return pe


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)  # the book's per-head q, k, v, fused
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs): all heads in one batched matmul
        q, k, v = (t.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2) for t in (q, k, v))
        y = causal_attention(q, k, v, self.dropout, self.training)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.resid_drop(self.proj(y))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.ReLU(),
                                 nn.Linear(4 * d_model, d_model), Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, num_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))  # pre-LN residual, as in the book
        return x + self.ffn(self.ln2(x))


class GPT(nn.Module):
    """Built from the checkpoint's h_params alone, so any checkpoint can be rebuilt and sampled."""

    def __init__(self, h_params: dict[str, Any]):
        super().__init__()
        d, L = h_params["d_model"], h_params["context_length"]
        self.context_length = L
        vocab_size = h_params.get("vocab_size") or h_params["max_token_value"]
        self.tok = nn.Embedding(vocab_size, d)
        self.register_buffer("pos", sinusoidal_positions(L, d), persistent=False)  # (L, C)
        self.blocks = nn.Sequential(*[Block(d, h_params["num_heads"], h_params["dropout"])
                                      for _ in range(h_params["num_blocks"])])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab_size)
        if h_params.get("tie_weights"):
            self.head.weight = self.tok.weight

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # a tied weight is counted once
        if non_embedding:
            n -= self.tok.weight.numel()
            if self.head.weight is not self.tok.weight:
                n -= self.head.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None):
        B, T = idx.shape
        x = self.tok(idx) + self.pos[:T]  # (B, T, C)
        logits = self.head(self.ln_f(self.blocks(x)))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None):
        """Append max_new_tokens sampled ids to idx (B, T), cropping to the context window."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.context_length:])
            logits = logits[:, -1, :]  # (B, V): the next token's scores
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits.float(), dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
