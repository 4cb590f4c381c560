"""Sweeps (`python -m trainer -m learning_rate=1e-3,3e-4`): a summary at the sweep root, job
names that say what varies, and CPU threads shared between the jobs that run side by side.

`SweepSummary` is a Hydra callback (registered under `hydra.callbacks` in conf/config.yaml).
After every job it rewrites `summary.csv` and `summary.md` in the sweep dir from what the job
dirs hold (summary.json for a finished job, error.txt for a failed one, metrics.jsonl for the
curve so far), so the summary is there even when Hydra stops the sweep on a failed job and
never calls `on_multirun_end`. Jobs may end at once in parallel processes (joblib, submitit):
a file lock serialises the rewrites, and the last one sees every job.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trainer.errors import UserError
from trainer.tracking import read_metrics

log = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
JOB_SUMMARY = "summary.json"  # every run's summary, written by trainer.cli.task when it finishes
ERROR_NAME = "error.txt"  # written here when a job fails: its one-line error
BATCH_ENV = "TRAINER_SWEEP_BATCH"  # how many jobs the sweeper hands the launcher at once
COLUMNS = ["job", "overrides", "status", "best_valid_loss", "final_valid_loss", "tokens_per_s", "wall_s",
           "steps", "run_dir", "error"]


# ----------------------------------------------------------------------------- the command line


def is_sweep(overrides: list[str]) -> bool:
    """hparams_search=NAME makes a run a sweep even without -m (the preset sets hydra.mode)."""
    return any(o.startswith("hparams_search=") and o.split("=", 1)[1] not in ("", "null") for o in overrides)


def sweep_overrides(overrides: list[str]) -> list[str]:
    """What trainer.cli adds to a sweep's command line, once it has refused what cannot work."""
    for o in overrides:
        if o.startswith("hydra.sweeper.storage="):
            check_storage(o.split("=", 1)[1])
    return naming_overrides(overrides)


def naming_overrides(overrides: list[str]) -> list[str]:
    """Leave the command line's fixed overrides out of each job's name (hydra.job.override_dirname).

    A job of `-m learning_rate=1e-3,3e-4 max_iters=50` is then named `learning_rate=0.001`, in
    W&B and in the summary, instead of repeating what every job of the sweep shares.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = [o for o in overrides if not o.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
    if any(o.startswith("hydra.job.config.override_dirname.exclude_keys=") for o in overrides):
        return []  # the user's own choice
    try:
        parsed = OverridesParser.create().parse_overrides(task)
    except Exception:  # a malformed override: Hydra reports it, with its name, a moment later
        return []
    fixed = sorted({o.key_or_group for o in parsed if not o.is_sweep_override()})
    if not fixed:
        return []
    return [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(fixed)}]"]


# ----------------------------------------------------------------------------- CPU threads per job


def parallel_jobs(hc: DictConfig) -> int:
    """How many jobs of this sweep share this machine's cores right now.

    joblib runs `n_jobs` at once (-1 = one per core); submitit's local executor starts the whole
    batch at once; the basic launcher runs one job at a time, and on SLURM each job has its own
    allocation (sched_getaffinity already sees only its CPUs). Never more than the batch itself:
    3 jobs on 16 cores get 5 threads each, not 1.
    """
    target = str(OmegaConf.select(hc, "launcher._target_", default="") or "")
    batch = int(os.environ.get(BATCH_ENV, "0") or 0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if target.endswith("JoblibLauncher"):
        n_jobs = OmegaConf.select(hc, "launcher.n_jobs", default=1)
        if not isinstance(n_jobs, int) or n_jobs == 0:
            n_jobs = 1
        n = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
    elif target.endswith("submitit_launcher.LocalLauncher"):
        n = batch or 1
    else:
        return 1
    return max(1, min(n, batch) if batch else n)


def first_batch_size(config: DictConfig) -> Optional[int]:
    """How many jobs the sweeper launches together (None when it cannot be told in advance)."""
    sweeper = config.hydra.sweeper
    target = str(OmegaConf.select(sweeper, "_target_", default="") or "")
    try:
        if target.endswith("BasicSweeper"):
            from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
            from hydra.core.override_parser.overrides_parser import OverridesParser

            params = [f"{k}={v}" for k, v in (OmegaConf.select(sweeper, "params") or {}).items()]
            overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
            batches = BasicSweeper.split_arguments(overrides, sweeper.max_batch_size)
            return len(batches[0]) if batches and batches[0] else None
        if target.endswith("OptunaSweeper"):
            return max(1, min(int(sweeper.n_jobs), int(sweeper.n_trials)))
    except Exception as e:  # e.g. glob() sweeps need Hydra's config loader: fall back to n_jobs alone
        log.debug("could not tell the sweep's batch size: %s", e)
    return None


# ----------------------------------------------------------------------------- the summary


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _hydra_job(job_dir: Path) -> dict[str, Any]:
    """The `hydra.job` node of a job's saved hydra.yaml. Plain YAML, C-parsed: every job's end
    reads every job's file, and OmegaConf.load takes 20x as long (~20 ms a file)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = yaml.load((job_dir / ".hydra" / "hydra.yaml").read_text(), Loader=loader) or {}
    return (data.get("hydra") or {}).get("job") or {}


