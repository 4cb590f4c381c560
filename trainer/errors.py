"""What can go wrong, and how it reads: one line naming the key or path that caused it.

`UserError` is every mistake a user can make (an override, a file, a checkpoint, a device):
exit code 2. `Diverged` is a run that went wrong (NaN loss): exit code 3. `one_line` turns
those and Hydra's and OmegaConf's exceptions into the one line the CLI prints; `job_error`
is the line a failed sweep job leaves in its error.txt.

The exit codes: 0 done, 2 a mistake, 3 diverged, 130 Ctrl-C, and for a run stopped by a signal
with its checkpoint saved at the step it was on (trainer.preempt.Preempted): 143 for SIGTERM, 138
for SIGUSR1 (128 + the signal's number, as a shell reports them); a second signal exits at once with
128 + its number.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import errno
import os
import re


class UserError(Exception):
    """A bad input (override, file, checkpoint, device). Printed as one line, exit code 2."""

    exit_code = 2


class Diverged(UserError):
    """The loss became NaN or Inf: the run stops, the last good checkpoint stays (its path is in the
    line); resume from it with a lower learning rate: resume=<run dir> learning_rate=3e-4."""

    exit_code = 3


class WriteFailed(UserError):
    """A file could not be written (a full disk, a quota, a file-size limit): exit code 2, and what
    was written before (the previous checkpoint) stays as it was."""

    def __init__(self, path: os.PathLike | str, e: BaseException):
        super().__init__(f"{path}: cannot write it ({write_failure(e)}); the files written before it are intact")


def write_failure(e: BaseException) -> str:
    """Why a write failed, as "ENOSPC: No space left on device" (or the error's first line)."""
    code = getattr(e, "errno", None) or _errno_in(str(e))
    return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}" if code else str(e).splitlines()[0]


def _errno_in(text: str) -> int | None:
    """torch.save reports a failed write as a RuntimeError whose text holds the errno's name or message."""
    for code, name in errno.errorcode.items():
        if name in text or os.strerror(code) in text:
            return code
    return None


@contextlib.contextmanager
def writing(path: os.PathLike | str):
    """Turn a failed write of `path` (OSError, or torch's RuntimeError around one) into WriteFailed."""
    try:
        yield
    except WriteFailed:
        raise
    except OSError as e:
        raise WriteFailed(path, e) from None
    except RuntimeError as e:
        if _errno_in(str(e)) is None and "write" not in str(e).lower():
            raise
        raise WriteFailed(path, e) from None


# Lines of Hydra's and OmegaConf's messages that repeat what the first line says, or point elsewhere.
_NOISE = ("full_key:", "object_type=", "reference_type=", "Config search path", "Set the environment variable",
          "provider=", "path=", "See https://")


def one_line(ex: BaseException) -> str:
    """A trainer, Hydra or OmegaConf exception as one readable line naming the culprit."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(ex, UserError):
        return str(ex)
    if isinstance(ex, MissingConfigException) and ex.options is not None and ex.missing_cfg_file:
        group, _, option = str(ex.missing_cfg_file).rpartition("/")
        return f"{group}={option}: unknown option (choose from {', '.join(sorted(ex.options))})"
    if isinstance(ex, OverrideParseException):
        return f"{ex.override}: {_lines(ex.message)}"
    unknown = re.match(r"Could not override '([^']+)'", str(ex))
    if unknown and isinstance(ex.__cause__, (ConfigAttributeError, ConfigKeyError)):
        # A typo; Hydra's "+key=..." hint would not work on the typed schema.
        hint = _did_you_mean(ex.__cause__) if ex.__cause__.full_key == unknown.group(1) else ""
        return f"{unknown.group(1)}: no such key{hint}"
    key = getattr(ex.__cause__, "full_key", None) or getattr(ex, "full_key", None)
    text = _lines(str(ex))
    if isinstance(ex.__cause__, OmegaConfBaseException):
        text = f"{text}: {_lines(str(ex.__cause__))}" if text else _lines(str(ex.__cause__))
    return f"{key}: {text}" if key and not text.startswith(f"{key}") else text


def job_error(ex: BaseException) -> str:
    """A failed sweep job's error as one line: the message alone for a user's mistake, else with its type."""
    text = " ".join(str(ex).split())
    return text if isinstance(ex, UserError) else f"{type(ex).__name__}: {text}"


def _did_you_mean(e) -> str:
    known = [f.name for f in dataclasses.fields(e.object_type)] if dataclasses.is_dataclass(e.object_type) else []
    close = difflib.get_close_matches(str(e.key), known, n=1)
    prefix = str(e.full_key)[: -len(str(e.key))] if str(e.full_key).endswith(str(e.key)) else ""
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _lines(text: str) -> str:
    keep = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.strip().startswith(_NOISE)]
    return "; ".join(keep).rstrip(".")
