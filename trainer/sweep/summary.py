"""summary.csv (one row per point), jobs.csv (one per job) and summary.md at a sweep's root, kept
current after every job. Jobs that differ only in TORCH_SEED are one point (trainer.replicates).

`SweepSummary` is a Hydra callback (registered under `hydra.callbacks` in conf/config.yaml).
After every job it rewrites both files from what the job dirs hold (read by
`trainer.rundir.read_run`), so the summary is there even when Hydra stops the sweep on a
failed job and never calls `on_multirun_end`. Jobs may end at once in parallel processes
(joblib, submitit): a file lock serialises the rewrites, and the last one sees every job.
summary.md (the points, then every job) is printed when the sweep ends.

A job that fails (a bad value, a diverged loss) does not stop the others of its batch (a grid sweep's
jobs are one batch by default): it is listed as `failed` with its one-line error, which its dir keeps
as error.txt, and the sweep exits non-zero, with that line, once the batch is done.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trainer import rundir
from trainer.errors import job_error
from trainer.lock import exclusive
from trainer.replicates import Point, group, mean_std, point_of
from trainer.sweep.overrides import check_storage
from trainer.sweep.threads import BATCH_ENV, first_batch_size

log = logging.getLogger(__name__)

JOB_COLUMNS = ["job", "overrides", "point", "status", "best_valid_loss", "final_valid_loss", "final_valid_loss_se",
               "final_bits_per_byte", "tokens_per_s", "wall_s", "steps", "run_dir", "error"]
POINT_COLUMNS = ["point", "n", "jobs", "status", "final_valid_loss_mean", "final_valid_loss_std",
                 "final_valid_loss_se", "within_2se_of_best", "best_valid_loss_mean", "best_valid_loss_std",
                 "final_bits_per_byte_mean", "tokens_per_s_mean", "wall_s_mean"]


def job_row(job_dir: Path, final: bool = False, sweep_dir: Optional[Path] = None) -> dict[str, Any]:
    """One job's line of the summary, from the files in its dir."""
    job = rundir.hydra_job(job_dir)
    run = rundir.read_run(job_dir, still_running=not final)
    overrides = job.get("override_dirname") or ""
    return {
        "job": job.get("num"), "overrides": overrides, "point": point_of(overrides), "status": run.status,
        "best_valid_loss": run.best_valid_loss, "final_valid_loss": run.final_valid_loss,
        "final_valid_loss_se": run.final_valid_loss_se, "final_bits_per_byte": run.final_bits_per_byte,
        "tokens_per_s": run.tokens_per_s, "wall_s": run.wall_s, "steps": run.steps,
        "run_dir": os.path.relpath(job_dir, job_dir.parent if sweep_dir is None else sweep_dir),
        "error": run.error,
    }


def collect(sweep_dir: Path, final: bool = False) -> list[dict[str, Any]]:
    rows = [job_row(d, final, sweep_dir) for d in rundir.runs_under(sweep_dir)]
    return sorted(rows, key=lambda r: (r["job"] if isinstance(r["job"], int) else 1 << 30, r["run_dir"]))


def points_of(rows: list[dict[str, Any]]) -> list[Point]:
    """The jobs grouped into points (seed replicates together), ranked by mean final valid loss."""
    return group(rows, name=lambda r: r["point"], final=lambda r: _if_ok(r, "final_valid_loss"),
                 best=lambda r: _if_ok(r, "best_valid_loss"), se=lambda r: _if_ok(r, "final_valid_loss_se"))


def _if_ok(row: dict[str, Any], key: str) -> Any:
    """A finished job's value; an unfinished one has no final score to average."""
    return row[key] if row["status"] == "ok" else None


def point_row(p: Point) -> dict[str, Any]:
    counts = Counter(r["status"] for r in p.members)
    return {"point": p.name, "n": p.n, "jobs": " ".join(str(r["job"]) for r in p.members),
            "status": ", ".join(f"{n} {s}" for s, n in counts.items()),
            "final_valid_loss_mean": p.final_mean, "final_valid_loss_std": p.final_std,
            "final_valid_loss_se": p.se, "within_2se_of_best": p.within_2se if p.final_mean is not None else None,
            "best_valid_loss_mean": p.best_mean, "best_valid_loss_std": p.best_std,
            "final_bits_per_byte_mean": _mean_of(p.members, "final_bits_per_byte"),
            "tokens_per_s_mean": _mean_of(p.members, "tokens_per_s"), "wall_s_mean": _mean_of(p.members, "wall_s")}


