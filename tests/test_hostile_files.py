"""Any file handed to resume=, data_path=, `trainer.generate` or `trainer.evaluate` (random bytes, a
zip that is no checkpoint, a FIFO, a CSV with NUL bytes or ragged rows, a damaged checkpoint)
gives one `error:` line naming it and exit 2; and a write that fails (a file-size limit here,
a full disk alike) gives one line while the previous checkpoint stays loadable.

Named cases first, then property-based fuzzing (hypothesis) of the loaders and of the commands."""

from __future__ import annotations

import os
import pickle
import resource
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import TINY, Evil, call_main, run_in_process, trainer_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer import checkpoint, evaluate, generate, rundir
from trainer.data.sources import Source
from trainer.errors import UserError

RUN = "outputs/day/run"
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=True)  # the same examples every run: a failure reproduces




@pytest.fixture(scope="module")
def ws(tmp_path_factory, cache_dir) -> Path:
    """A finished tiny run, and a file of every hostile kind beside it."""
    ws = tmp_path_factory.mktemp("hostile")
    done = run_in_process(*TINY, "max_iters=2", f"hydra.run.dir={RUN}", cwd=ws, cache_dir=cache_dir)
    assert done.returncode == 0, done.stderr
    (ws / "random.bin").write_bytes(bytes(range(256)) * 20)
    (ws / "nul.csv").write_bytes(b"text,n\nfix: a\x00b,1\n" * 50)
    (ws / "ragged.csv").write_text("text,n\nfix: one,1\nfix: two, three,2\n" * 50)
    (ws / "no-header.csv").write_text("")
    with zipfile.ZipFile(ws / "other.zip", "w") as z:
        z.writestr("data.pkl", "not a pickle")
    (ws / "code.pkl").write_bytes(pickle.dumps(Evil(ws / "PWNED")))
    (ws / "text.ckpt").write_text("model_state_dict: h_params\n")
    (ws / "adir").mkdir()
    os.mkfifo(ws / "fifo")
    return ws


FILES = ["random.bin", "nul.csv", "ragged.csv", "other.zip", "code.pkl", "text.ckpt", "adir", "fifo"]


def one_error_line(r, name: str) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.parametrize("name", FILES)
def test_resume_from_a_hostile_file_is_one_line(ws, trainer_here, name):
    one_error_line(trainer_here(*TINY, f"resume={name}", cwd=ws), name)
    assert not (ws / "PWNED").exists()


@pytest.mark.parametrize("name", FILES)
def test_a_hostile_data_path_is_one_line(ws, trainer_here, name):
    column = ["text_column=text"] if name.endswith(".csv") else []
    line = one_error_line(trainer_here(*TINY, "data=text", f"data_path={name}", *column, cwd=ws), name)
    if name == "ragged.csv":
        assert "line 3 has 3 fields, the header 2" in line
    if name == "fifo":  # never opened: reading a FIFO with no writer would block forever
        assert "not a regular file" in line


@pytest.mark.parametrize("name", FILES)
def test_generate_and_evaluate_refuse_a_hostile_file_in_one_line(ws, name):
    one_error_line(call_main(generate.main, name, "--max_new_tokens", "1", cwd=ws), name)
    one_error_line(call_main(evaluate.main, RUN, "--data", name, cwd=ws), name)
    if (ws / name).is_dir():
        one_error_line(call_main(evaluate.main, name, cwd=ws), name)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode: untestable as root")
def test_an_unreadable_file_is_one_line(ws, trainer_here, tmp_path):
    locked = tmp_path / "locked.txt"
    locked.write_text("fix: a title\n" * 100)
    locked.chmod(0)
    one_error_line(trainer_here(*TINY, "data=text", f"data_path={locked}", cwd=ws), "locked.txt")
    one_error_line(trainer_here(*TINY, f"resume={locked}", cwd=ws), "locked.txt")


