"""The fast path keeps the maths: fused optimizer = torch's, and every eval reports tokens/s and
MFU. (CPU runs repeat exactly: test_training.py; compact vocab = full vocab: test_bench.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from helpers import TINY, metrics, run_dirs

from trainer.evaluate import eval_rows_per_forward
from trainer.optim import OPTIMIZERS

FUSED_CHECK = """
import sys, torch
from omegaconf import OmegaConf
from trainer.optim import build_optimizer

def train(name, eager):
    optimizer, _, on = name.partition("/")  # adamw/matrices: weight_decay_on=matrices, two param groups
    cfg = OmegaConf.create(dict(optimizer=optimizer, learning_rate=1e-2, beta1=0.9, beta2=0.99, eps=1e-8,
                                weight_decay=0.01, momentum=0.9, weight_decay_on=on or "all"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = build_optimizer(cfg, model, torch.device("cpu"), eager=eager)
    for _ in range(5):
        model(torch.randn(3, 8)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    opt.load_state_dict(opt.state_dict())
    return [p.detach().clone() for p in model.parameters()], opt

eager = {}
for name in sys.argv[1:]:  # every eager run first: none of them may import dynamo
    eager[name], opt = train(name, True)
    print(name, "dynamo", "torch._dynamo" in sys.modules, "fused", opt.defaults.get("fused"))
for name in sys.argv[1:]:  # the undecorated torch class: imports dynamo, same numbers
    plain, _ = train(name, False)
    print(name, "equal", all(torch.equal(a, b) for a, b in zip(eager[name], plain)))
"""


def test_fused_optimizer_steps_like_torch_and_never_imports_dynamo(env):
    """The eager optimizer is torch's fused one step for step (bit for bit), its state_dict loads
    back, and torch._dynamo (1 s of imports) is never loaded: checked in a fresh process."""
    names = [*OPTIMIZERS, "adamw/matrices"]
    out = subprocess.run([sys.executable, "-c", FUSED_CHECK, *names], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for name in names:
        assert f"{name} dynamo False fused True" in out.stdout, out.stdout
        assert f"{name} equal True" in out.stdout, out.stdout


def test_cpu_run_reports_tokens_per_s_and_mfu(trainer_here, tmp_path, monkeypatch):
    """A CPU run logs tokens/s and MFU at every eval after the first (the peak from the env here)."""
    monkeypatch.setenv("TRAINER_PEAK_FLOPS", "1e11")
    out = trainer_here(*TINY)
    assert out.returncode == 0, out.stderr
    rows = metrics(run_dirs(tmp_path)[0])
    assert [r["step"] for r in rows] == [0, 10, 20]
    for row in rows[1:]:
        assert row["tokens_per_s"] > 0
        assert 0 < row["mfu"] < 1
        flops_per_token = row["mfu"] * 1e11 / row["tokens_per_s"]
        assert 6 * 20_000 < flops_per_token < 6 * 200_000  # 6 x the TINY model's ~25-60k weights


def test_cpu_peak_is_measured_once_and_cached_without_changing_the_run(trainer_here, tmp_path, cache_dir,
                                                                      monkeypatch):
    """Without TRAINER_PEAK_FLOPS, the CPU's matmul peak is measured and cached for later runs;
    measuring it draws nothing from the RNG the training uses, so the losses stay the same."""
    (cache_dir / "cpu-peak-flops.json").unlink(missing_ok=True)
    monkeypatch.delenv("TRAINER_PEAK_FLOPS", raising=False)
    out = trainer_here(*TINY, "max_iters=10")
    assert out.returncode == 0, out.stderr
    peaks = json.loads((cache_dir / "cpu-peak-flops.json").read_text())
    assert len(peaks) == 1 and list(peaks.values())[0] > 1e8  # any CPU does 0.1 GFLOP/s
    measured = metrics(run_dirs(tmp_path)[0])
    assert "mfu" in measured[-1]
    monkeypatch.setenv("TRAINER_PEAK_FLOPS", "0")  # 0: unknown, no MFU
    out = trainer_here(*TINY, "max_iters=10")
    assert out.returncode == 0, out.stderr
    unmeasured = metrics(run_dirs(tmp_path)[-1])
    assert "mfu" not in unmeasured[-1]
    assert [r["valid_loss"] for r in measured] == [r["valid_loss"] for r in unmeasured]


def test_eval_forwards_keep_the_logits_small():
    cpu = torch.device("cpu")
    assert eval_rows_per_forward(cpu, 128, 7508) * 128 * 7508 * 4 <= 8 << 20
    assert eval_rows_per_forward(cpu, 1024, 100_277) == 1  # never zero
    assert eval_rows_per_forward(torch.device("cuda"), 128, 7508) > eval_rows_per_forward(cpu, 128, 7508)
