"""Data-parallel training under torchrun (gloo on CPU) and gradient accumulation.

The claim under test: how a global batch is split, over ranks or over accumulation steps,
does not change the training. Every rank draws the same global batch and trains on its own
slice of it, so a 2-rank run of batch_size 1, a 1-rank run of batch_size 1 with 2
accumulation steps and a plain run of batch_size 2 train on the very same windows and, with
dropout off, follow the same loss trajectory to float tolerance.

torchrun takes several seconds to start two gloo ranks on a small CPU, so one 2-rank run
(module fixture) serves most of the tests below.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import TINY, losses, metrics, run_dirs, run_in_process, run_module, trainer_env

from trainer import rundir
from trainer.data.batches import BatchSampler, windows

LR, MIN_LR, WARMUP = 1e-3, 5e-5, 10
# Cosine with warmup, so the comparisons cover the schedule; dropout 0, as each rank draws its
# own dropout masks; float32, as bf16 autocast (the default on CPUs with native bf16) rounds
# differently for other batch shapes. No clipping: it would hide a wrongly scaled gradient.
SAME = [*TINY, "dropout=0", "dtype=float32", "lr_schedule=cosine", f"warmup_iters={WARMUP}", f"min_lr={MIN_LR}",
        f"learning_rate={LR}"]
TORCHRUN = ["--standalone", "--nproc_per_node=2", "-m", "trainer"]


def only_run(root: Path) -> Path:
    dirs = run_dirs(root)
    assert len(dirs) == 1, dirs
    return dirs[0]


def assert_same_training(a: Path, b: Path) -> None:
    """Same eval steps, losses and learning rates to float tolerance, and the same final weights and
    optimizer moments (AdamW's update hardly depends on the gradient's scale; its moments do)."""
    la, lb = losses(metrics(a)), losses(metrics(b))
    assert [r[0] for r in la] == [r[0] for r in lb]
    for ra, rb in zip(la, lb, strict=True):
        assert ra[1:] == pytest.approx(rb[1:], rel=1e-5), (ra, rb)
    ca, cb = (torch.load(d / rundir.CKPT, weights_only=True) for d in (a, b))
    for key, w in ca["model_state_dict"].items():
        torch.testing.assert_close(w, cb["model_state_dict"][key], atol=1e-5, rtol=1e-4, msg=key)
    for i, moments in ca["optimizer_state_dict"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            other = cb["optimizer_state_dict"]["state"][i][name]
            scale = other.abs().max().item()
            torch.testing.assert_close(moments[name], other, atol=1e-4 * scale, rtol=1e-3, msg=f"{i}.{name}")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, cache_dir):
    """`torchrun --standalone --nproc_per_node=2 -m trainer ... batch_size=1`, W&B offline on."""
    cwd = tmp_path_factory.mktemp("two-ranks")
    proc = run_module("torch.distributed.run", *TORCHRUN, *SAME, "batch_size=1", "wandb.enabled=true",
                      "wandb.mode=offline", cwd=cwd, env=trainer_env(cache_dir))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd, proc


@pytest.fixture(scope="module")
def batch_of_2(tmp_path_factory, cache_dir) -> Path:
    """The reference: one process, batch_size 2."""
    cwd = tmp_path_factory.mktemp("batch-of-2")
    proc = run_in_process(*SAME, "batch_size=2", cwd=cwd, cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    return only_run(cwd)


# ----------------------------------------------------------------------------- one global batch


def test_one_rank_without_accumulation_draws_the_books_batch():
    data = torch.arange(1000)
    (x, y), = BatchSampler(data, 4, 8, seed=7).step()
    starts = torch.randint(1000 - 8, (4,), generator=torch.Generator().manual_seed(7))
    bx, by = windows(data, starts, 8)
    assert torch.equal(x, bx) and torch.equal(y, by) and x.shape == (4, 8)


def test_a_global_batch_is_the_same_windows_however_it_is_split():
    data = torch.arange(1000)

    def rows(batch_size: int, micro_steps: int, world_size: int) -> list[list[int]]:
        """Each step's windows (first tokens), over all ranks and micro-steps, in a canonical order."""
        ranks = [BatchSampler(data, batch_size, 8, 7, micro_steps, r, world_size) for r in range(world_size)]
        steps = []
        for _ in range(3):
            firsts = [x[:, 0].tolist() for s in ranks for x, _ in s.step()]
            steps.append(sorted(t for f in firsts for t in f))
        return steps

    whole = rows(4, 1, 1)
    assert rows(1, 4, 1) == whole  # 4 accumulation steps of 1
    assert rows(2, 1, 2) == whole  # 2 ranks of 2
    assert rows(1, 2, 2) == whole  # 2 ranks x 2 accumulation steps of 1
    assert rows(1, 1, 4) == whole
    assert len({t for step in whole for t in step}) > 4  # and steps draw fresh windows


