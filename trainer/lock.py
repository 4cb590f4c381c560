"""One writer per run dir (or sweep dir): a lock a second process is refused with one line.

`DirLock.take(dir)` holds an flock on dir/.lock (trainer.rundir.LOCK) until `close()` or until
the process ends: the kernel drops an flock with the last file descriptor of its holder, so a run
killed with SIGKILL leaves no stale lock behind; its leftover file is simply locked again. The
holder writes its pid, host and start time into the file for the refusal's message:

    error: outputs/2026-01-02/10-00-00: in use by pid 4242 on node7 since 2026-01-02 10:00:03

(exit code 2, nothing touched). So of two `resume=auto` racing for one run only one trains, and a
sweep cannot be resumed while it runs, nor twice at once.

Who takes which lock: trainer.argv, for `resume=` (before Hydra writes into the dir), for a new
sweep dir and for `-m resume=<sweep dir>`; trainer.cli's Task for each job's own dir. Under torchrun
only rank 0 locks. `exclusive` is the blocking form, for critical sections (trainer.sweep.summary's
rewrites, and the token cache's one tokenizer: trainer.data.cache). On Windows (no fcntl) nothing is locked.

flock is advisory and, on some network file systems (old NFS), local to one machine: two hosts
writing one run dir over such a mount are not told apart.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Optional

from trainer import rundir
from trainer.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected from a second writer
    fcntl = None


class DirLock:
    """The held lock on one dir; handed on explicitly (Invocation.lock), never kept in a global."""

    def __init__(self, dir: Path, file: Optional[IO[str]]):
        self.dir = dir
        self.file = file

    @classmethod
    def take(cls, dir: str | os.PathLike) -> DirLock:
        """Lock dir for this process, or raise UserError naming who holds it (nothing is written then)."""
        dir = Path(dir)
        if fcntl is None:
            return cls(dir, None)
        try:
            f = open(dir / rundir.LOCK, "a+")  # append mode: opening neither truncates nor touches the file
        except OSError as e:  # a read-only dir, or not a dir: nothing could be written there anyway
            raise UserError(f"{dir}: cannot be written to ({e.strerror})") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise UserError(f"{dir}: in use by {holder}") from None
        f.seek(0)
        f.truncate()
        f.write(holder_line())
        f.flush()
        return cls(dir, f)

    def holds(self, dir: str | os.PathLike) -> bool:
        return self.file is not None and Path(dir).resolve() == self.dir.resolve()

    def close(self) -> None:
        """Let go (closing the file drops the flock); the file stays: removing it would race a new taker."""
        if self.file is not None:
            self.file.close()
            self.file = None

    def __getstate__(self) -> dict:
        # Pickled to a launcher's worker (joblib, submitit): a copy in another process holds nothing.
        return {"dir": self.dir, "file": None}


def holder_line() -> str:
    """Who holds a lock, as the holder writes it into the lock file for whoever is refused or waits."""
    return f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now():%Y-%m-%d %H:%M:%S}\n"


@contextlib.contextmanager
def exclusive(path: Path, waiting: Optional[Callable[[str], None]] = None) -> Iterator[None]:
    """Wait for, then hold, an exclusive flock on the file at path, for a critical section. With
    `waiting`, a process that must wait first calls it with who holds the lock ("pid 42 on node7
    since ..."), and the holder writes that line into the file for the next one."""
    if fcntl is None:  # Windows: jobs there run one at a time (basic launcher) or the last write wins
        yield
        return
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                f.seek(0)
                waiting(f.read().strip() or "another process")
            fcntl.flock(f, fcntl.LOCK_EX)
        if waiting is not None:
            f.seek(0)
            f.truncate()
            f.write(holder_line())
            f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
