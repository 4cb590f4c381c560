"""The book's GPT, written for speed: same architecture, same parameters, fewer kernels.

Pre-LayerNorm transformer blocks (attention, then a ReLU feed-forward), sinusoidal positions
and an output head, as in the book. The differences are all about speed, not maths: the
heads are computed together (one fused QKV projection and F.scaled_dot_product_attention
instead of a Python loop over head modules), the positional table is built once as a buffer
instead of on every forward call, and on a CPU the dropout masks, the attention with dropout and
the loss come from trainer/kernels.py (cheaper kernels for the same formulas).

Architecture variants, each a config key (trainer/config.py) kept in the checkpoint's h_params:
activation (relu | gelu | gelu_tanh | swiglu), norm (layernorm | rmsnorm), positions (sinusoidal |
learned | rope), tie_weights, init (pytorch | scaled), bias, qkv_bias and head_bias. The defaults
(ARCH_DEFAULTS) are the book's model, parameter for parameter and random draw for random draw;
model=gpt2 sets GPT-2's (learned positions, tanh GELU, tied head without a bias, a qkv bias), which
is what trainer.pretrained imports from transformers and trainer.export writes back.
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


# What a checkpoint without these keys in its h_params was (one from before they existed): the book's model.
ARCH_DEFAULTS = {"activation": "relu", "norm": "layernorm", "positions": "sinusoidal", "tie_weights": False,
                 "init": "pytorch", "bias": True, "qkv_bias": False, "head_bias": True}
INIT_STD = 0.02  # init=scaled: GPT-2's


def architecture(h_params: dict[str, Any]) -> dict[str, Any]:
    """The architecture keys of h_params, a missing one at its default."""
    return {k: h_params.get(k, default) for k, default in ARCH_DEFAULTS.items()}


class Rotary(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021): rotates each pair of a head's q (and k)
    channels by an angle proportional to the position, so q.k depends on the tokens' offset, not
    where they sit. One instance serves every block; its cos/sin tables are built once, not saved."""

    def __init__(self, head_size: int, context_length: int, base: float = 10000.0):
        super().__init__()
        if head_size % 2:
            raise ValueError(f"positions=rope: needs an even head size, d_model/num_heads = {head_size}")
        inv_freq = base ** (-torch.arange(0, head_size, 2).float() / head_size)  # (hs/2,)
        angles = torch.outer(torch.arange(context_length).float(), inv_freq)  # (T, hs/2)
        # Channel i < hs/2 pairs with i + hs/2: (x_i cos - x_j sin, x_j cos + x_i sin). As
        # x * cos + swap_halves(x) * sin with the sign in the sin table: three ops for any number of heads.
        cos, sin = angles.cos(), angles.sin()
        self.register_buffer("cos", torch.cat([cos, cos], dim=-1).unsqueeze(1), persistent=False)  # (T, 1, hs)
        self.register_buffer("sin", torch.cat([-sin, sin], dim=-1).unsqueeze(1), persistent=False)

    def forward(self, x: torch.Tensor, num_heads: int) -> torch.Tensor:
        """x: (B, T, num_heads * hs), heads side by side (q's and k's together) -> the same, each head rotated."""
        B, T, C = x.shape
        heads = x.view(B, T, num_heads, C // num_heads)  # (B, T, n, hs)
        first, second = heads.chunk(2, dim=-1)  # 2 x (B, T, n, hs/2)
        cos, sin = self.cos[:T], self.sin[:T]
        if cos.dtype != x.dtype:  # autocast's bf16: SDPA wants q, k and v in one dtype
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return (heads * cos + torch.cat([second, first], dim=-1) * sin).view(B, T, C)


def make_norm(kind: str, d_model: int) -> nn.Module:
    """LayerNorm (the book's), or RMSNorm: no mean subtraction, a gain only (LayerNorm's eps)."""
    return nn.LayerNorm(d_model) if kind == "layernorm" else nn.RMSNorm(d_model, eps=1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float, rotary: Optional[Rotary] = None,
                 qkv_bias: bool = False):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.rotary = rotary  # positions=rope: the positions enter here, on q and k, not added to x
        # the book's per-head q, k, v, fused (q's heads, then k's, then v's: GPT-2's c_attn layout);
        # the book's have no bias, GPT-2's have one
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=qkv_bias)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x)  # (B, T, 3C)
        q, k, v = qkv.split(C, dim=2)  # 3 x (B, T, C)
        if self.rotary is not None:  # the positions enter here: q's and k's heads rotated in one go
            q, k = self.rotary(qkv[..., : 2 * C], 2 * self.num_heads).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs): all heads in one batched matmul
        q, k, v = (t.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2) for t in (q, k, v))
        y = causal_attention(q, k, v, self.dropout, self.training)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.resid_drop(self.proj(y))


