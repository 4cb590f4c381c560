"""Stop one run again and again, at random moments, with real signals, and check that nothing is lost.

    python scripts/stress_resume.py --cycles 20            # ~2 minutes on a 2-core CPU

A tiny model trains in a child process; at a random moment it gets SIGTERM, SIGUSR1 or SIGKILL
(in turn; a signal that lands while the process is still starting kills it), and is resumed with `resume=<run dir>`, until it finishes. Then the same run is trained
once without stops, and the two are compared: every metrics row (step, train and valid loss,
learning rate) and the final weights must be identical. Prints one line per cycle and a total.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from trainer import rundir  # noqa: E402

ARGS = ["d_model=32", "num_blocks=2", "num_heads=2", "context_length=32", "batch_size=4", "max_iters=3000",
        "eval_interval=250", "eval_iters=2", "device=cpu", "num_threads=1", "checkpoint_interval=100"]
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGKILL)


def start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rows(run: Path) -> list[tuple]:
    return [(r["step"], r["train_loss"], r["valid_loss"], r["learning_rate"]) for r in rundir.read_metrics(run)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=20, help="stops to try at most")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="stress-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRAINER_CACHE_DIR": str(work / "cache")}
    run, stops, kinds, saved = work / "stopped", 0, {}, 0
    proc = start([*ARGS, f"hydra.run.dir={run}"], work, env)
    while True:
        delay = rng.uniform(1.5, 3.0)  # start-up is ~1.3 s: most stops land mid-training
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            if stops < a.cycles:
                sig = SIGNALS[stops % len(SIGNALS)]
                proc.send_signal(sig)
                _, err = proc.communicate(timeout=120)
                stops += 1
                kinds[sig.name] = kinds.get(sig.name, 0) + 1
                saved += proc.returncode in (128 + signal.SIGTERM, 128 + signal.SIGUSR1)  # caught mid-training
                step = torch.load(run / rundir.CKPT, weights_only=True)["step"] if (run / rundir.CKPT).exists() else None
                print(f"stop {stops}: {sig.name} -> exit {proc.returncode}, checkpoint at step {step}; "
                      f"{err.strip().splitlines()[-1] if err.strip() else '(no message)'}", flush=True)
                proc = start([f"resume={run}"], work, env) if (run / rundir.CKPT).exists() else \
                    start([*ARGS, f"hydra.run.dir={run}"], work, env)
                continue
            proc.wait()
        if proc.returncode != 0:
            sys.exit(f"error: the run failed (exit {proc.returncode}): {proc.stderr.read()[-2000:]}")
        break
    straight = work / "straight"
    ref = start([*ARGS, f"hydra.run.dir={straight}"], work, env)
    ref.wait()
    same_rows = rows(run) == rows(straight)
    a_w = torch.load(run / rundir.CKPT, weights_only=True)["model_state_dict"]
    b_w = torch.load(straight / rundir.CKPT, weights_only=True)["model_state_dict"]
    same_weights = all(torch.equal(v, b_w[k]) for k, v in a_w.items())
    print(f"{stops} stops ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}; {saved} caught mid-training "
          "and saved at their step, the others killed the process, in training or still starting) and resumes; "
          f"metrics rows identical to an unstopped run: {same_rows} ({len(rows(run))} rows); "
          f"final weights identical: {same_weights}; work dir {work}")
    sys.exit(0 if same_rows and same_weights else 1)


if __name__ == "__main__":
    main()
