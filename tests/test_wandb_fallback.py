"""W&B never blocks training: online with no login falls back to offline; resume continues the same run."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY, metrics

from trainer import rundir


def test_wandb_online_without_login_trains_offline_and_resume_keeps_the_run_id(cli, tmp_path):
    # No key anywhere: a fresh HOME (no ~/.netrc, no wandb settings) and no WANDB_* variables.
    no_login = {"HOME": str(tmp_path / "home"), "NETRC": str(tmp_path / "home" / ".netrc")}
    args = [*TINY, "max_iters=10", "wandb.enabled=true", "wandb.mode=online", "hydra.run.dir=run"]
    r = cli(*args, extra_env=no_login, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert out.count("W&B:") == 1 and "logging offline instead" in out, out
    assert "wandb:" not in out  # and nothing more from wandb itself
    assert [row["step"] for row in metrics(tmp_path / "run")] == [0, 10]
    run_id = torch.load(tmp_path / "run" / rundir.CKPT, weights_only=True)["wandb_run_id"]
    assert run_id
    assert [p.name.endswith(run_id) for p in (tmp_path / "run" / rundir.WANDB).glob("offline-run-*")] == [True]

    r = cli("resume=run", "max_iters=20", extra_env=no_login, timeout=120)
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / "run" / rundir.CKPT, weights_only=True)["wandb_run_id"] == run_id
    runs = sorted((tmp_path / "run" / rundir.WANDB).glob("offline-run-*"))
    assert len(runs) == 2 and all(p.name.endswith(f"-{run_id}") for p in runs)  # the same run, continued


@pytest.mark.slow
def test_wandb_with_a_key_but_no_server_gives_up_quickly_and_trains_offline(cli, tmp_path):
    # Unreachable (or refusing this made-up key): init waits at most ONLINE_INIT_TIMEOUT_S, not 90 s.
    env = {"HOME": str(tmp_path / "home"), "WANDB_API_KEY": "a" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    r = cli(*TINY, "max_iters=10", "wandb.enabled=true", "wandb.mode=online", "hydra.run.dir=run",
            extra_env=env, timeout=150)
    assert r.returncode == 0, r.stderr
    assert (r.stdout + r.stderr).count("logging offline instead") == 1
    assert [row["step"] for row in metrics(tmp_path / "run")] == [0, 10]
