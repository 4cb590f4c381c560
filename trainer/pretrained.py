"""GPT-2's weights, from a transformers directory (config.json + model.safetensors), as this trainer's GPT.

    architecture_of(path)  the h_params keys GPT-2's config.json fixes (width, depth, heads, context,
                           vocabulary, and the architecture: learned positions, tanh GELU, biases, tied head)
    load_weights(model, path)  its weights copied into a GPT built from those keys
    unexportable(h), gpt2_config(h, V), as_gpt2(model)  the other way: our GPT as GPT2LMHeadModel

GPT-2 in transformers stores its four projections (`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`,
`mlp.c_proj`) as Conv1D, whose weight is nn.Linear's transposed: they are transposed here, as
nanoGPT's from_pretrained does. `attn.bias` / `attn.masked_bias` are causal-mask buffers, not
weights. Reading needs only safetensors (the hf extra), not transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from trainer.data.encodings import EXTRA
from trainer.errors import UserError
from trainer.model import architecture

# transformers' activation_function -> ours: gelu_new (GPT-2's) and gelu_pytorch_tanh are both the tanh approximation
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# a block's GPT-2 names -> ours
BLOCK_NAMES = {"ln_1": "ln1", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "ln_2": "ln2",
               "mlp.c_fc": "ffn.net.0", "mlp.c_proj": "ffn.net.2"}


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a GPT-2 directory; one line for anything that is not one."""
    where = f"init_from={path}"
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{where}: no such directory" if not p.exists() else f"{where}: not a directory "
                        "(pass a dir saved with transformers' save_pretrained)")
    try:
        config = json.loads((p / "config.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{where}: no config.json in it (not a transformers model directory)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: config.json is unreadable ({e})") from None
    if not isinstance(config, dict) or config.get("model_type") != "gpt2":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise UserError(f"{where}: not a GPT-2 config (model_type={kind}); init_from takes the GPT-2 family")
    return config


def architecture_of(path: str | Path) -> dict[str, Any]:
    """The h_params keys the pretrained model fixes; one line naming what our GPT cannot hold."""
    c = read_config(path)
    where = f"init_from={path}"
    d, inner = c.get("n_embd", 768), c.get("n_inner")
    refusals = [
        (c.get("activation_function", "gelu_new") not in ACTIVATIONS,
         f"activation_function={c.get('activation_function')} (ours: {', '.join(ACTIVATIONS)})"),
        (inner not in (None, 4 * d), f"n_inner={inner} (ours is 4 x n_embd = {4 * d})"),
        (c.get("layer_norm_epsilon", 1e-5) != 1e-5, f"layer_norm_epsilon={c.get('layer_norm_epsilon')} (ours is 1e-5)"),
        (c.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=true"),
        (not c.get("scale_attn_weights", True), "scale_attn_weights=false"),
    ]
    cannot = [what for bad, what in refusals if bad]
    if cannot:
        raise UserError(f"{where}: an architecture this trainer's GPT cannot hold: {'; '.join(cannot)}")
    return {"d_model": d, "num_blocks": c.get("n_layer", 12), "num_heads": c.get("n_head", 12),
            "context_length": c.get("n_positions", 1024), "vocab_size": c.get("vocab_size", 50257),
            "activation": ACTIVATIONS[c.get("activation_function", "gelu_new")], "norm": "layernorm",
            "positions": "learned", "tie_weights": bool(c.get("tie_word_embeddings", True)), "bias": True,
            "qkv_bias": True, "head_bias": False, "vocab_compaction": False}


def gpt2_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The directory's tensors by GPT-2's names, without the `transformer.` prefix."""
    p = Path(path)
    if (p / "model.safetensors").is_file():
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(f"init_from={path}: reading model.safetensors needs safetensors: {EXTRA}") from None
        try:
            tensors = load_file(str(p / "model.safetensors"))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a bad file
            raise UserError(f"init_from={path}: model.safetensors is unreadable ({e})") from None
    elif (p / "pytorch_model.bin").is_file():
        tensors = torch.load(p / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise UserError(f"init_from={path}: no model.safetensors (nor pytorch_model.bin) in it")
    return {k.removeprefix("transformer."): v for k, v in tensors.items()}


def as_ours(gpt2: dict[str, torch.Tensor], num_blocks: int, tied: bool) -> dict[str, torch.Tensor]:
    """GPT-2's state dict under our GPT's names, Conv1D weights transposed to nn.Linear's."""
    ours = {"tok.weight": gpt2["wte.weight"], "pos_emb.weight": gpt2["wpe.weight"],
            "ln_f.weight": gpt2["ln_f.weight"], "ln_f.bias": gpt2["ln_f.bias"]}
    for i in range(num_blocks):
        for theirs, mine in BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                w = gpt2[f"h.{i}.{theirs}.{kind}"]
                ours[f"blocks.{i}.{mine}.{kind}"] = w.t() if f"{theirs}.{kind}" in CONV1D else w
    ours["head.weight"] = gpt2["wte.weight"] if tied else gpt2["lm_head.weight"]
    return {k: v.contiguous() for k, v in ours.items()}


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Copy the directory's GPT-2 weights into a GPT built from architecture_of(path) (and any dropout
    or a context_length up to n_positions: a shorter context keeps the first rows of the position table)."""
    arch = architecture_of(path)
    try:
        ours = as_ours(gpt2_weights(path), arch["num_blocks"], arch["tie_weights"])
    except KeyError as e:
        raise UserError(f"init_from={path}: its weights lack {e.args[0]} (not a GPT-2 checkpoint?)") from None
    ours["pos_emb.weight"] = ours["pos_emb.weight"][: model.context_length]
    try:
        model.load_state_dict(ours)
    except RuntimeError as e:
        raise UserError(f"init_from={path}: its weights do not fit its config.json ({str(e).splitlines()[-1].strip()})") \
            from None


# ----------------------------------------------------------------------------- the other way: our GPT as GPT-2

def unexportable(h: dict[str, Any]) -> list[str]:
    """The keys of h_params that GPT2LMHeadModel cannot express (empty: it can). Sinusoidal positions
    can: the fixed table becomes wpe's values. No bias at all can: zeros are written for GPT-2's."""
    a = architecture(h)
    bad = [(a["positions"] == "rope", "positions=rope (GPT-2 adds a position table; it rotates nothing)"),
           (a["activation"] == "swiglu", "activation=swiglu (GPT-2's MLP has no gate)"),
           (a["norm"] == "rmsnorm", "norm=rmsnorm (GPT-2's norms are LayerNorms)"),
           (a["bias"] and a["head_bias"], "head_bias=true (GPT-2's output head has no bias)")]
    return [why for is_bad, why in bad if is_bad]


def gpt2_config(h: dict[str, Any], vocab_size: int, eot: int | None = None) -> dict[str, Any]:
    """config.json's GPT-2 keys for a model of these h_params (dropout 0: an exported model is for inference
    and finetuning, which sets its own); eot: the tokenizer's <|endoftext|> id, its bos and eos."""
    a = architecture(h)
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[a["activation"]]
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": h["d_model"],
            "n_layer": h["num_blocks"], "n_head": h["num_heads"], "n_positions": h["context_length"],
            "vocab_size": vocab_size, "activation_function": act, "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": bool(a["tie_weights"]), "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            # not GPT2Config's default, 50256, which may lie outside a smaller vocabulary (transformers warns)
            "bos_token_id": eot, "eos_token_id": eot}


def as_gpt2(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our GPT's weights under GPT2LMHeadModel's names (Linear weights transposed to Conv1D's), a
    missing bias as zeros and fixed sinusoidal positions as wpe's table: the inverse of as_ours."""
    sd = model.state_dict()
    d = model.tok.weight.shape[1]

    def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        return sd[name] if name in sd else torch.zeros(shape)  # bias=false, qkv_bias=false: a zero bias

    pos = model.pos_emb.weight if model.pos_emb is not None else model.pos  # learned, or the book's fixed table
    out = {"transformer.wte.weight": sd["tok.weight"], "transformer.wpe.weight": pos.detach(),
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": get("ln_f.bias", (d,))}
    for i in range(len(model.blocks)):
        for theirs, mine in BLOCK_NAMES.items():
            w = sd[f"blocks.{i}.{mine}.weight"]
            out[f"transformer.h.{i}.{theirs}.weight"] = w.t() if f"{theirs}.weight" in CONV1D else w
            out[f"transformer.h.{i}.{theirs}.bias"] = get(f"blocks.{i}.{mine}.bias", (w.shape[0],))
    if not model.tied:
        out["lm_head.weight"] = sd["head.weight"]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}
