"""One writer per run dir (trainer.lock): a run or sweep in progress is refused to a second
process in one line naming the holder, with nothing touched; the lock dies with its holder, even
under SIGKILL. Real processes: the holder runs in a child, stopped (SIGSTOP) while its dir is
compared, so that only the refused process could have changed it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY, kill, run_dirs, start_module, wait_for
from test_bad_inputs import snapshot

from trainer import rundir
from trainer.errors import UserError
from trainer.lock import DirLock

# A run that goes on until killed, with its step-0 checkpoint written at once and nothing after it.
FOREVER = [*(a for a in TINY if not a.startswith(("max_iters=", "eval_interval="))), "max_iters=1000000",
           "eval_interval=1000000"]


def refusal(holder: subprocess.Popen, where: Path) -> str:
    return f"error: {where}: in use by pid {holder.pid} on {socket.gethostname()} since "


def assert_refused(result, holder: subprocess.Popen, where: Path) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(refusal(holder, where)), result.stderr


def locked_by(proc: subprocess.Popen, where: Path):
    """True once proc has written itself into where's lock file (it holds the lock from then on)."""
    lock = where / rundir.LOCK
    return lambda: lock.is_file() and lock.read_text().startswith(f"pid {proc.pid} ")


def first_to_end(procs: list[subprocess.Popen], timeout: float = 60.0) -> subprocess.Popen:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                return p
        time.sleep(0.01)
    raise AssertionError("neither process ended")


def test_a_lock_is_refused_while_held_and_free_once_closed(tmp_path):
    first = DirLock.take(tmp_path)
    with pytest.raises(UserError, match=f"{tmp_path}: in use by pid {os.getpid()} on "):
        DirLock.take(tmp_path)
    assert first.holds(tmp_path) and not first.holds(tmp_path / "other")
    first.close()
    DirLock.take(tmp_path).close()  # the leftover file is simply locked again


def test_a_run_in_training_is_refused_and_a_killed_ones_lock_is_gone(trainer_here, env, tmp_path):
    holder = start_module("trainer", *FOREVER, cwd=tmp_path, env=env)
    try:
        assert wait_for(lambda: any((d / rundir.CKPT).is_file() for d in run_dirs(tmp_path)), holder)
        (run,) = run_dirs(tmp_path)
        assert wait_for(locked_by(holder, run), holder)
        os.kill(holder.pid, signal.SIGSTOP)  # from here on only the second process could change the dir
        before = snapshot(tmp_path)
        assert_refused(trainer_here(f"resume={run}", "max_iters=2"), holder, run)
        assert snapshot(tmp_path) == before
    finally:
        kill(holder)  # SIGKILL: no chance to let go of anything
    assert (run / rundir.LOCK).is_file()  # its file stays, and blocks nothing
    r = trainer_here(f"resume={run}", "max_iters=2")
    assert r.returncode == 0, r.stderr
    assert rundir.read_metrics(run)[-1]["step"] == 2
    assert (run / rundir.LOCK).read_text().startswith(f"pid {os.getpid()} ")


@pytest.mark.slow
def test_two_resume_auto_at_once_one_trains_the_other_is_refused(trainer_here, env, tmp_path):
    assert trainer_here(*TINY).returncode == 0
    (run,) = run_dirs(tmp_path)
    args = [sys.executable, "-m", "trainer", "resume=auto", *TINY, "max_iters=1000000"]  # the same run, longer
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, start_new_session=True) for _ in range(2)]
    try:
        loser = first_to_end(procs)
        (winner,) = [p for p in procs if p is not loser]
        refused = subprocess.CompletedProcess([], loser.returncode, "", loser.stderr.read())
        assert_refused(refused, winner, run.relative_to(tmp_path))  # the dir as resume=auto found it
        assert wait_for(lambda: rundir.read_metrics(run)[-1]["step"] > 20, winner)  # the other trains on
    finally:
        for p in procs:
            if p.poll() is None:
                kill(p)
            p.stderr.close()


@pytest.mark.slow
def test_a_sweep_in_progress_and_two_resumes_of_it_are_refused(cli, env, tmp_path):
    sweep = tmp_path / "s"
    sweeping = start_module("trainer", "-m", *FOREVER[:-2], "max_iters=1000000,1000001", "eval_interval=1000000",
                            f"hydra.sweep.dir={sweep}", cwd=tmp_path, env=env)
    try:
        assert wait_for(lambda: (sweep / "0" / rundir.CKPT).is_file(), sweeping)
        assert_refused(cli("-m", f"resume={sweep}", timeout=60), sweeping, sweep)  # it still runs
    finally:
        kill(sweeping)
    first = start_module("trainer", "-m", f"resume={sweep}", cwd=tmp_path, env=env)
    try:
        assert wait_for(locked_by(first, sweep), first)
        os.kill(first.pid, signal.SIGSTOP)
        before = snapshot(tmp_path)
        assert_refused(cli("-m", f"resume={sweep}", timeout=60), first, sweep)
        assert snapshot(tmp_path) == before
    finally:
        kill(first)
