"""`python -m trainer.compare <sweep dir | run dirs...>`: compare runs with no server.

Prints a table of the runs ranked by final valid loss (the whole valid split), with its standard
error, `≈` on the runs within 2 standard errors of the best (not told apart from it), and the
hyperparameters that differ between them as columns. Runs that differ only in TORCH_SEED are
seed replicates of one point (trainer.replicates): a table of the points, mean ± std over their
seeds, comes first. Writes a PNG of the train and valid loss curves (per point: the mean with a
band of ± one std) into the sweep dir, the runs' common parent, or --out; the best curve is drawn
bold, failed or unfinished runs dashed; --no-plot prints the tables only. Runs that came from different
code get a `commit` column (summary.json's provenance, `-dirty` with uncommitted changes). Any mix works:
a sweep dir, single run dirs, a whole outputs/ tree. Each run is read by `trainer.rundir` (its config,
metrics and summary).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from trainer import rundir
from trainer.config import NOT_H_PARAMS, flatten
from trainer.errors import UserError
from trainer.replicates import SEED_KEY, Point, group, has_replicates, mean_std
from trainer.rundir import RunRecord


@dataclass
class Run(RunRecord):
    """A run as compare shows it: what its dir says, its config, and its names in the table."""

    config: dict[str, Any] = field(default_factory=dict)  # flat: wandb.mode, not {"wandb": {"mode": ...}}
    name: str = ""  # its path relative to the runs' common parent
    label: str = ""  # the differing keys' values, e.g. learning_rate=0.001, TORCH_SEED=2
    point: str = ""  # the label without TORCH_SEED: its seed replicates share it


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
    """By final valid loss (the whole split), else the best one, unscored runs last."""
    score = run.final_valid_loss if run.final_valid_loss is not None else run.best_valid_loss
    return (score is None, score if score is not None else 0.0, run.name)


def _cell(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if spec and isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def from_different_commits(runs: list[Run]) -> bool:
    """Whether the runs' code differs (as far as their provenance tells: unknown commits don't count)."""
    return len({r.commit for r in runs if r.commit}) > 1


def render(header: list[str], rows: list[list[str]], numeric: list[bool]) -> str:
    """A plain-text table, numbers right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _points(runs: list[Run], name) -> list[Point]:
    return group(runs, name=name, final=lambda r: r.final_valid_loss if r.status == "ok" else None,
                 best=lambda r: r.best_valid_loss if r.status == "ok" else None,
                 se=lambda r: r.final_valid_loss_se if r.status == "ok" else None)


def _mark(p: Point, top: Point) -> str:
    return "best" if p is top else "≈" if p.within_2se else ""


def table(runs: list[Run], keys: list[str]) -> str:
    """One row per run: its differing keys (and a `commit` column when the runs came from different
    code), final valid loss ± its standard error, ≈ when within 2 standard errors of the best run,
    best valid loss, steps, speed, status."""
    marks = {p.name: p for p in _points(runs, name=lambda r: r.name)}
    top = min(marks.values(), key=lambda p: (p.final_mean is None, p.final_mean or 0.0))
    commit = ["commit"] if from_different_commits(runs) else []
    header = ["run", *keys, *commit, "final valid", "± SE", "≈", "best valid", "steps", "tokens/s", "status"]
    rows = [[r.name, *[_cell(r.config.get(k)) for k in keys], *[_cell(r.commit) for _ in commit],
             _cell(r.final_valid_loss, ".4f"), _cell(r.final_valid_loss_se, ".4f"), _mark(marks[r.name], top),
             _cell(r.best_valid_loss, ".4f"), _cell(r.steps), _cell(r.tokens_per_s, ",.0f"), r.status] for r in runs]
    return render(header, rows, [False] * (1 + len(keys) + len(commit)) + [True, True, False, True, True, True, False])


def points_table(points: list[Point]) -> str:
    """One row per point (seed replicates together), ranked by mean final valid loss."""
    rows = [[p.name or "(no overrides)", str(p.n), mean_std(p.final_mean, p.final_std) or "-",
             _cell(p.se, ".4f"), _mark(p, points[0]), mean_std(p.best_mean, p.best_std) or "-"] for p in points]
    return render(["point", "n", "final valid (mean ± std)", "± SE", "≈", "best valid (mean ± std)"], rows,
                  [False, True, True, True, False, True])


