"""Sweeps from the command line: one dir per job, a summary at the sweep root, launchers, Optuna."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from helpers import TINY, job_dirs, metrics, sweep_dir, threads_used
from omegaconf import OmegaConf

from trainer import rundir
from trainer.device import available_cores
from trainer.sweep import overrides, threads

AUTO_THREADS = [a for a in TINY if not a.startswith("num_threads=")]  # the launcher decides the threads
CORES = available_cores()


def summary_rows(sweep_path, name=rundir.SWEEP_JOBS_CSV):
    with open(sweep_path / name) as f:
        return list(csv.DictReader(f))


def test_learning_rate_sweep_gives_one_run_dir_per_job_and_a_summary(cli, tmp_path):
    proc = cli("-m", "learning_rate=1e-3,3e-4", *TINY)  # in a process of its own, as a user runs it
    assert proc.returncode == 0, proc.stderr
    root = sweep_dir(tmp_path)
    jobs = job_dirs(root)
    assert [j.name for j in jobs] == ["0", "1"]
    for job, lr in zip(jobs, (1e-3, 3e-4), strict=True):
        assert (job / rundir.CKPT).is_file()
        assert OmegaConf.load(job / rundir.CONFIG).learning_rate == lr
        assert [r["step"] for r in metrics(job)] == [0, 10, 20]
        assert all(r["learning_rate"] == lr for r in metrics(job))

    rows = summary_rows(root)
    assert [(r["job"], r["overrides"], r["status"]) for r in rows] == [
        ("0", "learning_rate=0.001", "ok"), ("1", "learning_rate=0.0003", "ok")]
    for row, job in zip(rows, jobs, strict=True):
        done = json.loads((job / rundir.SUMMARY).read_text())
        assert float(row["best_valid_loss"]) == pytest.approx(done["best_valid_loss"])
        # the whole valid split, scored once at the end
        assert float(row["final_valid_loss"]) == pytest.approx(metrics(job)[-1]["valid_loss_full"])
        assert float(row["final_valid_loss"]) == pytest.approx(done["final_valid_loss"])
        assert float(row["tokens_per_s"]) > 0 and float(row["wall_s"]) > 0
        assert row["run_dir"] == job.name
    md = (root / rundir.SWEEP_MD).read_text()
    assert "| 0 | `learning_rate=0.001` | ok |" in md and "| 1 | `learning_rate=0.0003` | ok |" in md
    best = min(rows, key=lambda r: float(r["final_valid_loss"]))
    assert f"Best: `{best['overrides']}` (n=1), final valid loss {float(best['final_valid_loss']):.4f}" in md
    assert "Best: `" in proc.stdout  # the table is printed when the sweep ends
    points = summary_rows(root, rundir.SWEEP_CSV)  # no seed replicates: one point per job
    assert [(p["point"], p["n"], p["jobs"]) for p in points] == [
        (r["overrides"], "1", r["job"]) for r in sorted(rows, key=lambda r: float(r["final_valid_loss"]))]


def test_a_failing_job_is_listed_as_failed_and_the_others_still_run(trainer_here, tmp_path):
    # dropout=1.5 is out of range: that job fails its checks before training; the other trains.
    proc = trainer_here("-m", "dropout=1.5,0.0", *TINY)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: dropout=1.5: must be in [0, 1)"
    root = sweep_dir(tmp_path)
    rows = summary_rows(root)
    assert [(r["overrides"], r["status"]) for r in rows] == [("dropout=1.5", "failed"), ("dropout=0.0", "ok")]
    assert rows[0]["error"] == "dropout=1.5: must be in [0, 1)"
    assert rows[0]["best_valid_loss"] == ""  # it never evaluated
    assert (job_dirs(root)[1] / rundir.CKPT).is_file()
    assert "1 ok, 1 failed" in (root / rundir.SWEEP_MD).read_text()


def test_job_names_leave_out_the_overrides_every_job_shares():
    extra = overrides.naming_overrides(["learning_rate=1e-3,3e-4", "model=small", "max_iters=5",
                                    "optimizer=glob(adam*)", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert extra == ["hydra.job.config.override_dirname.exclude_keys=[max_iters,model]"]
    assert overrides.naming_overrides(["learning_rate=1e-3,3e-4"]) == []
    assert overrides.is_sweep(["hparams_search=lr_optuna"]) and not overrides.is_sweep(["hparams_search=null"])


@pytest.mark.parametrize("launcher, env_batch, expected", [
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, "3", 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, "", 2),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 4}, "3", 3),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, "1", 1),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"}, "2", 2),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}, "8", 1),
])
def test_cores_are_shared_by_the_jobs_that_run_side_by_side(monkeypatch, launcher, env_batch, expected):
    monkeypatch.setenv(threads.BATCH_ENV, env_batch)
    assert threads.parallel_jobs(OmegaConf.create({"launcher": launcher})) == expected


def test_joblib_minus_one_means_one_job_per_core(monkeypatch):
    monkeypatch.delenv(threads.BATCH_ENV, raising=False)
    hc = OmegaConf.create({"launcher": {"_target_": "x.JoblibLauncher", "n_jobs": -1}})
    assert threads.parallel_jobs(hc) == CORES


def test_the_batch_size_is_known_before_the_jobs_start():
    def cfg(task, sweeper):
        return OmegaConf.create({"hydra": {"overrides": {"task": task}, "sweeper": sweeper}})

    basic = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "max_batch_size": None,
             "params": None}
    assert threads.first_batch_size(cfg(["learning_rate=1e-3,3e-4", "optimizer=adam,sgd", "d_model=8"], basic)) == 4
    assert threads.first_batch_size(cfg(["learning_rate=1,2,3"], {**basic, "max_batch_size": 2})) == 2
    optuna = {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", "n_jobs": 4,
              "n_trials": 3}
    assert threads.first_batch_size(cfg([], optuna)) == 3


@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs_side_by_side_sharing_the_cores(cli, tmp_path):
    proc = cli("-m", "learning_rate=1e-3,3e-4", *AUTO_THREADS, "hydra/launcher=joblib")
    assert proc.returncode == 0, proc.stderr
    assert "Joblib.Parallel(n_jobs=-1" in proc.stdout + proc.stderr
    root = sweep_dir(tmp_path)
    for job in job_dirs(root):
        assert (job / rundir.CKPT).is_file()
        assert threads_used(job) == max(1, CORES // min(CORES, 2))
    assert [r["status"] for r in summary_rows(root)] == ["ok", "ok"]


@pytest.mark.slow
def test_submitit_local_launcher_runs_two_jobs(cli, tmp_path):
    proc = cli("-m", "learning_rate=1e-3,3e-4", *AUTO_THREADS, "hydra/launcher=submitit_local")
    assert proc.returncode == 0, proc.stderr
    root = sweep_dir(tmp_path)
    assert (root / ".submitit").is_dir()  # submitit's own job records
    for job in job_dirs(root):
        assert (job / rundir.CKPT).is_file()
        assert threads_used(job) == max(1, CORES // 2)  # both start at once: they split the cores
    assert [(r["overrides"], r["status"]) for r in summary_rows(root)] == [
        ("learning_rate=0.001", "ok"), ("learning_rate=0.0003", "ok")]


@pytest.mark.slow
def test_optuna_searches_learning_rate_on_a_log_scale_and_minimises_the_final_valid_loss(cli, tmp_path):
    # No -m: the preset makes it a sweep. max_iters is shorter than TINY's to keep 3 trials quick.
    proc = cli("hparams_search=lr_optuna", "hydra.sweeper.n_trials=3", *TINY, "max_iters=10", "eval_interval=5")
    assert proc.returncode == 0, proc.stderr
    root = sweep_dir(tmp_path)
    jobs = job_dirs(root)
    assert len(jobs) == 3
    lrs = [OmegaConf.load(j / rundir.CONFIG).learning_rate for j in jobs]
    assert len(set(lrs)) == 3 and all(1e-5 <= lr <= 1e-2 for lr in lrs)
    best = [json.loads((j / rundir.SUMMARY).read_text())["final_valid_loss"] for j in jobs]  # the whole valid split
    result = yaml.safe_load((root / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(best))
    assert result["best_params"]["learning_rate"] == pytest.approx(lrs[best.index(min(best))])
    assert [r["overrides"] for r in summary_rows(root)] == [f"learning_rate={lr}" for lr in lrs]
    assert "alembic" not in proc.stdout  # optuna's imports keep quiet


def test_optuna_database_storage_is_refused_in_one_line(trainer_here, tmp_path):
    proc = trainer_here("hparams_search=lr_optuna", "hydra.sweeper.storage=sqlite:///study.db", *TINY)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: hydra.sweeper.storage=sqlite:///study.db: optuna 2.10")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "outputs" / "multirun").exists()
