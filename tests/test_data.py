"""The corpus: synthetic PR titles by default, real CSVs and raw files, tokenized once and cached."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import REPO, SHARED_DATA, TINY, metrics, run_dirs

from trainer import data, synthetic


def test_synthetic_corpus_is_deterministic_realistic_and_about_300kb():
    text = synthetic.generate()
    assert text == synthetic.generate()
    assert 290_000 < len(text.encode()) < 320_000
    lines = text.splitlines()
    assert all(line.endswith(")") and "(#" in line for line in lines)
    assert sum(line.startswith(("feat", "fix")) for line in lines) > len(lines) / 3
    assert sum("`" in line for line in lines) > len(lines) / 5
    assert sum(line.startswith("Bump ") for line in lines) > len(lines) / 20


def test_offline_tokenizer_is_cl100k(cache_dir, monkeypatch):
    enc = data.get_encoding("cl100k_base")
    assert enc.n_vocab == 100277 and enc.encode("hello world") == [15339, 1917]


def test_tokenized_corpus_is_cached_as_uint32(cache_dir, monkeypatch, tmp_path):
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path))
    ids = data.tokenize("fix: handle `None` (#12)\n", "cl100k_base")
    assert ids.dtype.name == "uint32"
    (cached,) = tmp_path.glob("cl100k_base-*.npy")
    assert (data.tokenize("fix: handle `None` (#12)\n", "cl100k_base") == ids).all()
    assert len(list(tmp_path.glob("*.npy"))) == 1 and cached.exists()


def test_vocab_compaction_keeps_the_targets(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path))
    full = data.load_corpus(None, None, "cl100k_base", 0.9, 32, vocab_compaction=False)
    compact = data.load_corpus(None, None, "cl100k_base", 0.9, 32, vocab_compaction=True)
    assert compact.vocab_size < 2000 < full.vocab_size == full.max_token_value == compact.max_token_value
    assert torch.equal(compact.vocab[compact.train], full.train)  # maps back to the very same ids


def test_csv_column_is_read_one_title_per_line(tmp_path):
    f = tmp_path / "titles.csv"
    f.write_text('repo,pr,title\na/b,1,"Fix X, finally"\na/b,2,Add Y\n')
    assert data.read_text(str(f), "title") == "Fix X, finally\nAdd Y\n"
    assert data.read_text(str(f), None) == f.read_text()  # raw, as the book reads it


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
    assert data.read_text(str(out), "title").startswith("Fix crash on empty input\n")


@pytest.mark.skipif(not (SHARED_DATA / "github_pr_titles.csv").exists(), reason="../shared/data not present")
def test_trains_on_the_real_pr_titles_corpus(trainer_here, tmp_path):
    csv = SHARED_DATA / "github_pr_titles.csv"
    r = trainer_here(*TINY, "data=github_pr_titles", f"data_path={csv}")
    assert r.returncode == 0, r.stderr
    rows = metrics(run_dirs(tmp_path)[0])
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"]
    r = trainer_here(*TINY, "data=text", f"data_path={csv}", "max_iters=2")  # the book's way: the raw file
    assert r.returncode == 0, r.stderr
