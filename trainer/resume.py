"""Resuming a run in place: the one owner of `resume=<run dir | checkpoint | auto>`.

The steps, in the order they happen:
1. `ResumePoint.load`: which checkpoint is meant (auto: the newest run with this config), read
   once, a weights-only one refused. trainer.argv calls it before Hydra starts, so a corrupt,
   foreign or code-carrying checkpoint fails without touching the run dir, and hands the
   ResumePoint on to the training run (a gpt2 checkpoint is ~1.5 GB: it is read once).
2. `overrides`: the original overrides (.hydra/overrides.yaml), then what earlier resumes changed
   (from the checkpoint's config), so Hydra composes the config the run last trained with; what
   the user types now comes after them and wins.
3. `check_world_size` (before torchrun's process group starts) and `check` (model shape and
   vocabulary, once the corpus is read): can this run continue that one?
4. `restore`: weights, optimizer, every RNG, step, best loss, tokens seen, evals without
   improvement and the W&B run id (a resumed run logs to the same W&B run); metrics rows after the
   step dropped. Resuming with code at another commit warns in one line and goes on (trainer.provenance).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainer import checkpoint, provenance, rundir
from trainer.config import CONF_DIR, flatten, schema_default, with_defaults
from trainer.data.encodings import HF
from trainer.errors import UserError

if TYPE_CHECKING:
    from trainer.run import Run

log = logging.getLogger("trainer")

# Keys whose change makes a checkpoint's weights meaningless for the requested model (init only
# draws the first weights, so it may change), and weight_decay_on, which makes the optimizer's
# state another shape (one param group or two). A checkpoint from before a key existed has the default.
SHAPE_KEYS = ("vocab_size", "d_model", "num_blocks", "num_heads", "context_length", "tie_weights",
              "activation", "norm", "positions", "bias", "qkv_bias", "head_bias", "weight_decay_on")


@dataclass
class ResumePoint:
    """A checkpoint to continue from, read once."""

    where: str  # as the user typed it (resume=...), to name it in errors
    path: Path  # the checkpoint file
    state: dict[str, Any]

    @classmethod
    def load(cls, where: str, overrides: list[str] = ()) -> ResumePoint:
        """The checkpoint `resume=where` means; `overrides` pick the run for resume=auto."""
        path = checkpoint.resolve(find_auto(list(overrides)) if where == "auto" else where, key="resume")
        state = checkpoint.load(path, key="resume")
        checkpoint.require_resumable(state, where)
        return cls(where, path, state)

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    def overrides(self) -> list[str]:
        """The overrides that put this invocation back in the run, before the user's own."""
        return [*self.config_overrides(), f"resume={self.path}", f"hydra.run.dir={self.run_dir}",
                "hydra.output_subdir=null"]

    def config_overrides(self) -> list[str]:
        """The config the run last trained with: its own overrides, then what earlier resumes changed."""
        original = [o for o in rundir.read_overrides(self.run_dir) or [] if not o.startswith(("resume=", "hydra"))]
        return [*original, *changed_since_start(self.run_dir, self.state)]

    def check_world_size(self, world_size: int) -> None:
        """Each rank resumes its own RNG states, so a distributed run resumes with as many ranks as it had."""
        saved = self.state["h_params"].get("world_size", 1)
        if saved != world_size:
            how = f"{saved} ranks (e.g. torchrun --nproc_per_node={saved})" if saved > 1 \
                else "a single process (no torchrun)"
            raise UserError(f"resume={self.where}: the checkpoint was trained with world_size={saved}, this run "
                            f"has world_size={world_size}; resume it with {how}")

    def tokenizer_if_gone(self, encoding: str) -> Optional[str]:
        """The checkpoint's copy of an hf tokenizer whose file is gone (moved or deleted since): the run
        reads its corpus with that. A file still there is read instead (a broken one is its own error),
        and `check` refuses it if it changed."""
        saved = self.state.get("tokenizer")
        if saved is None or not encoding.startswith(HF) or Path(encoding[len(HF):]).expanduser().exists():
            return None
        log.warning(f"{encoding}: no such tokenizer now; reading the corpus with the checkpoint's copy")
        return saved

    def check(self, h: dict[str, Any], vocab: Optional[torch.Tensor], tokenizer: Optional[str] = None) -> None:
        """The checkpoint's model must be this run's: same tokenizer, same shape, same token ids. The
        tokenizer first: another one changes the vocabulary too, and is the cause to name."""
        if self.state.get("tokenizer") != tokenizer:  # an hf tokenizer's file, changed since
            raise UserError(f"resume={self.where}: encoding={h.get('encoding')} is not the tokenizer the checkpoint "
                            "was trained with (its file changed since)")
        for key in SHAPE_KEYS:
            was, now = (p.get(key, schema_default(key)) for p in (self.state["h_params"], h))
            if was != now:
                raise UserError(f"resume={self.where}: the checkpoint's {key}={was} does not match this "
                                f"run's {key}={now}")
        saved = self.state.get("vocab")
        if (saved is None) != (vocab is None) or (vocab is not None and not torch.equal(saved, vocab)):
            # Same size, other tokens: each model id would now mean a different token.
            raise UserError(f"resume={self.where}: the checkpoint's vocabulary differs from this run's data "
                            f"(data_path={h.get('data_path')}, vocab_compaction={h.get('vocab_compaction')})")

    def restore(self, run: Run) -> None:
        """Put the checkpoint's state into a freshly built run, then let go of it (it can be large)."""
        s = self.state
        run.model.load_state_dict(s["model_state_dict"])
        run.optimizer.load_state_dict(s["optimizer_state_dict"])
        rng = s["rng"][run.dist.rank] if isinstance(s["rng"], list) else s["rng"]
        checkpoint.restore_rng(rng, run.sampler.generator)
        run.step = run.resumed_at = s["step"]
        run.best = s.get("best_valid_loss", math.inf)
        run.last = dict(s.get("last_losses", {}))
        run.elapsed_before = s.get("elapsed_s", 0.0)
        run.tokens_before = s.get("tokens_seen", tokens_up_to(s))
        run.evals_since_best = s.get("evals_since_best", 0)  # why it stopped follows from these (stop_reason)
        run.wandb_id = s.get("wandb_run_id")
        if run.dist.is_main:  # the rows after the checkpoint are logged again, as the run redoes them
            rundir.keep_metrics_up_to(run.dir, run.step)
            provenance.warn_if_code_changed(s.get("provenance"), run.provenance)
        self.state = {}
        log.info("Resuming from %s at step %d", self.path, run.step)


