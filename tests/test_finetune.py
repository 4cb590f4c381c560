"""Starting from pretrained weights: `python -m trainer init_from=<a transformers GPT-2 dir>` takes
the model's architecture, weights and tokenizer, then trains as usual (nanoGPT's finetune). The
GPT-2 here is a tiny random one with a BPE trained in the test, saved as save_pretrained saves it."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import call_main, metrics, ok, run_dirs

import trainer.tokenizer
from trainer.generate import load_model

transformers = pytest.importorskip("transformers")

VOCAB = 300
TINY_GPT2 = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 48, "vocab_size": VOCAB, "bos_token_id": 0,
             "eos_token_id": 0}
TRAIN = ["batch_size=4", "eval_interval=5", "eval_iters=2", "device=cpu", "num_threads=1", "dropout=0.0"]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """models/tiny: a random GPT-2 and, beside it, a BPE tokenizer of its vocabulary (<|endoftext|> id 0)."""
    root = tmp_path_factory.mktemp("pretrained")
    ok(call_main(trainer.tokenizer.main, f"vocab_size={VOCAB}", "out=models/tiny", cwd=root))
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY_GPT2)).eval()
    model.save_pretrained(root / "models" / "tiny")
    return root / "models" / "tiny"


def test_it_starts_from_the_pretrained_weights_and_tokenizer(trainer_here, tmp_path, gpt2_dir):
    # a learning rate too small to move a weight: the checkpoint holds the pretrained model, as loaded
    ok(trainer_here(f"init_from={gpt2_dir}", *TRAIN, "max_iters=1", "learning_rate=1e-12", "weight_decay=0"))
    (run,) = run_dirs(tmp_path)
    ours, state = load_model(str(run))
    h = state["h_params"]
    assert (h["d_model"], h["num_blocks"], h["num_heads"], h["context_length"], h["vocab_size"]) == (32, 2, 4, 48, VOCAB)
    assert (h["positions"], h["activation"], h["tie_weights"], h["vocab_compaction"]) == ("learned", "gelu_tanh", True,
                                                                                         False)
    assert h["encoding"] == f"hf:{gpt2_dir}" and state["tokenizer"] == (gpt2_dir / "tokenizer.json").read_text()
    theirs = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    idx = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(1))  # (B, T)
    with torch.no_grad():
        assert (ours(idx)[0] - theirs(idx).logits).abs().max().item() <= 1e-4


def test_finetuning_lowers_the_loss_and_resumes(trainer_here, tmp_path, gpt2_dir):
    ok(trainer_here(f"init_from={gpt2_dir}", *TRAIN, "max_iters=20", "learning_rate=3e-3", "context_length=32"))
    (run,) = run_dirs(tmp_path)
    rows = [r for r in metrics(run) if "valid_loss" in r]
    assert rows[0]["step"] == 0 and rows[-1]["valid_loss"] < rows[0]["valid_loss"] - 0.5
    _, state = load_model(str(run))
    assert state["h_params"]["context_length"] == 32  # cropped: the first 32 of the 48 positions
    ok(trainer_here(f"resume={run}", "max_iters=30"))  # from its checkpoint, not the pretrained weights again
    resumed = [r for r in metrics(run) if "valid_loss" in r]
    assert resumed[: len(rows)] == rows and resumed[-1]["step"] == 30


def test_the_composed_config_shows_the_pretrained_architecture(trainer_here, gpt2_dir):
    r = ok(trainer_here(f"init_from={gpt2_dir}", "--cfg", "job"))
    for line in ("d_model: 32", "num_blocks: 2", "num_heads: 4", "context_length: 48", "positions: learned",
                 "activation: gelu_tanh", "qkv_bias: true", "head_bias: false", "vocab_compaction: false",
                 f"encoding: hf:{gpt2_dir}", f"init_from: {gpt2_dir}"):
        assert line in r.stdout.splitlines(), line


@pytest.mark.parametrize("make, args, line", [
    (None, ["init_from=nowhere/gpt2x"], "init_from=nowhere/gpt2x: no such dir, and the hub did not give it ("),
    (None, ["init_from=./nowhere"], "init_from=nowhere: no such directory"),
    ({}, ["init_from=m"], "init_from=m: no config.json in it (not a transformers model directory)"),
    ({"config.json": {"model_type": "llama"}}, ["init_from=m"],
     "init_from=m: not a GPT-2 config (model_type=llama); init_from takes the GPT-2 family"),
    ({"config.json": {"model_type": "gpt2", "n_inner": 7}}, ["init_from=m"],
     "init_from=m: an architecture this trainer's GPT cannot hold: n_inner=7 (ours is 4 x n_embd = 3072)"),
    ({"config.json": {"model_type": "gpt2"}}, ["init_from=m"],
     "init_from=m: no tokenizer in it (tokenizer.json, or vocab.json and merges.txt); name one with encoding=hf:<file>"),
    ({"config.json": {"model_type": "gpt2"}}, ["init_from=m", "d_model=64"],
     "d_model=64: init_from=m fixes it at 768 (drop d_model=)"),
    ({"config.json": {"model_type": "gpt2"}}, ["init_from=m", "context_length=2048"],
     "context_length=2048: init_from=m has 1024 positions (use at most that)"),
    (None, ["init_from=a,b"], "init_from=a,b: one pretrained model per command (a sweep over init_from is not supported)"),
])
def test_a_bad_init_from_is_one_line(trainer_here, tmp_path, monkeypatch, make, args, line):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub name must not reach the network in a test
    if make is not None:
        (tmp_path / "m").mkdir()
        for name, content in make.items():
            (tmp_path / "m" / name).write_text(json.dumps(content))
    r = trainer_here(*args, "device=cpu")
    assert r.returncode == 2 and r.stderr.startswith(f"error: {line}"), r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "outputs").exists()