def test_a_checkpoint_whose_h_params_make_no_model_is_one_line(ws, tmp_path):
    state = torch.load(ws / RUN / rundir.CKPT, weights_only=True)
    torch.save({**state, "h_params": {**state["h_params"], "d_model": 48}}, tmp_path / "wrong.ckpt")
    line = one_error_line(call_main(generate.main, str(tmp_path / "wrong.ckpt"), cwd=ws), "wrong.ckpt")
    assert "not a model this trainer can rebuild" in line


def test_a_damaged_eval_json_is_one_line(ws, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ws / RUN, run)
    (run / rundir.EVAL).write_bytes(b"\xff[not json")
    one_error_line(call_main(evaluate.main, str(run), cwd=ws), rundir.EVAL)


# ----------------------------------------------------------------------------- fuzzing


def read_text(path: Path, column) -> str:
    """The file's corpus text as training reads it (a CSV column, or the file raw)."""
    return Source.of({"data_path": str(path), "text_column": column}).text()


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_any_bytes_as_a_checkpoint_is_a_user_error(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("fuzz") / "x.ckpt"
    path.write_bytes(blob)
    with pytest.raises(UserError) as e:
        checkpoint.load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from([None, "text", "n"]))
def test_fuzz_any_bytes_as_data_is_text_or_a_user_error(tmp_path_factory, blob, column):
    path = tmp_path_factory.mktemp("fuzz") / "x.csv"
    path.write_bytes(blob)
    try:
        text = read_text(path, column)
    except UserError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    else:
        assert text.strip() and "\x00" not in text


@FUZZ
@given(st.text(max_size=300), st.lists(st.text(max_size=20), max_size=5))
def test_fuzz_any_text_as_a_csv_is_a_column_or_a_user_error(tmp_path_factory, body, header):
    path = tmp_path_factory.mktemp("fuzz") / "x.csv"
    path.write_text(",".join(header) + "\n" + body, encoding="utf-8", errors="surrogatepass")
    try:
        read_text(path, "text")
    except UserError as e:
        assert "\n" not in str(e)


@FUZZ
@given(st.data())
def test_fuzz_a_damaged_checkpoint_samples_or_is_refused_in_one_line(ws, data):
    """Bytes of a real checkpoint overwritten or cut short, handed to `trainer.generate`."""
    good = (ws / RUN / rundir.CKPT).read_bytes()
    cut = data.draw(st.integers(0, len(good)))
    at = data.draw(st.integers(0, max(cut - 1, 0)))
    patch = data.draw(st.binary(min_size=1, max_size=64))
    blob = (good[:at] + patch + good[at + len(patch):])[:cut]
    path = ws / "damaged.ckpt"
    path.write_bytes(blob)
    r = call_main(generate.main, str(path), "--max_new_tokens", "1", cwd=ws)
    assert r.returncode in (0, 2) and "Traceback" not in r.stderr
    if r.returncode == 2:
        one_error_line(r, "damaged.ckpt")


# ----------------------------------------------------------------------------- failed writes


def _file_size_limit(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_file_size_limit_while_checkpointing_is_one_line_and_the_last_checkpoint_loads(tmp_path, cache_dir):
    env = trainer_env(cache_dir)
    first = subprocess.run([sys.executable, "-m", "trainer", *TINY, "max_iters=10", "hydra.run.dir=run"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    ckpt = tmp_path / "run" / rundir.CKPT
    before = ckpt.read_bytes()
    assert len(before) > 500_000  # the limit below is under a checkpoint's size, over every other file's
    r = subprocess.run([sys.executable, "-m", "trainer", *TINY, "resume=run"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, preexec_fn=_file_size_limit(len(before) // 2))
    line = one_error_line(r, str(ckpt))
    assert "EFBIG" in line and "intact" in line
    assert ckpt.read_bytes() == before
    assert torch.load(ckpt, weights_only=True)["step"] == 10
    assert not list(ckpt.parent.glob(".*.tmp"))  # the half-written temp is gone


def test_an_appended_hydra_key_is_still_allowed(tmp_path, trainer_here):
    """Only the trainer's schema is checked: `+hydra...` stays Hydra's own business."""
    r = trainer_here(*TINY, "max_iters=2", "+hydra.job.env_set.HOSTILE_X=1", "hydra.run.dir=run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / rundir.CKPT).is_file()
