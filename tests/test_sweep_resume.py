"""Resuming a stopped sweep (`-m resume=<sweep dir>`): finished jobs are left exactly as they are
(bytes and mtimes), stopped ones continue bit for bit from their checkpoints in their own dirs,
the others run, and the summary is rewritten over them all."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY, job_dirs, kill, losses, metrics, start_module, wait_for
from wandb_reader import offline_runs, read_run

from trainer import rundir

# Job 1 is ten times as long as the others, so that the kill lands in it; an eval (and a
# checkpoint) every 10 steps.
ARGS = [*(a for a in TINY if not a.startswith("max_iters=")), "max_iters=20,200,30"]


def summary_rows(sweep: Path) -> list[dict]:
    with open(sweep / rundir.SWEEP_JOBS_CSV) as f:
        return list(csv.DictReader(f))


def files_of(job_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under a dir, with its bytes and its mtime (ns); not the lock file, where a resume
    refused once it held the sweep dir has left its name (trainer.lock)."""
    return {str(p.relative_to(job_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(job_dir.rglob("*")) if p.is_file() and p.name != rundir.LOCK}


def kill_mid_job_1(tmp_path: Path, env: dict[str, str], *args: str) -> Path:
    """The sweep, SIGKILLed (with every process it started) once job 1 is 30 steps in, job 0 done."""
    sweep = tmp_path / "killed"
    proc = start_module("trainer", "-m", *args, f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=env)

    def job_1_is_under_way() -> bool:
        rows = rundir.read_metrics(sweep / "1")
        return bool(rows) and rows[-1]["step"] >= 30 and (sweep / "0" / rundir.SUMMARY).is_file()

    assert wait_for(job_1_is_under_way, proc, timeout=120), "the sweep ended before the kill"
    kill(proc)
    assert (sweep / "1" / rundir.CKPT).is_file() and not (sweep / "1" / rundir.SUMMARY).exists()
    return sweep


def kept_rows(job_dir: Path) -> list[dict]:
    """The rows up to the job's checkpoint, timings included: a job that continues keeps them as
    they are (one started over would log them again, at other speeds)."""
    step = torch.load(job_dir / rundir.CKPT, weights_only=True)["step"]
    assert step >= 10
    return [r for r in rundir.read_metrics(job_dir) if r["step"] <= step]


def check_resumed(sweep: Path, straight: Path, before: dict[str, dict], rows_1: list[dict]) -> None:
    """Every job ends as in the sweep that was never stopped; the finished ones were not touched;
    job 1 went on from its checkpoint."""
    for num, files in before.items():
        assert files_of(sweep / num) == files, f"job {num} was finished, yet its dir changed"
    assert metrics(sweep / "1")[:len(rows_1)] == rows_1
    assert f"Resuming from {sweep / '1' / rundir.CKPT} at step {rows_1[-1]['step']}" in \
        (sweep / "1" / rundir.LOG).read_text()
    assert [j.name for j in job_dirs(sweep)] == ["0", "1", "2"]
    for job, ref in zip(job_dirs(sweep), job_dirs(straight), strict=True):
        assert losses(metrics(job)) == losses(metrics(ref)), f"job {job.name} differs"
    rows = summary_rows(sweep)
    assert [(r["job"], r["overrides"], r["status"]) for r in rows] == [
        ("0", "max_iters=20", "ok"), ("1", "max_iters=200", "ok"), ("2", "max_iters=30", "ok")]
    assert "3 ok" in (sweep / rundir.SWEEP_MD).read_text()


def test_a_killed_sweep_resumes_where_it_stopped(trainer_here, env, tmp_path):
    sweep = kill_mid_job_1(tmp_path, env, *ARGS)
    assert not (sweep / "2").exists()  # never started
    before = {"0": files_of(sweep / "0")}
    hydra_1, rows_1 = files_of(sweep / "1" / rundir.HYDRA), kept_rows(sweep / "1")
    multirun = (sweep / rundir.MULTIRUN_YAML).read_bytes()

    r = trainer_here("-m", f"resume={sweep}")
    assert r.returncode == 0, r.stderr
    assert (f"Resuming the sweep in {sweep} (3 jobs): job 0 finished (left untouched); "
            f"job 1 continues from step {rows_1[-1]['step']}; job 2 starts") in r.stdout
    assert trainer_here("-m", *ARGS, "hydra.sweep.dir=straight").returncode == 0  # never stopped
    check_resumed(sweep, tmp_path / "straight", before, rows_1)
    assert files_of(sweep / "1" / rundir.HYDRA) == hydra_1  # the continued job keeps its .hydra
    assert (sweep / rundir.MULTIRUN_YAML).read_bytes() == multirun
    assert [r["step"] for r in metrics(sweep / "1")] == list(range(0, 201, 10))  # no row twice

    done = {j.name: files_of(j) for j in job_dirs(sweep)}
    again = trainer_here("-m", f"resume={sweep}")  # nothing left to do: nothing moves
    assert again.returncode == 0, again.stderr
    assert "jobs 0-2 finished" in again.stdout
    assert {j.name: files_of(j) for j in job_dirs(sweep)} == done
    assert all(r["status"] == "ok" for r in summary_rows(sweep))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_killed_sweep_resumes_with_launchers_that_run_jobs_side_by_side(launcher, cli, env, trainer_here, tmp_path):
    # joblib runs jobs 0 and 1 side by side (n_jobs=2), submitit all three: the kill may find job 2
    # finished, stopped or not started; whichever, each job ends as in a sweep never stopped.
    args = [*ARGS, f"hydra/launcher={launcher}", *(["hydra.launcher.n_jobs=2"] if launcher == "joblib" else [])]
    sweep = kill_mid_job_1(tmp_path, env, *args)
    before = {j.name: files_of(j) for j in job_dirs(sweep) if (j / rundir.SUMMARY).is_file()}
    rows_1 = kept_rows(sweep / "1")
    r = cli("-m", f"resume={sweep}")
    assert r.returncode == 0, r.stderr
    assert "job 1 continues from step" in r.stdout
    assert trainer_here("-m", *ARGS, "hydra.sweep.dir=straight").returncode == 0
    check_resumed(sweep, tmp_path / "straight", before, rows_1)


@pytest.mark.slow
def test_a_continued_job_continues_its_own_wandb_run(cli, env, tmp_path):
    env = {**env, "NETRC": str(tmp_path / "no-netrc")}  # no login: offline
    sweep = kill_mid_job_1(tmp_path, env, *ARGS, "wandb.enabled=true")
    (first,) = offline_runs(sweep / "1")
    run_id = torch.load(sweep / "1" / rundir.CKPT, weights_only=True)["wandb_run_id"]
    assert run_id and first.name.endswith(f"-{run_id}")  # (killed before W&B flushed its records)
    r = cli("-m", f"resume={sweep}", extra_env={"NETRC": env["NETRC"]})
    assert r.returncode == 0, r.stderr
    (again,) = [p for p in offline_runs(sweep / "1") if p != first]
    run = read_run(again)
    assert run.id == run_id and run.name == "max_iters=200" and run.exit_code == 0
    assert run.group == f"{sweep.parent.name}_{sweep.name}"  # still the sweep's group
    steps = [h["_step"] for h in run.history]
    assert steps[0] > 0 and steps[-1] == 200  # it goes on from the checkpoint, not from 0


def test_ctrl_c_stops_a_sweep_with_one_line_that_says_how_to_finish_it(env, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "-m", *ARGS, "hydra.sweep.dir=s"], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: any(r["step"] >= 20 for r in rundir.read_metrics(tmp_path / "s" / "1")), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.splitlines() == ["error: interrupted; finish the sweep with: python -m trainer -m resume=s"]
    assert (tmp_path / "s" / "1" / rundir.CKPT).is_file() and not (tmp_path / "s" / "1" / rundir.ERROR).exists()


def test_a_failed_job_is_run_again_and_overrides_added_apply_only_to_the_jobs_run(trainer_here, tmp_path):
    text = " ".join(f"word{i % 97} of the corpus" for i in range(2000))
    (tmp_path / "a.txt").write_text(text)
    first = trainer_here("-m", "data=text", "data_path=a.txt,b.txt", *TINY, "hydra.sweep.dir=s")
    assert first.returncode == 2 and "data_path=b.txt" in first.stderr  # b.txt is not there (yet)
    sweep = tmp_path / "s"
    assert [r["status"] for r in summary_rows(sweep)] == ["ok", "failed"]
    kept = files_of(sweep / "0")

    (tmp_path / "b.txt").write_text(text)
    r = trainer_here("-m", "resume=s", "max_iters=10")
    assert r.returncode == 0, r.stderr
    assert "job 0 finished (left untouched); job 1 starts" in r.stdout
    assert ("max_iters=10: applies to the jobs this resume runs (job 1), from where each goes on; "
            "finished jobs keep what they ran with") in r.stdout
    assert files_of(sweep / "0") == kept
    assert [r["step"] for r in metrics(sweep / "1")] == [0, 10]  # with the new max_iters; no stale rows
    assert not (sweep / "1" / rundir.ERROR).exists()
    rows = summary_rows(sweep)
    assert [(r["overrides"], r["status"], r["steps"]) for r in rows] == [
        ("data_path=a.txt", "ok", "20"), ("data_path=b.txt", "ok", "10")]


def test_a_diverged_job_continues_from_its_last_good_checkpoint(trainer_here, tmp_path):
    first = trainer_here("-m", "learning_rate=1e-3,1e30", *TINY, "hydra.sweep.dir=s")
    assert first.returncode == 3
    diverged = first.stderr.strip().splitlines()[-1]
    assert "training diverged at step" in diverged
    step = torch.load(tmp_path / "s" / "1" / rundir.CKPT, weights_only=True)["step"]
    r = trainer_here("resume=s")  # a sweep dir: resumed as a sweep, -m or not
    # the same config goes the same way, from the same checkpoint
    assert r.returncode == 3
    assert f"job 0 finished (left untouched); job 1 continues from step {step}" in r.stdout
    assert r.stderr.strip().splitlines()[-1] == diverged
    assert [r["status"] for r in summary_rows(tmp_path / "s")] == ["ok", "failed"]


def test_what_cannot_be_resumed_is_one_line_and_touches_nothing(trainer_here, tmp_path):
    assert trainer_here("-m", "learning_rate=1e-3,3e-4", *TINY, "max_iters=2", "eval_interval=1",
                        "hydra.sweep.dir=s").returncode == 0
    assert trainer_here(*TINY, "max_iters=2", "hydra.run.dir=run").returncode == 0
    (tmp_path / "empty").mkdir()
    before = {p: files_of(tmp_path / p) for p in ("s", "run", "empty")}
    cases = {
        ("-m", "resume=run"): "error: resume=run: not a sweep dir (no multirun.yaml there); a single run's dir: "
                              "resume it without -m",
        ("-m", "resume=empty"): "error: resume=empty: not a sweep dir (no multirun.yaml there); expected the dir "
                                "of a sweep, e.g. outputs/multirun/<date>/<time>",
        ("-m", "resume=nowhere"): "error: resume=nowhere: not a sweep dir",
        ("-m", "resume=s", "learning_rate=1e-4"): "error: learning_rate=1e-4: learning_rate is what the sweep in s "
                                                  "varies, and each job keeps its own value",
        ("-m", "resume=s", "d_model=16,32"): "error: d_model=16,32: a resumed sweep runs the jobs it had",
        ("-m", "resume=s", "hydra.sweep.dir=elsewhere"): "error: hydra.sweep.dir=elsewhere: a resumed sweep keeps",
    }
    for args, line in cases.items():
        r = trainer_here(*args)
        assert r.returncode == 2 and r.stderr.startswith(line) and len(r.stderr.splitlines()) == 1, (args, r.stderr)
    assert {p: files_of(tmp_path / p) for p in ("s", "run", "empty")} == before
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "nowhere").exists()

    # A sweep whose multirun.yaml no longer matches its job dirs: job N must stay job N.
    multirun = tmp_path / "s" / rundir.MULTIRUN_YAML
    multirun.write_text(multirun.read_text().replace("learning_rate=1e-3,3e-4", "learning_rate=1e-3,1e-4"))
    (tmp_path / "s" / "1" / rundir.SUMMARY).unlink()  # so that there is something to run
    before = files_of(tmp_path / "s")
    r = trainer_here("-m", "resume=s")
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"error: resume={tmp_path / 's'}: job dir 1 ran learning_rate=0.0003, but job 1 of the sweep in its "
        "multirun.yaml is learning_rate=0.0001"]
    assert files_of(tmp_path / "s") == before


def test_an_optuna_sweep_is_refused_in_one_line(trainer_here, tmp_path):
    sweep = tmp_path / "opt"
    sweep.mkdir()
    (sweep / rundir.MULTIRUN_YAML).write_text(yaml.safe_dump(
        {"hydra": {"sweeper": {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"},
                   "overrides": {"task": [], "hydra": []}}}))
    r = trainer_here("-m", "resume=opt")
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["error: resume=opt: an Optuna sweep cannot be resumed (its study lived in the "
                                     "stopped process's memory); start a new one"]
    assert os.listdir(sweep) == [rundir.MULTIRUN_YAML]
