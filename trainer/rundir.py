"""The run dir: the name of every file a run or a sweep writes, and reading a run dir back.

    outputs/<date>/<time>/              one run; a sweep's jobs: outputs/multirun/<date>/<time>/<job>/
    ├── .hydra/config.yaml              the composed config            (Hydra)
    ├── .hydra/overrides.yaml           what was typed                  (Hydra)
    ├── .hydra/hydra.yaml               Hydra's settings: job number, name (Hydra)
    ├── model.ckpt                      the latest checkpoint           (trainer.checkpoint)
    ├── best.ckpt                       the best valid loss's weights   (trainer.checkpoint)
    ├── metrics.jsonl                   one JSON row per eval           (trainer.tracking)
    ├── summary.json                    best/final losses and the provenance, when it ends (trainer.cli)
    ├── eval.json                       scores from `python -m trainer.evaluate`
    ├── samples.md                      generations at each eval, with W&B on (trainer.samples)
    ├── tokenizer.json                  with encoding=hf:..., the tokenizer read with (trainer.tracking)
    ├── error.txt                       a failed sweep job's one line   (trainer.sweep.summary)
    ├── train.log                       the log                         (Hydra's job logging)
    ├── .lock                           who trains in it now: pid, host, since (trainer.lock)
    └── wandb/                          W&B's files, when enabled       (trainer.tracking)

A sweep dir holds Hydra's multirun.yaml (the sweep's overrides, what `-m resume=<sweep dir>` reads:
trainer.sweep.resume) and adds summary.csv, jobs.csv and summary.md (trainer.sweep.summary) and a .lock
while it runs; `trainer.compare` writes compare.png. A new file in the run dir gets its name here, and
its reader here too.

A run writes only into its own dir and never changes the working directory (Hydra's job.chdir stays
off), so relative paths (data_path, resume=, init_from=) read from where the command was typed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from trainer.errors import UserError, writing

OUTPUTS = Path("outputs")  # where run dirs go, relative to the working directory (Hydra's default)
MULTIRUN = "multirun"  # outputs/multirun/<date>/<time>/: one dir per sweep

CKPT = "model.ckpt"  # the latest: what resume continues from
BEST_CKPT = "best.ckpt"  # the weights at the lowest valid loss so far (not resumable; W&B can upload it)
EVAL = "eval.json"  # what `python -m trainer.evaluate` measured, by split, checkpoint and data
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
SAMPLES = "samples.md"
TOKENIZER = "tokenizer.json"  # an hf encoding's tokenizer, as the run read its corpus (also in the checkpoint)
ERROR = "error.txt"
LOG = "train.log"  # named by hydra.job.name in conf/config.yaml
WANDB = "wandb"
HYDRA = ".hydra"
CONFIG = f"{HYDRA}/config.yaml"
OVERRIDES = f"{HYDRA}/overrides.yaml"
HYDRA_YAML = f"{HYDRA}/hydra.yaml"

MULTIRUN_YAML = "multirun.yaml"  # a sweep's config and overrides (Hydra)
SWEEP_CSV = "summary.csv"  # one row per point (seed replicates together: trainer.replicates)
SWEEP_JOBS_CSV = "jobs.csv"  # one row per job
SWEEP_MD = "summary.md"
SWEEP_LOCK = ".summary.lock"  # serialises the summary's rewrites
LOCK = ".lock"  # held by the one process training in a run dir (or resuming a sweep dir): trainer.lock
PLOT = "compare.png"


# ----------------------------------------------------------------------------- making one


def new_dir(multirun: bool, now: Optional[datetime] = None) -> tuple[Path, list[Path]]:
    """A fresh timestamped dir for a run (or a sweep), and the parents made for it (innermost first).

    Two runs started in the same second get HH-MM-SS and HH-MM-SS_1 (Hydra's own name would be
    shared: Hydra issue #2925).
    """
    now = now or datetime.now()
    root = OUTPUTS / MULTIRUN if multirun else OUTPUTS
    base = root / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")
    new_parents = [p for p in base.parents if not p.exists()]  # e.g. today's date dir
    return unique_dir(base), new_parents


def unique_dir(base: Path) -> Path:
    """base, or base_1, base_2, ...: the first that this process creates itself (atomic mkdir)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for i in range(10_000):
        path = base if i == 0 else base.with_name(f"{base.name}_{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"{base}: could not find a free run dir name")


def runs_under(root: Path) -> list[Path]:
    """Every run dir at any depth under root (a run dir has .hydra/config.yaml), sorted by path."""
    root = Path(root)
    if (root / CONFIG).is_file():
        return [root]
    return sorted(c.parent.parent for c in root.glob(f"**/{CONFIG}"))


# ----------------------------------------------------------------------------- its files


def write_atomic(path: Path, text: str) -> None:
    """Write to a temp file in the same dir, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with writing(path):  # a full disk: one line, and the file as it was
            tmp.write_text(text)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows; a line cut short by a crash ends the readable record."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def keep_metrics_up_to(run_dir: Path, step: int) -> None:
    """Drop the rows logged after `step` (a resumed run logs them again, from its checkpoint)."""
    rows = [r for r in read_metrics(run_dir) if r["step"] <= step]
    write_atomic(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def amend_last_metrics_row(run_dir: Path, fields: dict[str, Any]) -> None:
    """Add fields to the last row of metrics.jsonl (the run's final whole-split scores)."""
    rows = read_metrics(run_dir)
    if rows:
        rows[-1].update(fields)
        write_atomic(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def read_overrides(run_dir: Path) -> Optional[list[str]]:
    """The overrides the run was started with, as typed (.hydra/overrides.yaml); None without one."""
    import yaml

    path = Path(run_dir) / OVERRIDES
    return list(yaml.safe_load(path.read_text()) or []) if path.is_file() else None


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_atomic(Path(run_dir) / SUMMARY, json.dumps(summary, indent=2) + "\n")


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else {}


# samples.md: an intro, then a Markdown table with one row per eval and prompt. The cells escape
# `\\`, `|` and line breaks with a backslash, so that the rows read back exactly (a resumed run's table).
SAMPLES_HEADER = "| step | prompt | sample |\n|---:|---|---|\n"


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "\\n").replace("\r", "\\r")


def _cells(line: str) -> list[str]:
    """A table line's cells, unescaped: `| 10 | a\\|b |` -> ["10", "a|b"]."""
    cells, cell, chars = [], [], iter(line.strip()[1:])
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            cell.append({"n": "\n", "r": "\r"}.get(nxt, nxt))
        elif ch == "|":
            cells.append("".join(cell)[1:-1])  # the one space either side of the cell's text
            cell = []
        else:
            cell.append(ch)
    return cells


def write_samples(run_dir: Path, intro: str, rows: list[tuple[int, str, str]]) -> None:
    write_atomic(Path(run_dir) / SAMPLES, intro.rstrip() + "\n\n" + SAMPLES_HEADER)
    append_samples(run_dir, rows)


def append_samples(run_dir: Path, rows: list[tuple[int, str, str]]) -> None:
    with open(Path(run_dir) / SAMPLES, "a", encoding="utf-8") as f:
        f.writelines(f"| {step} | {_cell(prompt)} | {_cell(sample)} |\n" for step, prompt, sample in rows)


def read_samples(run_dir: Path) -> list[tuple[int, str, str]]:
    """samples.md's rows (step, prompt, sample), as written; [] without the file."""
    path = Path(run_dir) / SAMPLES
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines: a sample may hold \x0c or \u2028
        cells = _cells(line) if line.startswith("| ") else []
        if len(cells) == 3 and cells[0].isdigit():
            rows.append((int(cells[0]), cells[1], cells[2]))
    return rows


def hydra_job(run_dir: Path) -> dict[str, Any]:
    """The `hydra.job` node of the run's hydra.yaml ({} before Hydra wrote it). Plain YAML,
    C-parsed: a sweep's summary reads every job's file after every job, and OmegaConf.load takes
    20x as long (~20 ms a file)."""
    import yaml

    path = Path(run_dir) / HYDRA_YAML
    if not path.is_file():
        return {}
    data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    return (data.get("hydra") or {}).get("job") or {}


# ----------------------------------------------------------------------------- reading it back


def number(value: Any) -> Optional[float]:
    """A metric as a float, or None where it is missing, not a number, NaN or infinite."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass
class RunRecord:
    """What a run dir says of its run: its status, losses and speed, from summary.json once it
    finished well, else from its metrics so far (a failed, killed or still running run)."""

    path: Path
    status: str  # ok | failed | running (a sweep still going) | incomplete (stopped, no summary)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def _valid(self) -> list[float]:
        return [v for v in (number(r.get("valid_loss")) for r in self.metrics) if v is not None]

    def _last(self, key: str) -> Any:
        return self.metrics[-1].get(key) if self.metrics else None

    @property
    def best_valid_loss(self) -> Optional[float]:
        if self.summary:
            return number(self.summary.get("best_valid_loss"))
        return min(self._valid(), default=None)

    @property
    def final_valid_loss(self) -> Optional[float]:
        """Over the whole valid split once it finished; before, the last eval's (fixed windows)."""
        if self.summary:
            return number(self.summary.get("final_valid_loss"))
        full = number(self._last("valid_loss_full"))
        valid = self._valid()
        return full if full is not None else valid[-1] if valid else None

    @property
    def final_valid_loss_se(self) -> Optional[float]:
        if self.summary:
            return number(self.summary.get("final_valid_loss_se"))
        return number(self._last("valid_loss_full_se") or self._last("valid_loss_se"))

    @property
    def final_bits_per_byte(self) -> Optional[float]:
        if self.summary:
            return number(self.summary.get("final_bits_per_byte"))
        return number(self._last("bits_per_byte_full") or self._last("bits_per_byte"))

    @property
    def tokens_per_s(self) -> Optional[float]:
        return number(self.summary.get("tokens_per_s") if self.summary else self._last("tokens_per_s"))

    @property
    def wall_s(self) -> Optional[float]:
        return number(self.summary.get("wall_s") if self.summary else self._last("elapsed_s"))

    @property
    def steps(self) -> Optional[int]:
        return self.summary.get("steps") if self.summary else self._last("step")

    @property
    def commit(self) -> Optional[str]:
        """The code's commit (summary.json's provenance), 8 hex digits, "-dirty" with uncommitted
        changes; None when unknown (no git, or a run that has not finished)."""
        prov = self.summary.get("provenance") or {}
        if not prov.get("commit"):
            return None
        return prov["commit"][:8] + ("-dirty" if prov.get("dirty") else "")


def read_run(run_dir: Path, still_running: bool = False) -> RunRecord:
    """The run in run_dir; one with neither a summary nor an error is `running` if the caller
    knows it may still be going (a sweep in progress), else `incomplete`."""
    run_dir = Path(run_dir)
    summary, error_path = read_summary(run_dir), run_dir / ERROR
    if summary:
        status = "ok"
    elif error_path.exists():
        status = "failed"
    else:
        status = "running" if still_running else "incomplete"
    error = error_path.read_text().strip() if status == "failed" else ""
    return RunRecord(run_dir, status, read_metrics(run_dir), summary, error)
