"""Side by side: the book's train.py against this trainer, same corpus, same hyperparameters.

    python scripts/bench.py                      # 1 baseline run, 3 of ours, alternating (~10 min here)
    python scripts/bench.py --quick              # 100 steps, one run each: a smoke test of the bench
    python scripts/bench.py --baseline-reps 0 --variant t1:num_threads=1 --variant t2:num_threads=2

The baseline is `../shared/baseline/seed_train.py` (or --baseline DIR), run unchanged through
scripts/run_baseline.py, which only adds a save of its final model. Ours is `python -m trainer
data=text data_path=<csv>` with the book's hyperparameters. Runs alternate (ours, book, ours,
...), so that a busy machine slows both alike; each figure is the median over the repetitions.

Measured per run, in a child process each:
- wall time from spawning the process to its exit (the checkpoint is saved before it exits);
- training tokens/s: max_iters * batch_size * context_length over that wall time ("run"), and
  over the training loop alone with its evaluations ("loop": the book's own printed figure, and
  our summary.json's wall_s);
- peak RSS and CPU time of that child alone (os.wait4's rusage);
- final valid loss, re-evaluated here for both models on the SAME windows: every
  non-overlapping window of the valid split (the last 10% of the corpus), in cl100k ids. Each
  checkpoint is scored in a fresh child process whose import path starts with the code that
  trained it (the variant's checkout, or the baseline dir), so `--variant NAME@CHECKOUT` is
  evaluated with that checkout's own model, not this one's.

Why the compacted model's loss compares with the book's: our model's softmax covers only the
token ids present in the corpus; read as a model over all cl100k ids, it gives every other id
probability 0 (logit -inf). Those ids are never targets, so its cross-entropy over the full id
space is exactly the compact one: same targets, same windows, a proper distribution over the
same ids. One caveat is reported with the numbers: the id set comes from the whole corpus, valid
split included, so a valid token that never occurs in the train split still gets an (untrained)
output row. The table also gives the book model's loss restricted to the same id set
(renormalized over it), the comparison with that knowledge given to both.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
# ../shared next to the checkout (or next to the dir holding it, for a worktree under wt/)
SHARED = next((d / "shared" for d in (REPO.parent, REPO.parent.parent) if (d / "shared").is_dir()),
              REPO.parent / "shared")
DEFAULT_BASELINE = SHARED / "baseline"
DEFAULT_DATA = SHARED / "data" / "github_pr_titles.csv"
# No trainer import at the top, nor a sys.path entry for REPO: the scoring child (--score) runs
# this file too, and must import its own checkout's trainer. The parent puts REPO first in main().
WINDOWS = "valid-windows.pt"  # the fixed windows, saved once by the parent for the scoring children

# The book's hyperparameters (seed_train.py's h_params), as this trainer's overrides.
BOOK = dict(d_model=80, num_blocks=6, num_heads=4, batch_size=2, context_length=128, max_iters=500,
            learning_rate=1e-3, dropout=0.1, eval_interval=50, eval_iters=10, TORCH_SEED=1337)


@dataclass
class Run:
    who: str  # "book" or a variant name
    rep: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    loop_s: Optional[float]  # the training loop with its evals, as the program itself reports it
    own_valid_loss: Optional[float]  # the last valid loss the program printed
    model_path: Path
    eval_loss: Optional[float] = None  # re-evaluated on the shared fixed windows
    eval_loss_restricted: Optional[float] = None  # book only: softmax over the corpus's ids
    # ours only: the share of the measured CPU matmul peak (one core x threads) that the training
    # steps reached, and that the whole loop (its evals and checkpoints too) reached
    steps_mfu: Optional[float] = None
    loop_mfu: Optional[float] = None


@dataclass
class Variant:
    name: str
    overrides: list[str] = field(default_factory=list)
    repo: Path = REPO


def parse_variant(spec: str) -> Variant:
    """NAME[@CHECKOUT][:key=value,key=value]: our trainer from CHECKOUT with extra overrides."""
    head, _, overrides = spec.partition(":")
    name, _, repo = head.partition("@")
    return Variant(name, [o for o in overrides.split(",") if o], Path(repo).resolve() if repo else REPO)


# ----------------------------------------------------------------------------- running


def timed_child(cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> tuple[float, float, float, int]:
    """Run cmd; return (wall s, CPU s, peak RSS MB, exit code) of this child alone."""
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode


def run_book(args, rep: int, work: Path, env: dict[str, str]) -> Run:
    out = work / f"book-{rep}.pt"
    log = work / f"book-{rep}.log"
    cmd = [sys.executable, str(REPO / "scripts" / "run_baseline.py"), str(args.baseline), str(out),
           str(args.data), str(args.iters)]
    wall, cpu, rss, code = timed_child(cmd, log, env, work)
    text = log.read_text()
    if code != 0:
        sys.exit(f"error: the baseline failed (exit {code}); see {log}:\n{text[-2000:]}")
    loop = re.search(r"loop_s=([\d.]+)", text)
    losses = re.findall(r"Validation Loss: ([\d.]+)", text)
    return Run("book", rep, wall, cpu, rss, float(loop.group(1)) if loop else None,
               float(losses[-1]) if losses else None, out)


def our_command(args, variant: Variant, run_dir: Path, iters: int) -> list[str]:
    book = {**BOOK, "max_iters": iters}
    return [sys.executable, "-m", "trainer", "data=text", f"data_path={args.data}", "device=cpu",
            *(f"{k}={v}" for k, v in book.items()), f"hydra.run.dir={run_dir}", "progress=false",
            *variant.overrides]


def run_ours(args, variant: Variant, rep: int, work: Path, env: dict[str, str]) -> Run:
    run_dir = work / f"{variant.name}-{rep}"
    log = work / f"{variant.name}-{rep}.log"
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(variant.repo), env.get("PYTHONPATH")]))}
    wall, cpu, rss, code = timed_child(our_command(args, variant, run_dir, args.iters), log, env, work)
    if code != 0:
        sys.exit(f"error: {variant.name} failed (exit {code}); see {log}:\n{log.read_text()[-2000:]}")
    from trainer.rundir import CKPT, SUMMARY, read_metrics, read_summary

    summary = read_summary(run_dir)
    if not summary:
        sys.exit(f"error: {variant.name} wrote no {run_dir / SUMMARY}; see {log}")
    run = Run(variant.name, rep, wall, cpu, rss, summary.get("wall_s"), summary.get("final_valid_loss"),
              run_dir / CKPT)
    # Each eval row has the steps' tokens/s and their MFU (tokens/s x FLOPs/token / peak): their
    # ratio, FLOPs/token / peak, turns the loop's tokens/s into the loop's MFU.
    rows = [r for r in read_metrics(run_dir) if r.get("mfu") and r.get("tokens_per_s")]
    if rows and run.loop_s:
        run.steps_mfu = statistics.median(r["mfu"] for r in rows)
        run.loop_mfu = args.iters * BOOK["batch_size"] * BOOK["context_length"] / run.loop_s * (
            rows[-1]["mfu"] / rows[-1]["tokens_per_s"])
    return run


# ----------------------------------------------------------------------------- evaluating


def valid_windows(data_path: Path, context_length: int, train_split: float = 0.9):
    """Every non-overlapping window of the valid split, in cl100k ids: inputs and targets (N, T),
    plus the corpus's sorted id set and the ids of the train split (for the caveat)."""
    import numpy as np
    import torch

    from trainer.data.cache import load_tokens
    from trainer.data.sources import Source

    ids = np.array(load_tokens(Source.of({"data_path": str(data_path)}), "cl100k_base").memmap()).astype(np.int64)
    n_train = int(len(ids) * train_split)  # the book's split and ours: the same position
    valid = torch.from_numpy(ids[n_train:])
    n = (len(valid) - 1) // context_length
    starts = torch.arange(n) * context_length
    idx = starts[:, None] + torch.arange(context_length + 1)
    chunk = valid[idx]
    return chunk[:, :-1], chunk[:, 1:], torch.from_numpy(np.unique(ids)), torch.from_numpy(np.unique(ids[:n_train]))


