"""The config: Hydra composes the groups into the book's flat names, typed and validated."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf.errors import ValidationError

from trainer.config import CONF_DIR, h_params_of, register_configs, validate
from trainer.errors import UserError
from trainer.optim import OPTIMIZERS, OptimizerSpec, build_optimizer


@pytest.fixture(scope="module")
def make_cfg():
    register_configs()

    def make(*overrides: str):
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return make


def test_defaults_are_the_books(make_cfg):
    h = h_params_of(make_cfg())
    assert {k: h[k] for k in ("d_model", "num_blocks", "num_heads", "context_length", "dropout")} == \
        {"d_model": 80, "num_blocks": 6, "num_heads": 4, "context_length": 128, "dropout": 0.1}
    assert {k: h[k] for k in ("batch_size", "max_iters", "eval_interval", "eval_iters", "TORCH_SEED")} == \
        {"batch_size": 2, "max_iters": 500, "eval_interval": 50, "eval_iters": 10, "TORCH_SEED": 1337}
    assert h["learning_rate"] == 1e-3 and h["optimizer"] == "adamw"
    assert h["encoding"] == "cl100k_base" and h["train_split"] == 0.9 and h["data_path"] is None
    assert h["device"] == "auto"


def test_hyperparameters_are_flat_and_tooling_is_nested(make_cfg):
    cfg = make_cfg()
    h = h_params_of(cfg)
    assert all(not isinstance(v, dict) for v in h.values())
    assert "wandb" not in h and "resume" not in h and cfg.wandb.enabled is False


@pytest.mark.parametrize("model, shape", [("tiny", (80, 6, 4, 128)), ("small", (256, 12, 8, 256)),
                                          ("gpt2", (768, 12, 12, 1024)), ("modern", (80, 6, 4, 128))])
def test_model_presets(make_cfg, model, shape):
    cfg = make_cfg(f"model={model}")
    assert (cfg.d_model, cfg.num_blocks, cfg.num_heads, cfg.context_length) == shape
    validate(cfg)
    arch = {k: h_params_of(cfg)[k] for k in ("activation", "norm", "positions", "tie_weights", "init", "bias",
                                             "qkv_bias", "head_bias")}
    book = {"activation": "relu", "norm": "layernorm", "positions": "sinusoidal", "tie_weights": False,
            "init": "pytorch", "bias": True, "qkv_bias": False, "head_bias": True}
    gpt2 = {**book, "activation": "gelu_tanh", "positions": "learned", "tie_weights": True, "init": "scaled",
            "qkv_bias": True, "head_bias": False}  # GPT-2's own architecture, as transformers builds it
    assert arch == {"modern": {**book, "positions": "rope", "bias": False}, "gpt2": gpt2}.get(model, book)


def test_architecture_keys_sweep_from_the_command_line(make_cfg):
    cfg = make_cfg("model=modern", "activation=gelu", "weight_decay_on=matrices")
    h = h_params_of(cfg)
    assert h["activation"] == "gelu" and h["positions"] == "rope" and h["weight_decay_on"] == "matrices"


def test_small_preset_has_about_10m_non_embedding_params(make_cfg):
    from trainer.model import GPT

    h = h_params_of(make_cfg("model=small"))
    h["vocab_size"] = 100
    assert 9e6 < GPT(h).num_params(non_embedding=True) < 11e6


def test_book_names_override_from_the_command_line(make_cfg):
    cfg = make_cfg("model=small", "learning_rate=3e-4", "d_model=128")
    assert cfg.d_model == 128 and cfg.num_blocks == 12 and cfg.learning_rate == 3e-4


@pytest.mark.parametrize("optimizer, torch_class, settings", [
    ("adamw", torch.optim.AdamW, {"learning_rate": 1e-3, "weight_decay": 0.01, "beta2": 0.999}),
    ("adam", torch.optim.Adam, {"learning_rate": 1e-3, "weight_decay": 0.0, "beta2": 0.999}),
    ("sgd", torch.optim.SGD, {"learning_rate": 0.1, "weight_decay": 0.0, "momentum": 0.9}),
])
def test_optimizer_presets_build_their_torch_optimizer(make_cfg, optimizer, torch_class, settings):
    cfg = make_cfg(f"optimizer={optimizer}")
    assert cfg.optimizer == optimizer
    assert {k: cfg[k] for k in settings} == settings  # what conf/optimizer/<name>.yaml sets
    built = build_optimizer(cfg, torch.nn.Linear(2, 2), torch.device("cpu"))
    assert isinstance(built, torch_class) and built.defaults["lr"] == settings["learning_rate"]


def test_a_new_optimizer_is_one_yaml_file_and_one_registry_entry(tmp_path, monkeypatch):
    """What the README promises a contributor: RMSprop, from a YAML file in conf/optimizer/ (here a
    search path of the test's own) and an entry in trainer.optim.OPTIMIZERS, nothing else."""
    (tmp_path / "optimizer").mkdir()
    (tmp_path / "optimizer" / "rmsprop.yaml").write_text(
        "# @package _global_\n# RMSprop\noptimizer: rmsprop\nlearning_rate: 1e-2\nmomentum: 0.5\n")
    monkeypatch.setitem(OPTIMIZERS, "rmsprop", OptimizerSpec(torch.optim.RMSprop, lambda c: dict(
        lr=c.learning_rate, momentum=c.momentum, eps=c.eps, weight_decay=c.weight_decay)))
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["optimizer=rmsprop", f"hydra.searchpath=[file://{tmp_path}]"])
    validate(cfg)
    built = build_optimizer(cfg, torch.nn.Linear(2, 2), torch.device("cpu"))
    assert isinstance(built, torch.optim.RMSprop)
    assert built.defaults["lr"] == 1e-2 and built.defaults["momentum"] == 0.5


def test_an_optimizer_name_missing_from_the_registry_is_named(make_cfg):
    cfg = make_cfg()
    cfg.optimizer = "lion"
    with pytest.raises(UserError, match=r"^optimizer=lion: not a registered optimizer \(adamw, adam, sgd\)"):
        validate(cfg)


def test_data_presets(make_cfg):
    cfg = make_cfg("data=github_pr_titles")
    assert cfg.data_path == "data/github_pr_titles.csv" and cfg.text_column == "title"
    cfg = make_cfg("data=text", "data_path=corpus.txt")
    assert cfg.data_path == "corpus.txt" and cfg.text_column is None


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "mps"])
def test_device_presets(make_cfg, device):
    assert make_cfg(f"device={device}").device.value == device


def test_types_are_checked_at_compose_time(make_cfg):
    with pytest.raises(Exception) as e:
        make_cfg("d_model=abc")
    assert isinstance(e.value.__cause__ or e.value, ValidationError)


@pytest.mark.parametrize("override, key", [
    ("d_model=81", "d_model"), ("learning_rate=0", "learning_rate"), ("batch_size=0", "batch_size"),
    ("context_length=-1", "context_length"), ("max_iters=0", "max_iters"), ("dropout=1.0", "dropout"),
    ("dropout=-0.1", "dropout"), ("train_split=1.0", "train_split"),
])
def test_validation_names_the_key(make_cfg, override, key):
    with pytest.raises(UserError, match=f"^{key}="):
        validate(make_cfg(override))
