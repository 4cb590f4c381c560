"""Presets: experiment=NAME, hparams_search=lr_optuna and hydra/launcher=slurm compose as documented."""

from __future__ import annotations

import os
import stat

import pytest
from helpers import SHARED_DATA, composed, metrics, run_dirs
from omegaconf import OmegaConf

from trainer import rundir
from trainer.config import validate


def test_the_book_preset_is_the_books_exact_run():
    cfg = composed("experiment=book")
    book = dict(d_model=80, num_blocks=6, num_heads=4, context_length=128, dropout=0.1, batch_size=2,
                max_iters=500, learning_rate=1e-3, eval_interval=50, eval_iters=10, TORCH_SEED=1337,
                weight_decay=0.01, text_column=None, vocab_compaction=False, tie_weights=False)
    assert {k: cfg[k] for k in book} == book
    assert cfg.optimizer == "adamw" and cfg.dtype.value == "float32"
    assert cfg.data_path.endswith("github_pr_titles.csv")
    assert cfg.format is None  # read raw, header and all: not the csv format that data=github_pr_titles sets
    validate(cfg)


def test_the_smoke_preset_overrides_the_root_configs_loop_settings():
    cfg = composed("experiment=smoke")
    assert (cfg.d_model, cfg.batch_size, cfg.max_iters, cfg.eval_interval) == (32, 4, 20, 10)
    assert cfg.device.value == "cpu" and cfg.data_path is None
    assert composed("experiment=smoke", "max_iters=7").max_iters == 7  # the command line still wins


def test_the_small_pr_titles_preset_is_model_small_on_the_title_column():
    cfg = composed("experiment=small_pr_titles")
    assert (cfg.d_model, cfg.num_blocks, cfg.num_heads, cfg.context_length) == (256, 12, 8, 256)
    assert cfg.text_column == "title" and cfg.lr_schedule.value == "cosine"


def test_lr_optuna_searches_learning_rate_on_a_log_scale():
    sweeper = composed("hparams_search=lr_optuna", hydra=True).hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "minimize"
    assert sweeper.params.learning_rate == "tag(log, interval(1e-5, 1e-2))"


def test_the_slurm_preset_reaches_sbatch_with_partition_gpus_and_time(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cfg = composed("hydra/launcher=slurm", "hydra.launcher.partition=gpu", hydra=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert params.pop("_target_").endswith("SlurmLauncher")
    # What the plugin's launch() does with these params, short of calling sbatch: submitit only
    # insists that srun exists, so a stub one stands in for the cluster.
    srun = tmp_path / "srun"
    srun.write_text("#!/bin/sh\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(cluster="slurm", folder=str(tmp_path / "%j"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {k if k in base else f"slurm_{k}": v for k, v in params.items()}
    params["name"] = "train"
    executor.update_parameters(**params)
    script = executor._executor._make_submission_file_text("python -m trainer", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=240",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --ntasks-per-node=1"):
        assert line in script


def test_experiment_smoke_trains_from_the_command_line(trainer_here, tmp_path):
    proc = trainer_here("experiment=smoke", "num_threads=1")
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path)
    assert [r["step"] for r in metrics(run)] == [0, 10, 20]
    assert OmegaConf.load(run / rundir.CONFIG).d_model == 32


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "github_pr_titles.csv").exists(), reason="no shared PR-titles csv")
def test_small_pr_titles_trains_on_the_real_csv(cli, tmp_path):
    proc = cli("experiment=small_pr_titles", f"data_path={SHARED_DATA / 'github_pr_titles.csv'}", "device=cpu",
               "max_iters=2", "eval_interval=2", "eval_iters=1", "batch_size=2", "warmup_iters=0")
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path)
    assert [r["step"] for r in metrics(run)] == [0, 2]
    assert OmegaConf.load(run / rundir.CONFIG).d_model == 256
