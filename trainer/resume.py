"""Resuming in place: which run `resume=<run dir | checkpoint | auto>` means, and how to rebuild its config.

A resumed run continues in its original run dir, with the config it was last trained with:
the original overrides (from .hydra/overrides.yaml), then what earlier resumes changed (from the
checkpoint's config), then whatever the user types now. The checkpoint is read here, before
Hydra writes anything, so a corrupt, foreign or code-carrying one fails without touching the dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainer import checkpoint
from trainer.config import CONF_DIR, OUTPUTS, flatten
from trainer.errors import UserError

# The checkpoint resume_overrides read, handed to the training run once (a gpt2 one is ~1.5 GB).
_read: dict[str, dict] = {}


def load_state(path: str) -> dict:
    """The checkpoint to resume from: the one read before Hydra started, or (trainer.train called
    directly) read now."""
    state = _read.pop(str(path), None)
    return state if state is not None else checkpoint.load(path, key="resume")


def resume_overrides(resume: str, overrides: list[str]) -> list[str]:
    """The overrides that put this invocation back in the run to resume, before the user's own."""
    others = [o for o in overrides if not o.startswith("resume=")]
    ckpt = checkpoint.resolve(find_auto(others) if resume == "auto" else resume, key="resume")
    state = checkpoint.load(ckpt, key="resume")
    checkpoint.require_resumable(state, resume)
    _read[str(ckpt)] = state
    run_dir = ckpt.parent
    saved = run_dir / ".hydra" / "overrides.yaml"
    original = [o for o in OmegaConf.load(saved) if not o.startswith(("resume=", "hydra"))] if saved.exists() else []
    return [*original, *changed_since_start(run_dir, state),
            f"resume={ckpt}", f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


def find_auto(overrides: list[str]) -> Path:
    """The newest run (with a checkpoint) whose config equals the one these overrides compose.

    max_iters is how far to train, not which run: `... max_iters=2000 resume=auto` extends the run.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        wanted = OmegaConf.to_container(compose("config", overrides=overrides), resolve=False)
    ignore = {"resume", "progress", "max_iters"}
    wanted = {k: v for k, v in wanted.items() if k not in ignore}
    candidates = sorted(OUTPUTS.glob(f"*/*/{checkpoint.CKPT_NAME}"), key=lambda p: p.stat().st_mtime)
    candidates += sorted(OUTPUTS.glob(f"multirun/*/*/*/{checkpoint.CKPT_NAME}"), key=lambda p: p.stat().st_mtime)
    for ckpt in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        saved = ckpt.parent / ".hydra" / "config.yaml"
        if saved.exists():
            cfg = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
            if {k: v for k, v in cfg.items() if k not in ignore} == wanted:
                return ckpt.parent
    raise UserError(f"resume=auto: no run under {OUTPUTS}/ has a checkpoint and this config")


def changed_since_start(run_dir: Path, state: dict) -> list[str]:
    """Overrides for what earlier resumes changed (max_iters=1000, a lower learning_rate).

    The run dir's .hydra keeps the config the run started with; the checkpoint keeps the one it
    was last trained with. Without these, resuming a resumed run would quietly go back to the first.
    """
    saved = run_dir / ".hydra" / "config.yaml"
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


def _literal(value) -> Optional[str]:
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