def plot(runs: list[Run], out: Path, title: str, points: Optional[list[Point]] = None) -> Path:
    """Train and valid loss against step: one curve per run, or with seed replicates one mean curve
    per point with a band of ± one standard deviation across its seeds."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    curves = [_point_curves(p) for p in points] if points else [_run_curves(r) for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2 + 0.2 * len(curves)), sharey=True, layout="constrained")
    palette = plt.cm.tab10.colors if len(curves) <= 10 else plt.cm.viridis([i / len(curves) for i in range(len(curves))])
    for i, (curve, color) in enumerate(zip(curves, palette, strict=False)):
        for ax, key in zip(axes, ("train_loss", "valid_loss"), strict=True):
            steps, mean, std = curve[key]
            if not steps:
                continue
            ax.plot(steps, mean, curve["style"], color=color, marker="o", markersize=3,
                    linewidth=2.6 if i == 0 else 1.4,  # the best (they come ranked) stands out
                    label=curve["label"] if key == "valid_loss" else None)
            if std is not None:
                ax.fill_between(steps, [m - s for m, s in zip(mean, std, strict=True)],
                                [m + s for m, s in zip(mean, std, strict=True)], color=color, alpha=0.2)
    _finish_plot(fig, axes, title, "ranked by final valid loss (failed or unfinished: dashed; band: ± std over seeds)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _run_curves(run: Run) -> dict[str, Any]:
    final = run.final_valid_loss
    out = {"style": "-" if run.status == "ok" else "--",
           "label": f"{run.label or run.name}  (final {final:.3f})" if final is not None else run.label or run.name}
    for key in ("train_loss", "valid_loss"):
        points = [(r["step"], r[key]) for r in run.metrics if rundir.number(r.get(key)) is not None]
        steps, losses = (list(v) for v in zip(*points, strict=True)) if points else ([], [])
        out[key] = (steps, losses, None)
    return out


def _point_curves(point: Point) -> dict[str, Any]:
    """The mean and std across the point's runs at the steps they all evaluated."""
    out = {"style": "-" if all(r.status == "ok" for r in point.members) else "--",
           "label": f"{point.name or '(no overrides)'}  (n={point.n}, final {mean_std(point.final_mean, point.final_std, '.3f')})"}
    for key in ("train_loss", "valid_loss"):
        by_run = [{r["step"]: r[key] for r in run.metrics if rundir.number(r.get(key)) is not None} for run in point.members]
        steps = sorted(set.intersection(*(set(d) for d in by_run))) if by_run else []
        values = [[d[s] for d in by_run] for s in steps]
        out[key] = (steps, [statistics.fmean(v) for v in values],
                    [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values])
    return out


def _finish_plot(fig, axes, title: str, legend_title: str) -> None:
    for ax, name in zip(axes, ("train loss", "valid loss"), strict=True):
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("loss (cross-entropy)")
    # Below the panels, never over the curves, however long the labels (several differing keys).
    handles, labels = axes[1].get_legend_handles_labels()
    longest = max((len(label) for label in labels), default=0)
    fig.legend(handles, labels, loc="outside lower center", ncol=1 if longest > 45 else min(3, len(labels)),
               title=legend_title, fontsize=8, title_fontsize=8)
    fig.suptitle(title, fontsize=10)


def compare(paths: list[str], out: Optional[str] = None, plot_curves: bool = True) -> tuple[str, Optional[Path]]:
    """The tables' text and the PNG's path (None with plot_curves=False)."""
    runs = [load_run(p) for p in find_runs(paths)]
    parent = common_parent([r.path for r in runs])
    keys = differing_keys(runs)
    for r in runs:
        r.name = os.path.relpath(r.path.resolve(), parent) if len(runs) > 1 else r.path.name
        r.label = ", ".join(f"{k}={r.config.get(k)}" for k in keys)
        r.point = ", ".join(f"{k}={r.config.get(k)}" for k in keys if k != SEED_KEY)
    runs.sort(key=sort_key)
    points = _points(runs, name=lambda r: r.point)
    replicated = SEED_KEY in keys and has_replicates(points)  # the same point, other seeds
    text = (points_table(points) + "\n\n" if replicated else "") + table(runs, keys) + "\n\n" + \
        _best_line(runs, points, replicated)
    png = None
    if plot_curves:
        png = _png_path(paths, out, parent)
        plot(runs, png, f"{len(runs)} runs under {parent}", points if replicated else None)
    return text.rstrip(), png


def _best_line(runs: list[Run], points: list[Point], replicated: bool) -> str:
    if replicated and points[0].final_mean is not None:
        top = points[0]
        near = [p.name for p in points[1:] if p.within_2se]
        return (f"Best: {top.name} (n={top.n}), final valid loss {mean_std(top.final_mean, top.final_std)}"
                + (f"; within 2 standard errors of it: {'; '.join(near)}" if near else ""))
    best = next((r for r in runs if sort_key(r)[0] is False), None)
    if best is None:
        return ""
    score = best.final_valid_loss if best.final_valid_loss is not None else best.best_valid_loss
    return f"Best: {best.name}" + (f" ({best.label})" if best.label else "") + f", final valid loss {score:.4f}"


def _png_path(paths: list[str], out: Optional[str], parent: Path) -> Path:
    if out:
        png = Path(out)
        return png / rundir.PLOT if png.is_dir() or not png.suffix else png
    # one path given (a sweep dir, a run dir): into it; several: into their common parent
    return (Path(paths[0]).resolve() if len(paths) == 1 else parent) / rundir.PLOT


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
