"""The fast path keeps the maths: fused optimizer = torch's, compact vocab = full vocab with the
absent ids at probability 0, CPU runs repeat exactly, and every eval reports tokens/s and MFU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, SHARED_DATA, TINY, metrics, run_dirs

from trainer import checkpoint
from trainer.model import GPT


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fused_optimizer_steps_like_torch_and_never_imports_dynamo(env):
    """The eager optimizer is torch's fused AdamW step for step (bit for bit), its state_dict
    loads back, and torch._dynamo (1 s of imports) is never loaded."""
    script = """
import sys, torch
from omegaconf import OmegaConf
from trainer.optim import build_optimizer
cfg = OmegaConf.create(dict(optimizer=sys.argv[1], learning_rate=1e-2, beta1=0.9, beta2=0.99, eps=1e-8,
                            weight_decay=0.01, momentum=0.9))
def train(eager):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = build_optimizer(cfg, model, torch.device("cpu"), eager=eager)
    for _ in range(5):
        model(torch.randn(3, 8)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    opt.load_state_dict(opt.state_dict())
    return [p.detach().clone() for p in model.parameters()], opt
eager, opt = train(True)
print("dynamo", "torch._dynamo" in sys.modules, "fused", opt.defaults.get("fused"))
plain, _ = train(False)  # the undecorated torch class: imports dynamo, same numbers
print("equal", all(torch.equal(a, b) for a, b in zip(eager, plain)))
"""
    for name in ("adamw", "adam", "sgd"):
        out = subprocess.run([sys.executable, "-c", script, name], env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert "dynamo False fused True" in out.stdout, (name, out.stdout)
        assert "equal True" in out.stdout, (name, out.stdout)


def test_cpu_run_reports_tokens_per_s_and_mfu(cli, tmp_path):
    """A CPU run logs tokens/s and MFU at every eval after the first (the peak from the env here)."""
    out = cli(*TINY, extra_env={"TRAINER_PEAK_FLOPS": "1e11"})
    assert out.returncode == 0, out.stderr
    rows = metrics(run_dirs(tmp_path)[0])
    assert [r["step"] for r in rows] == [0, 10, 20]
    for row in rows[1:]:
        assert row["tokens_per_s"] > 0
        assert 0 < row["mfu"] < 1
        flops_per_token = row["mfu"] * 1e11 / row["tokens_per_s"]
        assert 6 * 20_000 < flops_per_token < 6 * 200_000  # 6 x the TINY model's ~25-60k weights


def test_cpu_peak_is_measured_once_and_cached_without_changing_the_run(cli, tmp_path, cache_dir):
    """Without TRAINER_PEAK_FLOPS, the CPU's matmul peak is measured and cached for later runs;
    measuring it draws nothing from the RNG the training uses, so the losses stay the same."""
    (cache_dir / "cpu-peak-flops.json").unlink(missing_ok=True)
    out = cli(*TINY, "max_iters=10")
    assert out.returncode == 0, out.stderr
    peaks = json.loads((cache_dir / "cpu-peak-flops.json").read_text())
    assert len(peaks) == 1 and list(peaks.values())[0] > 1e8  # any CPU does 0.1 GFLOP/s
    measured = metrics(run_dirs(tmp_path)[0])
    assert "mfu" in measured[-1]
    out = cli(*TINY, "max_iters=10", extra_env={"TRAINER_PEAK_FLOPS": "0"})  # 0: unknown, no MFU
    assert out.returncode == 0, out.stderr
    unmeasured = metrics(run_dirs(tmp_path)[-1])
    assert "mfu" not in unmeasured[-1]
    assert [r["valid_loss"] for r in measured] == [r["valid_loss"] for r in unmeasured]


def test_cpu_runs_are_deterministic(cli, tmp_path):
    """Two CPU runs with the same seed give the same losses to the last bit."""
    for _ in range(2):
        assert cli(*TINY).returncode == 0
    first, second = (metrics(d) for d in run_dirs(tmp_path))
    assert [(r["train_loss"], r["valid_loss"]) for r in first] == [(r["train_loss"], r["valid_loss"]) for r in second]


def test_eval_forwards_keep_the_logits_small():
    from trainer.train import eval_rows_per_forward

    cpu = torch.device("cpu")
    assert eval_rows_per_forward(cpu, 128, 7508) * 128 * 7508 * 4 <= 8 << 20
    assert eval_rows_per_forward(cpu, 1024, 100_277) == 1  # never zero
    assert eval_rows_per_forward(torch.device("cuda"), 128, 7508) > eval_rows_per_forward(cpu, 128, 7508)


def test_compact_model_loss_is_the_full_vocabulary_loss(cli, tmp_path):
    """The bench's reading of a compacted model: the same weights in a full-width model whose
    absent ids get logit -inf give exactly the loss the bench computes in cl100k id space."""
    out = cli(*TINY)
    assert out.returncode == 0, out.stderr
    state = checkpoint.load(run_dirs(tmp_path)[0])
    vocab, h = state["vocab"], state["h_params"]
    compact = GPT(h)
    compact.load_state_dict(state["model_state_dict"])
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
    full.eval()

    bench = _bench_module()
    g = torch.Generator().manual_seed(0)
    windows = vocab[torch.randint(len(vocab), (6, h["context_length"] + 1), generator=g)]  # cl100k ids
    x, y = windows[:, :-1], windows[:, 1:]
    ours = bench.eval_ours(run_dirs(tmp_path)[0] / checkpoint.CKPT_NAME, REPO, x, y)
    reference = bench._mean_ce(lambda xb: full(xb)[0], x, y, rows=4)
    assert ours == pytest.approx(reference, rel=1e-5)


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
