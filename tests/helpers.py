"""What the tests share: the tiny model's overrides, running the CLI (in a child process, or in
this one), and reading back what a run or a sweep left in its dirs (through trainer.rundir,
as the trainer itself reads them).

End-to-end behaviour (a run's files, runs started together, determinism, the bit-exact resume, sweeps,
W&B, torchrun, Ctrl-C) runs in child processes; what needs no process of its own (argv handling, config
checks, one-line errors, resume variants, generation, compare) calls the same main() in the test
process (`call_main`). Tests that need ../shared/data skip when it is absent."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from trainer import rundir

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# A model small enough that a run of a few dozen steps takes a second or two on a laptop CPU.
TINY = ["d_model=32", "num_blocks=2", "num_heads=2", "context_length=32", "batch_size=4",
        "max_iters=20", "eval_interval=10", "eval_iters=2", "device=cpu", "num_threads=1"]


class Evil:
    """A pickle that would call os.mkdir(marker) when loaded: harmless, and visible if it ever ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# ----------------------------------------------------------------------------- running the CLI


def trainer_env(cache_dir: Path, **extra: str) -> dict[str, str]:
    """The environment a child process trains in: this checkout's trainer first on the path, the
    session's tokenizer cache (and W&B's staging dir for offline tables and artifacts beside it, not
    in the home dir), and no W&B, Hydra or torchrun settings leaking in from outside."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("WANDB_", "HYDRA_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    e.update(TRAINER_CACHE_DIR=str(cache_dir), WANDB_SILENT="true", PYTHONUNBUFFERED="1",
             WANDB_DATA_DIR=str(Path(cache_dir) / "wandb-data"),
             PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    e.update(extra)
    return e


def run_module(module: str, *args: str, cwd: Path, env: dict[str, str],
               timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m module args...` in a child process, as a user types it."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def start_module(module: str, *args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """`python -m module args...` in the background, in a session of its own, so that kill() takes
    what it started (a launcher's worker processes) along with it, as a lost node would."""
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 60.0, poll: float = 0.001) -> bool:
    """True once predicate() holds; False if the process ended (or the time ran out) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(poll)
    return False


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a process started by start_module, and every process of its session."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def call_main(main, *args: str, cwd: Path) -> Result:
    """A command's `main()` (trainer.cli, trainer.compare, trainer.generate) in this process, with cwd,
    sys.argv, stdout and stderr as a child process would have them, all put back after: no
    interpreter and torch start-up (~1.3 s a run) for what needs no process of its own."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    old_cwd, old_argv = os.getcwd(), sys.argv
    os.chdir(cwd)
    sys.argv = [main.__module__, *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
    return Result(code, out.getvalue(), err.getvalue())


def run_in_process(*args: str, cwd: Path, cache_dir: Path) -> Result:
    """`python -m trainer args...` in this process, with the environment a child would get from
    trainer_env (the session's tokenizer cache; no W&B mode or HYDRA_FULL_ERROR), put back after."""
    import pytest

    from trainer.cli import main

    with pytest.MonkeyPatch.context() as mp:
        for key in ("WANDB_MODE", "HYDRA_FULL_ERROR"):
            mp.delenv(key, raising=False)
        mp.setenv("TRAINER_CACHE_DIR", str(cache_dir))
        return call_main(main, *args, cwd=cwd)


def composed(*overrides: str, hydra: bool = False):
    """The config a command line composes, as the trainer composes it (hydra: with the hydra node)."""
    from hydra import compose, initialize_config_dir

    from trainer.config import CONF_DIR, register_configs

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


# ----------------------------------------------------------------------------- reading results


def ok(result):
    """The result of a command that must succeed (its stderr shown when it did not)."""
    assert result.returncode == 0, result.stderr
    return result


def run_dirs(root: Path) -> list[Path]:
    """Every single-run dir under root/outputs/<date>/<time>, oldest first."""
    return sorted(p for p in (root / rundir.OUTPUTS).glob("*/*") if p.is_dir() and p.parts[-2] != rundir.MULTIRUN)


def metrics(run_dir: Path) -> list[dict]:
    rows = rundir.read_metrics(run_dir)
    assert rows, f"no metrics in {run_dir}"
    return rows


def losses(rows: list[dict]) -> list[tuple]:
    """What must match bit for bit between two runs of the same training (timings differ)."""
    return [(r["step"], r["train_loss"], r["valid_loss"], r["learning_rate"]) for r in rows]


def sweep_dir(root: Path) -> Path:
    """The one sweep dir under root/outputs/multirun/<date>/<time>."""
    (sweep,) = [p for p in (root / rundir.OUTPUTS / rundir.MULTIRUN).glob("*/*") if p.is_dir()]
    return sweep


def job_dirs(sweep: Path) -> list[Path]:
    """The sweep's job dirs (0, 1, ...), in job order."""
    return sorted((p for p in sweep.iterdir() if (p / rundir.HYDRA).is_dir()), key=lambda p: int(p.name))


def threads_used(job_dir: Path) -> int:
    """The CPU threads the job trained with, from its log line 'Training on cpu (N threads)'."""
    return int(re.search(r"on cpu \((\d+) threads?\)", (job_dir / rundir.LOG).read_text()).group(1))
