"""Resume: a run stopped and resumed ends exactly where an uninterrupted one does, in its own dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY, losses, metrics, ok, run_dirs

from trainer import rundir
from trainer.errors import UserError
from trainer.resume import ResumePoint

# Dropout stays on (the tiny model's 0.1): resuming must restore the RNG it draws from.
ARGS = [*TINY, "eval_interval=5"]


def test_stopped_and_resumed_run_matches_an_uninterrupted_one_bit_for_bit(cli, trainer_here, tmp_path):
    ok(trainer_here(*ARGS, "hydra.run.dir=straight"))  # 20 steps in one go (the resumes: processes of their own)
    ok(cli(*ARGS, "max_iters=10", "hydra.run.dir=parts"))  # stop at 10 ...
    overrides = (tmp_path / "parts" / rundir.OVERRIDES).read_text()
    resumed = ok(cli("resume=parts", "max_iters=15"))  # ... resume from the run dir to 15 ...
    assert "Resuming from" in resumed.stdout and "at step 10" in resumed.stdout
    ok(cli(f"resume={tmp_path / 'parts' / rundir.CKPT}", "max_iters=20"))  # ... and from the file to 20

    straight, parts = metrics(tmp_path / "straight"), metrics(tmp_path / "parts")
    assert [r["step"] for r in parts] == [0, 5, 10, 15, 20]
    assert losses(parts) == losses(straight)
    state = torch.load(tmp_path / "parts" / rundir.CKPT, weights_only=True)
    want = torch.load(tmp_path / "straight" / rundir.CKPT, weights_only=True)
    assert state["step"] == 20
    assert all(torch.equal(state["model_state_dict"][k], v) for k, v in want["model_state_dict"].items())
    # continued in place: no new run dir, the original .hydra untouched
    assert run_dirs(tmp_path) == []
    assert (tmp_path / "parts" / rundir.OVERRIDES).read_text() == overrides
    assert json.loads((tmp_path / "parts" / rundir.SUMMARY).read_text())["steps"] == 20


def test_resuming_again_keeps_what_the_last_resume_changed(trainer_here, tmp_path):
    ok(trainer_here(*TINY, "max_iters=4", "eval_interval=2", "hydra.run.dir=run"))
    ok(trainer_here("resume=run", "max_iters=6", "learning_rate=0.0005"))
    ok(trainer_here("resume=run", "max_iters=8"))  # says nothing of learning_rate: the last one used stays
    lrs = {r["step"]: r["learning_rate"] for r in metrics(tmp_path / "run")}
    assert lrs == {0: 1e-3, 2: 1e-3, 4: 1e-3, 6: 5e-4, 8: 5e-4}


def test_resume_auto_continues_the_newest_run_with_the_same_config_to_the_new_max_iters(trainer_here, tmp_path):
    ok(trainer_here(*TINY, "max_iters=10", "hydra.run.dir=outputs/day/a"))
    ok(trainer_here(*TINY, "max_iters=10", "learning_rate=0.002", "hydra.run.dir=outputs/day/b"))
    before = (tmp_path / "outputs/day/b/metrics.jsonl").read_text()
    r = ok(trainer_here(*TINY, "max_iters=15", "resume=auto"))  # max_iters says how far, not which run
    assert "Resuming from outputs/day/a/model.ckpt at step 10" in r.stdout
    assert metrics(tmp_path / "outputs/day/a")[-1]["step"] == 15
    assert (tmp_path / "outputs/day/b/metrics.jsonl").read_text() == before  # the other config's run
    assert sorted(p.name for p in (tmp_path / "outputs" / "day").iterdir()) == ["a", "b"]


def test_resuming_on_a_corpus_with_other_tokens_is_refused_even_at_the_same_vocab_size():
    h = {"d_model": 32, "vocab_size": 3, "world_size": 1, "data_path": "new.txt", "vocab_compaction": True}
    state = {"model_state_dict": {}, "h_params": dict(h), "optimizer_state_dict": {}, "step": 5, "rng": {},
             "vocab": torch.tensor([10, 20, 30])}
    point = ResumePoint("run", Path("run") / rundir.CKPT, state)
    point.check(h, torch.tensor([10, 20, 30]))  # the same tokens: fine
    with pytest.raises(UserError, match=r"resume=run: the checkpoint's vocabulary differs .*data_path=new.txt"):
        point.check(h, torch.tensor([10, 20, 31]))