def tokens_up_to(state: dict[str, Any]) -> int:
    """Tokens trained on before a checkpoint that predates `tokens_seen`: its steps x its batch."""
    h = state["h_params"]
    return state["step"] * h.get("effective_batch_size", h.get("batch_size", 0)) * h.get("context_length", 0)


def requeued(cfg: DictConfig, run_dir: Path) -> Optional[ResumePoint]:
    """A sweep job started again in its own dir (SLURM requeued it after a preemption, submitit
    resubmitted it) continues from its checkpoint there instead of starting over: the checkpoint
    of this very config, in a dir with no summary.json (a finished job is never relaunched)."""
    if cfg.get("resume") or not (run_dir / rundir.CKPT).is_file() or (run_dir / rundir.SUMMARY).exists():
        return None
    point = ResumePoint.load(str(run_dir))
    saved = {k: v for k, v in with_defaults(point.state.get("config", {})).items() if k != "resume"}
    now = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True, enum_to_str=True).items() if k != "resume"}
    if saved != now:
        return None
    log.info("%s: this job ran here before (requeued); continuing from its checkpoint", run_dir)
    return point


def finished_before_requeue(run_dir: Path) -> bool:
    """SLURM requeued a job that had already finished (preempted in its last second): nothing to redo."""
    again = os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0") and (run_dir / rundir.SUMMARY).is_file()
    if again:
        log.info("%s: this job had finished before SLURM requeued it; nothing to do", run_dir)
    return again


def find_auto(overrides: list[str]) -> Path:
    """The newest run (with a checkpoint) whose config equals the one these overrides compose.

    max_iters and the budgets are how far to train, not which run: `... max_iters=2000 resume=auto`
    extends the run.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        wanted = OmegaConf.to_container(compose("config", overrides=overrides), resolve=False)
    ignore = {"resume", "progress", "max_iters", "max_time", "max_tokens", "early_stopping_patience"}
    wanted = {k: v for k, v in wanted.items() if k not in ignore}
    runs = [r for r in rundir.runs_under(rundir.OUTPUTS) if (r / rundir.CKPT).is_file()]
    for run in sorted(runs, key=lambda r: (r / rundir.CKPT).stat().st_mtime, reverse=True):
        cfg = with_defaults(OmegaConf.to_container(OmegaConf.load(run / rundir.CONFIG), resolve=False))
        if {k: v for k, v in cfg.items() if k not in ignore} == wanted:
            return run
    raise UserError(f"resume=auto: no run under {rundir.OUTPUTS}/ has a checkpoint and this config")


def changed_since_start(run_dir: Path, state: dict[str, Any]) -> list[str]:
    """Overrides for what earlier resumes changed (max_iters=1000, a lower learning_rate).

    The run dir's .hydra keeps the config the run started with; the checkpoint keeps the one it
    was last trained with. Without these, resuming a resumed run would quietly go back to the first.
    """
    saved = run_dir / rundir.CONFIG
    if not saved.exists() or not isinstance(state.get("config"), dict):
        return []
    try:
        start = flatten(OmegaConf.to_container(OmegaConf.load(saved), resolve=True))
    except OmegaConfBaseException:
        return []
    out = []
    for key, value in flatten(state["config"]).items():
        if key != "resume" and key in start and start[key] != value and _literal(value) is not None:
            out.append(f"{key}={_literal(value)}")
    return out


def _literal(value: Any) -> Optional[str]:
    """value as Hydra's override grammar reads it back, or None where it cannot be written simply."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return None if "'" in value or "\\" in value else f"'{value}'"
    if isinstance(value, list):
        items = [_literal(v) for v in value]
        return None if None in items else f"[{','.join(items)}]"
    return None
