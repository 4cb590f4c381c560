"""Seed replicates: runs that differ only in TORCH_SEED form one *point* of a sweep.

`-m learning_rate=1e-3,3e-4 TORCH_SEED=1,2,3` is two points of three replicates each. A point
is scored by the mean of its runs' final valid loss (over the whole valid split) with the
standard deviation across seeds; its standard error is std / sqrt(n), or, for a single run, the
standard error of its loss over the valid windows. A point whose mean is within 2 standard
errors of the best point's (the two errors combined) is not told apart from it: it is marked
`≈`, so that no one picks a learning rate on noise. Used by the sweep summary and by compare.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional

from trainer.rundir import number

SEED_KEY = "TORCH_SEED"


def point_of(overrides: str) -> str:
    """A job's name without its seed: "learning_rate=0.001,TORCH_SEED=2" -> "learning_rate=0.001"."""
    return ",".join(o for o in overrides.split(",") if o and not o.startswith(f"{SEED_KEY}="))


def _mean(values: list[float]) -> Optional[float]:
    return statistics.fmean(values) if values else None


def _std(values: list[float]) -> Optional[float]:
    return statistics.stdev(values) if len(values) > 1 else None


@dataclass
class Point:
    """One point's replicates, summarised."""

    name: str
    members: list[Any] = field(default_factory=list)  # its jobs or runs, in their order
    final: list[float] = field(default_factory=list)  # their final valid losses (finished ones)
    best: list[float] = field(default_factory=list)
    single_se: Optional[float] = None  # with one replicate: its loss's standard error over windows
    within_2se: bool = False  # not told apart from the best point

    @property
    def n(self) -> int:
        return len(self.final)

    @property
    def final_mean(self) -> Optional[float]:
        return _mean(self.final)

    @property
    def final_std(self) -> Optional[float]:
        return _std(self.final)

    @property
    def best_mean(self) -> Optional[float]:
        return _mean(self.best)

    @property
    def best_std(self) -> Optional[float]:
        return _std(self.best)

    @property
    def se(self) -> Optional[float]:
        """The standard error of final_mean."""
        if self.n > 1:
            return self.final_std / math.sqrt(self.n)
        return self.single_se


def group(members: list[Any], name: Any, final: Any, best: Any, se: Any) -> list[Point]:
    """Members (job rows, runs) grouped into points by name(member), ranked by mean final valid loss
    (points without one last), the ones within 2 standard errors of the best marked."""
    points: dict[str, Point] = {}
    for m in members:
        p = points.setdefault(name(m), Point(name(m)))
        p.members.append(m)
        f, b = number(final(m)), number(best(m))
        if b is not None:
            p.best.append(b)
        if f is not None:
            p.final.append(f)
            p.single_se = number(se(m)) if p.n == 1 else None  # the se of the one final there is
    ranked = sorted(points.values(), key=lambda p: (p.final_mean is None, p.final_mean or 0.0, p.name))
    _mark_within_2se(ranked)
    return ranked


def _mark_within_2se(ranked: list[Point]) -> None:
    if not ranked or ranked[0].final_mean is None:
        return
    top = ranked[0]
    for p in ranked:
        if p.final_mean is None:
            continue
        combined = math.sqrt((p.se or 0.0) ** 2 + (top.se or 0.0) ** 2)
        p.within_2se = p is top or (combined > 0 and p.final_mean - top.final_mean <= 2 * combined)


def has_replicates(points: list[Point]) -> bool:
    return any(len(p.members) > 1 for p in points)


def mean_std(mean: Optional[float], std: Optional[float], spec: str = ".4f") -> str:
    """"3.9550 ± 0.0281", or the mean alone for one replicate, or "" for none."""
    if mean is None:
        return ""
    return f"{mean:{spec}}" + (f" ± {std:{spec}}" if std is not None else "")
