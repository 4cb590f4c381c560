"""scripts/gpu_check.sh, the check to run on a GPU box: here in its CPU mode (every check runs on
model=tiny and passes; torch.compile's row is skipped on CPU), and its one-line refusals."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"


def gpu_check(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env={**env, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def table_rows(results: Path) -> list[list[str]]:
    """results.md's table: [#, check, command, result, wall s] per row."""
    rows = [ln for ln in results.read_text().splitlines() if re.match(r"\| \d+ \|", ln)]
    return [[cell.strip() for cell in ln.strip("|").split(" | ")] for ln in rows]


@pytest.mark.slow
def test_the_cpu_mode_runs_every_check_and_each_passes(tmp_path, env):
    out = tmp_path / "check"
    r = gpu_check("--cpu", str(out), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (out / "results.md").read_text()
    assert "CPU mode" in text and f"torch {torch.__version__}" in text
    rows = table_rows(out / "results.md")
    assert [row[0] for row in rows] == ["0", "1", "2", "3", "4", "5"]
    verdicts = {row[0]: row[3] for row in rows}
    assert verdicts["2"].startswith("skipped: not run on CPU")  # compile: a cold compile takes over a minute here
    assert all(verdicts[n].startswith("**pass**") for n in ("0", "1", "3", "4", "5")), text
    assert "tokens/s, MFU" in verdicts["1"] and "exact" in verdicts["4"]
    assert "within 0.0001: yes), greedy continuation of 20 tokens the same" in verdicts["5"]  # finetune, export
    for name in ("speed-eager", "torchrun", "resume-straight", "resume-parts"):  # every run's dir and log
        assert (out / name / "summary.json").is_file() and (out / "logs" / f"{name}.log").is_file()


def test_a_missing_package_is_one_line_naming_it_and_exit_2(tmp_path, env):
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('hydra', 'omegaconf'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n")
    out = tmp_path / "check"
    r = gpu_check("--cpu", str(out), env={**env, "PYTHONPATH": f"{blocker}:{env['PYTHONPATH']}"})
    assert r.returncode == 2
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert "lacks hydra-core omegaconf" in r.stderr and "header of scripts/gpu_check.sh" in r.stderr
    assert not out.exists()  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_gpu_mode_says_so_in_one_line(tmp_path, env):
    r = gpu_check(str(tmp_path / "check"), env={**env, "GPU_CHECK_DEVICE": "cuda"})
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert "no CUDA GPU" in r.stderr and "GPU_CHECK_DEVICE=cpu" in r.stderr