def _mean_ce(logits_fn, x, y, rows: int, allowed=None) -> float:
    """Mean next-token cross-entropy over all windows, `rows` windows per forward. allowed: a
    column subset to renormalize over (the others count as probability 0)."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for xb, yb in zip(x.split(rows), y.split(rows), strict=True):
            logits = logits_fn(xb)  # (B, T, V)
            if allowed is not None:
                logits = logits[..., allowed]
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), yb.reshape(-1),
                                     reduction="sum").item()
            count += yb.numel()
    return total / count


# The model class each kind of checkpoint was trained with, imported from the code dir first on sys.path.
MODELS = {"book": ("seed_model", "Model"), "ours": ("trainer.model", "GPT")}


def load_model(path: Path, kind: str):
    """The one loader for both kinds: MODELS[kind] built from the checkpoint's h_params, its
    weights loaded, in eval mode. Returns (model, state): our reading needs the state's vocab."""
    import importlib

    import torch

    module, name = MODELS[kind]
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = getattr(importlib.import_module(module), name)(state["h_params"])
    model.load_state_dict(state["model_state_dict"])
    model.eval()
    return model, state


def book_losses(model, x, y, vocab) -> tuple[float, float]:
    """The book model's loss over all its max_token_value classes, and restricted to the corpus's ids."""
    import torch

    full = _mean_ce(lambda xb: model(xb)[0], x, y, rows=2)
    rank = torch.searchsorted(vocab, y.contiguous())  # the targets as positions in the corpus's id set
    restricted = _mean_ce(lambda xb: model(xb)[0], x, rank, rows=2, allowed=vocab)
    return full, restricted


