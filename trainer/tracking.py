"""Where each eval goes: metrics.jsonl in the run dir always, Weights & Biases when enabled.

W&B is imported only when enabled (the import costs about a second and patches stdout), its
mode is set in the environment before `wandb.init` (passing it to init alone still reaches
for the network at exit), its files live inside the run dir, and the run is always finished,
with exit code 1 when the job failed, so the next job of a sweep starts clean.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"
ONLINE_INIT_TIMEOUT_S = 20  # how long an online wandb.init may wait for the server before going offline


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_NAME
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a crash ends the readable record
    return rows


class MetricsLog:
    """One JSON line per eval, flushed at once so a crash loses nothing already evaluated."""

    def __init__(self, run_dir: Path, keep_up_to_step: Optional[int] = None):
        self.path = Path(run_dir) / METRICS_NAME
        if keep_up_to_step is not None:  # resuming: drop rows logged after the checkpoint
            rows = [r for r in read_metrics(run_dir) if r["step"] <= keep_up_to_step]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp, self.path)
        self.file = open(self.path, "a")

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_mode(requested: Optional[str]) -> str:
    """The requested mode; by default online when logged in, else offline (never a blocking prompt)."""
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _logged_in() else "offline"


class WandbRun:
    """One W&B run per job: config = the flat h_params, group = the sweep, name = the overrides."""

    def __init__(self, settings, run_dir: Path, h_params: dict[str, Any], group: str, name: str,
                 resume_id: Optional[str] = None):
        mode = wandb_mode(settings.mode)
        os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.wandb = wandb
        init = dict(project=settings.project, entity=settings.entity, dir=str(run_dir), config=h_params,
                    group=settings.group or group, name=settings.name or name,
                    tags=list(settings.tags), reinit="finish_previous")
        if resume_id:
            init.update(id=resume_id, resume="allow")
        try:
            # Unreachable servers would hold init for 90 s by default before it gives up.
            settings_ = wandb.Settings(init_timeout=ONLINE_INIT_TIMEOUT_S) if mode == "online" else None
            self.run = wandb.init(**init, settings=settings_)
        except Exception as e:  # no login, no network or a bad key must never stop the training
            if mode == "offline":
                raise
            log.warning("W&B: could not start an online run (%s); logging offline instead",
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            os.environ["WANDB_MODE"] = "offline"
            self.run = wandb.init(**init, mode="offline")  # the environment alone is read too late
        self.id = self.run.id
        self.run.define_metric("valid_loss", summary="min")

    def log(self, row: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def finish(self, exit_code: int, summary: dict[str, Any]) -> None:
        for k, v in summary.items():
            if v is not None and not (isinstance(v, float) and not math.isfinite(v)):  # no inf before any eval
                self.run.summary[k] = v
        self.run.finish(exit_code=exit_code)
