"""Architecture variants (activation, norm, positions, tie_weights, init, bias, weight_decay_on): each
trains, is recorded in h_params and rebuilt from them; the defaults are the book's model, and a
checkpoint from before the keys existed still loads, samples and resumes."""

from __future__ import annotations

import itertools
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, TINY, call_main, metrics, ok, run_dirs

import trainer.generate
from trainer import rundir
from trainer.config import TrainConfig, schema_default
from trainer.memory import param_count
from trainer.model import ARCH_DEFAULTS, GPT, Rotary
from trainer.optim import build_optimizer
from trainer.speed import train_flops_per_token

DATA = REPO / "tests" / "data"
PRE_VARIANTS = DATA / "pre_variants"  # a run dir made by the code before these keys (make_pre_variants.sh)
FAST = [*TINY, "max_iters=30", "eval_interval=30", "learning_rate=3e-3"]


def generate(path: Path, cwd: Path) -> str:
    r = call_main(trainer.generate.main, str(path), "--max_new_tokens", "12", "--seed", "1", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("override", [
    None, "activation=gelu", "activation=swiglu", "norm=rmsnorm", "positions=learned", "positions=rope",
    "tie_weights=true", "init=scaled", "bias=false", "weight_decay_on=matrices", "model=modern",
])
def test_each_variant_trains_and_its_checkpoint_rebuilds_and_samples(trainer_here, tmp_path, override):
    ok(trainer_here(*FAST, *([override] if override else []), "hydra.run.dir=run"))
    rows = metrics(tmp_path / "run")
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"] - 1.0, rows  # ~7.4 -> ~5.6 in 30 steps
    state = torch.load(tmp_path / "run" / rundir.CKPT, weights_only=True)
    h = state["h_params"]
    assert all(isinstance(h[k], (str, bool)) for k in [*ARCH_DEFAULTS, "weight_decay_on"])  # recorded, plain
    if override and not override.startswith("model="):
        key, value = override.split("=")
        assert str(h[key]).lower() == value
    model = GPT(h)
    model.load_state_dict(state["model_state_dict"])  # strict: the same parameter names and shapes
    assert model.num_params() == param_count(h, h["vocab_size"])  # trainer.memory's estimate is exact
    assert generate(tmp_path / "run", tmp_path) == generate(tmp_path / "run", tmp_path) != ""  # seeded


def test_modern_preset_trains_with_the_sweeps_choices_at_tinys_size(trainer_here, tmp_path):
    ok(trainer_here("model=modern", "max_iters=1", "eval_interval=1", "eval_iters=1", "device=cpu",
                    "num_threads=1", "hydra.run.dir=run"))
    h = torch.load(tmp_path / "run" / rundir.CKPT, weights_only=True)["h_params"]
    assert (h["d_model"], h["num_blocks"], h["num_heads"], h["context_length"], h["dropout"]) == (80, 6, 4, 128, 0.1)
    assert {k: h[k] for k in ARCH_DEFAULTS} == {**ARCH_DEFAULTS, "positions": "rope", "bias": False}


# ----------------------------------------------------------------------------- the book's model, unchanged

BOOK = {"d_model": 80, "num_blocks": 6, "num_heads": 4, "context_length": 128, "dropout": 0.1, "vocab_size": 100}
BOOK_TIED = {**BOOK, "tie_weights": True}
# Taken from main at 8e94b43 (before the variants): GPT(BOOK) after torch.manual_seed(0).
BOOK_BLOCK = ["ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias", "ln2.weight",
              "ln2.bias", "ffn.net.0.weight", "ffn.net.0.bias", "ffn.net.2.weight", "ffn.net.2.bias"]
BOOK_NAMES = ["tok.weight", *(f"blocks.{i}.{n}" for i in range(6) for n in BOOK_BLOCK), "ln_f.weight", "ln_f.bias",
              "head.weight", "head.bias"]
BOOK_PARAMS = 481_860
BOOK_INIT_SUM = 1018.3540310294928  # the sum of every initial value: the same RNG draws, in the same order


def test_the_default_model_is_the_books_parameter_for_parameter():
    torch.manual_seed(0)
    model = GPT(BOOK)
    state = model.state_dict()
    assert list(state) == BOOK_NAMES
    assert model.num_params() == BOOK_PARAMS
    assert sum(v.double().sum().item() for v in state.values()) == pytest.approx(BOOK_INIT_SUM, abs=1e-9)
    assert [n for n, _ in model.named_buffers()] == ["pos"]  # the sinusoidal table, not saved


def test_the_models_defaults_are_the_configs():
    """A checkpoint without a key gets ARCH_DEFAULTS in the model and the schema's default in resume's check."""
    assert ARCH_DEFAULTS == {k: schema_default(k) for k in ARCH_DEFAULTS}
    assert schema_default("weight_decay_on") == "all" and TrainConfig().init.value == "pytorch"


# ----------------------------------------------------------------------------- a checkpoint from before


@pytest.fixture
def pre_variants(tmp_path) -> Path:
    """The old run dir and its corpus, copied where a test can resume it (resuming writes into the dir)."""
    shutil.copy(DATA / "pre_variants.txt", tmp_path)
    run = tmp_path / "outputs" / "old" / "run"
    shutil.copytree(PRE_VARIANTS, run)
    return run


def test_a_checkpoint_from_before_the_variants_samples_and_evaluates(tmp_path, pre_variants):
    state = torch.load(pre_variants / rundir.CKPT, weights_only=True)
    assert not (set(ARCH_DEFAULTS) - {"tie_weights"}) & set(state["h_params"])  # really from before
    assert generate(pre_variants, tmp_path)
    from trainer.evaluate import main as evaluate

    r = call_main(evaluate, str(pre_variants), cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_a_checkpoint_from_before_the_variants_resumes_where_the_old_code_stopped(trainer_here, tmp_path, pre_variants):
    overrides = yaml.safe_load((pre_variants / rundir.OVERRIDES).read_text())
    before = metrics(pre_variants)
    r = ok(trainer_here(*overrides, "max_iters=30", "resume=auto"))  # the old config.yaml: found by resume=auto
    assert "at step 20" in r.stdout
    rows = metrics(pre_variants)
    assert rows[:-1] == before  # the old rows kept as they were, one more at step 30
    # The old code (8e94b43), trained straight to step 30 with the same overrides, logged
    # (5.228204369544983, 5.2827852964401245). The CPU kernels (trainer/kernels.py) draw other
    # dropout masks from the same generator state, so steps 20-30 differ by a little, not more.
    assert rows[-1]["step"] == 30
    assert abs(rows[-1]["train_loss"] - 5.228204369544983) < 0.01
    assert abs(rows[-1]["valid_loss"] - 5.2827852964401245) < 0.01


def test_resuming_with_another_architecture_is_refused_in_one_line(trainer_here, tmp_path, pre_variants):
    r = trainer_here(f"resume={pre_variants}", "positions=rope")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "the checkpoint's positions=sinusoidal does not match this run's positions=rope" in r.stderr


def test_resuming_with_two_param_groups_is_bit_exact(trainer_here, cli, tmp_path):
    args = [*TINY, "eval_interval=5", "weight_decay_on=matrices"]
    ok(trainer_here(*args, "hydra.run.dir=straight"))
    ok(trainer_here(*args, "max_iters=10", "hydra.run.dir=parts"))
    ok(cli("resume=parts", "max_iters=20"))  # a process of its own, as test_resume's resumes
    strip = [(r["step"], r["train_loss"], r["valid_loss"]) for r in metrics(tmp_path / "parts")]
    assert strip == [(r["step"], r["train_loss"], r["valid_loss"]) for r in metrics(tmp_path / "straight")]


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("overrides, message", [
    (["activation=tanh"], "activation: Error merging override activation=tanh: Invalid value 'tanh', "
                          "expected one of [relu, gelu, gelu_tanh, swiglu]"),
    (["positions=rope", "d_model=42", "num_heads=2"], "positions=rope: needs an even head size, "
                                                        "d_model/num_heads = 21"),
    (["norm=batchnorm"], "norm: "), (["init=xavier"], "init: "), (["weight_decay_on=biases"], "weight_decay_on: "),
])
def test_a_bad_variant_is_one_line_naming_the_key(trainer_here, tmp_path, overrides, message):
    r = trainer_here(*TINY, *overrides)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and message in r.stderr
    assert not run_dirs(tmp_path)


# ----------------------------------------------------------------------------- the maths


def test_scaled_init_is_gpt2s():
    h = {**BOOK, "d_model": 128, "num_blocks": 4, "init": "scaled"}
    model = GPT(h)
    residual = 0.02 / math.sqrt(2 * 4)
    for name, p in model.named_parameters():
        if name.endswith(("attn.proj.weight", "ffn.net.2.weight")):
            assert p.std().item() == pytest.approx(residual, rel=0.05), name
        elif name.endswith("weight") and p.dim() == 2:
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        else:
            assert torch.all(p == 1), name  # the norms' gains


def test_gpt2s_biases_a_qkv_bias_and_no_head_bias():
    model = GPT({**BOOK, "qkv_bias": True, "head_bias": False})
    names = {name for name, _ in model.named_parameters()}
    assert "blocks.0.attn.qkv.bias" in names and "head.bias" not in names
    book = {name for name, _ in GPT(BOOK).named_parameters()}
    assert "blocks.0.attn.qkv.bias" not in book and "head.bias" in book  # the book's: the other way round
    assert not any(n.endswith("bias") for n, _ in GPT({**BOOK, "bias": False, "qkv_bias": True}).named_parameters())


def test_gelu_tanh_is_the_tanh_approximation():
    x = torch.linspace(-4, 4, 101)
    ffn = GPT({**BOOK, "activation": "gelu_tanh"}).blocks[0].ffn.net[1]
    expected = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))  # GPT-2's gelu_new
    assert torch.allclose(ffn(x), expected, atol=1e-6)
    assert not torch.allclose(ffn(x), torch.nn.functional.gelu(x), atol=1e-4)  # not the exact erf GELU


