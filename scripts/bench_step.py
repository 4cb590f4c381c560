"""One training step of the model, side by side: another checkout's model against this one's, or
model variants against the book's model, in one process, alternating, the best of several rounds.

    python scripts/bench_step.py --code ../old-checkout            # old model.py vs this one
    python scripts/bench_step.py --variant positions=rope --variant activation=swiglu,bias=false
    python scripts/bench_step.py --dtype float32 --vocab 1550 --threads 2

What it times is the step of trainer.train.train_step without the data: forward pass and loss,
backward pass, fused AdamW update, on fixed random ids (the book's batch 2 x 128 by default), with
the trainer's own CPU setup (threads, malloc settings) and bf16 autocast where `dtype=auto` would
use it. Whole runs, with their evals and checkpoints, are timed by scripts/bench.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer.device import autocast, autocast_dtype, configure  # noqa: E402
from trainer.model import GPT  # noqa: E402

BOOK = dict(d_model=80, num_blocks=6, num_heads=4, context_length=128, dropout=0.1)


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_class(code: Path) -> type:
    """The GPT class of another checkout's trainer/model.py, bound to that checkout's own
    trainer/kernels.py where it has one (its `from trainer.kernels import ...` runs while that
    module stands in for this checkout's)."""
    ours = sys.modules.get("trainer.kernels")
    kernels = code / "trainer" / "kernels.py"
    if kernels.is_file():
        sys.modules["trainer.kernels"] = load_module(f"kernels_{code.name}", kernels)
    try:
        return load_module(f"model_{code.name}", code / "trainer" / "model.py").GPT
    finally:
        if ours is not None:
            sys.modules["trainer.kernels"] = ours


def parse_overrides(spec: str) -> dict:
    out = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        out[key] = {"true": True, "false": False}.get(value, value)
    return out


def step_fn(cls: type, h: dict, batch: int, amp) -> Callable[[], None]:
    torch.manual_seed(0)
    model = cls(h).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, h["vocab_size"], (batch, h["context_length"]))
    y = torch.randint(0, h["vocab_size"], (batch, h["context_length"]))
    device = torch.device("cpu")

    def step() -> None:
        with autocast(device, amp):
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):  # warm-up: allocator, oneDNN primitives
        step()
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--code", type=Path, action="append", default=[], help="another checkout to time beside this one")
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="architecture keys over the book's model (e.g. positions=rope)")
    p.add_argument("--vocab", type=int, default=7508, help="output width (7,508: the PR-titles CSV's ids)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=15, help="steps a round")
    args = p.parse_args()

    configure(torch.device("cpu"), args.threads)
    amp = autocast_dtype(torch.device("cpu"), args.dtype)
    h = {**BOOK, "vocab_size": args.vocab}
    steps = {f"{code.name} (book's model)": step_fn(model_class(code.resolve()), h, args.batch, amp)
             for code in args.code}
    steps["this checkout (book's model)"] = step_fn(GPT, h, args.batch, amp)
    for spec in args.variant:
        steps[spec] = step_fn(GPT, {**h, **parse_overrides(spec)}, args.batch, amp)

    best = dict.fromkeys(steps, float("inf"))
    for _ in range(args.rounds):  # alternating, so that a busy moment slows every candidate alike
        for name, step in steps.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            best[name] = min(best[name], (time.perf_counter() - t) / args.steps)
    base = best["this checkout (book's model)"]
    print(f"one training step, batch {args.batch} x {BOOK['context_length']}, vocab {args.vocab}, "
          f"{'bf16 autocast' if amp else 'float32'}, {args.threads} thread(s); best of {args.rounds} rounds:")
    for name, s in best.items():
        print(f"  {name:40s} {s * 1e3:6.1f} ms   x{s / base:.2f} of this checkout's book model")


if __name__ == "__main__":
    main()
