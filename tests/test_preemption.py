"""Preemption (trainer.preempt): a real process, real signals. SIGTERM or SIGUSR1 stops the run at
the end of its step with a checkpoint at that step and one line saying how to continue; resuming
it ends exactly where a run that was never stopped does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY, losses, metrics

from trainer import rundir

# Evals at 0 and 200 only: the signal lands between two evals, where before this a run lost
# everything since its step-0 checkpoint.
ARGS = [*TINY, "max_iters=200", "eval_interval=200", "lr_schedule=cosine", "warmup_iters=5"]


def start(*args: str, cwd: Path, env: dict[str, str], module: tuple[str, ...] = ("trainer",)) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *module, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def started(proc: subprocess.Popen, ckpt: Path, timeout: float = 120) -> None:
    """Wait for the step-0 checkpoint, and a few steps after it."""
    deadline = time.monotonic() + timeout
    while not ckpt.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "ended or stalled before its first checkpoint"
        time.sleep(0.005)
    time.sleep(0.2)
    assert proc.poll() is None, "the run finished before the signal: make max_iters larger"


def saved_step(run: Path) -> int:
    return torch.load(run / rundir.CKPT, map_location="cpu", weights_only=True)["step"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = (torch.load(d / rundir.CKPT, weights_only=True)["model_state_dict"] for d in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache_dir) -> Path:
    """The reference: the same run, never stopped (in this process: no signal to send it)."""
    from helpers import run_in_process

    cwd = tmp_path_factory.mktemp("straight")
    result = run_in_process(*ARGS, "hydra.run.dir=run", cwd=cwd, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    return cwd / "run"


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143),
                                       pytest.param(signal.SIGUSR1, 138, marks=pytest.mark.slow)])
def test_a_signal_saves_at_its_step_and_resume_ends_exactly_as_an_unstopped_run(sig, code, env, tmp_path,
                                                                                straight, trainer_here):
    run = tmp_path / "run"
    proc = start(*ARGS, "hydra.run.dir=run", cwd=tmp_path, env=env)
    started(proc, run / rundir.CKPT)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == code, err
    step = saved_step(run)
    assert 0 < step < 200  # the step it was on when the signal came, not the last eval's
    assert err.splitlines() == [f"error: stopped by {sig.name} at step {step} (checkpoint saved); "
                                f"continue with: python -m trainer resume={run}"]
    assert not (run / rundir.SUMMARY).exists()  # not finished: a sweep's resume runs it again
    assert [r["step"] for r in metrics(run)] == [0]

    resumed = trainer_here(f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming from {run / rundir.CKPT} at step {step}" in resumed.stdout + resumed.stderr + \
        (run / rundir.LOG).read_text()
    assert losses(metrics(run)) == losses(metrics(straight))
    assert saved_step(run) == 200 and same_weights(run, straight)
    assert (run / rundir.SUMMARY).exists()


def test_the_same_signal_twice_at_once_is_one_request(env, tmp_path):
    """SLURM signals every process of a step and torchrun forwards it too: a worker gets it twice."""
    run = tmp_path / "run"
    proc = start(*ARGS, "max_iters=100000", "hydra.run.dir=run", cwd=tmp_path, env=env)
    started(proc, run / rundir.CKPT)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.startswith("error: stopped by SIGTERM at step ") and err.count("\n") == 1
    assert saved_step(run) > 0


@pytest.mark.parametrize("second", [signal.SIGINT, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)])
def test_a_second_signal_while_saving_exits_at_once_and_the_last_checkpoint_loads(second, env, tmp_path):
    run = tmp_path / "run"
    # A model whose checkpoint (~13 MB with AdamW's moments) takes a while to write
    proc = start(*ARGS, "d_model=128", "num_blocks=4", "num_heads=4", "max_iters=100000", "hydra.run.dir=run",
                 cwd=tmp_path, env=env)
    started(proc, run / rundir.CKPT)
    proc.send_signal(signal.SIGTERM)
    tmp = run / f".{rundir.CKPT}.{proc.pid}.tmp"
    while not tmp.exists() and proc.poll() is None:  # the save the SIGTERM asked for has begun
        time.sleep(0.001)
    proc.send_signal(second)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + second, err
    assert err.splitlines() == [f"error: stopped at once by a second signal ({second.name}); "
                                f"continue from the last checkpoint with: python -m trainer resume={run}"]
    assert saved_step(run) == 0  # the step-0 one, whole: the save it cut short never replaced it
    assert not (run / rundir.SUMMARY).exists()


@pytest.mark.slow
def test_torchrun_ranks_stop_at_the_same_step_and_resume_with_two_ranks(env, tmp_path):
    """SIGTERM to torchrun, which forwards it to both ranks (at moments of their own)."""
    torchrun = ("torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer")
    args = [*TINY, "batch_size=1", "dropout=0", "dtype=float32", "max_iters=400", "eval_interval=400"]
    run = tmp_path / "run"
    proc = start(*args, "hydra.run.dir=run", cwd=tmp_path, env=env, module=torchrun)
    started(proc, run / rundir.CKPT)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    step = saved_step(run)
    assert 0 < step < 400
    assert err.count(f"error: stopped by SIGTERM at step {step} (checkpoint saved); continue with: "
                     f"torchrun --nproc_per_node=2 -m trainer resume={run}") == 1, err[-3000:]
    assert sorted(p.name for p in tmp_path.rglob("*.ckpt")) == sorted([rundir.CKPT, rundir.BEST_CKPT])
    assert len(torch.load(run / rundir.CKPT, weights_only=True)["rng"]) == 2  # both ranks' RNGs, one file

    def torchrun_to_the_end(*more: str) -> None:
        done = subprocess.run([sys.executable, "-m", *torchrun, *more], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    torchrun_to_the_end(f"resume={run}")
    torchrun_to_the_end(*args, "hydra.run.dir=straight")
    assert [r["step"] for r in metrics(run)] == [0, 400] and saved_step(run) == 400
    assert losses(metrics(run)) == losses(metrics(tmp_path / "straight"))
    assert same_weights(run, tmp_path / "straight")


@pytest.mark.slow
def test_a_sweep_stops_on_sigterm_and_its_resume_finishes_the_stopped_job(env, tmp_path, cli):
    sweep = tmp_path / "sweep"
    proc = start("-m", *ARGS, "max_iters=2000", "learning_rate=1e-3,2e-3", "hydra.sweep.dir=sweep",
                 cwd=tmp_path, env=env)
    started(proc, sweep / "0" / rundir.CKPT)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    step = saved_step(sweep / "0")
    assert 0 < step < 300  # so that the resume below (to 300) trains it on
    assert err.splitlines() == [f"error: stopped by SIGTERM at step {step} (checkpoint saved); "
                                "finish the sweep with: python -m trainer -m resume=sweep"]
    assert not (sweep / "0" / rundir.SUMMARY).exists() and not (sweep / "1").exists()

    resumed = cli("-m", "resume=sweep", "max_iters=300")
    assert resumed.returncode == 0, resumed.stderr
    assert all((sweep / job / rundir.SUMMARY).exists() for job in ("0", "1"))
    assert saved_step(sweep / "0") == 300 and metrics(sweep / "0")[0]["step"] == 0


def test_ctrl_c_while_a_checkpoint_is_written_lands_once_it_is_in_place(tmp_path, monkeypatch):
    """A first Ctrl-C inside torch.save would turn into torch's "unexpected pos" RuntimeError (exit 1,
    a traceback, the Ctrl-C lost): it waits for the save to end, then stops the run as Ctrl-C does."""
    from trainer import checkpoint, preempt

    real = torch.save

    def save_hit_by_ctrl_c(obj, f):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the checkpoint is being written
        real(obj, f)

    monkeypatch.setattr(torch, "save", save_hit_by_ctrl_c)
    with preempt.watch(tmp_path), pytest.raises(KeyboardInterrupt):
        checkpoint.save({"step": 3}, tmp_path / rundir.CKPT)
    assert torch.load(tmp_path / rundir.CKPT, weights_only=True) == {"step": 3}  # whole, and in place
    assert not list(tmp_path.glob(".*.tmp"))
