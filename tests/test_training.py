"""Training through the CLI, as a user runs it: a run dir per run, a checkpoint, metrics, a log."""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml
from helpers import TINY, call_main, metrics, run_dirs

import trainer.generate
from trainer import rundir
from trainer.model import GPT

BOOK_LINE = re.compile(r"^Step: (\d+), Training Loss: (\d+\.\d{3}), Validation Loss: (\d+\.\d{3})$", re.M)


def test_a_run_writes_its_own_dir_with_checkpoint_config_metrics_and_log(cli, tmp_path):
    r = cli(*TINY, "d_model=128")
    assert r.returncode == 0, r.stderr
    (run,) = run_dirs(tmp_path)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", run.parent.name) and re.fullmatch(r"\d{2}-\d{2}-\d{2}", run.name)
    assert (run / rundir.CONFIG).exists()
    assert yaml.safe_load((run / rundir.OVERRIDES).read_text())[-1] == "d_model=128"
    assert (run / rundir.LOG).exists()
    ckpt = torch.load(run / rundir.CKPT, weights_only=True)
    assert {"model_state_dict", "h_params"} <= ckpt.keys()
    assert ckpt["h_params"]["d_model"] == 128
    assert ckpt["h_params"]["device"] == "cpu" and ckpt["h_params"]["max_token_value"] > 1000
    model = GPT(ckpt["h_params"])
    model.load_state_dict(ckpt["model_state_dict"])  # the book's loader: rebuild from h_params
    rows = metrics(run)
    assert [r["step"] for r in rows] == [0, 10, 20]
    assert set(rows[0]) >= {"step", "train_loss", "valid_loss", "learning_rate", "tokens_per_s", "elapsed_s"}
    assert [int(m[0]) for m in BOOK_LINE.findall(r.stdout)] == [0, 10, 20]
    assert not list(tmp_path.glob("*.ckpt")) and sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]


def test_loss_falls_clearly_on_the_synthetic_corpus_within_100_steps(trainer_here, tmp_path):
    r = trainer_here("max_iters=100", "eval_interval=50", "eval_iters=5", "device=cpu")  # the book's tiny model
    assert r.returncode == 0, r.stderr
    (run,) = run_dirs(tmp_path)
    rows = metrics(run)
    ln_vocab = math.log(torch.load(run / rundir.CKPT, weights_only=True)["h_params"]["vocab_size"])
    assert rows[0]["valid_loss"] > 0.9 * ln_vocab  # an untrained model is about uniform
    assert rows[-1]["valid_loss"] < 0.6 * ln_vocab


def test_runs_started_together_never_share_a_dir(cli, tmp_path):
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: cli(*TINY, "max_iters=2", "eval_interval=1"), range(2)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 2 and all((d / rundir.CKPT).exists() for d in dirs)


def test_cpu_runs_are_deterministic_for_a_fixed_seed(cli, tmp_path):
    for _ in range(2):
        assert cli(*TINY, "max_iters=10", "eval_interval=5").returncode == 0
    a, b = (metrics(d) for d in run_dirs(tmp_path))
    assert [(r["train_loss"], r["valid_loss"]) for r in a] == [(r["train_loss"], r["valid_loss"]) for r in b]


def generate(*args: str, cwd: Path):
    """`python -m trainer.generate args...`, in this process."""
    return call_main(trainer.generate.main, *args, cwd=cwd)


def test_generation_from_a_trained_checkpoint(trainer_here, tmp_path):
    assert trainer_here(*TINY, "max_iters=30").returncode == 0
    run = run_dirs(tmp_path)[0]
    r = generate(str(run), "--prompt", "fix: ", "--max_new_tokens", "20", "--seed", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("fix: ") and len(r.stdout) > len("fix: ") + 10
    again = generate(str(run / rundir.CKPT), "--prompt", "fix: ", "--max_new_tokens", "20", "--seed", "1",
                     cwd=tmp_path)
    assert again.stdout == r.stdout  # a seed makes sampling repeatable
    r = generate(str(run), "--max_new_tokens", "20", "--temperature", "0", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip()


def test_generation_errors_are_one_line(tmp_path):
    r = generate(str(tmp_path / "nowhere"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nowhere" in r.stderr
