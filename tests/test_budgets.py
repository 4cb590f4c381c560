"""Compute axes, budgets and the best checkpoint: `tokens_seen` in every row (across resumes too),
runs that stop cleanly at max_tokens, max_time or early stopping (evaluated and saved where they
stop, summary.json saying why, resumable with a larger budget), and best.ckpt beside model.ckpt.

Every run here is a real tiny run in this process (trainer_here): none needs a process of its own.
The W&B side (tokens_seen as the losses' x-axis) is checked in test_wandb.py, the negative budgets
with the other one-line mistakes in test_bad_inputs.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import TINY, call_main, losses, metrics

import trainer.generate
from trainer import rundir

TOKENS_PER_STEP = 4 * 32  # TINY's batch_size x context_length, one rank, no accumulation


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


def load(run_dir: Path, name: str = rundir.CKPT) -> dict:
    return torch.load(run_dir / name, weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def steps_of(run_dir: Path) -> list[int]:
    return [r["step"] for r in metrics(run_dir)]


def generate(*args: str, cwd: Path):
    return call_main(trainer.generate.main, *args, cwd=cwd)


def test_rows_carry_tokens_seen_which_goes_on_across_a_resume_with_a_larger_batch(trainer_here, tmp_path):
    run = tmp_path / "run"
    ok(trainer_here(*TINY, "max_iters=10", "eval_interval=5", "hydra.run.dir=run"))
    ok(trainer_here("resume=run", "max_iters=20", "gradient_accumulation_steps=2"))  # 256 tokens a step now
    seen = [(r["step"], r["tokens_seen"]) for r in metrics(run)]
    assert seen == [(0, 0), (5, 640), (10, 1280), (15, 1280 + 5 * 256), (20, 1280 + 10 * 256)]
    assert rundir.read_summary(run)["tokens_seen"] == load(run)["tokens_seen"] == 3840


def test_a_checkpoint_from_before_budgets_still_resumes(trainer_here, tmp_path):
    run = tmp_path / "run"
    ok(trainer_here(*TINY, "max_iters=10", "eval_interval=5", "hydra.run.dir=run"))
    state = load(run)
    for key in ("tokens_seen", "evals_since_best", "stopped"):
        del state[key]
    torch.save(state, run / rundir.CKPT)
    ok(trainer_here("resume=run", "max_iters=20"))
    assert [r["tokens_seen"] for r in metrics(run)] == [s * TOKENS_PER_STEP for s in (0, 5, 10, 15, 20)]
    assert rundir.read_summary(run)["stopped"] == "max_iters"


def test_max_tokens_stops_before_the_step_that_would_pass_it_evaluated_and_saved(trainer_here, tmp_path):
    run = tmp_path / "run"
    ok(trainer_here(*TINY, "max_tokens=1000", "hydra.run.dir=run"))  # 7 steps = 896 tokens; an 8th would pass it
    rows = metrics(run)
    assert steps_of(run) == [0, 7]  # the final eval at the stop step, though eval_interval=10
    assert rows[-1]["tokens_seen"] == 896
    summary, state = rundir.read_summary(run), load(run)
    assert summary["stopped"] == "max_tokens" and summary["steps"] == 7 and summary["tokens_seen"] == 896
    assert summary["final_valid_loss"] == rows[-1]["valid_loss_full"]  # the whole split, at the stop step
    assert state["step"] == 7 and state["stopped"] == "max_tokens"


def test_a_budget_stopped_run_resumes_to_the_end_as_if_never_stopped(trainer_here, tmp_path):
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    ok(trainer_here(*TINY, "hydra.run.dir=straight"))
    ok(trainer_here(*TINY, "max_tokens=1000", "hydra.run.dir=parts"))
    ok(trainer_here("resume=parts"))  # the same budget: spent already, so it stays where it stopped
    assert steps_of(parts) == [0, 7]
    assert rundir.read_summary(parts)["stopped"] == "max_tokens" and load(parts)["step"] == 7
    ok(trainer_here("resume=parts", "max_tokens=2000"))  # a larger budget goes on: 15 steps
    ok(trainer_here("resume=parts", "max_tokens=0"))  # no budget: on to max_iters
    rows = metrics(parts)
    assert steps_of(parts) == [0, 7, 10, 15, 20]
    assert losses([r for r in rows if r["step"] % 10 == 0]) == losses(metrics(straight))
    assert same_weights(load(parts)["model_state_dict"], load(straight)["model_state_dict"])
    summary = rundir.read_summary(parts)
    assert summary["stopped"] == "max_iters" and summary["tokens_seen"] == 20 * TOKENS_PER_STEP


def test_max_time_stops_a_long_run_early_and_cleanly_and_more_time_continues_it(trainer_here, tmp_path):
    run = tmp_path / "run"
    ok(trainer_here(*TINY, "max_iters=1000000", "max_time=0.5", "hydra.run.dir=run"))
    first, state = rundir.read_summary(run), load(run)
    assert first["stopped"] == "max_time" and 0 < first["steps"] < 1_000_000
    assert steps_of(run)[-1] == state["step"] == first["steps"]  # evaluated and saved where it stopped
    assert state["elapsed_s"] >= 0.5
    ok(trainer_here("resume=run"))  # the same budget: spent (the time of the first part counts)
    assert rundir.read_summary(run)["steps"] == first["steps"]
    ok(trainer_here("resume=run", "max_time=1.0"))
    second, state = rundir.read_summary(run), load(run)
    assert second["stopped"] == "max_time" and second["steps"] > first["steps"]
    assert steps_of(run)[-1] == state["step"] == second["steps"] and state["elapsed_s"] >= 1.0


def test_early_stopping_stops_after_patience_evals_without_a_better_valid_loss(trainer_here, tmp_path):
    run = tmp_path / "run"
    # learning_rate=1e-12 moves no float32 weight: every eval scores exactly what the first did
    ok(trainer_here(*TINY, "learning_rate=1e-12", "eval_interval=2", "early_stopping_patience=3",
                    "hydra.run.dir=run"))
    rows = metrics(run)
    assert steps_of(run) == [0, 2, 4, 6] and len({r["valid_loss"] for r in rows}) == 1
    summary, state = rundir.read_summary(run), load(run)
    assert summary["stopped"] == "early_stopping" and summary["steps"] == 6
    assert state["step"] == 6 and state["evals_since_best"] == 3
    assert load(run, rundir.BEST_CKPT)["step"] == 0
    ok(trainer_here("resume=run", "max_iters=40"))  # the count survives the resume: still out of patience
    assert rundir.read_summary(run)["stopped"] == "early_stopping" and steps_of(run)[-1] == 6
    ok(trainer_here("resume=run", "early_stopping_patience=0", "max_iters=20"))  # off: on to max_iters
    assert rundir.read_summary(run)["stopped"] == "max_iters" and steps_of(run)[-1] == 20


def test_best_ckpt_holds_the_lowest_valid_loss_and_generate_samples_it(trainer_here, tmp_path):
    run, upto = tmp_path / "run", tmp_path / "upto"
    args = [*TINY, "learning_rate=0.1", "eval_interval=2"]  # so high that the valid loss dips, then climbs
    ok(trainer_here(*args, "hydra.run.dir=run"))
    rows = metrics(run)
    lowest = min(rows, key=lambda r: r["valid_loss"])
    assert lowest["step"] < rows[-1]["step"], "the setup must make the best eval not the last"
    best = load(run, rundir.BEST_CKPT)
    assert best["step"] == lowest["step"] and best["valid_loss"] == lowest["valid_loss"]
    assert "optimizer_state_dict" not in best and load(run)["step"] == 20  # model.ckpt: the latest
    ok(trainer_here(*args, f"max_iters={lowest['step']}", "hydra.run.dir=upto"))  # the same run, stopped there
    assert same_weights(best["model_state_dict"], load(upto)["model_state_dict"])

    sample = ["--prompt", "fix: ", "--max_new_tokens", "20", "--temperature", "0"]
    from_best = ok(generate(str(run), "--which", "best", *sample, cwd=tmp_path)).stdout
    assert from_best == ok(generate(str(upto), *sample, cwd=tmp_path)).stdout
    assert ok(generate(str(run), *sample, cwd=tmp_path)).stdout == \
        ok(generate(str(run), "--which", "last", *sample, cwd=tmp_path)).stdout

    (upto / rundir.BEST_CKPT).unlink()
    r = generate(str(upto), "--which", "best", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: ") and str(upto / rundir.BEST_CKPT) in r.stderr
    r = trainer_here(f"resume={run / rundir.BEST_CKPT}")  # weights only: sampled, not resumed
    assert r.returncode == 2 and "holds weights only" in r.stderr
