"""Provenance: summary.json says which code, on which machine, with which command made the run;
compare shows the commit when runs differ in it; resuming with other code warns once."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess

import pytest
import torch
from helpers import REPO, TINY, call_main, metrics, ok

import trainer.compare
from trainer import provenance, rundir


def git_head() -> str | None:
    """The checkout's commit as git itself tells it (None where this is no git checkout)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return None
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()


def test_summary_json_says_which_code_machine_and_command_made_the_run(trainer_here, tmp_path):
    args = [*TINY, "max_iters=2", "hydra.run.dir=run"]
    ok(trainer_here(*args))  # in tmp_path: the cwd is no git checkout, the trainer's own dir is
    prov = json.loads((tmp_path / "run" / rundir.SUMMARY).read_text())["provenance"]
    head = git_head()
    if head:
        assert prov["commit"] == head and isinstance(prov["dirty"], bool)
    else:
        assert "commit" not in prov and "dirty" not in prov
    assert set(prov["versions"]) >= {"python", "torch", "hydra-core", "omegaconf", "tiktoken", "wandb"}
    assert prov["versions"]["python"] == platform.python_version()
    assert prov["versions"]["torch"] == torch.__version__
    assert prov["host"] == platform.node() and prov["device"] == "cpu" and prov["hardware"]
    assert prov["threads"] == 1
    assert prov["command"] == "python -m trainer " + " ".join(args)  # as typed, before trainer.argv adds to it
    state = torch.load(tmp_path / "run" / rundir.CKPT, weights_only=True)
    assert state["provenance"] == prov  # the checkpoint keeps it, for resuming


def test_no_git_or_no_checkout_leaves_the_commit_out_and_fails_nothing(monkeypatch, tmp_path):
    assert provenance.git_state.__wrapped__(tmp_path) == {}  # not a checkout: git is not even asked
    (tmp_path / ".git").mkdir()
    assert provenance.git_state.__wrapped__(tmp_path) == {}  # git refuses an empty .git
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no git at all
    assert provenance.git_state.__wrapped__(REPO) == {}
    prov = provenance.collect(torch.device("cpu"), 1, ["max_iters=2"])
    assert prov["command"] == "python -m trainer max_iters=2" and prov["threads"] == 1


def fake_commit(run_dir, commit: str, dirty: bool = False) -> None:
    path = run_dir / rundir.SUMMARY
    summary = json.loads(path.read_text())
    summary["provenance"].update(commit=commit, dirty=dirty)
    path.write_text(json.dumps(summary))


def test_compare_shows_the_commit_only_when_runs_came_from_different_code(trainer_here, tmp_path):
    for name in ("a", "b"):
        ok(trainer_here(*TINY, "max_iters=2", f"hydra.run.dir=runs/{name}"))
    fake_commit(tmp_path / "runs/a", "a" * 40)
    fake_commit(tmp_path / "runs/b", "a" * 40)
    same = ok(call_main(trainer.compare.main, "runs", "--no-plot", cwd=tmp_path))
    assert "commit" not in same.stdout.splitlines()[0]
    fake_commit(tmp_path / "runs/b", "b" * 40, dirty=True)
    differ = ok(call_main(trainer.compare.main, "runs", "--no-plot", cwd=tmp_path))
    header, _, *rows = differ.stdout.splitlines()
    assert header.split()[:2] == ["run", "commit"]
    assert {r.split()[0]: r.split()[1] for r in rows[:2]} == {"a": "aaaaaaaa", "b": "bbbbbbbb-dirty"}


@pytest.fixture
def commit(monkeypatch):
    """The checkout's commit, as this process sees it: set by the test (git or not, clean or not)."""
    state = {"commit": "c" * 40, "dirty": False}
    monkeypatch.setattr(provenance, "git_state", lambda: dict(state))
    return state


def test_resuming_with_other_code_warns_in_one_line_and_goes_on(trainer_here, tmp_path, commit):
    ok(trainer_here(*TINY, "max_iters=4", "eval_interval=2", "hydra.run.dir=run"))
    ckpt = tmp_path / "run" / rundir.CKPT
    state = torch.load(ckpt, weights_only=True)
    assert state["provenance"]["commit"] == "c" * 40
    state["provenance"]["commit"] = "0" * 40  # as if saved by an older checkout
    torch.save(state, ckpt)
    r = ok(trainer_here("resume=run", "max_iters=6"))
    warned = [ln for ln in (r.stdout + r.stderr).splitlines() if "other code" in ln]
    assert warned == ["warning: resuming with other code: the checkpoint was saved at commit 00000000, this is "
                      "cccccccc; the rest of the run trains with this code"]
    assert metrics(tmp_path / "run")[-1]["step"] == 6
    again = ok(trainer_here("resume=run", "max_iters=8"))  # saved by this code now: nothing to say
    assert "other code" not in again.stdout + again.stderr


@pytest.mark.parametrize(("name", "peak"), [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                            ("NVIDIA H100 NVL", 835e12), ("NVIDIA A100-SXM4-80GB", 312e12)])
def test_on_cuda_the_gpu_is_named_in_the_provenance_and_the_first_line_and_sets_the_peak(monkeypatch, name, peak):
    """No GPU needed: torch's device-name query is stubbed. scripts/gpu_check.sh's table reads the name back."""
    from types import SimpleNamespace

    from trainer import device, run

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: name)
    monkeypatch.delenv(device.PEAK_FLOPS_ENV, raising=False)
    cuda = torch.device("cuda", 0)
    prov = provenance.collect(cuda, 8, ["model=gpt2"])
    assert prov["device"] == "cuda" and prov["hardware"] == name
    assert device.peak_flops(cuda) == peak
    fake = SimpleNamespace(dist=SimpleNamespace(enabled=False, world_size=1), device=cuda, threads=8, provenance=prov,
                           cfg=SimpleNamespace(batch_size=16, gradient_accumulation_steps=1), resumed_at=None,
                           corpus=SimpleNamespace(n_tokens=10, vocab_size=5, max_token_value=9,
                                                  tokens=SimpleNamespace(documents=1, bytes=40, path="c.bin")), effective_batch=16,
                           model=SimpleNamespace(num_params=lambda: 100), dir="run")
    assert run.describe(fake).startswith(f"Training on cuda:0 ({name}, 8 threads): 100 parameters")
