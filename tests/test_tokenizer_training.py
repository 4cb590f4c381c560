"""Training a tokenizer: `python -m trainer.tokenizer <data keys> vocab_size=N out=DIR` learns a
byte-level BPE from the corpus the training command's data keys name and writes DIR/tokenizer.json;
a mistake is one line, exit code 2, and nothing written."""

from __future__ import annotations

import csv
import os
import random
import re
from pathlib import Path

import pytest
from helpers import run_module, trainer_env

tokenizers = pytest.importorskip("tokenizers")

WORDS = ("the a model trains on tokens of text and learns which words come next while the loss falls "
         "slowly over many steps with every batch small data large vocabulary merges bytes pairs").split()
SAMPLE = "héllo wörld, 日本語 🎉\n\n\ttabs and  two spaces\r\nthe end\n"  # accents, CJK, emoji, whitespace


def tokenizer(tmp_path: Path, *args: str):
    """`python -m trainer.tokenizer args...` run in tmp_path, as a user runs it."""
    return run_module("trainer.tokenizer", *args, cwd=tmp_path, env=trainer_env(tmp_path / "cache"), timeout=120)


def english(n_lines: int, seed: int = 0) -> list[str]:
    """Lines of English-like words, the same ones for a seed."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))).capitalize() + "." for _ in range(n_lines)]


def left_behind(root: Path) -> set[str]:
    """Every path under root, relative to it (the test's own corpus files included)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_it_trains_a_byte_level_bpe_that_round_trips_any_text(tmp_path):
    r = tokenizer(tmp_path, "vocab_size=1000", "out=toks/mine")  # no data keys: the synthetic corpus
    assert r.returncode == 0, r.stderr
    path = tmp_path / "toks" / "mine" / "tokenizer.json"
    assert r.stdout.startswith("Trained a byte-level BPE of 1,000 tokens on the synthetic corpus (0.3 MB) in ")
    assert r.stdout.strip().endswith(": toks/mine/tokenizer.json; train with encoding=hf:toks/mine/tokenizer.json")
    assert "computing the merges" in r.stderr
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp file left
    tok = tokenizers.Tokenizer.from_file(str(path))
    assert tok.get_vocab_size() == 1000
    assert tok.token_to_id("<|endoftext|>") == 0
    assert tok.get_added_tokens_decoder()[0].special
    assert tok.decode(tok.encode(SAMPLE).ids) == SAMPLE  # every byte has a token: nothing unknown, nothing added
    assert tok.encode("").ids == []
    corpus = "fix(server): avoid `Cookie` with custom types (#104)\nBump pre-commit from 0.19.7 to 5.7.11 (#110)\n"
    ids = tok.encode(corpus).ids
    assert tok.decode(ids) == corpus
    assert len(ids) < len(corpus.encode()) / 2  # it learned merges


def test_it_reads_a_csv_column_with_the_training_commands_data_keys(tmp_path):
    with open(tmp_path / "titles.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["repo", "title"])
        for line in english(3000):
            w.writerow(["qqqqqqqq/zzzzzzzz", line])
    r = tokenizer(tmp_path, "data=csv", "data_path=titles.csv", "text_column=title", "vocab_size=390", "out=toks")
    assert r.returncode == 0, r.stderr
    assert "on data_path=titles.csv (" in r.stdout
    tok = tokenizers.Tokenizer.from_file(str(tmp_path / "toks" / "tokenizer.json"))
    assert tok.get_vocab_size() == 390  # its few words give ~400
    vocab = tok.get_vocab()
    assert "Ġvocabulary" in vocab  # a word of the column is one token (Ġ: GPT-2's space)
    assert not any("qq" in t or "zz" in t for t in vocab)  # the other column was not read
    line = english(1, seed=1)[0] + "\n"
    assert len(tok.encode(line).ids) < len(line.split()) * 1.5


def test_a_bigger_vocab_than_the_corpus_can_give_is_refused_naming_what_it_can(tmp_path):
    (tmp_path / "tiny.txt").write_text("\n".join(english(20)) + "\n")
    r = tokenizer(tmp_path, "data=text", "data_path=tiny.txt", "vocab_size=50000", "out=toks")
    m = re.fullmatch(r"error: vocab_size=50000: larger than this corpus can give \(training stopped at (\d+) "
                     r"tokens\); use vocab_size=(\d+) or less\n", r.stderr.split("computing the merges\n")[-1])
    assert r.returncode == 2 and m and m.group(1) == m.group(2), r.stderr
    assert 257 < int(m.group(1)) < 1000
    assert left_behind(tmp_path) == {"tiny.txt"}
    r = tokenizer(tmp_path, "data=text", "data_path=tiny.txt", f"vocab_size={m.group(1)}", "out=toks")
    assert r.returncode == 0, r.stderr  # what the line says works


@pytest.mark.parametrize("args, line", [
    (["vocab_size=4096"], "out: missing: where to write tokenizer.json, e.g. out=tokenizers/mine"),
    (["out=toks"], "vocab_size: missing: how many tokens to learn, e.g. vocab_size=4096"),
    (["vocab_size=abc", "out=toks"], "vocab_size=abc: must be an integer of at least 257 (the 256 bytes and "
                                     "<|endoftext|>)"),
    (["vocab_size=100", "out=toks"], "vocab_size=100: must be an integer of at least 257 (the 256 bytes and "
                                     "<|endoftext|>)"),
    (["vocab_size=1000", "out=a_file"], "out=a_file: a file, not a dir (tokenizer.json is written into it)"),
    (["vocab_size=1000", "out=a_file/toks"], "out=a_file/toks: a_file is a file, not a dir"),
    (["-m", "vocab_size=1000", "out=toks"], "-m: python -m trainer.tokenizer trains one tokenizer on one corpus, "
                                            "not a sweep (drop -m)"),
    (["data=text", "data_path=tiny.txt,a_file", "vocab_size=1000", "out=toks"],
     "data_path=tiny.txt,a_file: a sweep; python -m trainer.tokenizer trains one tokenizer on one corpus "
     "(give one value)"),
    (["data_paht=tiny.txt", "vocab_size=1000", "out=toks"], "data_paht: no such key (did you mean data_path?)"),
    (["data=csv", "data_path=tiny.txt", "text_column=title", "vocab_size=1000", "out=toks"],
     "text_column=title: no such column in tiny.txt (columns: hello)"),
])
def test_a_mistake_is_one_line_and_writes_nothing(tmp_path, args, line):
    (tmp_path / "a_file").write_text("mine\n")
    (tmp_path / "tiny.txt").write_text("hello\nworld\n")
    r = tokenizer(tmp_path, *args)
    assert (r.returncode, r.stderr, r.stdout) == (2, f"error: {line}\n", "")
    assert left_behind(tmp_path) == {"a_file", "tiny.txt"}
    assert (tmp_path / "a_file").read_text() == "mine\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_out_dir_is_refused_before_the_corpus_is_read(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    r = tokenizer(tmp_path, "vocab_size=1000", "out=locked/toks")
    assert (r.returncode, r.stderr) == (2, "error: out=locked/toks: cannot write there (locked is not writable)\n")
