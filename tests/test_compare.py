"""`python -m trainer.compare`: a table sorted by best valid loss, and a PNG of the loss curves."""

from __future__ import annotations

import json
import statistics
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
    proc = run_in_process(*TINY, "learning_rate=2e-3", "max_iters=10", cwd=root, cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr
    (single,) = run_dirs(root)
    return root, env, sweep_dir(root), single


def summary_of(run_dir):
    return json.loads((run_dir / rundir.SUMMARY).read_text())


def test_table_is_ranked_by_final_valid_loss_with_its_error_and_the_keys_that_differ(runs):
    root, env, sweep, _ = runs
    proc = compare(str(sweep), cwd=root)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = lines[0].split()
    assert header[:5] == ["run", "learning_rate", "final", "valid", "±"] and "d_model" not in header
    jobs = job_dirs(sweep)
    expected = sorted(jobs, key=lambda j: summary_of(j)["final_valid_loss"])  # the whole valid split's
    rows = [ln.split() for ln in lines[2:5]]
    assert [r[0] for r in rows] == [j.name for j in expected]
    assert [float(r[2]) for r in rows] == [pytest.approx(summary_of(j)["final_valid_loss"], abs=1e-4) for j in expected]
    assert [float(r[3]) for r in rows] == [pytest.approx(summary_of(j)["final_valid_loss_se"], abs=1e-4) for j in expected]
    assert rows[0][4] == "best" and all(r[-1] == "ok" for r in rows)
    lr_of = {"0": "0.003", "1": "0.001", "2": "0.0001"}
    assert f"Best: {expected[0].name} (learning_rate={lr_of[expected[0].name]}), final valid loss" in proc.stdout


def test_runs_within_two_standard_errors_of_the_best_are_marked(tmp_path):
    """Two runs whose final losses differ by less than 2 combined standard errors are not told apart."""
    from trainer.compare import Run, table

    def run(name, final, se):
        return Run(tmp_path / name, "ok", summary={"final_valid_loss": final, "final_valid_loss_se": se,
                                                   "best_valid_loss": final}, name=name)

    text = table([run("a", 3.90, 0.02), run("b", 3.93, 0.02), run("c", 4.10, 0.02)], [])
    marks = {ln.split()[0]: "best" if " best " in ln else "≈" if "≈" in ln else "" for ln in text.splitlines()[2:]}
    assert marks == {"a": "best", "b": "≈", "c": ""}  # 0.03 < 2 * 0.028; 0.20 is not


def test_seed_replicates_are_shown_as_points_with_mean_and_std(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(cache_dir))
    r = run_in_process("-m", "learning_rate=3e-3,1e-4", "TORCH_SEED=1,2", *TINY, "max_iters=10", cwd=tmp_path,
                       cache_dir=cache_dir)
    assert r.returncode == 0, r.stderr
    sweep = sweep_dir(tmp_path)
    proc = compare(str(sweep), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["point", "n"]
    finals = {j.name: summary_of(j)["final_valid_loss"] for j in job_dirs(sweep)}  # jobs 0,1: lr 3e-3
    point = lines[2].split()
    assert point[:2] == ["learning_rate=0.003", "2"]
    assert float(point[2]) == pytest.approx(statistics.fmean([finals["0"], finals["1"]]), abs=1e-4)
    assert float(point[4]) == pytest.approx(statistics.stdev([finals["0"], finals["1"]]), abs=1e-4)
    assert lines[3].split()[:2] == ["learning_rate=0.0001", "2"]
    assert "Best: learning_rate=0.003 (n=2), final valid loss" in proc.stdout
    assert (sweep / rundir.PLOT).read_bytes()[:8] == PNG_MAGIC  # the mean curves with their bands


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


def test_a_point_with_one_finished_replicate_keeps_that_replicates_error():
    """A failed seed beside a finished one: the point's standard error is the finished run's."""
    from trainer.replicates import group

    rows = [{"p": "lr=1", "final": 3.9, "se": 0.02}, {"p": "lr=1", "final": None, "se": None}]
    (point,) = group(rows, name=lambda r: r["p"], final=lambda r: r["final"], best=lambda r: r["final"],
                     se=lambda r: r["se"])
    assert (point.n, point.final_mean, point.se) == (1, 3.9, 0.02)