def our_loss(model, state, x, y) -> float:
    """Our model's loss in cl100k id space: a compacted model gives ids outside its vocab logit
    -inf, which never are targets, so the loss equals the one over its own classes."""
    import torch

    vocab = state.get("vocab")
    if vocab is None:  # no compaction: model ids are cl100k ids
        return _mean_ce(lambda xb: model(xb)[0], x, y, rows=8)
    to_model = torch.searchsorted(vocab, x.contiguous())
    assert torch.equal(vocab[to_model], x), "a valid token outside the checkpoint's vocab"
    targets = torch.searchsorted(vocab, y.contiguous())
    return _mean_ce(lambda i: model(to_model[i])[0], torch.arange(len(x)), targets, rows=8)


def score(kind: str, path: Path, x, y, vocab) -> dict:
    """The checkpoint's losses on the windows, with the model class importable here: `loss` (the
    table's shared reading) and `restricted` (the book's softmax over the corpus's ids; None for ours)."""
    model, state = load_model(path, kind)
    if kind == "book":
        full, restricted = book_losses(model, x, y, vocab)
        return {"loss": full, "restricted": restricted}
    return {"loss": our_loss(model, state, x, y), "restricted": None}


def save_windows(path: Path, x, y, vocab) -> Path:
    """The windows and the corpus's id set, computed once by the parent, for every scoring child."""
    import torch

    torch.save({"x": x, "y": y, "vocab": vocab}, path)
    return path


def score_main(argv: list[str]) -> None:
    """The scoring child: `bench.py --score KIND --code DIR --windows FILE CKPT` prints one JSON line,
    {"loss", "restricted", "model_file"}. DIR goes first on sys.path before anything imports the
    model, and the model's module must come from DIR: a checkout is scored with its own code."""
    p = argparse.ArgumentParser(prog="bench.py --score", description=score_main.__doc__)
    p.add_argument("kind", choices=sorted(MODELS))
    p.add_argument("--code", type=Path, required=True, help="the checkout (or baseline dir) that trained it")
    p.add_argument("--windows", type=Path, required=True, help="the parent's saved windows (save_windows)")
    p.add_argument("ckpt", type=Path)
    args = p.parse_args(argv)
    code = args.code.resolve()
    sys.path.insert(0, str(code))
    import importlib

    import torch

    module = importlib.import_module(MODELS[args.kind][0])
    if not Path(module.__file__).resolve().is_relative_to(code):
        sys.exit(f"error: {module.__name__} imported from {module.__file__}, not from {code}")
    w = torch.load(args.windows, map_location="cpu", weights_only=True)
    result = score(args.kind, args.ckpt, w["x"], w["y"], w["vocab"])
    print(json.dumps({**result, "model_file": str(Path(module.__file__).resolve())}))


def score_in_child(kind: str, path: Path, code: Path, windows: Path, env: Optional[dict[str, str]] = None) -> dict:
    """score() in a fresh interpreter whose imports start at `code`: the parent has this checkout's
    trainer imported already, so only a new process can load another checkout's model."""
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(code)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--score", kind, "--code", str(code),
           "--windows", str(windows), str(path)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"error: scoring {path} with {code} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- reporting


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def machine() -> str:
    import torch

    from trainer.device import available_cores, cpu_name

    return f"{cpu_name()}, {available_cores()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"


