"""Your own tokenizer: `encoding=char` (the corpus's own characters, nanoGPT's shakespeare_char) and
`encoding=hf:<tokenizer.json>` (a byte-level BPE that `python -m trainer.tokenizer` trained) train,
sample, resume and evaluate as cl100k_base does. The checkpoint and the run dir carry what decodes
them, bits per byte counts each token's own bytes, and the token cache never mixes two tokenizers' ids.

Two real runs with W&B on, offline (samples.md needs it), in processes of their own and side by side;
each is checked against a run stopped halfway and resumed, in this process."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import TINY, call_main, composed, losses, metrics, ok, run_in_process, trainer_env

import trainer.evaluate
import trainer.generate
import trainer.prepare
import trainer.tokenizer
from trainer import rundir
from trainer.data.corpus import load_corpus
from trainer.generate import load_model

pytest.importorskip("tokenizers")

WORDS = ("fix add the a parser model loss café naïve résumé 日本語 テスト 🚀 ✨ bump docs api test "
         "handle empty input output (#12) `None` for in with").split()
HF = "hf:tok/tokenizer.json"
ENCODINGS = {"char": "char", "hf": HF}
ARGS = [*TINY, "eval_interval=5", "data=text", "data_path=corpus.txt", "dropout=0.0"]


def corpus_text(n_lines: int = 3000) -> str:
    """PR-title-like lines with accents, CJK and emoji: characters of 1 to 4 UTF-8 bytes."""
    rng = random.Random(0)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + "\n" for _ in range(n_lines))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    """root/{char,hf}: 20 steps straight through, with W&B's samples; root/{char,hf}-parts: 10, then
    resumed to 20. The hf runs read a BPE of 400 tokens trained on the same corpus."""
    root = tmp_path_factory.mktemp("encodings")
    (root / "corpus.txt").write_text(corpus_text(), encoding="utf-8")
    ok(call_main(trainer.tokenizer.main, "data=text", "data_path=corpus.txt", "vocab_size=340", "out=tok", cwd=root))
    env = trainer_env(cache_dir, NETRC=str(root / "no-netrc"))  # no key, no netrc: W&B offline
    straight = [subprocess.Popen([sys.executable, "-m", "trainer", *ARGS, f"encoding={enc}", "wandb.enabled=true",
                                  f"hydra.run.dir={name}"], cwd=root, env=env, text=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE) for name, enc in ENCODINGS.items()]
    for name, enc in ENCODINGS.items():
        ok(run_in_process(*ARGS, f"encoding={enc}", "max_iters=10", f"hydra.run.dir={name}-parts", cwd=root,
                          cache_dir=cache_dir))
        ok(run_in_process(f"resume={name}-parts", "max_iters=20", cwd=root, cache_dir=cache_dir))
    for proc in straight:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    return root


@pytest.mark.parametrize("name", ENCODINGS)
def test_each_tokenizer_trains_and_its_checkpoint_carries_what_decodes_it(runs, name):
    rows = [r for r in metrics(runs / name) if "valid_loss" in r]
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"] - 0.3
    _, state = load_model(str(runs / name))
    text = (runs / "corpus.txt").read_text(encoding="utf-8")
    if name == "char":  # the corpus's characters, sorted: nanoGPT's shakespeare_char vocabulary
        assert state["vocab"].tolist() == sorted({ord(c) for c in text}) and state["tokenizer"] is None
        assert not (runs / name / rundir.TOKENIZER).exists()
    else:
        saved = (runs / "tok" / "tokenizer.json").read_text()
        assert state["tokenizer"] == saved == (runs / name / rundir.TOKENIZER).read_text()
        assert state["h_params"]["vocab_size"] <= 340


@pytest.mark.parametrize("name", ENCODINGS)
def test_a_resumed_run_matches_one_that_never_stopped(runs, name):
    assert losses(metrics(runs / f"{name}-parts")) == losses(metrics(runs / name))


@pytest.mark.parametrize("name", ENCODINGS)
def test_samples_are_written_in_the_corpus_own_text(runs, name):
    rows = rundir.read_samples(runs / name)
    assert [r[0] for r in rows] == [0, 0, 5, 5, 10, 10, 15, 15, 20, 20]
    text = (runs / "corpus.txt").read_text(encoding="utf-8")
    for _, prompt, sample in rows:
        assert prompt in text  # a place in the corpus, decoded
        assert len(sample) >= 10


@pytest.mark.parametrize("name", ENCODINGS)
def test_generate_decodes_from_the_checkpoint_wherever_the_tokenizer_file_went(runs, name, tmp_path):
    # from another dir, where hf:tok/tokenizer.json names nothing: the checkpoint's copy decodes
    r = ok(call_main(trainer.generate.main, str(runs / name), "--prompt", "fix the café ", "--max_new_tokens", "20",
                     "--temperature", "0", cwd=tmp_path))
    assert r.stdout.startswith("fix the café ") and len(r.stdout) > len("fix the café ") + 5


@pytest.mark.parametrize("name", ENCODINGS)
def test_bits_per_byte_counts_each_tokens_own_bytes(runs, name, cache_dir, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(runs)
    _, state = load_model(str(runs / name))
    corpus = load_corpus(state["h_params"])
    counts = corpus.tokens.counts()[corpus.vocab.numpy()] if corpus.vocab is not None else corpus.tokens.counts()
    text = (runs / "corpus.txt").read_text(encoding="utf-8")
    assert int((torch.from_numpy(counts.astype(np.int64)) * corpus.token_bytes).sum()) == len(text.encode())
    r = ok(call_main(trainer.evaluate.main, str(runs / name), cwd=runs))
    (score,) = json.loads((runs / name / rundir.EVAL).read_text()).values()
    assert f"{score['bits_per_byte']:.4f}" in r.stdout and 1 < score["bits_per_byte"] < 8
    assert score["bytes"] > score["tokens"] * (0.99 if name == "char" else 1.2)  # hf: merges span bytes


def test_the_cache_keeps_each_tokenizers_ids_apart(tmp_path, monkeypatch):
    """One corpus, four tokenizers (a BPE retrained at the same path among them): four entries."""
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(corpus_text(500), encoding="utf-8")
    data = ["data=text", "data_path=corpus.txt"]

    def prepare(encoding: str) -> tuple[str, int]:
        r = ok(call_main(trainer.prepare.main, *data, f"encoding={encoding}", "progress=false", cwd=tmp_path))
        assert "tokenized into the cache" in r.stdout  # never served another tokenizer's entry
        c = load_corpus(composed(*data, f"encoding={encoding}"))
        return c.tokens.path.name, c.max_token_value

    ok(call_main(trainer.tokenizer.main, *data, "vocab_size=320", "out=tok", cwd=tmp_path))
    entries = {enc: prepare(enc) for enc in ("cl100k_base", "char", HF)}
    ok(call_main(trainer.tokenizer.main, *data, "vocab_size=290", "out=tok", cwd=tmp_path))  # the same path
    entries["hf-300"] = prepare(HF)
    assert len({path for path, _ in entries.values()}) == 4
    assert entries["hf-300"][1] <= 290 < entries[HF][1] <= 320 < entries["char"][1]


@pytest.mark.parametrize("encoding, line", [
    ("hf:bad.json", "encoding=hf:bad.json: not a tokenizer (Exception: "),
    ("hf:notes.txt", "encoding=hf:notes.txt: not a tokenizer (Exception: "),
    ("hf:nowhere.json", "encoding=hf:nowhere.json: no such file or dir"),
    ("hf:empty", "encoding=hf:empty: no tokenizer.json (or vocab.json and merges.txt) in that dir"),
    ("hf:", "encoding=hf:: name a tokenizer.json or a dir holding one, e.g. hf:tokenizers/mine"),
    ("gpt9", "encoding=gpt9: no such encoding (tiktoken's: gpt2, r50k_base, "),
])
def test_a_tokenizer_that_is_not_one_is_one_line(trainer_here, tmp_path, encoding, line):
    (tmp_path / "bad.json").write_text(json.dumps({"model": {"type": "nothing"}}))
    (tmp_path / "notes.txt").write_text("not json at all\n")
    (tmp_path / "empty").mkdir()
    r = trainer_here(*TINY, f"encoding={encoding}")
    assert r.returncode == 2 and r.stderr.startswith(f"error: {line}") and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / rundir.OUTPUTS).exists()


def test_resume_reads_the_checkpoints_tokenizer_once_its_file_is_gone_and_refuses_a_changed_one(trainer_here,
                                                                                                 tmp_path):
    (tmp_path / "corpus.txt").write_text(corpus_text(500), encoding="utf-8")
    data = ["data=text", "data_path=corpus.txt"]
    ok(call_main(trainer.tokenizer.main, *data, "vocab_size=320", "out=tok", cwd=tmp_path))
    ok(trainer_here(*TINY, *data, f"encoding={HF}", "max_iters=4", "eval_interval=4", "hydra.run.dir=run"))
    shutil.move(tmp_path / "tok", tmp_path / "moved")
    ok(trainer_here("resume=run", "max_iters=8"))  # read with the checkpoint's copy
    assert metrics(tmp_path / "run")[-1]["step"] == 8
    ok(call_main(trainer.tokenizer.main, *data, "vocab_size=290", "out=tok", cwd=tmp_path))  # another, same path
    r = trainer_here("resume=run", "max_iters=12")
    assert r.returncode == 2 and r.stderr == (f"error: resume=run: encoding={HF} is not the tokenizer the "
                                              "checkpoint was trained with (its file changed since)\n")
