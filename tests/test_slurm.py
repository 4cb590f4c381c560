"""A real SLURM: a single-node cluster on this machine (scripts/local_slurm.sh), marked `slurm`.

`make test-slurm` runs these (`.ci/run` after the fast suite); `make test` leaves them out. Without
root or apt-get, or when the cluster does not start, they are skipped with the one line saying why.
The node has the machine's CPUs (2 here) and no GPU: each job asks for one CPU and 1 GB, as a user
of such a cluster would override our preset's 8 CPUs, 32 GB and one GPU.
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time

import pytest
from helpers import REPO, TINY, job_dirs, losses, metrics, run_dirs, run_in_process, start_module, trainer_env

from trainer import rundir

pytestmark = pytest.mark.slurm

FITS = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
        "hydra.launcher.gpus_per_node=0", "hydra.launcher.timeout_min=10"]
NOISE = ("Bypassing sacct", "accounting storage is disabled")  # what a cluster without slurmdbd repeats


@pytest.fixture(scope="session")
def slurm():
    """The local cluster, started (installed first if need be) once a session."""
    proc = subprocess.run([str(REPO / "scripts" / "local_slurm.sh"), "start"], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        pytest.skip(f"no local SLURM: {(proc.stderr.strip().splitlines() or ['start failed'])[-1]}")


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def release_until_done(job_id: str, proc, timeout: float) -> None:
    """SLURM holds a requeued job ~2 minutes before it may start again; lift the hold (again, if it
    was set after an earlier lift: the requeue moves through several states) until the sweep ends."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, f"job {job_id} never ran again after its requeue"
        if subprocess.run(["squeue", "-h", "-j", job_id, "-t", "PD", "-o", "%i"], capture_output=True, text=True,
                          timeout=30).stdout.strip():
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True, timeout=30)
        time.sleep(1)


def sweep(cwd, env, *args: str, launcher: tuple[str, ...] = tuple(FITS), timeout: float = 240):
    return subprocess.run([sys.executable, "-m", "trainer", "-m", *launcher, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_slurm_sweep_runs_two_jobs_to_their_run_dirs_and_summary(slurm, tmp_path, cache_dir):
    proc = sweep(tmp_path, trainer_env(cache_dir), *TINY, "learning_rate=1e-3,3e-4", "hydra.sweep.dir=sweep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(tmp_path / "sweep")
    assert len(jobs) == 2 and all((j / rundir.SUMMARY).is_file() and len(metrics(j)) == 3 for j in jobs)
    assert (tmp_path / "sweep" / ".submitit").is_dir()  # it went through sbatch, not in this process
    rows = list(csv.DictReader((tmp_path / "sweep" / rundir.SWEEP_JOBS_CSV).open()))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert not any(n in proc.stdout + proc.stderr for n in NOISE)
    assert "SLURM has no accounting" in proc.stdout + proc.stderr  # said once instead


def test_a_request_no_node_can_satisfy_fails_at_once_naming_the_keys(slurm, tmp_path, cache_dir):
    start = time.monotonic()
    proc = sweep(tmp_path, trainer_env(cache_dir), *TINY, "learning_rate=1e-3,3e-4", "hydra.sweep.dir=sweep",
                 launcher=("hydra/launcher=slurm",))  # the preset as it is: 8 CPUs, 32 GB, one GPU
    assert proc.returncode == 2 and time.monotonic() - start < 30
    assert proc.stderr.startswith("error: no node of this cluster can run these jobs") and \
        proc.stderr.count("\n") == 1, proc.stderr
    for key in ("hydra.launcher.cpus_per_task=8", "hydra.launcher.gpus_per_node=1"):
        assert key in proc.stderr
    assert not (tmp_path / "sweep" / ".submitit").exists()  # nothing was submitted


def test_a_job_requeued_mid_run_finishes_with_the_losses_of_an_uninterrupted_run(slurm, tmp_path, cache_dir):
    run = [*TINY, "max_iters=1000", "eval_interval=20"]  # ~10 s on an idle 2-CPU VM: the requeue lands mid-run
    proc = start_module("trainer", "-m", *FITS, *run, "hydra.sweep.dir=sweep", cwd=tmp_path,
                        env=trainer_env(cache_dir))
    job = tmp_path / "sweep" / "0"
    deadline = time.monotonic() + 60
    while len(rundir.read_metrics(job) if (job / rundir.METRICS).exists() else []) < 2:  # a checkpoint at step 20
        assert time.monotonic() < deadline and proc.poll() is None, "the job did not start training"
        time.sleep(0.05)
    (job_id,) = sh("squeue", "-h", "-t", "R", "-o", "%i").split()
    try:
        sh("scontrol", "requeue", job_id)  # as a preemption does: SIGTERM, SIGKILL, then start again
        release_until_done(job_id, proc, timeout=240)
        assert proc.wait(timeout=60) == 0
    finally:
        subprocess.run(["scancel", job_id], timeout=30)  # never leave a job behind, whatever failed
    resumed = re.search(r"Resuming from \S+ at step (\d+)", (job / rundir.LOG).read_text())
    assert resumed and 20 <= int(resumed.group(1)) < 1000, "the job was not stopped mid-run and continued"
    reference = run_in_process(*run, cwd=tmp_path, cache_dir=cache_dir)
    assert reference.returncode == 0, reference.stderr
    (ref_dir,) = run_dirs(tmp_path)
    assert losses(metrics(job)) == losses(metrics(ref_dir))
    assert len(list(csv.DictReader((tmp_path / "sweep" / rundir.SWEEP_JOBS_CSV).open()))) == 1  # counted once


def test_srun_torchrun_of_two_ranks_writes_one_run_dir(slurm, tmp_path, cache_dir):
    proc = subprocess.run(["srun", "-N1", "-n1", "-c2", "--mem=2G", sys.executable, "-m", "torch.distributed.run",
                           "--nnodes=1", "--standalone", "--nproc_per_node=2", "-m", "trainer", *TINY, "batch_size=2"],
                          cwd=tmp_path, env=trainer_env(cache_dir), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    assert (run / rundir.SUMMARY).is_file() and [r["step"] for r in metrics(run)] == [0, 10, 20]
    assert "x 2 ranks" in (run / rundir.LOG).read_text()
