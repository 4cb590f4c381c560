"""The command line before Hydra starts (trainer.argv): run dirs, torchrun ranks, sweeps, resume.
In this process: nothing here trains."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from pathlib import Path

import pytest
import torch
import yaml

from trainer import checkpoint, rundir
from trainer.argv import QUIET_RANK, prepare, value_of
from trainer.errors import UserError


@pytest.fixture(autouse=True)
def here(tmp_path, monkeypatch):
    """Each test in its own working dir (outputs/ lands there), outside torchrun."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_a_run_gets_a_fresh_timestamped_dir_made_for_it_before_hydra_starts():
    inv = prepare(["d_model=64"])
    path = value_of(inv.argv, "hydra.run.dir")
    assert inv.argv[0] == "d_model=64"
    assert re.fullmatch(r"outputs/\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}", path) and Path(path).is_dir()
    assert inv.fresh_dirs == [Path(path).resolve(), Path(path).parent.resolve(), rundir.OUTPUTS.resolve()]


def test_runs_started_in_the_same_second_get_dirs_of_their_own():
    now = datetime(2026, 11, 26, 14, 0, 0)
    (a, made), (b, _), (c, _) = (rundir.new_dir(multirun=False, now=now) for _ in range(3))
    assert [str(p) for p in (a, b, c)] == ["outputs/2026-11-26/14-00-00", "outputs/2026-11-26/14-00-00_1",
                                           "outputs/2026-11-26/14-00-00_2"]
    assert made == [Path("outputs/2026-11-26"), Path("outputs")]


def test_a_run_that_never_trained_leaves_no_dir_but_one_that_did_keeps_it():
    failed = prepare([])
    failed.remove_unused_dirs()
    assert not rundir.OUTPUTS.exists()  # its dir, the date dir and outputs/: all made for it, all gone
    trained = prepare([])
    (trained.fresh_dirs[0] / rundir.METRICS).write_text("{}\n")
    trained.remove_unused_dirs()
    assert (trained.fresh_dirs[0] / rundir.METRICS).exists()


def test_a_run_that_failed_in_this_process_leaves_no_log_handler_on_its_removed_dir(trainer_here, tmp_path):
    r = trainer_here("d_model=-1")  # fails at compose time, after Hydra set up logging into its run dir
    assert r.returncode == 2 and not (tmp_path / rundir.OUTPUTS).exists()
    assert not [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)
                and str(tmp_path) in h.baseFilename]
    logging.getLogger("trainer").warning("the next record logged in this process")  # would reopen train.log


@pytest.mark.parametrize("argv", [["hydra.run.dir=mine"], ["--cfg", "job"], ["--help"], ["--info"]])
def test_a_chosen_dir_or_a_command_that_only_prints_makes_no_dir(argv):
    inv = prepare(argv)
    assert inv.argv == argv and inv.fresh_dirs == [] and not rundir.OUTPUTS.exists()


def test_a_sweep_gets_one_sweep_dir_and_names_its_jobs_by_what_varies():
    inv = prepare(["-m", "learning_rate=1e-3,3e-4", "max_iters=5"])
    assert "hydra.job.config.override_dirname.exclude_keys=[max_iters]" in inv.argv
    sweep = value_of(inv.argv, "hydra.sweep.dir")
    assert re.fullmatch(r"outputs/multirun/\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}", sweep)
    assert inv.fresh_dirs == []  # a sweep's dir holds every job's, failed ones included
    assert prepare(["hparams_search=lr_optuna"]).argv[-1].startswith("hydra.sweep.dir=")  # a sweep without -m


def test_under_torchrun_only_rank_0_gets_a_run_dir(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert prepare(["d_model=64"]).argv == ["d_model=64", "hydra.run.dir=.", *QUIET_RANK]
    assert not rundir.OUTPUTS.exists()
    with pytest.raises(UserError, match="^--multirun under torchrun"):
        prepare(["-m", "learning_rate=1e-3,3e-4"])


def fake_run(path, overrides: list[str], config: dict, trained_with: dict) -> None:
    """A run dir as a finished run leaves it: .hydra's start config and overrides, and a checkpoint
    whose config says what it was last trained with."""
    (path / rundir.HYDRA).mkdir(parents=True)
    (path / rundir.OVERRIDES).write_text(yaml.safe_dump(overrides))
    (path / rundir.CONFIG).write_text(yaml.safe_dump(config))
    checkpoint.save({"model_state_dict": {}, "h_params": {}, "optimizer_state_dict": {}, "step": 10,
                     "rng": {}, "config": trained_with}, path / rundir.CKPT)


def test_resume_puts_the_run_back_first_and_what_is_typed_now_last(tmp_path):
    run = tmp_path / "runs" / "a"
    fake_run(run, ["d_model=64", "max_iters=10"], {"d_model": 64, "max_iters": 10, "learning_rate": 1e-3},
             trained_with={"d_model": 64, "max_iters": 20, "learning_rate": 5e-4})  # resumed once since
    inv = prepare(["-v", f"resume={run}", "max_iters=30"])
    assert inv.argv == ["-v", "d_model=64", "max_iters=10", "max_iters=20", "learning_rate=0.0005",
                        f"resume={run / rundir.CKPT}", f"hydra.run.dir={run}", "hydra.output_subdir=null",
                        "max_iters=30"]
    assert inv.resume.path == run / rundir.CKPT and inv.resume.state["step"] == 10  # read once, handed on
    assert inv.fresh_dirs == []  # it continues in its own dir


def test_resume_refuses_a_weights_only_checkpoint_before_hydra_starts(tmp_path):
    torch.save({"model_state_dict": {}, "h_params": {}}, tmp_path / "book.ckpt")
    with pytest.raises(UserError, match=r"^resume=.*book.ckpt: this checkpoint holds weights only"):
        prepare([f"resume={tmp_path / 'book.ckpt'}"])
    assert not rundir.OUTPUTS.exists()


def test_commands_that_only_print_run_in_process_without_a_run_dir(trainer_here, tmp_path):
    r = trainer_here("--cfg", "job", "d_model=64")
    assert r.returncode == 0 and "d_model: 64" in r.stdout
    assert not (tmp_path / rundir.OUTPUTS).exists()