class SwiGLU(nn.Module):
    """SiLU(gate) * up (Shazeer 2020), gate and up from one fused Linear: (B, T, 2H) -> (B, T, H)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swiglu": SwiGLU,
               "gelu_tanh": lambda: nn.GELU(approximate="tanh")}  # GPT-2's ("gelu_new" in transformers)


def ffn_widths(d_model: int, activation: str) -> tuple[int, int]:
    """(the first Linear's outputs, the hidden width H the second Linear reads). The book's: 4 * d_model
    both. SwiGLU's first Linear makes gate and up, 2H, fused; with three d x H matrices instead of
    two, H = 8d/3 keeps the feed-forward's parameter count about the same."""
    if activation != "swiglu":
        return 4 * d_model, 4 * d_model
    hidden = 8 * math.ceil(d_model / 3)  # 8d/3 rounded up to a multiple of 8 (as LLaMA): 216 for d_model=80
    return 2 * hidden, hidden


class FeedForward(nn.Module):
    def __init__(self, d_model: int, dropout: float, activation: str = "relu"):
        super().__init__()
        up, hidden = ffn_widths(d_model, activation)
        # net.2 is the residual projection whatever the activation (init=scaled shrinks it)
        self.net = nn.Sequential(nn.Linear(d_model, up), ACTIVATIONS[activation](),
                                 nn.Linear(hidden, d_model), Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float, activation: str = "relu",
                 norm: str = "layernorm", rotary: Optional[Rotary] = None, qkv_bias: bool = False):
        super().__init__()
        self.ln1 = make_norm(norm, d_model)
        self.attn = CausalSelfAttention(d_model, num_heads, dropout, rotary, qkv_bias)
        self.ln2 = make_norm(norm, d_model)
        self.ffn = FeedForward(d_model, dropout, activation)

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
        arch = architecture(h_params)
        self.tok = nn.Embedding(vocab_size, d)
        sinusoidal = sinusoidal_positions(L, d) if arch["positions"] == "sinusoidal" else None
        self.register_buffer("pos", sinusoidal, persistent=False)  # (L, C), or None
        self.pos_emb = nn.Embedding(L, d) if arch["positions"] == "learned" else None  # added, as the table is
        rotary = Rotary(d // h_params["num_heads"], L) if arch["positions"] == "rope" else None
        self.blocks = nn.Sequential(*[Block(d, h_params["num_heads"], h_params["dropout"], arch["activation"],
                                            arch["norm"], rotary, arch["qkv_bias"])
                                      for _ in range(h_params["num_blocks"])])
        self.ln_f = make_norm(arch["norm"], d)
        self.head = nn.Linear(d, vocab_size, bias=arch["head_bias"])
        self.tied = arch["tie_weights"]
        if self.tied:
            # One matrix, with the head's init: nn.Embedding's N(0, 1) as the head's weights makes the
            # first logits ~sqrt(d_model) wide and wrecks training (valid loss 5.58 vs 3.89 untied, measured).
            self.tok.weight = self.head.weight
        if not arch["bias"]:
            self._drop_biases()
        if arch["init"] == "scaled":
            self._init_scaled(h_params["num_blocks"])

    def _apply(self, fn, recurse=True):
        # .to() may give the two names two converted copies (it does for the meta device, which
        # plan=true sizes models on): tie them again, so a tied model stays one matrix anywhere.
        super()._apply(fn, recurse)
        if self.tied:
            self.tok.weight = self.head.weight
        return self

    def _drop_biases(self) -> None:
        """bias=false: no bias in any Linear (the qkv projection and the head included) nor LayerNorm."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.LayerNorm)):
                m.bias = None  # unregisters the parameter: gone from parameters() and the state_dict

    def _init_scaled(self, num_blocks: int) -> None:
        """GPT-2's init: every Linear and Embedding weight N(0, 0.02), biases zero, and the two
        projections that add into the residual stream (attention's proj, the FFN's second Linear)
        N(0, 0.02 / sqrt(2 * num_blocks)), so the stream's variance does not grow with depth."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=INIT_STD)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for block in self.blocks:
            for w in (block.attn.proj.weight, block.ffn.net[2].weight):
                nn.init.normal_(w, mean=0.0, std=INIT_STD / math.sqrt(2 * num_blocks))

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # a tied weight is counted once
        if non_embedding:
            n -= self.tok.weight.numel()
            if self.head.weight is not self.tok.weight:
                n -= self.head.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None):
        B, T = idx.shape
        x = self.tok(idx)  # (B, T, C)
        if self.pos is not None:  # sinusoidal: the book's fixed table, (T, C) broadcast over the batch
            x = x + self.pos[:T]
        elif self.pos_emb is not None:  # learned
            x = x + self.pos_emb.weight[:T]
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