def job_row(job_dir: Path, final: bool = False, sweep_dir: Optional[Path] = None) -> dict[str, Any]:
    """One job's line of the summary, from the files in its dir."""
    job = _hydra_job(job_dir)
    row: dict[str, Any] = {
        "job": job.get("num"),
        "overrides": job.get("override_dirname") or "",
        "run_dir": os.path.relpath(job_dir, job_dir.parent if sweep_dir is None else sweep_dir),
        "error": "",
    }
    rows = read_metrics(job_dir)
    valid = [r["valid_loss"] for r in rows if _number(r.get("valid_loss")) is not None]
    summary_path, error_path = job_dir / JOB_SUMMARY, job_dir / ERROR_NAME
    if summary_path.exists():
        s = json.loads(summary_path.read_text())
        row.update(status="ok", best_valid_loss=_number(s.get("best_valid_loss")),
                   final_valid_loss=_number(s.get("final_valid_loss")),
                   tokens_per_s=_number(s.get("tokens_per_s")), wall_s=_number(s.get("wall_s")),
                   steps=s.get("steps"))
        return row
    # failed, still running, or killed: what its metrics say so far
    row.update(status="failed" if error_path.exists() else ("incomplete" if final else "running"),
               best_valid_loss=min(valid) if valid else None, final_valid_loss=valid[-1] if valid else None,
               tokens_per_s=_number(rows[-1].get("tokens_per_s")) if rows else None,
               wall_s=_number(rows[-1].get("elapsed_s")) if rows else None,
               steps=rows[-1]["step"] if rows else None)
    if error_path.exists():
        row["error"] = error_path.read_text().strip()
    return row


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job dir under the sweep, whatever hydra.sweep.subdir makes of their names."""
    return sorted(p.parent.parent for p in Path(sweep_dir).glob("**/.hydra/hydra.yaml"))


def collect(sweep_dir: Path, final: bool = False) -> list[dict[str, Any]]:
    rows = [job_row(d, final, sweep_dir) for d in job_dirs(sweep_dir)]
    return sorted(rows, key=lambda r: (r["job"] if isinstance(r["job"], int) else 1 << 30, r["run_dir"]))


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
    return out.getvalue()


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def to_markdown(rows: list[dict[str, Any]], title: str = "Sweep summary") -> str:
    """A Markdown table of the jobs, with the best one named first."""
    lines = [f"# {title}", ""]
    done = [r for r in rows if r["status"] == "ok" and r["best_valid_loss"] is not None]
    if done:
        best = min(done, key=lambda r: r["best_valid_loss"])
        lines += [f"Best: job {best['job']} (`{best['overrides'] or best['run_dir']}`), "
                  f"best valid loss {best['best_valid_loss']:.4f}.", ""]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "running", "incomplete")}
    lines += [", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no jobs yet", ""]
    lines += ["| job | overrides | status | best valid loss | final valid loss | tokens/s | wall s |",
              "|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        overrides = f"`{r['overrides']}`" if r["overrides"] else ""
        status = r["status"] if not r["error"] else f"{r['status']}: {r['error']}".replace("|", "\\|")
        lines.append(f"| {r['job']} | {overrides} | {status} | {_fmt(r['best_valid_loss'], '.4f')} | "
                     f"{_fmt(r['final_valid_loss'], '.4f')} | {_fmt(r['tokens_per_s'], ',.0f')} | "
                     f"{_fmt(r['wall_s'], '.1f')} |")
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(sweep_dir: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: jobs there run one at a time (basic launcher) or the last write wins
        yield
        return
    with open(sweep_dir / ".summary.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_summary(sweep_dir: Path, final: bool = False) -> list[dict[str, Any]]:
    """(Re)write summary.csv and summary.md in sweep_dir; returns the rows."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with _locked(sweep_dir):
        rows = collect(sweep_dir, final)
        _write_atomic(sweep_dir / SUMMARY_CSV, to_csv(rows))
        _write_atomic(sweep_dir / SUMMARY_MD, to_markdown(rows, f"Sweep {sweep_dir}"))
    return rows


