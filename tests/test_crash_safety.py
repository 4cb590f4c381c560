"""Crash safety: SIGKILL a run at any moment, even mid-save; its checkpoint loads and resume finishes it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, kill, losses, metrics, start_module, wait_for

from trainer import rundir
from trainer.rundir import read_metrics

# A checkpoint at every step, of a model wide enough (~13 MB with AdamW's moments) that the run
# spends much of its time saving: a kill lands mid-save without any hook in the trainer.
ARGS = [*TINY, "d_model=128", "num_blocks=4", "num_heads=4", "max_iters=60", "eval_interval=5",
        "checkpoint_interval=1", "lr_schedule=cosine", "warmup_iters=5"]
RUN = "outputs/crash/run"  # where resume=auto looks: outputs/<date>/<time>


def loads_safely(run: Path) -> int:
    """The checkpoint a kill left behind loads with weights_only; returns its step."""
    state = torch.load(run / rundir.CKPT, map_location="cpu", weights_only=True)
    assert {"model_state_dict", "h_params", "optimizer_state_dict", "rng", "step"} <= state.keys()
    return state["step"]


@pytest.mark.slow
def test_sigkill_at_any_moment_loses_nothing_and_resume_finishes_the_run(cli, env, tmp_path):
    def start(*args: str) -> subprocess.Popen:
        return start_module("trainer", *args, cwd=tmp_path, env=env)

    run = tmp_path / RUN
    ckpt = run / rundir.CKPT

    # 1. killed just after its first checkpoint
    proc = start(*ARGS, f"hydra.run.dir={RUN}")
    assert wait_for(ckpt.exists, proc), "the run ended or stalled before its first checkpoint"
    kill(proc)
    steps = [loads_safely(run)]

    # 2. killed while writing a checkpoint: the temp file is there, model.ckpt is the previous one
    for _ in range(3):  # the window is wide, but a kill may still land just after the rename
        proc = start(*ARGS, "resume=" + RUN)
        tmp = run / f".{rundir.CKPT}.{proc.pid}.tmp"
        assert wait_for(lambda tmp=tmp: tmp.exists() and tmp.stat().st_size > 0, proc)
        kill(proc)
        steps.append(loads_safely(run))
        if tmp.exists():
            break
    assert tmp.exists(), "never caught the run mid-save"

    # 3. killed mid-training, two evals past where it resumed, resumed from the checkpoint file this time
    proc = start(*ARGS, f"resume={ckpt}")
    assert wait_for(lambda: any(r["step"] >= steps[-1] + 10 for r in read_metrics(run)), proc, poll=0.01)
    kill(proc)
    steps.append(loads_safely(run))
    assert steps == sorted(steps) and steps[-1] < 60

    # 4. resume=auto finds the run by its config and finishes it
    result = cli(*ARGS, "resume=auto")
    assert result.returncode == 0, result.stderr
    assert f"Resuming from {RUN}/model.ckpt" in result.stdout
    assert loads_safely(run) == 60
    assert not list(run.glob(".*.tmp"))  # the temp files the kills left were cleaned up

    # ... and ends exactly where a run that was never killed does
    straight = cli(*ARGS, "hydra.run.dir=straight")
    assert straight.returncode == 0, straight.stderr
    assert losses(metrics(run)) == losses(metrics(tmp_path / "straight"))


def test_ctrl_c_stops_with_one_line_that_says_how_to_continue(env, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *TINY, "max_iters=100000", "hydra.run.dir=run"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert wait_for((tmp_path / "run" / rundir.CKPT).exists, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.splitlines() == [f"error: interrupted; continue with: python -m trainer resume={tmp_path / 'run'}"]
    loads_safely(tmp_path / "run")