def test_tied_weights_keep_the_heads_init_not_the_embeddings_n01():
    model = GPT(BOOK_TIED)
    assert model.tok.weight is model.head.weight
    assert model.tok.weight.abs().max() <= 1 / math.sqrt(80)  # nn.Linear's U(-1/sqrt(d), 1/sqrt(d))
    sized = model.to("meta")  # what plan=true sizes: still one matrix, counted once
    assert sized.tok.weight is sized.head.weight and sized.num_params() == param_count(BOOK_TIED, 100)


def test_rope_makes_attention_scores_depend_on_the_offset_only():
    rotary = Rotary(head_size=8, context_length=16)
    q, k = torch.randn(16).expand(1, 16, 16), torch.randn(16).expand(1, 16, 16)  # (B, T, C): the same at every t
    q, k = rotary(q, num_heads=2)[0].view(16, 2, 8), rotary(k, num_heads=2)[0].view(16, 2, 8)  # (T, nh, hs)
    for h in range(2):
        assert torch.allclose(q[5, h] @ k[3, h], q[12, h] @ k[10, h], atol=1e-5)  # both 2 apart
        assert not torch.allclose(q[5, h] @ k[3, h], q[5, h] @ k[0, h], atol=1e-3)
    assert torch.equal(rotary(q.reshape(1, 16, 16), 2)[0, 0], q.reshape(16, 16)[0])  # position 0: no rotation


