#!/usr/bin/env python
"""Build a PR-titles CSV (repo,pr,title) from local git clones' squash-merge subjects, offline.

GitHub's squash merges leave one commit per pull request whose subject ends in "(#123)".
This reads those subjects with `git log` (no network), oldest first, strips the "(#123)"
and writes the `github_pr_titles` format, so you can train on your own repositories' titles:

    python scripts/build_pr_titles_csv.py ~/src/myrepo ~/src/other -o data/my_pr_titles.csv
    python -m trainer data=github_pr_titles data_path=data/my_pr_titles.csv
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
from pathlib import Path

SQUASH_SUBJECT = re.compile(r"^(?P<title>.+?)\s*\(#(?P<pr>\d+)\)\s*$")
REMOTE = re.compile(r"[:/](?P<name>[^/:]+/[^/]+?)(?:\.git)?/?$")


def repo_name(clone: Path) -> str:
    """owner/name from the origin remote, or the folder's name when there is none."""
    try:
        url = subprocess.run(["git", "-C", str(clone), "remote", "get-url", "origin"], check=True,
                             capture_output=True, text=True).stdout.strip()
    except subprocess.CalledProcessError:
        return clone.resolve().name
    m = REMOTE.search(url)
    return m.group("name") if m else clone.resolve().name


def pr_titles(clone: Path, ref: str = "HEAD") -> list[tuple[int, str]]:
    """(pr number, title) of every squash-merge subject on ref's first-parent history, oldest first."""
    out = subprocess.run(["git", "-C", str(clone), "log", "--first-parent", "--reverse", "--format=%s", ref],
                         check=True, capture_output=True, text=True).stdout
    rows = []
    for subject in out.splitlines():
        m = SQUASH_SUBJECT.match(subject)
        if m:
            rows.append((int(m.group("pr")), m.group("title")))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("clones", nargs="+", type=Path, help="local git clones to read")
    p.add_argument("-o", "--output", type=Path, default=Path("data/github_pr_titles.csv"))
    p.add_argument("--ref", default="HEAD", help="the branch to read (default: the checked-out one)")
    a = p.parse_args(argv)
    rows = []
    for clone in a.clones:
        if not (clone / ".git").exists() and not (clone / "HEAD").exists():
            print(f"error: {clone}: not a git clone", file=sys.stderr)
            return 2
        try:
            titles = pr_titles(clone, a.ref)
        except subprocess.CalledProcessError as e:
            print(f"error: {clone}: git log failed: {e.stderr.strip().splitlines()[0]}", file=sys.stderr)
            return 2
        name = repo_name(clone)
        rows += [(name, pr, title) for pr, title in titles]
        print(f"{name}: {len(titles)} PR titles", file=sys.stderr)
    if not rows:
        print("error: no squash-merge subjects like 'Fix X (#123)' found", file=sys.stderr)
        return 2
    a.output.parent.mkdir(parents=True, exist_ok=True)
    with open(a.output, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["repo", "pr", "title"])
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {a.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
