"""Without a cluster: what the SLURM launcher checks before submitting (trainer.sweep.slurm), and a
sweep job started again in its own dir (as SLURM does on requeue) continuing from its checkpoint.
The same on a real SLURM: tests/test_slurm.py (make test-slurm)."""

from __future__ import annotations

import pytest
from helpers import TINY, job_dirs, losses, metrics
from omegaconf import OmegaConf

from trainer import rundir
from trainer.errors import UserError
from trainer.sweep.slurm import check_request, node_sizes

PRESET = OmegaConf.create({"cpus_per_task": 8, "tasks_per_node": 1, "mem_gb": 32, "gpus_per_node": 1,
                           "partition": None})


def test_a_request_above_every_node_names_each_key_to_lower():
    with pytest.raises(UserError) as e:
        check_request(PRESET, [(2, 24105, 0), (4, 16000, 0)])
    assert str(e.value).startswith("no node of this cluster can run these jobs")
    assert "hydra.launcher.cpus_per_task=8 (a node has at most 4 CPUs)" in str(e.value)
    assert "hydra.launcher.mem_gb=32 (a node has at most 23 GB)" in str(e.value)
    assert "hydra.launcher.gpus_per_node=1 (a node has at most 0 GPUs)" in str(e.value)


def test_a_request_one_node_can_run_passes():
    check_request(PRESET, [(2, 24105, 0), (64, 512000, 8)])


def test_gpus_are_read_from_sinfos_gres(monkeypatch):
    import trainer.sweep.slurm as slurm

    monkeypatch.setattr(slurm, "_run", lambda cmd: "64 512000 gpu:a100:4(S:0-1)\n2 24105+ (null)\n")
    assert node_sizes(None) == [(64, 512000, 4), (2, 24105, 0)]


def test_a_sweep_job_started_again_in_its_dir_continues_from_its_checkpoint(trainer_here, tmp_path):
    args = ["-m", *TINY, "learning_rate=1e-3", "hydra.sweep.dir=sweep"]
    assert trainer_here(*args).returncode == 0
    (job,) = job_dirs(tmp_path / "sweep")
    first = losses(metrics(job))
    (job / rundir.SUMMARY).unlink()  # as if stopped after its last checkpoint, before the summary
    assert trainer_here(*args).returncode == 0
    log = (job / rundir.LOG).read_text()
    assert "continuing from its checkpoint" in log and "Resuming from" in log
    assert losses(metrics(job)) == first and (job / rundir.SUMMARY).is_file()


def test_a_job_slurm_requeues_after_it_finished_is_not_run_again(trainer_here, tmp_path, monkeypatch):
    args = ["-m", *TINY, "learning_rate=1e-3", "hydra.sweep.dir=sweep"]
    assert trainer_here(*args).returncode == 0
    (job,) = job_dirs(tmp_path / "sweep")
    before = (job / rundir.METRICS).read_text()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # what SLURM sets in a requeued job
    assert trainer_here(*args).returncode == 0
    assert "had finished before SLURM requeued it" in (job / rundir.LOG).read_text()
    assert (job / rundir.METRICS).read_text() == before
