"""The token cache is safe and shared: jobs that start together tokenize once, a run killed while
tokenizing leaves no half entry, a changed file is never served stale, a full disk is one line,
`python -m trainer.prepare` fills it for the jobs to read, and memory stays flat in the corpus size."""

from __future__ import annotations

import fcntl
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from helpers import TINY, kill, run_dirs, start_module, trainer_env, wait_for

from trainer import synthetic
from trainer.data.cache import entry_of, load_tokens
from trainer.data.encodings import get_encoding
from trainer.data.sources import Source
from trainer.data.tokenize import THREADS_ENV


def corpus(path: Path, copies: int) -> Path:
    """`copies` x the synthetic corpus (300 KB), each copy numbered so that no two lines repeat exactly."""
    base = synthetic.generate()
    with open(path, "w") as f:
        for i in range(copies):
            f.write(base.replace("(#", f"({i}#"))
    return path


def entries(cache: Path) -> list[str]:
    """The cache's files, but its lock files (kept, as trainer.lock keeps them)."""
    return sorted(p.name for p in (cache / "tokens").glob("*") if p.suffix != ".lock") if (cache / "tokens").exists() else []


def prepare(path: Path, cache: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer.prepare", "data=text", f"data_path={path}", "progress=false"],
                            cwd=path.parent, env=trainer_env(cache, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_prepare_fills_the_cache_and_the_run_then_reads_it(cli, tmp_path):
    text = corpus(tmp_path / "c.txt", 2)
    cache = tmp_path / "cache"
    r = cli("data=text", f"data_path={text}", module="trainer.prepare", extra_env={"TRAINER_CACHE_DIR": str(cache)})
    assert r.returncode == 0, r.stderr
    assert "Prepared data_path=" in r.stdout and "tokenized into the cache" in r.stdout
    assert not (tmp_path / "outputs").exists()  # nothing trained, no run dir
    again = cli("data=text", f"data_path={text}", "prepare=true", extra_env={"TRAINER_CACHE_DIR": str(cache)})
    assert again.returncode == 0 and "already in the cache" in again.stdout, again.stderr
    before = entries(cache)
    run = cli(*TINY, "data=text", f"data_path={text}", extra_env={"TRAINER_CACHE_DIR": str(cache)})
    assert run.returncode == 0, run.stderr
    assert entries(cache) == before and len(before) == 3  # .bin, .counts.npy, .json
    log = (run_dirs(tmp_path)[0] / "train.log").read_text()
    assert f"1 document of {text.stat().st_size:,} bytes (cache {cache / 'tokens'}" in log


def test_jobs_that_start_together_tokenize_once_the_others_wait(tmp_path, monkeypatch):
    text = corpus(tmp_path / "c.txt", 4)
    cache = tmp_path / "cache"
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(cache))
    lock = entry_of(Source.of({"data_path": str(text)}), [text], "cl100k_base").lock
    lock.parent.mkdir(parents=True)
    with open(lock, "a+") as f:  # held here, as a first job would: both processes wait for it
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"pid {os.getpid()} on this test\n")
        f.flush()
        procs = [prepare(text, cache) for _ in range(2)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and waiting_on(lock) != {p.pid for p in procs}:
            time.sleep(0.05)
        fcntl.flock(f, fcntl.LOCK_UN)
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    for _, err in outs:
        assert f"Waiting for pid {os.getpid()} on this test to tokenize data_path={text}" in err
    said = [out for out, _ in outs]
    assert sum("tokenized into the cache" in s for s in said) == 1  # one tokenized ...
    assert sum("already in the cache" in s for s in said) == 1  # ... the other read what it wrote


def waiting_on(lock: Path) -> set[int]:
    """The pids blocked on the flock of this file (Linux's /proc/locks: "1: -> FLOCK ADVISORY WRITE pid dev:inode ...")."""
    inode = lock.stat().st_ino
    fields = [line.split() for line in Path("/proc/locks").read_text().splitlines()]
    return {int(f[5]) for f in fields if len(f) > 6 and f[1] == "->" and f[6].endswith(f":{inode}")}


def test_a_run_killed_while_tokenizing_leaves_no_half_entry_and_the_next_starts_over(tmp_path, cache_dir):
    text = corpus(tmp_path / "c.txt", 80)  # 24 MB: a few seconds on one thread
    cache = tmp_path / "cache"
    p = start_module("trainer.prepare", "data=text", f"data_path={text}", cwd=tmp_path,
                     env=trainer_env(cache, **{THREADS_ENV: "1"}))
    assert wait_for(lambda: any(n.endswith(".tmp") for n in entries(cache)), p, timeout=60), "never started"
    time.sleep(0.3)
    kill(p)
    assert all(n.endswith(".tmp") for n in entries(cache))  # no .bin, no .json: no entry
    tokens = load_tokens_in(cache, text)
    assert tokens.fresh and not any(n.endswith(".tmp") for n in entries(cache))  # started over, cleaned up
    with_threads = np.array(tokens.memmap())
    assert len(with_threads) == tokens.n and tokens.documents == 1 and tokens.bytes == text.stat().st_size
    first_mb = text.read_text()[:1_000_000].rsplit("\n", 1)[0] + "\n"
    want = get_encoding("cl100k_base").encode(first_mb).tolist()
    assert with_threads[:len(want)].tolist() == want


def load_tokens_in(cache: Path, text: Path, **keys):
    old = os.environ.get("TRAINER_CACHE_DIR")
    os.environ["TRAINER_CACHE_DIR"] = str(cache)
    try:
        return load_tokens(Source.of({"data_path": str(text), **keys}), "cl100k_base")
    finally:
        os.environ.pop("TRAINER_CACHE_DIR") if old is None else os.environ.__setitem__("TRAINER_CACHE_DIR", old)


def test_a_changed_file_is_never_served_stale(tmp_path):
    cache = tmp_path / "cache"
    text = tmp_path / "c.txt"
    text.write_text("fix: the first version of this corpus\n" * 50)
    first = load_tokens_in(cache, text)
    size = text.stat().st_size
    text.write_text("feat: the second version, same size!!\n" * 50)  # same size: the mtime tells
    assert text.stat().st_size == size
    second = load_tokens_in(cache, text)
    assert second.fresh and second.path != first.path
    assert get_encoding("cl100k_base").decode(np.array(second.memmap()).tolist()).startswith("feat: the second")
    assert not load_tokens_in(cache, text).fresh  # unchanged since: read back
    assert load_tokens_in(cache, text, text_column=None, document_separator="eot").path != second.path  # keys too


def test_a_full_disk_while_writing_the_cache_is_one_line_and_leaves_nothing(tmp_path):
    text = corpus(tmp_path / "c.txt", 4)
    cache = tmp_path / "cache"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG, as a full disk fails with ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    r = subprocess.run([sys.executable, "-m", "trainer", *TINY, "data=text", f"data_path={text}"], cwd=tmp_path,
                       env=trainer_env(cache), capture_output=True, text=True, preexec_fn=limit)
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"error: {cache / 'tokens'}") and "cannot write the token cache (EFBIG" in line
    assert "partial files were removed" in line
    assert entries(cache) == []
    assert not list((tmp_path / "outputs").rglob("*.ckpt")) if (tmp_path / "outputs").exists() else True


