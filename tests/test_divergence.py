"""Divergence: a NaN loss stops the run, names the step and learning_rate, and keeps the last good checkpoint."""

from __future__ import annotations

import math

import torch
from helpers import TINY, metrics

from trainer import rundir


def test_nan_stops_with_step_and_learning_rate_and_keeps_the_last_good_checkpoint(trainer_here, tmp_path):
    r = trainer_here(*TINY, "learning_rate=1e6", "hydra.run.dir=run")
    assert r.returncode == 3, r.stderr  # not a bad input (2): a run that went wrong
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "learning_rate=1e+06" in lines[0] and "diverged at step" in lines[0]
    diverged_at = int(lines[0].split("diverged at step ")[1].split()[0])
    assert f"the last good checkpoint is {tmp_path / 'run' / rundir.CKPT}" in lines[0]

    state = torch.load(tmp_path / "run" / rundir.CKPT, weights_only=True)
    assert state["step"] < diverged_at
    assert all(torch.isfinite(v).all() for v in state["model_state_dict"].values())
    assert all(math.isfinite(row["valid_loss"]) for row in metrics(tmp_path / "run"))

    # the kept checkpoint is good for going on with a saner learning rate
    again = trainer_here("resume=run", "learning_rate=1e-3")
    assert again.returncode == 0, again.stderr
    assert metrics(tmp_path / "run")[-1]["step"] == 20
