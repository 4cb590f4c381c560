"""Samples in W&B: each eval's generations from fixed valid-split prompts go into samples.md and one
W&B Table per run, without touching training's random streams (a resumed run stays bit-exact); and
wandb.log_checkpoints records the checkpoints as a W&B artifact, offline. Read back from the offline
.wandb files, as tests/test_wandb.py does.

Three real runs, in processes of their own (W&B): one straight through 20 steps, and one stopped at
10 and resumed to 20.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import TINY, losses, metrics, trainer_env
from wandb_reader import offline_runs, read_run

from trainer import rundir

ARGS = [*TINY, "eval_interval=5", "wandb.enabled=true"]  # wandb.samples: the default, 2
STEPS = [0, 0, 5, 5, 10, 10, 15, 15, 20, 20]  # two prompts at each eval


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("samples")
    env = trainer_env(cache_dir, NETRC=str(root / "no-netrc"))  # no key, no netrc: offline

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=root, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait(proc: subprocess.Popen) -> None:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err

    # The first two side by side (one thread each): W&B's start-up is most of a tiny run's time.
    straight = start(*ARGS, "wandb.log_checkpoints=true", "hydra.run.dir=straight")
    wait(start(*ARGS, "max_iters=10", "hydra.run.dir=parts"))
    wait(start("resume=parts", "max_iters=20", "wandb.log_checkpoints=true"))
    wait(straight)
    return root


def test_samples_md_has_each_evals_generations_from_the_same_prompts(runs):
    rows = rundir.read_samples(runs / "straight")
    assert [r[0] for r in rows] == STEPS
    prompts = [r[1] for r in rows]
    assert prompts == prompts[:2] * 5 and prompts[0] != prompts[1]  # two fixed prompts, every eval
    assert all(len(r[2]) > 20 for r in rows)  # 48 new tokens each
    assert len({r[2] for r in rows}) == len(rows)  # the model changes, and so does what it writes


def test_the_w_and_b_table_holds_every_row_so_far(runs):
    (path,) = offline_runs(runs / "straight")
    run = read_run(path)
    table = run.table("samples")
    assert table["columns"] == ["step", "prompt", "sample"]
    assert [tuple(r) for r in table["data"]] == rundir.read_samples(runs / "straight")
    assert [h["samples/nrows"] for h in run.history if "samples/nrows" in h] == [2, 4, 6, 8, 10]


def test_sampling_leaves_training_bit_exact_and_resume_continues_the_table(runs, trainer_here, tmp_path):
    straight, parts = runs / "straight", runs / "parts"
    assert losses(metrics(parts)) == losses(metrics(straight))
    assert rundir.read_samples(parts) == rundir.read_samples(straight)  # the same model writes the same
    first, resumed = (read_run(p) for p in offline_runs(parts))
    assert first.id == resumed.id  # the W&B run continued
    assert [r[0] for r in resumed.table("samples")["data"]] == STEPS  # the rows before the resume too
    plain = trainer_here(*TINY, "eval_interval=5", "hydra.run.dir=plain")  # no W&B, no samples
    assert plain.returncode == 0, plain.stderr
    assert losses(metrics(tmp_path / "plain")) == losses(metrics(straight))


def test_log_checkpoints_records_the_checkpoints_as_an_artifact_offline(runs):
    (path,) = offline_runs(runs / "straight")
    straight = read_run(path)
    best, model = [a for a in straight.artifacts if a.type == "model"]  # in the order logged
    assert (model.name, model.aliases) == (f"model-{straight.id}", ["latest"])
    assert model.files[rundir.CKPT].read_bytes() == (runs / "straight" / rundir.CKPT).read_bytes()
    assert "best" in best.aliases
    assert best.files[rundir.CKPT].read_bytes() == (runs / "straight" / rundir.BEST_CKPT).read_bytes()

    resumed = read_run(offline_runs(runs / "parts")[-1])
    best, latest = [a for a in resumed.artifacts if a.type == "model"]  # in the order logged
    # Each version is `latest` when logged (W&B moves the alias to the newest): model.ckpt goes last.
    assert (set(best.aliases), latest.aliases) == ({"best", "latest"}, ["latest"])
    assert best.files[rundir.CKPT].read_bytes() == (runs / "parts" / rundir.BEST_CKPT).read_bytes()
    assert latest.files[rundir.CKPT].read_bytes() == (runs / "parts" / rundir.CKPT).read_bytes()


def test_a_negative_number_of_samples_is_one_line(trainer_here, tmp_path):
    r = trainer_here(*TINY, "wandb.samples=-1")
    assert r.returncode == 2 and list(tmp_path.iterdir()) == []
    assert r.stderr == "error: wandb.samples=-1: must be zero (off) or a positive number of prompts\n"