def _mean_of(rows: list[dict[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in rows if r["status"] == "ok" and r[key] is not None]
    return sum(values) / len(values) if values else None


def to_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return out.getvalue()


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def to_markdown(rows: list[dict[str, Any]], title: str = "Sweep summary") -> str:
    """The points ranked by mean final valid loss (the best named first), then every job."""
    points = points_of(rows)
    lines = [f"# {title}", ""]
    if points and points[0].final_mean is not None:
        top = points[0]
        near = [f"`{p.name or '(no overrides)'}`" for p in points[1:] if p.within_2se]
        lines += [f"Best: `{top.name or '(no overrides)'}` (n={top.n}), final valid loss "
                  f"{mean_std(top.final_mean, top.final_std)}"
                  + (f"; within 2 standard errors of it (not told apart): {', '.join(near)}" if near else "")
                  + ".", ""]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "running", "incomplete")}
    lines += [", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no jobs yet", ""]
    lines += _points_table(points) + [""] + _jobs_table(rows)
    return "\n".join(lines) + "\n"


def _points_table(points: list[Point]) -> list[str]:
    lines = ["| point | n | final valid loss (mean ± std) | ± SE | ≈ best | best valid loss (mean ± std) | jobs |",
             "|---|---:|---:|---:|:---:|---:|---|"]
    for p in points:
        lines.append(f"| `{p.name}` | {p.n} | {mean_std(p.final_mean, p.final_std)} | {_fmt(p.se, '.4f')} | "
                     f"{'best' if p is points[0] else '≈' if p.within_2se else ''} | {mean_std(p.best_mean, p.best_std)} | "
                     f"{' '.join(str(r['job']) for r in p.members)} |")
    return lines


def _jobs_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| job | overrides | status | best valid loss | final valid loss (whole split) | bits/byte | "
             "tokens/s | wall s |", "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        overrides = f"`{r['overrides']}`" if r["overrides"] else ""
        status = r["status"] if not r["error"] else f"{r['status']}: {r['error']}".replace("|", "\\|")
        se = f" ± {r['final_valid_loss_se']:.4f}" if r["final_valid_loss_se"] is not None else ""
        final = f"{_fmt(r['final_valid_loss'], '.4f')}{se}" if r["final_valid_loss"] is not None else ""
        lines.append(f"| {r['job']} | {overrides} | {status} | {_fmt(r['best_valid_loss'], '.4f')} | {final} | "
                     f"{_fmt(r['final_bits_per_byte'], '.4f')} | {_fmt(r['tokens_per_s'], ',.0f')} | "
                     f"{_fmt(r['wall_s'], '.1f')} |")
    return lines


def write_summary(sweep_dir: Path, final: bool = False) -> list[dict[str, Any]]:
    """(Re)write summary.csv and summary.md in sweep_dir; returns the rows."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(sweep_dir / rundir.SWEEP_LOCK):  # jobs may end at once in parallel processes
        rows = collect(sweep_dir, final)
        rundir.write_atomic(sweep_dir / rundir.SWEEP_CSV, to_csv([point_row(p) for p in points_of(rows)],
                                                                 POINT_COLUMNS))
        rundir.write_atomic(sweep_dir / rundir.SWEEP_JOBS_CSV, to_csv(rows, JOB_COLUMNS))
        rundir.write_atomic(sweep_dir / rundir.SWEEP_MD, to_markdown(rows, f"Sweep {sweep_dir}"))
    return rows


def _sweep_dir(config: DictConfig) -> Path:
    """The sweep dir, also from inside a job that chdir'ed into its own dir (hydra.job.chdir=true)."""
    path = Path(config.hydra.sweep.dir)
    cwd = OmegaConf.select(config, "hydra.runtime.cwd", default=None)
    return path if path.is_absolute() or not cwd else Path(cwd) / path


def _error_line(job_return: JobReturn) -> str:
    ex = getattr(job_return, "_return_value", None)  # the exception (return_value would re-raise it)
    return job_error(ex) if isinstance(ex, BaseException) else "failed"


class SweepSummary(Callback):
    """Hydra callback: keeps `summary.csv` / `summary.md` current at the sweep root."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if str(OmegaConf.select(config, "hydra.sweeper._target_")).endswith("OptunaSweeper"):
            check_storage(OmegaConf.select(config, "hydra.sweeper.storage"))  # set in a yaml: Hydra warns
        n = first_batch_size(config)
        if n:  # launchers' worker processes inherit it: trainer.sweep.threads.parallel_jobs reads it
            os.environ[BATCH_ENV] = str(n)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        try:
            if job_return.status == JobStatus.FAILED:
                job_dir = Path(config.hydra.runtime.output_dir)
                (job_dir / rundir.ERROR).write_text(_error_line(job_return) + "\n")
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
        print("\n" + to_markdown(rows, f"Sweep {sweep_dir}") + f"\n(also in {sweep_dir / rundir.SWEEP_CSV})",
              flush=True)