def test_the_memory_estimate_and_flops_follow_every_variant():
    for act, norm, pos, tied, bias in itertools.product(["relu", "gelu", "swiglu"], ["layernorm", "rmsnorm"],
                                                        ["sinusoidal", "learned", "rope"], [False, True], [True, False]):
        h = {**BOOK, "activation": act, "norm": norm, "positions": pos, "tie_weights": tied, "bias": bias}
        model = GPT(h)
        assert param_count(h, 100) == model.num_params(), h
        lookups = 80 * (100 if not tied else 0) + (128 * 80 if pos == "learned" else 0)  # no FLOPs
        matmul_weights = model.num_params() - lookups
        assert train_flops_per_token(model, h) == 6 * matmul_weights + 12 * 6 * 128 * 80
    swiglu = GPT({**BOOK, "activation": "swiglu"})
    assert swiglu.blocks[0].ffn.net[0].out_features == 2 * 216  # 8 * 80 / 3 rounded up to a multiple of 8
    assert abs(swiglu.num_params() - BOOK_PARAMS) / BOOK_PARAMS < 0.01  # about the ReLU FFN's parameters


def test_weight_decay_on_matrices_skips_biases_and_gains_with_the_fused_kernel():
    from omegaconf import OmegaConf

    model = GPT(BOOK)
    cfg = OmegaConf.structured(TrainConfig(data_path=None))
    one = build_optimizer(cfg, model, torch.device("cpu"))
    assert len(one.param_groups) == 1 and one.param_groups[0]["weight_decay"] == 0.01  # the book's: everything
    cfg.weight_decay_on = "matrices"
    two = build_optimizer(cfg, model, torch.device("cpu"))
    decayed, kept = two.param_groups
    assert decayed["weight_decay"] == 0.01 and all(p.dim() == 2 for p in decayed["params"])
    assert kept["weight_decay"] == 0.0 and all(p.dim() == 1 for p in kept["params"])
    assert len(decayed["params"]) + len(kept["params"]) == len(list(model.parameters()))
    assert decayed["fused"] and kept["fused"]  # still torch's fused AdamW
