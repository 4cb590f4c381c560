"""plan=true: every job of a sweep (or the one run) with its size, FLOPs and estimated time, then exit 0
with nothing trained and nothing written."""

from __future__ import annotations

import re

from helpers import TINY

# TINY without its shape: the sweep below varies the model group.
LOOP = ["max_iters=20", "eval_interval=10", "eval_iters=2", "batch_size=4", "device=cpu", "num_threads=1"]
ROW = re.compile(r"^\s*(\d+)  (.+?)\s+([\d,]+)\s+([\d.]+[KMGT]?)\s+(\d+:\d\d:\d\d)  (timed steps|peak x \d+% MFU)$")


def rows(stdout: str) -> list[tuple]:
    return [m.groups() for m in map(ROW.match, stdout.splitlines()) if m]


def test_a_sweeps_plan_lists_every_job_and_writes_nothing(trainer_here, tmp_path):
    r = trainer_here("-m", "learning_rate=1e-3,3e-4", "model=tiny,gpt2", *LOOP, "plan=true")
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/, no run dir, no sweep dir
    assert r.stdout.startswith("Plan: 4 jobs, 1 at a time; nothing is trained or written.\n")
    assert "Every job: max_iters=20 eval_interval=10 eval_iters=2 batch_size=4 device=cpu num_threads=1" in r.stdout
    jobs = rows(r.stdout)
    assert [(j[0], j[1]) for j in jobs] == [("0", "learning_rate=0.001 model=tiny"), ("1", "learning_rate=0.001 model=gpt2"),
                                            ("2", "learning_rate=0.0003 model=tiny"), ("3", "learning_rate=0.0003 model=gpt2")]
    tiny, gpt2 = jobs[0], jobs[1]
    assert tiny[2:4] == jobs[2][2:4] and gpt2[2:4] == jobs[3][2:4]  # the learning rate changes no size
    assert int(gpt2[2].replace(",", "")) > 100 * int(tiny[2].replace(",", ""))
    assert tiny[5] == "timed steps" and gpt2[5] == "peak x 30% MFU"  # gpt2 on a CPU: too big to time
    hours, minutes, _ = map(int, gpt2[4].split(":"))
    assert hours * 60 + minutes > 10  # 20 steps of gpt2 on a CPU thread
    assert re.search(r"^Total: about \d+:\d\d:\d\d$", r.stdout, re.M)
    assert "Times estimated on this machine (cpu, 1 thread)." in r.stdout


def test_the_plans_sizes_are_what_the_run_reports(trainer_here, tmp_path):
    r = trainer_here(*TINY, "plan=true")  # no -m: the one job
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Plan: 1 job; nothing is trained or written.\n")
    ((job, name, params, flops, _time, how),) = rows(r.stdout)
    assert (job, name, how) == ("0", " ".join(TINY), "timed steps")
    trained = trainer_here(*TINY, "max_iters=1", "hydra.run.dir=real")
    assert trained.returncode == 0, trained.stderr
    assert f": {params} parameters," in trained.stdout  # its "Training on cpu ..." line


def test_a_bad_plan_value_is_one_line_and_plan_false_trains(trainer_here, tmp_path):
    r = trainer_here(*TINY, "plan=maybe")
    assert r.returncode == 2 and list(tmp_path.iterdir()) == []
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: plan") and "not a valid bool" in r.stderr
    off = trainer_here(*TINY, "max_iters=1", "plan=false", "hydra.run.dir=run")
    assert off.returncode == 0 and (tmp_path / "run" / "summary.json").exists()
