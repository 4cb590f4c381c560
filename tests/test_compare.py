"""`python -m trainer.compare`: a table sorted by best valid loss, and a PNG of the loss curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TINY, call_main, job_dirs, run_dirs, run_in_process, run_module, sweep_dir, trainer_env

import trainer.compare
from trainer import rundir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def compare(*args: str, cwd: Path):
    """`python -m trainer.compare args...`, in this process."""
    return call_main(trainer.compare.main, *args, cwd=cwd)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache_dir):
    """A 3-point learning-rate sweep (through the CLI, in a process of its own), and one single run
    elsewhere that also differs in max_iters."""
    root = tmp_path_factory.mktemp("compare")
    env = trainer_env(cache_dir)
    proc = run_module("trainer", "-m", "learning_rate=3e-3,1e-3,1e-4", *TINY, cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAINER_CACHE_DIR", str(cache_dir))
        proc = run_in_process(*TINY, "learning_rate=2e-3", "max_iters=10", cwd=root)
    assert proc.returncode == 0, proc.stderr
    (single,) = run_dirs(root)
    return root, env, sweep_dir(root), single


def best_of(run_dir):
    return json.loads((run_dir / rundir.SUMMARY).read_text())["best_valid_loss"]


def test_table_is_sorted_by_best_valid_loss_with_the_keys_that_differ_as_columns(runs):
    root, env, sweep, _ = runs
    proc = compare(str(sweep), cwd=root)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = lines[0].split()
    assert header[:2] == ["run", "learning_rate"] and "d_model" not in header  # only what differs
    jobs = job_dirs(sweep)
    expected = sorted(jobs, key=best_of)
    rows = [ln.split() for ln in lines[2:5]]
    assert [r[0] for r in rows] == [j.name for j in expected]
    assert [float(r[2]) for r in rows] == [pytest.approx(best_of(j), abs=1e-4) for j in expected]
    assert all(r[-1] == "ok" for r in rows)
    lr_of = {"0": "0.003", "1": "0.001", "2": "0.0001"}
    assert f"Best: {expected[0].name} (learning_rate={lr_of[expected[0].name]})" in proc.stdout


def test_a_png_of_the_loss_curves_lands_in_the_sweep_dir(runs):
    root, env, sweep, _ = runs
    proc = compare(str(sweep), cwd=root)
    assert proc.returncode == 0, proc.stderr
    png = sweep / rundir.PLOT
    assert f"Loss curves: {png.resolve()}" in proc.stdout
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000  # two panels, three curves: not a blank image


def test_any_mix_of_run_dirs_compares_with_the_png_where_asked(runs, tmp_path):
    root, env, sweep, single = runs
    out = tmp_path / "plots" / "lr.png"
    job0 = job_dirs(sweep)[0]
    proc = compare(str(job0), str(single), "--out", str(out), cwd=root)
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[0].split()
    assert header[1:3] == ["learning_rate", "max_iters"]
    names = [ln.split()[0] for ln in proc.stdout.splitlines()[2:4]]
    assert sorted(names) == sorted([f"multirun/{sweep.parent.name}/{sweep.name}/0",
                                    f"{single.parent.name}/{single.name}"])
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_no_plot_prints_the_table_only(runs, tmp_path):
    root, env, sweep, single = runs
    proc = compare(str(single), "--no-plot", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Loss curves" not in proc.stdout and not (single / rundir.PLOT).exists()
    assert proc.stdout.splitlines()[2].split()[0] == single.name


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nope", "no such directory"),
    (lambda p: p, "no runs in it (a run dir has .hydra/config.yaml)"),
])
def test_a_path_without_runs_is_one_line_on_stderr(tmp_path, make, message):
    path = make(tmp_path)
    proc = compare(str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {path}: {message}\n"