def test_ranks_train_on_different_windows():
    data = torch.arange(1000)
    (x0, _), = BatchSampler(data, 2, 8, 7, 1, 0, 2).step()
    (x1, _), = BatchSampler(data, 2, 8, 7, 1, 1, 2).step()
    assert not set(x0[:, 0].tolist()) & set(x1[:, 0].tolist())


# ----------------------------------------------------------------------------- torchrun through the CLI


def test_two_ranks_leave_one_run_dir_with_one_checkpoint_and_one_metrics_file(two_ranks):
    cwd, proc = two_ranks
    run_dir = only_run(cwd)
    stray = [p for p in cwd.rglob("*") if p.is_file() and run_dir not in p.parents]
    assert not stray  # ranks > 0 wrote nothing: no ./train.log, no ./.hydra, no second run dir
    assert sorted(p.name for p in run_dir.glob("*.ckpt")) == sorted([rundir.CKPT, rundir.BEST_CKPT])
    assert sorted(p.name for p in cwd.rglob(rundir.METRICS)) == [rundir.METRICS]
    assert [r["step"] for r in metrics(run_dir)] == [0, 10, 20]  # each eval written once, by rank 0
    assert proc.stdout.count("Step: 20,") == 1
    assert (run_dir / rundir.LOG).read_text().count("Training on") == 1
    assert (run_dir / rundir.SUMMARY).exists()


def test_h_params_record_world_size_and_effective_batch(two_ranks):
    cwd, proc = two_ranks
    state = torch.load(only_run(cwd) / rundir.CKPT, weights_only=True)
    assert state["h_params"]["world_size"] == 2
    assert state["h_params"]["batch_size"] == 1
    assert state["h_params"]["effective_batch_size"] == 2
    assert "x 2 ranks (gloo)" in proc.stdout
    assert "effective batch 2 (batch_size 1 x 1 accumulation x 2 ranks)" in proc.stdout
    assert [r["tokens_seen"] for r in metrics(only_run(cwd))] == [0, 640, 1280]  # steps x 1 x 32 x 2 ranks
    # every rank's RNG states, for an exact resume; the dropout generators differ per rank
    assert len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])


def test_wandb_runs_on_rank_0_only(two_ranks):
    cwd, _ = two_ranks
    runs = list(cwd.rglob("offline-run-*"))
    assert len(runs) == 1 and runs[0].parent == only_run(cwd) / rundir.WANDB


def test_cosine_learning_rate_in_a_real_runs_metrics(two_ranks):
    cwd, _ = two_ranks
    rate = {r["step"]: r["learning_rate"] for r in metrics(only_run(cwd))}
    assert rate[0] == pytest.approx(LR / WARMUP)  # warmup's first step
    assert rate[WARMUP] == pytest.approx(LR)  # warmup's end: the peak
    assert rate[20] == pytest.approx(MIN_LR)  # the last step: min_lr


def test_two_ranks_of_batch_1_train_like_one_rank_of_batch_2(two_ranks, batch_of_2):
    cwd, _ = two_ranks
    assert_same_training(only_run(cwd), batch_of_2)


def test_two_accumulation_steps_of_batch_1_train_like_batch_2(trainer_here, tmp_path, batch_of_2):
    proc = trainer_here(*SAME, "batch_size=1", "gradient_accumulation_steps=2")
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run(tmp_path)
    assert torch.load(run_dir / rundir.CKPT, weights_only=True)["h_params"]["effective_batch_size"] == 2
    assert "effective batch 2 (batch_size 1 x 2 accumulation x 1 ranks)" in proc.stdout
    assert_same_training(run_dir, batch_of_2)


