"""The corpus: synthetic PR titles by default, real CSVs and raw files, tokenized once (in segments, on
every core, with the very ids of the whole text) and cached as a flat file of ids; the book's runs
read the same ids, batches and eval windows as before."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, SHARED_DATA, TINY, metrics, run_dirs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer import synthetic
from trainer.data import sources, tokenize
from trainer.data.batches import BatchSampler, spread_starts
from trainer.data.cache import load_tokens
from trainer.data.corpus import load_corpus
from trainer.data.encodings import get_encoding
from trainer.data.sources import Source


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_synthetic_corpus_is_deterministic_realistic_and_about_300kb():
    text = synthetic.generate()
    assert text == synthetic.generate()
    assert 290_000 < len(text.encode()) < 320_000
    lines = text.splitlines()
    assert all(line.endswith(")") and "(#" in line for line in lines)
    assert sum(line.startswith(("feat", "fix")) for line in lines) > len(lines) / 3
    assert sum("`" in line for line in lines) > len(lines) / 5
    assert sum(line.startswith("Bump ") for line in lines) > len(lines) / 20


def test_offline_tokenizer_is_cl100k():
    enc = get_encoding("cl100k_base")
    assert enc.n_vocab == 100277 and enc.encode("hello world").tolist() == [15339, 1917]


def composed(**keys):
    """The data keys of a config: the synthetic corpus unless told."""
    return {"data_path": None, "format": None, "text_column": None, "document_separator": None, "encoding": "cl100k_base",
            "train_split": 0.9, "context_length": 32, "vocab_compaction": True, **keys}


def test_a_corpus_is_cached_as_uint16_where_its_ids_fit_else_uint32(cache):
    (cache.parent / "small.txt").write_text("fix: handle `None` (#12)\n" * 20)
    (cache.parent / "wide.txt").write_text("fix: handle `None` (#12) été 中文\n" * 20)
    small = load_tokens(Source.of(composed(data_path=str(cache.parent / "small.txt"))), "cl100k_base")
    wide = load_tokens(Source.of(composed(data_path=str(cache.parent / "wide.txt"))), "cl100k_base")
    assert small.fresh and small.dtype == np.uint16 and wide.dtype == np.uint32  # cl100k ids pass 65,535
    assert small.path.stat().st_size == 2 * small.n and wide.path.stat().st_size == 4 * wide.n
    assert np.array(small.memmap()).tolist() == get_encoding("cl100k_base").encode("fix: handle `None` (#12)\n" * 20).tolist()
    again = load_tokens(Source.of(composed(data_path=str(cache.parent / "small.txt"))), "cl100k_base")
    assert not again.fresh and again.path == small.path  # read back, not tokenized again
    assert sorted(p.suffix for p in (cache / "tokens").glob(f"{small.path.stem}*")) == [".bin", ".json", ".lock", ".npy"]


def test_vocab_compaction_keeps_the_targets(cache):
    full = load_corpus(composed(vocab_compaction=False))
    compact = load_corpus(composed())
    assert compact.vocab_size < 2000 < full.vocab_size == full.max_token_value == compact.max_token_value
    assert torch.equal(compact.vocab[compact.train[:]], full.train[:])  # maps back to the very same ids


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet="ab Z1.,:'\n\t\ré中`#(", max_size=400).filter(str.strip))
def test_tokenized_in_segments_on_threads_the_ids_are_the_whole_texts(tmp_path_factory, monkeypatch, text):
    """Segments of a few bytes, cut only at safe places, in blocks on two threads: the same ids as
    tiktoken's encode_ordinary over the whole text at once (what the book does)."""
    d = tmp_path_factory.mktemp("seg")
    (d / "t.txt").write_text(text, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sources, "SEGMENT_BYTES", 7)
        mp.setattr(tokenize, "BLOCK_BYTES", 5)
        mp.setenv(tokenize.THREADS_ENV, "2")
        segments = list(Source.of(composed(data_path=str(d / "t.txt"))).segments([d / "t.txt"]))
        out = io.BytesIO()
        enc = get_encoding("cl100k_base")
        tokenize.tokenize_to(out, iter(segments), enc, "none", lambda n: None)
    assert "".join(s.text for s in segments) == text
    assert np.frombuffer(out.getvalue(), dtype=np.uint32).tolist() == enc.tiktoken.encode_ordinary(text)


