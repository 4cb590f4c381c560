"""Starting from GPT-2's weights: a tiny random transformers GPT2LMHeadModel, saved with save_pretrained
here (offline), becomes our GPT with the same next-token logits."""

from __future__ import annotations

import json

import pytest
import torch

from trainer.errors import UserError
from trainer.model import GPT
from trainer.pretrained import architecture_of, as_gpt2, gpt2_config, load_weights, unexportable

transformers = pytest.importorskip("transformers")

TINY_GPT2 = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 48, "vocab_size": 300, "bos_token_id": 0,
             "eos_token_id": 0}


def saved_gpt2(path, **config):
    """A random GPT-2 of this shape, saved as save_pretrained writes it (config.json, model.safetensors)."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**TINY_GPT2, **config})).eval()
    with torch.no_grad():  # biases and norms away from their init (zeros, ones), so a missed one would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def ours_from(path, **h):
    arch = architecture_of(path)
    model = GPT({**arch, "dropout": 0.0, "max_token_value": arch["vocab_size"], **h})
    load_weights(model, path)
    return model.eval()


@pytest.mark.parametrize("config", [{}, {"tie_word_embeddings": False}, {"activation_function": "relu"},
                                    {"activation_function": "gelu"}])
def test_a_gpt2_directory_gives_the_same_logits_as_in_transformers(tmp_path, config):
    theirs = saved_gpt2(tmp_path, **config)
    ours = ours_from(tmp_path)
    idx = torch.randint(0, 300, (3, 48), generator=torch.Generator().manual_seed(1))  # (B, T)
    with torch.no_grad():
        expected = theirs(idx).logits  # (B, T, V)
        got, _ = ours(idx)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4
    assert ours.tied == config.get("tie_word_embeddings", True)


def test_a_shorter_context_keeps_the_first_positions(tmp_path):
    theirs = saved_gpt2(tmp_path)
    ours = ours_from(tmp_path, context_length=16)  # nanoGPT's crop_block_size
    idx = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (ours(idx)[0] - theirs(idx).logits).abs().max().item() <= 1e-4


def test_the_architecture_keys_come_from_config_json(tmp_path):
    saved_gpt2(tmp_path)
    arch = architecture_of(tmp_path)
    assert (arch["d_model"], arch["num_blocks"], arch["num_heads"], arch["context_length"], arch["vocab_size"]) == \
        (32, 2, 4, 48, 300)
    assert arch["positions"] == "learned" and arch["activation"] == "gelu_tanh" and arch["tie_weights"]
    assert arch["qkv_bias"] and not arch["head_bias"] and not arch["vocab_compaction"]


@pytest.mark.parametrize("config, message", [
    ({"model_type": "llama"}, "not a GPT-2 config (model_type=llama)"),
    ({"n_inner": 100}, "cannot hold: n_inner=100 (ours is 4 x n_embd = 128)"),
    ({"activation_function": "silu"}, "cannot hold: activation_function=silu"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon=1e-06"),
])
def test_a_config_we_cannot_hold_is_one_line_naming_it(tmp_path, config, message):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", **TINY_GPT2, **config}))
    with pytest.raises(UserError, match="init_from=") as e:
        architecture_of(tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_directory_that_is_no_gpt2_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no config.json in it"):
        architecture_of(tmp_path)
    with pytest.raises(UserError, match="no such directory"):
        architecture_of(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", **TINY_GPT2}))
    with pytest.raises(UserError, match=r"no model.safetensors \(nor pytorch_model.bin\)"):
        ours_from(tmp_path)


# ----------------------------------------------------------------------------- our GPT as GPT-2


GPT2_STYLE = {"d_model": 32, "num_blocks": 2, "num_heads": 4, "context_length": 24, "dropout": 0.0,
              "max_token_value": 200, "positions": "learned", "activation": "gelu_tanh", "tie_weights": True,
              "qkv_bias": True, "head_bias": False, "init": "scaled"}


@pytest.mark.parametrize("h", [GPT2_STYLE, {**GPT2_STYLE, "positions": "sinusoidal", "activation": "relu"},
                               {**GPT2_STYLE, "bias": False, "tie_weights": False},
                               {**GPT2_STYLE, "qkv_bias": False, "activation": "gelu"}])
def test_our_gpt_loaded_by_transformers_gives_the_same_logits(h):
    torch.manual_seed(3)
    ours = GPT(h).eval()
    with torch.no_grad():  # away from the init's zero biases and unit gains
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert unexportable(h) == []
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**gpt2_config(h, 200))).eval()
    missing, unexpected = theirs.load_state_dict(as_gpt2(ours), strict=False)
    assert not unexpected and all(k == "lm_head.weight" or k.endswith("attn.bias") for k in missing)
    idx = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (ours(idx)[0] - theirs(idx).logits).abs().max().item() <= 1e-4


def test_what_gpt2_cannot_express_is_named_by_its_keys():
    book = {"d_model": 80, "num_blocks": 6, "num_heads": 4, "context_length": 128}  # the book's: a head bias
    assert unexportable(book) == ["head_bias=true (GPT-2's output head has no bias)"]
    modern = {**GPT2_STYLE, "positions": "rope", "activation": "swiglu", "norm": "rmsnorm"}
    assert [why.split(" ")[0] for why in unexportable(modern)] == ["positions=rope", "activation=swiglu", "norm=rmsnorm"]
