"""One line for every error (trainer.errors.one_line), from the real exceptions Hydra, OmegaConf
and the trainer raise. In this process: composing a config is all it takes."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from trainer.config import CONF_DIR, register_configs
from trainer.errors import Diverged, UserError, job_error, one_line


def composing(*overrides: str) -> BaseException:
    """The exception composing conf/ with these overrides raises."""
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        with pytest.raises(Exception) as caught:
            compose("config", overrides=list(overrides))
    return caught.value


@pytest.mark.parametrize("override, line", [
    ("model=huge", "model=huge: unknown option (choose from gpt2, modern, small, tiny)"),
    ("lerning_rate=0.1", "lerning_rate: no such key (did you mean learning_rate?)"),
    ("wandb.projct=x", "wandb.projct: no such key (did you mean wandb.project?)"),
    ("zzz=1", "zzz: no such key"),
])
def test_hydra_and_omegaconf_errors_read_as_one_line_naming_the_culprit(override, line):
    assert one_line(composing(override)) == line


def test_a_value_of_the_wrong_type_names_the_key_and_the_value():
    line = one_line(composing("d_model=abc"))
    assert line.startswith("d_model") and "'abc'" in line and "\n" not in line


def test_a_malformed_override_is_named():
    line = one_line(composing("d_model=[1"))
    assert line.startswith("d_model=[1: ") and "\n" not in line


def test_the_trainers_own_errors_keep_their_message_and_exit_code():
    assert one_line(UserError("dropout=1.5: must be in [0, 1)")) == "dropout=1.5: must be in [0, 1)"
    assert UserError.exit_code == 2 and Diverged.exit_code == 3


def test_a_failed_sweep_jobs_line_names_the_type_only_of_unexpected_errors():
    assert job_error(UserError("data_path=x: file not found")) == "data_path=x: file not found"
    assert job_error(RuntimeError("CUDA out of\n  memory")) == "RuntimeError: CUDA out of memory"