def _error_line(job_return: JobReturn) -> str:
    ex = getattr(job_return, "_return_value", None)  # the exception (return_value would re-raise it)
    if not isinstance(ex, BaseException):
        return "failed"
    text = " ".join(str(ex).split())
    return text if isinstance(ex, UserError) else f"{type(ex).__name__}: {text}"


def check_storage(storage: Optional[str]) -> None:
    """Optuna's database storage cannot work with our pins: say so in one line, before any job."""
    if not storage or storage in ("null", "None"):
        return
    import sqlalchemy

    if int(sqlalchemy.__version__.split(".")[0]) >= 2:
        # optuna 2.10 (pinned by hydra-optuna-sweeper 1.3) relies on SQLAlchemy 1.x autocommit:
        # with 2.x its database storage fails on an AssertionError while creating its tables.
        raise UserError(f"hydra.sweeper.storage={storage}: optuna {_version('optuna')} cannot use a "
                        f"database with SQLAlchemy {sqlalchemy.__version__}; leave it null (in memory)")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _sweep_dir(config: DictConfig) -> Path:
    """The sweep dir, also from inside a job that chdir'ed into its own dir (hydra.job.chdir=true)."""
    path = Path(config.hydra.sweep.dir)
    cwd = OmegaConf.select(config, "hydra.runtime.cwd", default=None)
    return path if path.is_absolute() or not cwd else Path(cwd) / path


class SweepSummary(Callback):
    """Hydra callback: keeps `summary.csv` / `summary.md` current at the sweep root."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if str(OmegaConf.select(config, "hydra.sweeper._target_")).endswith("OptunaSweeper"):
            check_storage(OmegaConf.select(config, "hydra.sweeper.storage"))  # set in a yaml: Hydra warns
        n = first_batch_size(config)
        if n:  # launchers' worker processes inherit it: trainer.sweep.parallel_jobs reads it
            os.environ[BATCH_ENV] = str(n)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        try:
            if job_return.status == JobStatus.FAILED:
                job_dir = Path(config.hydra.runtime.output_dir)
                (job_dir / ERROR_NAME).write_text(_error_line(job_return) + "\n")
            write_summary(_sweep_dir(config))
        except Exception as e:  # the summary is a convenience: it must never fail a job
            log.warning("sweep summary not written: %s", e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _sweep_dir(config)
        try:
            rows = write_summary(sweep_dir, final=True)
        except Exception as e:
            log.warning("sweep summary not written: %s", e)
            return
        # Printed, not logged: the logging config here is still the last job's (its train.log).
        print("\n" + to_markdown(rows, f"Sweep {sweep_dir}") + f"\n(also in {sweep_dir / SUMMARY_CSV})",
              flush=True)