def test_the_books_ids_batches_and_eval_windows_are_as_before(cache):
    """What main (ce22450) did in memory: the whole text tokenized at once, np.unique and searchsorted,
    int64 tensors indexed. The memory-mapped corpus gives the same ids, the same random batches for
    a seed and the same eval windows."""
    text = synthetic.generate()
    ids = np.asarray(get_encoding("cl100k_base").encode(text).tolist(), dtype=np.uint32)
    vocab = np.unique(ids)
    old = torch.from_numpy(np.searchsorted(vocab, ids).astype(np.int64))
    n_train = int(len(old) * 0.9)
    c = load_corpus(composed())
    assert torch.equal(c.vocab, torch.from_numpy(vocab.astype(np.int64))) and c.max_token_value == int(ids.max()) + 1
    assert torch.equal(c.train[:], old[:n_train]) and torch.equal(c.valid[:], old[n_train:])
    ours, before = BatchSampler(c.train, 2, 32, seed=1337), BatchSampler(old[:n_train], 2, 32, seed=1337)
    for _ in range(5):
        (x, y), = ours.step()
        (bx, by), = before.step()
        assert torch.equal(x, bx) and torch.equal(y, by)
    starts = spread_starts(len(c.valid), 32, 1024)  # fewer windows than the cap: every one, as before
    assert torch.equal(starts, torch.arange((len(c.valid) - 1) // 32) * 32)


def test_the_final_eval_spreads_its_windows_over_the_whole_split():
    starts = spread_starts(100_001, 100, 10)
    assert len(starts) == 10 and starts[0] == 0 and starts[-1] == 99_900  # the first and the last window
    assert (starts.diff() > 9_000).all()  # evenly spaced
    assert len(spread_starts(100_001, 100, 0)) == 1000  # 0: every one


def test_csv_column_is_read_one_title_per_line(tmp_path):
    f = tmp_path / "titles.csv"
    f.write_text('repo,pr,title\na/b,1,"Fix X, finally"\na/b,2,Add Y\n')
    assert Source.of(composed(data_path=str(f), text_column="title")).text() == "Fix X, finally\nAdd Y\n"
    assert Source.of(composed(data_path=str(f))).text() == f.read_text()  # raw, as the book reads it


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})


def test_pr_titles_csv_from_a_local_git_clone(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "remote", "add", "origin", "git@github.com:acme/widgets.git")
    for subject in ["Initial commit", "Fix crash on empty input (#12)", "docs: tidy README (#15)",
                    "Merge branch 'x'", "feat(api): add `limit` param (#21)"]:
        git(repo, "commit", "-q", "--allow-empty", "-m", subject)
    out = tmp_path / "titles.csv"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "build_pr_titles_csv.py"), str(repo), "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_text().splitlines() == ["repo,pr,title", "acme/widgets,12,Fix crash on empty input",
                                            "acme/widgets,15,docs: tidy README",
                                            "acme/widgets,21,feat(api): add `limit` param"]
    assert Source.of(composed(data_path=str(out), text_column="title")).text().startswith("Fix crash on empty input\n")


@pytest.mark.skipif(not (SHARED_DATA / "github_pr_titles.csv").exists(), reason="../shared/data not present")
def test_trains_on_the_real_pr_titles_corpus(trainer_here, tmp_path):
    csv = SHARED_DATA / "github_pr_titles.csv"
    r = trainer_here(*TINY, "data=github_pr_titles", f"data_path={csv}")
    assert r.returncode == 0, r.stderr
    rows = metrics(run_dirs(tmp_path)[0])
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"]
    r = trainer_here(*TINY, "data=text", f"data_path={csv}", "max_iters=2")  # the book's way: the raw file
    assert r.returncode == 0, r.stderr


def test_tokenizing_shows_mb_done_rate_and_eta_as_a_bar_or_plain_lines(monkeypatch, caplog, capsys):
    monkeypatch.setattr(tokenize.Progress, "PLAIN_EVERY_S", 0.0)
    monkeypatch.setattr(tokenize.Progress, "DELAY_S", 0.0)
    with caplog.at_level("INFO", logger="trainer"):
        plain = tokenize.Progress(4_000_000, False, "data_path=big.txt")  # progress=false, or no terminal
        plain(1_000_000)
        plain.close()
    assert re.fullmatch(r"tokenizing data_path=big.txt: 1\.0 of 4\.0 MB \(25%\), [\d.]+ MB/s, ETA \d+ s",
                        caplog.messages[-1]), caplog.messages
    bar = tokenize.Progress(4_000_000, True, "data_path=big.txt")  # progress=true: tqdm's bar on stderr
    bar(2_000_000)
    bar.close()
    err = capsys.readouterr().err
    assert "tokenizing" in err and "2.00M/4.00M" in err and "B/s" in err
