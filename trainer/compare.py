"""`python -m trainer.compare <sweep dir | run dirs...>`: compare runs with no server.

Prints a table of the runs sorted by best valid loss, with the hyperparameters that differ
between them as columns, and writes a PNG of their train and valid loss curves (into the
sweep dir, the runs' common parent, or --out). Any mix works: a sweep dir, single run dirs,
a whole outputs/ tree. Each run is read by `trainer.rundir` (its config, metrics and summary).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from trainer import rundir
from trainer.config import NOT_H_PARAMS, flatten
from trainer.errors import UserError
from trainer.rundir import RunRecord


@dataclass
class Run(RunRecord):
    """A run as compare shows it: what its dir says, its config, and its names in the table."""

    config: dict[str, Any] = field(default_factory=dict)  # flat: wandb.mode, not {"wandb": {"mode": ...}}
    name: str = ""  # its path relative to the runs' common parent
    label: str = ""  # the differing keys' values, e.g. learning_rate=0.001


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def find_runs(paths: list[str]) -> list[Path]:
    """Each path is a run dir (it has .hydra/config.yaml) or a dir holding some, at any depth."""
    found: list[Path] = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise UserError(f"{p}: no such directory")
        if not path.is_dir():
            raise UserError(f"{p}: not a directory (give a sweep dir or run dirs)")
        runs = rundir.runs_under(path)
        if not runs:
            raise UserError(f"{p}: no runs in it (a run dir has .hydra/config.yaml)")
        found += runs
    unique = {r.resolve(): r for r in found}  # the same run given twice is shown once
    return list(unique.values())


def load_run(path: Path) -> Run:
    cfg = OmegaConf.load(path / rundir.CONFIG)
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that only resolves inside Hydra
        config = OmegaConf.to_container(cfg, resolve=False)
    record = rundir.read_run(path)
    return Run(**{f: getattr(record, f) for f in ("path", "status", "metrics", "summary", "error")},
               config=flatten(config))


def differing_keys(runs: list[Run]) -> list[str]:
    """The hyperparameters whose values are not the same in every run, in config order."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.config if k not in keys]
    keys = [k for k in keys if k.split(".")[0] not in NOT_H_PARAMS]
    return [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True, default=str) for r in runs}) > 1]


def common_parent(paths: list[Path]) -> Path:
    return Path(os.path.commonpath([str(p.resolve()) for p in paths]))


def sort_key(run: Run) -> tuple:
    best = run.best_valid_loss
    return (best is None, best if best is not None else 0.0, run.name)


def _cell(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if spec and isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def from_different_commits(runs: list[Run]) -> bool:
    """Whether the runs' code differs (as far as their provenance tells: unknown commits don't count)."""
    return len({r.commit for r in runs if r.commit}) > 1


def table(runs: list[Run], keys: list[str]) -> str:
    """One row per run; a `commit` column when the runs came from different code."""
    commit = ["commit"] if from_different_commits(runs) else []
    header = ["run", *keys, *commit, "best valid", "final valid", "steps", "tokens/s", "status"]
    rows = [[r.name, *[_cell(r.config.get(k)) for k in keys], *[_cell(r.commit) for _ in commit],
             _cell(r.best_valid_loss, ".4f"), _cell(r.final_valid_loss, ".4f"), _cell(r.steps),
             _cell(r.tokens_per_s, ",.0f"), r.status]
            for r in runs]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    numeric = [False] * (1 + len(keys) + len(commit)) + [True] * 4 + [False]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def plot(runs: list[Run], out: Path, title: str) -> Path:
    """Train and valid loss against step, one colour per run (the same in both panels)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2 + 0.2 * len(runs)), sharey=True, layout="constrained")
    palette = plt.cm.tab10.colors if len(runs) <= 10 else plt.cm.viridis([i / len(runs) for i in range(len(runs))])
    for i, (run, color) in enumerate(zip(runs, palette, strict=False)):
        style = "-" if run.status == "ok" else "--"  # failed or unfinished runs: dashed
        best = run.best_valid_loss
        label = f"{run.label or run.name}  (best {best:.3f})" if best is not None else run.label or run.name
        for ax, key in zip(axes, ("train_loss", "valid_loss"), strict=True):
            points = [(r["step"], r[key]) for r in run.metrics if _finite(r.get(key))]
            if points:
                steps, losses = zip(*points, strict=True)
                ax.plot(steps, losses, style, color=color, marker="o", markersize=3,
                        linewidth=2.6 if i == 0 else 1.4,  # the best run (runs come sorted) stands out
                        label=label if key == "valid_loss" else None)
    for ax, name in zip(axes, ("train loss", "valid loss"), strict=True):
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("loss (cross-entropy)")
    # Below the panels, never over the curves, however long the labels (several differing keys).
    handles, labels = axes[1].get_legend_handles_labels()
    longest = max((len(label) for label in labels), default=0)
    fig.legend(handles, labels, loc="outside lower center", ncol=1 if longest > 45 else min(3, len(labels)),
               title="sorted by best valid loss (failed or unfinished: dashed)", fontsize=8, title_fontsize=8)
    fig.suptitle(title, fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def compare(paths: list[str], out: Optional[str] = None, plot_curves: bool = True) -> tuple[str, Optional[Path]]:
    """The table's text and the PNG's path (None with plot_curves=False)."""
    runs = [load_run(p) for p in find_runs(paths)]
    parent = common_parent([r.path for r in runs])
    for r in runs:
        r.name = os.path.relpath(r.path.resolve(), parent) if len(runs) > 1 else r.path.name
    keys = differing_keys(runs)
    for r in runs:
        r.label = ", ".join(f"{k}={r.config.get(k)}" for k in keys)
    runs.sort(key=sort_key)
    text = table(runs, keys)
    best = next((r for r in runs if r.best_valid_loss is not None), None)
    if best is not None:
        text += f"\n\nBest: {best.name}" + (f" ({best.label})" if best.label else "") + \
                f", best valid loss {best.best_valid_loss:.4f}"
    png = None
    if plot_curves:
        if out:
            png = Path(out)
            png = png / rundir.PLOT if png.is_dir() or not png.suffix else png
        else:
            # one path given (a sweep dir, a run dir): into it; several: into their common parent
            png = (Path(paths[0]).resolve() if len(paths) == 1 else parent) / rundir.PLOT
        plot(runs, png, f"{len(runs)} runs under {parent}")
    return text, png


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer.compare", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="a sweep dir, run dirs, or any dir holding runs")
    parser.add_argument("--out", help=f"the PNG's path (or a dir for {rundir.PLOT}); "
                                      "default: the sweep dir / the runs' common parent")
    parser.add_argument("--no-plot", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    try:
        text, png = compare(args.paths, args.out, plot_curves=not args.no_plot)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    print(text)
    if png:
        print(f"Loss curves: {png}")


if __name__ == "__main__":
    main()
