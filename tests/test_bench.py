"""scripts/bench.py: its reading of a compacted model is the full-vocabulary loss, each checkpoint
is scored with the model code of the checkout that trained it, and the side-by-side run works."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, SHARED_DATA, TINY, run_dirs

from trainer.model import GPT
from trainer.rundir import CKPT

# Appended to a copy of trainer/model.py: the copy's GPT puts +30 on every logit of id 0, so its
# loss on the same weights is far from the original's.
SHIFT_LOGITS = """

_unshifted_forward = GPT.forward


def _shifted_forward(self, *args, **kwargs):
    logits, *rest = _unshifted_forward(self, *args, **kwargs)
    logits = logits.clone()
    logits[..., 0] += 30.0
    return (logits, *rest)


GPT.forward = _shifted_forward
"""


def _script_module(name: str = "bench"):
    """scripts/NAME.py, imported."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # bench.py's dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _windows(vocab: torch.Tensor, context_length: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """n random windows of the corpus's ids (cl100k), as inputs and next-token targets."""
    g = torch.Generator().manual_seed(0)
    windows = vocab[torch.randint(len(vocab), (n, context_length + 1), generator=g)]
    return windows[:, :-1], windows[:, 1:]


def _full_width(state: dict) -> GPT:
    """The compact checkpoint as a model over all max_token_value ids: absent ids get logit -inf."""
    vocab, h = state["vocab"], state["h_params"]
    full = GPT({**h, "vocab_size": h["max_token_value"]})
    sd = full.state_dict()
    for key, value in state["model_state_dict"].items():
        if key in ("tok.weight", "head.weight"):
            sd[key].zero_()[vocab] = value
        elif key == "head.bias":
            sd[key].fill_(float("-inf"))[vocab] = value
        else:
            sd[key] = value
    full.load_state_dict(sd)
    return full.eval()


def test_compact_model_loss_is_the_full_vocabulary_loss(cli, tmp_path):
    """The bench's reading of a compacted model: the same weights in a full-width model whose
    absent ids get logit -inf give exactly the loss the bench computes in cl100k id space."""
    out = cli(*TINY)
    assert out.returncode == 0, out.stderr
    ckpt = run_dirs(tmp_path)[0] / CKPT
    bench = _script_module()
    _, state = bench.load_model(ckpt, "ours")
    assert state.get("vocab") is not None, "TINY runs compact their vocab"
    x, y = _windows(state["vocab"], state["h_params"]["context_length"])

    ours = bench.score("ours", ckpt, x, y, state["vocab"])
    full = _full_width(state)
    reference = bench._mean_ce(lambda xb: full(xb)[0], x, y, rows=4)
    assert ours["restricted"] is None
    assert ours["loss"] == pytest.approx(reference, rel=1e-5)


def test_a_variant_is_scored_with_its_own_checkouts_model(trainer_here, env, tmp_path):
    """Scoring runs in a child that imports the given checkout's trainer, even though the bench
    itself (and this test) imported this checkout's: a copy whose GPT shifts its logits scores
    the same checkpoint differently, and this checkout's child agrees with the in-process reading."""
    out = trainer_here(*TINY)
    assert out.returncode == 0, out.stderr
    ckpt = run_dirs(tmp_path)[0] / CKPT
    other = tmp_path / "other"
    shutil.copytree(REPO / "trainer", other / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "trainer" / "model.py", "a") as f:
        f.write(SHIFT_LOGITS)

    bench = _script_module()
    model, state = bench.load_model(ckpt, "ours")
    x, y = _windows(state["vocab"], state["h_params"]["context_length"])
    windows = bench.save_windows(tmp_path / "windows.pt", x, y, state["vocab"])
    here = bench.score_in_child("ours", ckpt, REPO, windows, env)
    there = bench.score_in_child("ours", ckpt, other, windows, env)

    assert Path(here["model_file"]) == (REPO / "trainer" / "model.py").resolve()
    assert Path(there["model_file"]) == (other / "trainer" / "model.py").resolve()
    assert here["loss"] == pytest.approx(bench.our_loss(model, state, x, y), rel=1e-6)
    assert there["loss"] > here["loss"] + 5  # id 0 takes nearly all the probability in the copy


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "github_pr_titles.csv").exists() or
                    not (SHARED_DATA.parent / "baseline" / "seed_train.py").exists(),
                    reason="needs ../shared/data and ../shared/baseline")
def test_bench_runs_both_trainers_and_prints_the_table(env, tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--iters", "2", "--reps", "1",
                          "--baseline-reps", "1", "--workdir", str(tmp_path / "bench"),
                          "--baseline", str(SHARED_DATA.parent / "baseline")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "| wall time, process start to checkpoint saved (s) |" in out.stdout
    assert "| final valid loss, same fixed windows for both |" in out.stdout
    runs = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert {r["who"] for r in runs} == {"book", "ours"}
    assert all(r["eval_loss"] > 0 and r["peak_rss_mb"] > 0 for r in runs)
    assert [r["eval_loss_restricted"] is not None for r in runs] == [r["who"] == "book" for r in runs]


def test_bench_step_times_another_checkout_with_its_own_kernels(tmp_path):
    """scripts/bench_step.py --code OLD: OLD's model.py runs OLD's kernels.py, not this checkout's,
    so that a change to the kernels is what the side-by-side step measures."""
    old = tmp_path / "old"
    shutil.copytree(REPO / "trainer", old / "trainer")
    kernels = old / "trainer" / "kernels.py"
    kernels.write_text(kernels.read_text() + "\nOLD_CHECKOUT = True\n")
    old_model = _script_module("bench_step").model_class(old).forward.__globals__  # the old model.py's namespace
    assert old_model["cross_entropy"].__globals__.get("OLD_CHECKOUT")
    assert not hasattr(sys.modules["trainer.kernels"], "OLD_CHECKOUT")  # this checkout's stays in place

    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_step.py"), "--code", str(old),
                          "--vocab", "64", "--rounds", "1", "--steps", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "old (book's model)" in out.stdout and "this checkout (book's model)" in out.stdout
