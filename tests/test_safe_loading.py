"""Safe loading: checkpoints load with weights_only, so a checkpoint from a stranger cannot run code."""

from __future__ import annotations

import pytest
import torch
from helpers import Evil

from trainer import checkpoint, rundir
from trainer.errors import UserError
from trainer.model import GPT

H = {"d_model": 16, "num_blocks": 1, "num_heads": 2, "context_length": 8, "dropout": 0.1,
     "vocab_size": 50, "max_token_value": 50}




def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"model_state_dict": GPT(H).state_dict(), "h_params": H, "x": Evil(tmp_path / "PWNED")}, path)
    with pytest.raises(UserError) as e:
        checkpoint.load(path)
    message = str(e.value)
    assert message.startswith(f"{path}: refused: the checkpoint carries pickled code (")
    assert "mkdir" in message and "\n" not in message
    assert not (tmp_path / "PWNED").exists()


def test_a_saved_checkpoint_is_atomic_and_the_books_loader_still_reads_it(tmp_path):
    model = GPT(H)
    path = tmp_path / rundir.CKPT
    checkpoint.save({"model_state_dict": model.state_dict(), "h_params": H, "step": 3}, path)
    assert [p.name for p in tmp_path.iterdir()] == [rundir.CKPT]  # no temp file left
    book = torch.load(path, weights_only=True)  # the book's loader: these two keys, nothing else
    again = GPT(book["h_params"])
    again.load_state_dict(book["model_state_dict"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_a_temp_file_left_by_a_killed_save_is_cleaned_up_by_the_next(tmp_path):
    path = tmp_path / rundir.CKPT
    dead = tmp_path / f".{rundir.CKPT}.999999999.tmp"  # no such pid
    dead.write_bytes(b"half a checkpoint")
    checkpoint.save({"model_state_dict": {}, "h_params": H}, path)
    assert not dead.exists()
    assert checkpoint.load(path)["h_params"] == H


def test_a_weights_only_checkpoint_cannot_be_resumed_and_says_why(tmp_path):
    with pytest.raises(UserError, match=r"resume=x.ckpt: this checkpoint holds weights only \(no optimizer"):
        checkpoint.require_resumable({"model_state_dict": {}, "h_params": H}, "x.ckpt")
