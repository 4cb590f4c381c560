"""Every user mistake: one line on stderr naming the key or path, exit code 2, no traceback, and
nothing already on disk touched (run dirs, checkpoints, the user's files).

Each case runs the whole command line (trainer.cli.main: argv, Hydra, config checks, data,
checkpoint loading) in this process: none of them needs a process of its own, and 25 child
processes would cost half a minute of interpreter and torch start-up."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from helpers import TINY, Evil, run_in_process, run_module, trainer_env

from trainer import rundir

RUN = "outputs/day/run"  # an existing, finished run that every case must leave alone




@pytest.fixture(scope="module")
def workspace(tmp_path_factory, cache_dir) -> Path:
    ws = tmp_path_factory.mktemp("workspace")
    done = run_in_process(*TINY, "max_iters=2", f"hydra.run.dir={RUN}", cwd=ws, cache_dir=cache_dir)
    assert done.returncode == 0, done.stderr
    good = (ws / RUN / rundir.CKPT).read_bytes()
    (ws / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (ws / "garbage.ckpt").write_text("not a checkpoint\n")
    (ws / "empty.ckpt").write_bytes(b"")
    state = torch.load(ws / RUN / rundir.CKPT, weights_only=True)
    torch.save({k: state[k] for k in ("model_state_dict", "h_params")}, ws / "book.ckpt")  # the book's keys only
    torch.save({**state, "extra": Evil(ws / "PWNED")}, ws / "evil.ckpt")
    (ws / "empty.txt").write_text("")
    (ws / "latin1.txt").write_bytes("Grüße aus Köln\n".encode("latin-1") * 50)
    (ws / "short.txt").write_text("too short\n")
    (ws / "titles.csv").write_text("repo,number\nhydra,1\nomegaconf,2\n")
    (ws / "other.txt").write_text("An entirely different corpus, with other words in it. " * 200)
    return ws


def snapshot(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every file under root with its mtime, size and content hash, and every dir (by name only:
    making and removing a failed run's own dir changes its parent's mtime); files named in ignore left out."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name in ignore:
            continue
        st = p.stat()
        rel = str(p.relative_to(root))
        out[rel] = (st.st_mtime_ns, st.st_size, hashlib.sha256(p.read_bytes()).hexdigest()) if p.is_file() else "dir"
    return out


CASES = [  # (what, overrides, the culprit the one line must name)
    ("bad type", ["d_model=abc"], "d_model"),
    ("out of range", ["dropout=1.5"], "dropout=1.5"),
    ("heads do not divide d_model", ["d_model=30", "num_heads=4"], "d_model=30"),
    ("unknown group option", ["model=huge"], "model=huge"),
    ("unknown key", ["lerning_rate=0.1"], "lerning_rate: no such key (did you mean learning_rate?)"),
    ("unknown key appended", ["+lerning_rate=0.1"], "lerning_rate: no such key (did you mean learning_rate?)"),
    ("unknown W&B key appended", ["+wandb.projet=x"], "wandb.projet: no such key (did you mean wandb.project?)"),
    ("a model far too big for memory", ["d_model=65536", "num_blocks=96", "num_heads=4"],
     "d_model=65536 num_blocks=96: training needs ~"),
    ("a batch far too big for memory", ["batch_size=1000000"], "batch_size=1000000 context_length=32: training needs"),
    ("bad override syntax", ["d_model=[1"], "d_model=[1"),
    ("bad W&B mode", ["wandb.mode=sometimes"], "wandb.mode=sometimes"),
    ("missing file", ["data=text", "data_path=missing.txt"], "data_path=missing.txt"),
    ("empty file", ["data=text", "data_path=empty.txt"], "data_path=empty.txt"),
    ("non-UTF-8 file", ["data=text", "data_path=latin1.txt"], "data_path=latin1.txt"),
    ("file too short", ["data=text", "data_path=short.txt"], "data_path=short.txt"),
    ("data=text without a file", ["data=text"], "data_path"),
    ("no such CSV column", ["data=text", "data_path=titles.csv", "text_column=title"], "text_column=title"),
    ("device=cuda on a CPU machine", ["device=cuda"], "device=cuda"),
    ("resume from nowhere", ["resume=nowhere"], "resume=nowhere"),
    ("resume from a text file", ["resume=garbage.ckpt"], "garbage.ckpt"),
    ("resume from a truncated checkpoint", ["resume=truncated.ckpt"], "truncated.ckpt"),
    ("resume from an empty checkpoint", ["resume=empty.ckpt"], "empty.ckpt"),
    ("resume from a checkpoint carrying code", ["resume=evil.ckpt"], "evil.ckpt: refused"),
    ("resume from weights only", ["resume=book.ckpt"], "resume=book.ckpt"),
    ("resume with another d_model", [f"resume={RUN}", "d_model=64"],
     "the checkpoint's d_model=32 does not match this run's d_model=64"),
    ("resume with another corpus", [f"resume={RUN}", "data=text", "data_path=other.txt"], "vocab_size"),
    ("resume=auto with no such run", ["resume=auto", "learning_rate=0.5"], "resume=auto"),
    ("negative time budget", ["max_time=-1"], "max_time=-1.0: must be zero (no time budget) or a positive"),
    ("negative token budget", ["max_tokens=-5"], "max_tokens=-5: must be zero or a positive integer"),
    ("negative patience", ["early_stopping_patience=-1"], "early_stopping_patience=-1: must be zero"),
    ("a sweep's config printed", ["-m", "learning_rate=1e-3,3e-4", "--cfg", "job"],
     "--cfg: shows one job, not a sweep (-m); drop -m to see one job's, or add plan=true"),
]


@pytest.mark.parametrize("args, culprit", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_mistake_is_one_line_exit_2_and_touches_nothing(workspace, trainer_here, args, culprit):
    if "device=cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    # A resume that fails once it holds the run dir leaves its name in the dir's lock file (trainer.lock).
    before = snapshot(workspace, ignore=(rundir.LOCK,))
    r = trainer_here(*TINY, *args, cwd=workspace)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and culprit in lines[0], lines[0]
    assert "Traceback" not in r.stdout + r.stderr
    assert snapshot(workspace, ignore=(rundir.LOCK,)) == before
    assert not (workspace / "PWNED").exists()


@pytest.mark.parametrize("args", [["dropout=1.5"], ["d_model=abc"]], ids=["trainer check", "Hydra override"])
def test_hydra_full_error_gives_the_whole_traceback(tmp_path, cache_dir, args):
    r = run_module("trainer", *TINY, *args, cwd=tmp_path, env=trainer_env(cache_dir, HYDRA_FULL_ERROR="1"))
    assert r.returncode != 0
    assert "Traceback (most recent call last)" in r.stderr
    assert args[0] in r.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.jsonl"))