def test_grad_clip_caps_every_update(trainer_here, tmp_path):
    # SGD at learning rate 1 swings the loss by whole nats (gradient norms are about 1 here);
    # clipped to a norm of 1e-4, 20 updates move it by little more than 20 * 1e-4
    sgd = [*TINY, "optimizer=sgd", "learning_rate=1.0", "dropout=0"]
    moved = {}
    for clip in ("0", "1e-4"):
        (tmp_path / clip).mkdir()
        proc = trainer_here(*sgd, f"grad_clip={clip}", cwd=tmp_path / clip)
        assert proc.returncode == 0, proc.stderr
        rows = metrics(only_run(tmp_path / clip))
        moved[clip] = rows[0]["train_loss"] - rows[-1]["train_loss"]
    assert abs(moved["0"]) > 0.5
    assert abs(moved["1e-4"]) < 0.01


def test_resuming_a_two_rank_run_in_one_process_is_a_one_line_error(two_ranks, trainer_here, tmp_path):
    cwd, _ = two_ranks
    run_dir = shutil.copytree(only_run(cwd), tmp_path / "two-rank-run")  # the shared run stays untouched
    before = (run_dir / rundir.METRICS).read_text()
    proc = trainer_here(f"resume={run_dir}", "max_iters=30")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "world_size=2" in proc.stderr and "world_size=1" in proc.stderr and "resume=" in proc.stderr
    assert (run_dir / rundir.METRICS).read_text() == before


def test_gradient_accumulation_steps_must_be_positive(trainer_here, tmp_path):
    proc = trainer_here(*TINY, "gradient_accumulation_steps=0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: gradient_accumulation_steps=0: must be a positive integer"
    assert not run_dirs(tmp_path)


def test_a_sweep_under_torchrun_is_refused_in_one_line(trainer_here, tmp_path, monkeypatch):
    # what torchrun's environment says to rank 0; refused before Hydra starts, so no rendezvous is needed
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    proc = trainer_here("-m", *TINY, "learning_rate=1e-3,2e-3")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --multirun under torchrun") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_two_rank_run_resumes_with_two_ranks_exactly(cli, tmp_path):
    constant = [a for a in SAME if not a.startswith(("lr_schedule=", "warmup_iters=", "min_lr="))]
    first = cli(*TORCHRUN, *constant, "batch_size=1", "max_iters=10", module="torch.distributed.run")
    assert first.returncode == 0, first.stderr[-4000:]
    run_dir = only_run(tmp_path)

    again = cli(*TORCHRUN, f"resume={run_dir}", "max_iters=20", module="torch.distributed.run")
    assert again.returncode == 0, again.stderr[-4000:]
    assert "at step 10" in again.stdout
    assert only_run(tmp_path) == run_dir and [r["step"] for r in metrics(run_dir)] == [0, 10, 20]
    # the same as never stopping: compare with one uninterrupted process of batch_size 2
    (tmp_path / "ref").mkdir()
    ref = cli(*constant, "batch_size=2", cwd=tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    assert_same_training(run_dir, only_run(tmp_path / "ref"))

    three = cli("--standalone", "--nproc_per_node=3", "-m", "trainer", f"resume={run_dir}", "max_iters=30",
                module="torch.distributed.run")
    assert three.returncode != 0
    assert three.stderr.count("error: resume=") == 1  # rank 0 says it; torchrun's own report follows
    assert "world_size=2" in three.stderr and "world_size=3" in three.stderr
    assert [r["step"] for r in metrics(run_dir)] == [0, 10, 20]


@pytest.mark.slow
def test_two_ranks_stop_together_at_a_time_budget(cli, tmp_path):
    # Each rank's clock says something else: rank 0's decision must hold for both, or one would
    # wait forever for the other's next step.
    proc = cli(*TORCHRUN, *TINY, "batch_size=1", "max_iters=1000000", "max_time=2", module="torch.distributed.run")
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = only_run(tmp_path)
    summary, state = rundir.read_summary(run_dir), torch.load(run_dir / rundir.CKPT, weights_only=True)
    assert summary["stopped"] == "max_time" and 0 < summary["steps"] < 1_000_000
    assert metrics(run_dir)[-1]["step"] == state["step"] == summary["steps"]
