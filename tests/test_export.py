"""Exporting a trained model: `python -m trainer.export RUN --to safetensors OUT` writes weights and
h_params that rebuild the same model, for any architecture."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY, call_main, ok

import trainer.export
from trainer.generate import load_model

pytest.importorskip("safetensors")


@pytest.mark.parametrize("variant", [[], ["model=modern", "tie_weights=true", "activation=swiglu"]])
def test_an_exported_run_rebuilds_the_same_model(trainer_here, tmp_path, variant):
    ok(trainer_here(*TINY, "max_iters=10", *variant, "hydra.run.dir=run"))
    r = call_main(trainer.export.main, "run", "--to", "safetensors", "out", cwd=tmp_path)
    assert r.returncode == 0 and "Wrote out/model.safetensors" in r.stdout
    exported, h = trainer.export.load_safetensors(tmp_path / "out")
    ours, state = load_model(str(tmp_path / "run"))
    assert h["vocab"] == state["vocab"].tolist()  # compact model ids -> the encoding's, for decoding
    idx = torch.randint(0, ours.head.out_features, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(exported(idx)[0], ours(idx)[0])
    assert json.loads((tmp_path / "out" / "h_params.json").read_text())["d_model"] == 32


def test_exporting_a_missing_run_is_one_line(tmp_path):
    r = call_main(trainer.export.main, "nowhere", "--to", "safetensors", "out", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == ("error: checkpoint=nowhere: no checkpoint there "
                                                  "(expected a run dir or a .ckpt file)")
    assert not (tmp_path / "out").exists()
