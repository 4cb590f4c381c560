"""Evaluation as a yardstick: every run of a sweep on the same windows, the final score over the
whole valid split, a standard error on every loss, and bits per byte, checked by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY, call_main, composed, metrics, run_dirs

import trainer.evaluate
from trainer import rundir
from trainer.data.batches import fixed_starts
from trainer.data.corpus import load_corpus
from trainer.data.encodings import get_encoding
from trainer.data.sources import Source
from trainer.model import GPT
from trainer.run import _eval_sets

# float32: the hand computations below are float64, and bf16 autocast (on CPUs with native bf16)
# would differ from them by more than rounding
FP32 = [*TINY, "dtype=float32"]
TEXT = "fix: handle empty `input` in the parser (#12)\nfeat(api): add a `limit` param (#21)\n" \
       "docs: tidy the README (#15)\nBump numpy from 1.26 to 2.0 (#30)\n"


def evaluate(*args: str, cwd):
    return call_main(trainer.evaluate.main, *args, cwd=cwd)


def test_every_run_of_a_sweep_is_scored_on_the_same_windows_whatever_its_seed(cache_dir, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(cache_dir))
    corpus = load_corpus(composed("context_length=32"))
    one, two = (_eval_sets(composed("context_length=32", f"TORCH_SEED={s}"), corpus, 2) for s in (1, 2))
    for split in ("train", "valid"):
        assert torch.equal(one[split].starts, two[split].starts)
    # ... and the default run keeps the windows it had when they were drawn from TORCH_SEED=1337
    default = _eval_sets(composed("context_length=32"), corpus, 2)["valid"]
    starts = fixed_starts(len(corpus.valid), 20, 32, 1337 + 2)
    assert torch.equal(default.starts, starts)
    x, _, _ = default.batch(torch.arange(20))
    assert torch.equal(x[3], corpus.valid[int(starts[3]):int(starts[3]) + 32])  # read from the cached ids
    other = _eval_sets(composed("context_length=32", "eval_seed=7"), corpus, 2)["valid"]
    assert not torch.equal(other.starts, starts)  # a key of their own


def test_every_eval_row_has_the_standard_error_and_bits_per_byte_and_the_last_the_whole_split(trainer_here,
                                                                                                tmp_path):
    r = trainer_here(*FP32)
    assert r.returncode == 0, r.stderr
    (run,) = run_dirs(tmp_path)
    rows = metrics(run)
    for row in rows:
        assert 0 < row["valid_loss_se"] < 0.5 and 1 < row["bits_per_byte"] < 4
    last, done = rows[-1], json.loads((run / rundir.SUMMARY).read_text())
    assert "valid_loss_full" not in rows[-2] and last["valid_loss_full"] == done["final_valid_loss"]
    assert last["valid_loss_full_se"] == done["final_valid_loss_se"] < last["valid_loss_se"]  # more windows
    assert done["final_bits_per_byte"] == last["bits_per_byte_full"]
    assert done["best_valid_loss"] == min(row["valid_loss"] for row in rows)  # the periodic evals'


def by_hand(ckpt_path, text: str, split: str) -> dict[str, float]:
    """Loss, its standard error and bits per byte of a checkpoint over every non-overlapping window
    of the split, in float64, from the text and the tokenizer alone."""
    state = torch.load(ckpt_path, weights_only=True)
    h, vocab = state["h_params"], state["vocab"]
    model = GPT(h).double()
    model.load_state_dict({k: v.double() for k, v in state["model_state_dict"].items()})
    model.eval()
    enc = get_encoding("cl100k_base")
    ids = torch.tensor(enc.tiktoken.encode_ordinary(text))
    n_train = int(len(ids) * h["train_split"])
    part = ids[n_train:] if split == "valid" else ids[:n_train]
    T = h["context_length"]
    n = (len(part) - 1) // T
    nats, nbytes, per_window = 0.0, 0, []
    for w in range(n):
        x, y = part[w * T:(w + 1) * T], part[w * T + 1:(w + 1) * T + 1]  # cl100k ids
        logits, _ = model(torch.searchsorted(vocab, x)[None])
        losses = F.cross_entropy(logits[0], torch.searchsorted(vocab, y), reduction="none")
        nats += losses.sum().item()
        per_window.append(losses.mean().item())
        nbytes += sum(len(enc.token_bytes(t)) for t in y.tolist())
    mean = sum(per_window) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in per_window) / (n - 1) / n)
    return {"loss": mean, "loss_se": se, "bits_per_byte": nats / math.log(2) / nbytes, "bytes": nbytes,
            "windows": n}


def test_bits_per_byte_over_the_whole_split_matches_a_hand_computation(trainer_here, tmp_path):
    (tmp_path / "titles.txt").write_text(TEXT * 40)
    r = trainer_here(*FP32, "context_length=16", "data=text", f"data_path={tmp_path / 'titles.txt'}")
    assert r.returncode == 0, r.stderr
    (run,) = run_dirs(tmp_path)
    out = evaluate(str(run), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split()[:3] == ["run", "step", "windows"]
    got = json.loads((run / rundir.EVAL).read_text())[f"valid last {tmp_path / 'titles.txt'}"]
    want = by_hand(run / rundir.CKPT, TEXT * 40, "valid")
    assert (got["windows"], got["bytes"]) == (want["windows"], want["bytes"])
    for key in ("loss", "loss_se", "bits_per_byte"):
        assert got[key] == pytest.approx(want[key], rel=1e-5), key
    assert got["perplexity"] == pytest.approx(math.exp(want["loss"]))
    # the same number the run itself recorded at its end (float32 both times)
    assert got["loss"] == pytest.approx(json.loads((run / rundir.SUMMARY).read_text())["final_valid_loss"], rel=1e-5)


def test_another_corpus_or_split_is_scored_and_each_kept_in_eval_json(trainer_here, tmp_path):
    (tmp_path / "a.txt").write_text(TEXT * 40)
    (tmp_path / "b.csv").write_text("title\n" + "".join(f'"{line}"\n' for line in TEXT.splitlines()) * 10)
    assert trainer_here(*FP32, "context_length=16", "data=text", f"data_path={tmp_path / 'a.txt'}").returncode == 0
    (run,) = run_dirs(tmp_path)
    out = evaluate(str(tmp_path / "outputs"), "--data", str(tmp_path / "b.csv"), "--text_column", "title",
                   "--split", "all", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert evaluate(str(run), "--split", "train", cwd=tmp_path).returncode == 0
    scores = json.loads((run / rundir.EVAL).read_text())
    assert set(scores) == {f"all last {tmp_path / 'b.csv'}", f"train last {tmp_path / 'a.txt'}"}
    want = by_hand(run / rundir.CKPT, TEXT * 40, "train")
    assert scores[f"train last {tmp_path / 'a.txt'}"]["bits_per_byte"] == pytest.approx(want["bits_per_byte"], rel=1e-5)
    assert Source.of({"data_path": str(tmp_path / "b.csv"), "text_column": "title"}).text().startswith("fix: handle")


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "error: nowhere: no such directory"),
    (["RUN", "--data", "missing.txt"], "error: --data missing.txt: file not found"),
    (["RUN", "--data", "other.txt"], "tokens never occur in the run's training corpus"),
    (["RUN", "--which", "best"], "error: RUN: no run there has a best.ckpt"),  # a run from before best.ckpt
])
def test_bad_evaluate_input_is_one_line(trainer_here, tmp_path, args, message):
    (tmp_path / "other.txt").write_text("Völlig andere Wörter, die das Modell nie sah. " * 20)
    assert trainer_here(*TINY, "max_iters=2", "hydra.run.dir=RUN").returncode == 0
    (tmp_path / "RUN" / rundir.BEST_CKPT).unlink(missing_ok=True)
    before = sorted(p.name for p in (tmp_path / "RUN").iterdir())
    out = evaluate(*args, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert sorted(p.name for p in (tmp_path / "RUN").iterdir()) == before  # nothing written