def med(values: list[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cell(values: list[Optional[float]], fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    text = format(statistics.median(values), fmt)
    if len(values) > 1 and min(values) != max(values):
        text += f" ({format(min(values), fmt)}-{format(max(values), fmt)})"
    return text


def table(runs: list[Run], names: list[str], tokens: int) -> str:
    book = [r for r in runs if r.who == "book"]
    by = {n: [r for r in runs if r.who == n] for n in names}
    cols = (["book's train.py"] if book else []) + names
    groups = ([book] if book else []) + [by[n] for n in names]
    rows = [
        ("wall time, process start to checkpoint saved (s)", lambda r: r.wall_s, ".1f", "time"),
        ("training tokens/s, whole run", lambda r: tokens / r.wall_s, ",.0f", "rate"),
        ("training tokens/s, training loop with evals", lambda r: tokens / r.loop_s if r.loop_s else None, ",.0f", "rate"),
        ("training loop's MFU: share of the measured one-core fp32 matmul peak", lambda r: r.loop_mfu, ".1%", None),
        ("training steps' MFU (evals and checkpoints left out)", lambda r: r.steps_mfu, ".1%", None),
        ("CPU time, user + sys (s)", lambda r: r.cpu_s, ".1f", "time"),
        ("peak RSS (MB)", lambda r: r.peak_rss_mb, ",.0f", "time"),
        ("final valid loss, same fixed windows for both", lambda r: r.eval_loss, ".4f", None),
        ("final valid loss, book's softmax renormalized over the corpus's ids",
         lambda r: r.eval_loss_restricted, ".4f", None),
        ("last valid loss each program printed (its own batches)", lambda r: r.own_valid_loss, ".3f", None),
    ]
    head = "| | " + " | ".join(cols) + (" | " + " | ".join(f"book / {n}" for n in names) if book else "") + " |"
    lines = [head, "|" + "---|" * (1 + len(cols) + (len(names) if book else 0))]
    for label, get, fmt, kind in rows:
        vals = [[get(r) for r in g] for g in groups]
        if all(not [v for v in vs if v is not None] for vs in vals):
            continue
        line = f"| {label} | " + " | ".join(cell(vs, fmt) for vs in vals)
        if book:
            ratios = []
            for vs in vals[1:]:
                b, o = med(vals[0]), med(vs)
                if kind and b and o:
                    ratios.append(f"**{b / o:.1f}x**" if kind == "time" else f"**{o / b:.1f}x**")
                else:
                    ratios.append("")
            line += " | " + " | ".join(ratios)
        lines.append(line + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line, with --quick applied and the paths checked."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE, help="dir with seed_train.py")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the corpus, read raw by both")
    p.add_argument("--iters", type=int, default=BOOK["max_iters"])
    p.add_argument("--reps", type=int, default=3, help="runs of each of our variants")
    p.add_argument("--baseline-reps", type=int, default=1, help="runs of the book's script (~410 s each here)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME[@CHECKOUT][:k=v,...]",
                   help="one of our configurations to time (default: ours, the default config)")
    p.add_argument("--quick", action="store_true", help="100 steps, one run each")
    p.add_argument("--workdir", type=Path, help="where runs, logs and bench.json go (default: a temp dir)")
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.reps, args.baseline_reps = 100, 1, min(args.baseline_reps, 1)
    args.data = args.data.resolve()
    args.baseline = args.baseline.resolve()
    if not args.data.is_file():
        sys.exit(f"error: --data {args.data}: file not found")
    if args.baseline_reps and not (args.baseline / "seed_train.py").is_file():
        print(f"note: no {args.baseline / 'seed_train.py'}: timing our trainer only", file=sys.stderr)
        args.baseline_reps = 0
    return args


def warm_up(args, variants: list[Variant], work: Path, env: dict[str, str]) -> None:
    """A one-step run of each variant, untimed: it fills the tokenizer cache (part of our design;
    the book tokenizes in every run) and measures the CPU peak for MFU (cached too)."""
    for v in variants:
        warm = subprocess.run(our_command(args, v, work / f"warmup-{v.name}", 1) + ["eval_interval=1"],
                              env={**env, "PYTHONPATH": str(v.repo)}, cwd=work, capture_output=True, text=True)
        if warm.returncode:
            sys.exit(f"error: warm-up of {v.name} failed:\n{warm.stderr[-2000:]}")
    peaks = work / "cache" / "cpu-peak-flops.json"
    for key, flops in (json.loads(peaks.read_text()) if peaks.exists() else {}).items():
        print(f"measured CPU peak for MFU: {flops / 1e9:.1f} GFLOP/s a core ({key})")


def run_all(args, variants: list[Variant], work: Path, env: dict[str, str]) -> list[Run]:
    """Every timed run, alternating: ours, book, ours, ... so that a busy machine slows both alike."""
    runs: list[Run] = []
    for rep in range(max(args.reps, args.baseline_reps)):
        schedule = [v for v in variants if rep < args.reps]
        if rep < args.baseline_reps:  # between our runs: ours, book, ours, book, ours
            schedule.insert(len(schedule) // 2 if len(schedule) > 1 else 1, None)
        for v in schedule:
            started = datetime.datetime.now().strftime("%H:%M:%S")
            r = run_book(args, rep, work, env) if v is None else run_ours(args, v, rep, work, env)
            runs.append(r)
            print(f"[{started}] {r.who} #{rep + 1}: {r.wall_s:.1f} s wall, {r.cpu_s:.1f} s CPU, "
                  f"{r.peak_rss_mb:,.0f} MB peak RSS, own last valid loss {r.own_valid_loss}; "
                  f"load average after it {loadavg()}", flush=True)
    return runs


def evaluate(runs: list[Run], args, variants: list[Variant], windows: Path, env: dict[str, str]) -> None:
    """Every run's losses on the saved windows, each in a child importing the code that trained it."""
    repos = {v.name: v.repo for v in variants}
    for r in runs:
        kind, code = ("book", args.baseline) if r.who == "book" else ("ours", repos[r.who])
        scores = score_in_child(kind, r.model_path, code, windows, env)
        r.eval_loss, r.eval_loss_restricted = scores["loss"], scores["restricted"]


def report(runs: list[Run], args, variants: list[Variant], x, y, vocab, unseen: int) -> None:
    """The table, with what it measured on: machine, settings, the fixed windows, the commands."""
    tokens = args.iters * BOOK["batch_size"] * BOOK["context_length"]
    ours = [r for r in runs if r.who != "book"]
    deterministic = {n.name: len({r.eval_loss for r in ours if r.who == n.name}) == 1 for n in variants}
    print()
    print(f"Machine: {machine()}; {datetime.date.today()}. Book's hyperparameters (d_model 80, 6 blocks, "
          f"4 heads, batch 2, context 128, {args.iters} steps, lr 1e-3, dropout 0.1, eval every 50 on 10 "
          f"batches), corpus {args.data.name} read raw. Median over {args.baseline_reps} run(s) of the book's "
          f"script and {args.reps} of ours, alternating (min-max in brackets).")
    print()
    print(table(runs, [v.name for v in variants], tokens))
    print()
    print(f"Fixed evaluation: all {len(x)} non-overlapping {BOOK['context_length']}-token windows of the "
          f"valid split ({y.numel():,} targets, {unseen} of them ids absent from the train split; "
          f"{len(vocab):,} distinct ids in the corpus). Same final valid loss in every run of ours: "
          + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in deterministic.items()) + ".")
    for v in variants:
        print(f"{v.name}: python -m trainer " + " ".join(shlex.quote(a) for a in our_command(args, v, Path('RUN'), args.iters)[3:]))


def main() -> None:
    sys.path.insert(0, str(REPO))  # the parent's trainer (tokenizer, cache, run dir): this checkout's
    args = parse_args()
    variants = [parse_variant(v) for v in args.variant] or [Variant("ours")]
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)

    import torch

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_", "TRAINER_"))}
    env.update(TRAINER_CACHE_DIR=str(work / "cache"), PYTHONUNBUFFERED="1")
    print(f"machine: {machine()}", flush=True)
    print(f"corpus: {args.data}; {args.iters} steps x {BOOK['batch_size']} x {BOOK['context_length']} tokens; "
          f"workdir {work}")
    warm_up(args, variants, work, env)
    runs = run_all(args, variants, work, env)

    x, y, vocab, train_ids = valid_windows(args.data, BOOK["context_length"])
    evaluate(runs, args, variants, save_windows(work / WINDOWS, x, y, vocab), env)
    report(runs, args, variants, x, y, vocab, unseen=(~torch.isin(y, train_ids)).sum().item())
    (work / "bench.json").write_text(json.dumps([{**r.__dict__, "model_path": str(r.model_path)} for r in runs], indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--score"]:  # internal: the scoring child, see score_main
        score_main(sys.argv[2:])
    else:
        main()
