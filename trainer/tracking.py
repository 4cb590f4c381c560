"""Where a run reports: the console and train.log, metrics.jsonl, W&B, and a progress bar.

`Trackers` is the loop's one output: `eval(row)` prints the book's loss line and writes the
row to metrics.jsonl (and W&B when enabled), `step(...)` moves the progress bar, `close(...)`
finishes them all. Only rank 0 reports; the other ranks' Trackers say nothing.

W&B is imported only when enabled (the import costs about a second and patches stdout), its
mode is set in the environment before `wandb.init` (passing it to init alone still reaches
for the network at exit), its files live inside the run dir, and the run is always finished,
with exit code 1 when the job failed, so the next job of a sweep starts clean.

What W&B gets (wandb.enabled=true; off by default): one W&B run per job, in <run dir>/wandb/. Its config
is the run's h_params (the flat hyperparameters under the book's names, resolved, with vocab_size,
max_token_value and device), `point` (the overrides without TORCH_SEED: group the Runs table by it to
average seed replicates) and `provenance`. Each eval's row is logged at step = the training step, the
losses also against tokens_seen (their declared x-axis, so runs with other batch sizes line up at equal
data); the whole-split scores join the last step, and the run's summary gets summary.json's numbers (a
failed run: the best valid loss it reached). A run is named by its job's overrides and a sweep is one
group (the sweep dir's <date>_<time>); wandb.name and wandb.group override them. A resumed run logs to
the same W&B run (its id is in the checkpoint), a preempted one is marked preempting.

W&B never blocks training: without a login (`wandb login` or WANDB_API_KEY) the default mode is offline,
and online without a server that answers within ONLINE_INIT_TIMEOUT_S one warning says so and the run logs
offline. `wandb sync <run dir>/wandb/offline-run-*` uploads offline runs later, from any machine with a
network (`wandb sync --dry-run` lists what it would upload).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from trainer import rundir
from trainer.errors import WriteFailed, writing

if TYPE_CHECKING:
    from trainer.run import Run, RunInfo

log = logging.getLogger("trainer")

ONLINE_INIT_TIMEOUT_S = 20  # how long an online wandb.init may wait for the server before going offline


class Trackers:
    """Every place an eval or a step is reported to (rank 0 only)."""

    def __init__(self, run: Run, info: RunInfo, headline: str):
        self.on = run.dist.is_main
        self.metrics, self.wandb, self.bar, self.samples = None, None, None, None
        self.dir, self.log_checkpoints = run.dir, run.cfg.wandb.log_checkpoints
        self._stack = contextlib.ExitStack()
        if not self.on:
            return
        self.metrics = self._stack.enter_context(open(run.dir / rundir.METRICS, "a"))
        if run.corpus.enc.saved is not None:  # an hf encoding: the run decodes without the file it came from
            rundir.write_atomic(run.dir / rundir.TOKENIZER, run.corpus.enc.saved)
        if run.cfg.wandb.enabled:
            config = {**run.h, "point": info.point, "provenance": run.provenance}  # + which code made them
            self.wandb = WandbRun(run.cfg.wandb, run.dir, config, group=info.group, name=info.name or run.dir.name,
                                  resume_id=run.wandb_id)
            run.wandb_id = self.wandb.id
            if run.cfg.wandb.samples:
                from trainer.samples import Samples

                self.samples = Samples(run, run.cfg.wandb.samples, self.wandb)
        log.info(headline)
        show_bar = run.cfg.progress if run.cfg.progress is not None else sys.stderr.isatty()
        if show_bar:
            self.bar = self._progress_bar(run.cfg.max_iters, run.step)

    def _progress_bar(self, total: int, initial: int):
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        bar = self._stack.enter_context(tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                                             leave=False))
        self._stack.enter_context(logging_redirect_tqdm())  # log lines print above the bar, not through it
        return bar

    def eval(self, row: dict[str, Any]) -> None:
        """The book's line on the console and in train.log, a row in metrics.jsonl (flushed at once,
        so a crash loses nothing already evaluated), and a W&B history step."""
        if not self.on:
            return
        log.info(f"Step: {row['step']}, Training Loss: {row['train_loss']:.3f}, "
                 f"Validation Loss: {row['valid_loss']:.3f}")
        with writing(self.dir / rundir.METRICS):  # a full disk: one line; a cut row ends the readable record
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()
        if self.wandb:
            self.wandb.log(row)
        if self.samples:
            self.samples.add(row["step"])

    def amend_last_row(self, fields: dict[str, Any]) -> None:
        """Fields for the last eval's row, known only once the loop is over (the whole-split scores)."""
        if not self.on:
            return
        self.metrics.close()  # rewritten whole below; reopened for any row after
        rundir.amend_last_metrics_row(self.dir, fields)
        self.metrics = self._stack.enter_context(open(self.dir / rundir.METRICS, "a"))
        if self.wandb:
            self.wandb.log_at_last_step(fields)

    def step(self, loss: float, tokens_per_s: float, mfu: Optional[float]) -> None:
        if self.bar is not None:
            postfix = {"loss": f"{loss:.3f}", "tok_s": f"{tokens_per_s:,.0f}"}
            if mfu is not None:
                postfix["mfu"] = f"{mfu:.1%}"
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def close(self, exit_code: int, summary: dict[str, Any], preempted: bool = False) -> None:
        failed = None
        try:
            self._stack.close()
        except OSError as e:  # metrics.jsonl's last flush on a full disk: W&B is still closed first
            failed = WriteFailed(self.dir / rundir.METRICS, e)
        if self.wandb and preempted:  # W&B shows it preempted (to be resumed), not crashed
            self.wandb.run.mark_preempting()
        if self.wandb and self.log_checkpoints:  # a failed run's too: its last good checkpoint
            self.wandb.log_checkpoints(self.dir)
        if self.wandb:  # a failed run still reports the best valid loss it reached
            self.wandb.finish(exit_code, summary)
        if failed:
            raise failed


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
        # tokens_seen as the losses' x-axis: runs with other batch sizes line up at equal data
        self.run.define_metric("tokens_seen")
        self.run.define_metric("train_loss", step_metric="tokens_seen")
        self.run.define_metric("valid_loss", step_metric="tokens_seen", summary="min")

    def log(self, row: dict[str, Any]) -> None:
        self.last_step = row["step"]
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def log_at_last_step(self, fields: dict[str, Any]) -> None:
        """More fields for the last logged step (W&B merges them into its row: steps never go back)."""
        self.run.log(fields, step=getattr(self, "last_step", 0))

    def log_checkpoints(self, run_dir: Path) -> None:
        """The run's checkpoints as versions of one artifact, `model-<run id>` (type model), each file
        named model.ckpt inside (so `trainer.generate` reads a downloaded version as it is): best.ckpt,
        when the run keeps one, with the alias `best`, then model.ckpt with `latest`, last, since W&B
        gives `latest` to the newest version. Identical files make one version with both aliases.
        Offline, the artifact is recorded in the offline run, its files staged for `wandb sync` in W&B's
        data dir ($WANDB_DATA_DIR, by default ~/.local/share/wandb)."""
        for name, alias in ((rundir.BEST_CKPT, "best"), (rundir.CKPT, "latest")):
            path = Path(run_dir) / name
            if not path.is_file():
                continue
            try:
                artifact = self.wandb.Artifact(f"model-{self.id}", type="model", metadata={"file": name})
                artifact.add_file(str(path), name=rundir.CKPT)
                self.run.log_artifact(artifact, aliases=[alias])
            except Exception as e:  # an upload must never fail a run that trained
                log.warning("W&B: %s not logged as an artifact: %s", name, str(e).splitlines()[0] if str(e) else e)

    def finish(self, exit_code: int, summary: dict[str, Any]) -> None:
        for k, v in summary.items():
            if v is not None and not (isinstance(v, float) and not math.isfinite(v)):  # no inf before any eval
                self.run.summary[k] = v
        self.run.finish(exit_code=exit_code)
