"""A sweep's command line, before Hydra starts: job names that say what varies, and a refusal
of what cannot work with our pins (Optuna's database storage)."""

from __future__ import annotations

from typing import Optional

from trainer.errors import UserError


def is_sweep(overrides: list[str]) -> bool:
    """hparams_search=NAME makes a run a sweep even without -m (the preset sets hydra.mode)."""
    return any(o.startswith("hparams_search=") and o.split("=", 1)[1] not in ("", "null") for o in overrides)


def sweep_overrides(overrides: list[str]) -> list[str]:
    """What trainer.argv adds to a sweep's command line, once it has refused what cannot work."""
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


def check_storage(storage: Optional[str]) -> None:
    """Optuna's database storage cannot work with our pins: say so in one line, before any job."""
    if not storage or storage in ("null", "None"):
        return
    import sqlalchemy

    if int(sqlalchemy.__version__.split(".")[0]) >= 2:
        # optuna 2.10 (pinned by hydra-optuna-sweeper 1.3) relies on SQLAlchemy 1.x autocommit:
        # with 2.x its database storage fails on an AssertionError while creating its tables.
        from importlib.metadata import version

        raise UserError(f"hydra.sweeper.storage={storage}: optuna {version('optuna')} cannot use a "
                        f"database with SQLAlchemy {sqlalchemy.__version__}; leave it null (in memory)")
