"""W&B in a sweep, offline: one run per job, one group per sweep, read back from the .wandb files.

One real sweep serves every check: two points of two seed replicates each. The first point's
jobs diverge (learning_rate=1e30 gives NaN at step 2, after W&B started), the other's train, so a
failed job's run, the clean runs after it, and replicates grouped by point are all here.
"""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest
from helpers import TINY, job_dirs, metrics, run_module, sweep_dir, trainer_env
from wandb_reader import offline_runs, read_run

from trainer import rundir
from trainer.tracking import wandb_mode

LRS = (1e30, 1e30, 1e-3, 1e-3)
NAMES = ("TORCH_SEED=1,learning_rate=1e+30", "TORCH_SEED=2,learning_rate=1e+30",
         "TORCH_SEED=1,learning_rate=0.001", "TORCH_SEED=2,learning_rate=0.001")
POINTS = ("learning_rate=1e+30", "learning_rate=1e+30", "learning_rate=0.001", "learning_rate=0.001")


@pytest.fixture(scope="module")
def wandb_sweep(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("wandb-sweep")
    # No API key and no netrc: the default mode must be offline, without touching the network.
    env = trainer_env(cache_dir, NETRC=str(root / "no-netrc"))
    proc = run_module("trainer", "-m", "learning_rate=1e30,1e-3", "TORCH_SEED=1,2", *TINY,
                      "wandb.enabled=true", cwd=root, env=env)
    sweep = sweep_dir(root)
    return proc, root, sweep, job_dirs(sweep)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def runs_of(jobs):
    return [read_run(offline_runs(job)[0]) for job in jobs]


def test_the_sweep_reports_the_diverged_job_in_one_line(wandb_sweep):
    proc, *_ = wandb_sweep
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: learning_rate=1e+30: training diverged at step")


def test_each_job_dir_holds_exactly_one_offline_run(wandb_sweep):
    _, root, _, jobs = wandb_sweep
    assert len(jobs) == 4
    for job in jobs:
        (run_dir,) = offline_runs(job)
        assert len(list(run_dir.glob("run-*.wandb"))) == 1
    assert not (root / rundir.WANDB).exists()  # nothing lands in the launch dir


def test_the_sweep_is_one_group_and_each_run_is_named_by_its_overrides(wandb_sweep):
    _, _, sweep, jobs = wandb_sweep
    runs = runs_of(jobs)
    assert {r.group for r in runs} == {f"{sweep.parent.name}_{sweep.name}"}  # e.g. 2026-11-25_21-07-02
    assert [r.name for r in runs] == list(NAMES)
    assert len({r.id for r in runs}) == 4
    assert {r.project for r in runs} == {"gpt-trainer"}


def test_config_is_the_flat_h_params_with_each_jobs_learning_rate_and_point(wandb_sweep):
    *_, jobs = wandb_sweep
    for run, lr, point in zip(runs_of(jobs), LRS, POINTS, strict=True):
        assert run.config["learning_rate"] == lr
        assert run.config["point"] == point  # "Group by point" in the dashboard puts replicates together
        assert run.config["d_model"] == 32 and run.config["batch_size"] == 4 and run.config["device"] == "cpu"
        assert "wandb" not in run.config and "resume" not in run.config
        h_params = {k: v for k, v in run.config.items() if k != "provenance"}
        assert not any(isinstance(v, dict) for v in h_params.values())  # the book's flat names
    assert [r.config["TORCH_SEED"] for r in runs_of(jobs)] == [1, 2, 1, 2]


def test_config_carries_the_provenance_as_summary_json_does(wandb_sweep):
    *_, jobs = wandb_sweep
    for job, run in zip(jobs[2:], runs_of(jobs[2:]), strict=True):
        prov = json.loads((job / rundir.SUMMARY).read_text())["provenance"]
        assert run.config["provenance"] == prov
        assert prov["command"] == "python -m trainer -m learning_rate=1e30,1e-3 TORCH_SEED=1,2 " + " ".join(TINY) + \
            " wandb.enabled=true"  # as typed: no sweep dir or job names that trainer.argv adds
        assert prov["threads"] == 1 and prov["device"] == "cpu"


def test_history_has_every_eval_at_its_step_as_in_metrics_jsonl(wandb_sweep):
    *_, jobs = wandb_sweep
    for job, run in zip(jobs[2:], runs_of(jobs[2:]), strict=True):
        rows = metrics(job)
        assert [h["_step"] for h in run.history] == [r["step"] for r in rows] == [0, 10, 20]
        for h, r in zip(run.history, rows, strict=True):
            for key in ("valid_loss", "train_loss", "valid_loss_se", "bits_per_byte"):
                assert h[key] == pytest.approx(r[key])
            assert h["learning_rate"] == r["learning_rate"] and "tokens_per_s" in h
            assert h["tokens_seen"] == r["tokens_seen"] == r["step"] * 4 * 32  # steps x batch x context
        assert run.history[-1]["valid_loss_full"] == pytest.approx(rows[-1]["valid_loss_full"])
        done = json.loads((job / rundir.SUMMARY).read_text())
        assert run.summary["best_valid_loss"] == pytest.approx(done["best_valid_loss"])
        # W&B's final_valid_loss is the whole valid split's, as in summary.json and metrics.jsonl
        assert run.summary["final_valid_loss"] == pytest.approx(done["final_valid_loss"])
        assert done["final_valid_loss"] == rows[-1]["valid_loss_full"]
        assert run.exit_code == 0


def test_the_losses_are_plotted_against_tokens_seen(wandb_sweep):
    *_, jobs = wandb_sweep
    for run in runs_of(jobs):
        assert run.step_metrics == {"tokens_seen": "", "train_loss": "tokens_seen", "valid_loss": "tokens_seen"}


def test_a_failed_job_closes_its_run_as_failed_and_the_next_run_starts_clean(wandb_sweep):
    *_, jobs = wandb_sweep
    failed, after = runs_of(jobs[1:3])
    assert failed.exit_code == 1
    assert [h["_step"] for h in failed.history] == [0]  # evaluated once, then diverged at step 2
    assert math.isfinite(failed.summary["best_valid_loss"])  # the best it reached, not inf
    # The next job's run is its own: its own id and config, and only its own history.
    assert after.id != failed.id and after.exit_code == 0
    assert after.config["learning_rate"] == 1e-3
    assert [h["_step"] for h in after.history] == [0, 10, 20]


def test_the_jobs_summary_lists_the_diverged_jobs_as_failed(wandb_sweep):
    _, _, sweep, _ = wandb_sweep
    rows = read_csv(sweep / rundir.SWEEP_JOBS_CSV)
    assert [(r["overrides"], r["point"], r["status"]) for r in rows] == [
        (name, point, "failed" if i < 2 else "ok") for i, (name, point) in enumerate(zip(NAMES, POINTS, strict=True))]
    assert "training diverged" in rows[0]["error"]
    assert float(rows[0]["best_valid_loss"]) > 0  # from its metrics before it diverged


def test_replicates_are_one_point_with_mean_and_std_read_back_from_summary_csv_and_wandb(wandb_sweep):
    *_, sweep, jobs = wandb_sweep
    points = read_csv(sweep / rundir.SWEEP_CSV)
    assert [(p["point"], p["n"], p["jobs"], p["status"]) for p in points] == [
        ("learning_rate=0.001", "2", "2 3", "2 ok"), ("learning_rate=1e+30", "0", "0 1", "2 failed")]
    finals = [json.loads((job / rundir.SUMMARY).read_text())["final_valid_loss"] for job in jobs[2:]]
    assert [r.summary["final_valid_loss"] for r in runs_of(jobs[2:])] == pytest.approx(finals)
    assert float(points[0]["final_valid_loss_mean"]) == pytest.approx(statistics.fmean(finals))
    assert float(points[0]["final_valid_loss_std"]) == pytest.approx(statistics.stdev(finals))
    assert abs(finals[0] - finals[1]) < 0.1  # two seeds of one point, both scored on the whole valid split
    assert points[0]["within_2se_of_best"] == "True" and points[1]["final_valid_loss_mean"] == ""
    md = (sweep / rundir.SWEEP_MD).read_text()
    assert "Best: `learning_rate=0.001` (n=2), final valid loss " in md


def test_the_default_mode_is_offline_without_a_key_and_online_with_one(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode(None) == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password x\n")
    assert wandb_mode(None) == "online"
    assert wandb_mode("disabled") == "disabled"