def peak_rss_mb(args: list[str], cwd: Path, env: dict) -> tuple[float, int, str]:
    """`python -m trainer args` in a child: its own peak resident memory (MB, from os.wait4), exit code, stderr."""
    with open(cwd / "out.txt", "w") as out, open(cwd / "err.txt", "w") as err:
        p = subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
    return usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), (cwd / "err.txt").read_text()


def test_memory_stays_flat_as_the_corpus_grows(tmp_path):
    """A 20-step run, tokenizing included, on 12 MB and on 48 MB: before, the corpus lived in memory as
    Python objects (~36 bytes a token: +300 MB here); now a few blocks are in flight, whatever the size."""
    small, big = corpus(tmp_path / "small.txt", 40), corpus(tmp_path / "big.txt", 160)
    rss = {}
    for text in (small, big):
        rss[text.name], code, err = peak_rss_mb([*TINY, "data=text", f"data_path={text}", "progress=false"], tmp_path,
                                                trainer_env(tmp_path / f"cache-{text.stem}"))
        assert code == 0, err
    assert rss["big.txt"] < 1.3 * rss["small.txt"], rss
    assert rss["big.txt"] - rss["small.txt"] < 40, rss  # MB, for 36 MB more text (9M more tokens)


def test_the_final_eval_scores_final_eval_windows_spread_over_the_valid_split(trainer_here, tmp_path):
    text = corpus(tmp_path / "c.txt", 1)
    r = trainer_here(*TINY, "max_iters=2", "data=text", f"data_path={text}", "final_eval_windows=5")
    assert r.returncode == 0, r.stderr
    summary = json.loads((run_dirs(tmp_path)[0] / "summary.json").read_text())
    assert summary["final_valid_windows"] == 5 and summary["final_eval_s"] >= 0
    r = trainer_here(*TINY, "max_iters=2", "data=text", f"data_path={text}", "final_eval_windows=0")
    assert r.returncode == 0, r.stderr
    n = int(re.search(r"([\d,]+) tokens", (run_dirs(tmp_path)[1] / "train.log").read_text()).group(1).replace(",", ""))
    every = json.loads((run_dirs(tmp_path)[1] / "summary.json").read_text())["final_valid_windows"]
    assert every == (n - int(n * 0.9) - 1) // 32  # 0: every window of the split, as before the cap
