"""Data from anywhere: a file, a directory or a glob, in every format (text, CSV, JSONL, parquet,
a Hugging Face dataset saved locally), .gz read decompressed, each file or record a document with
its separator; and every bad source one `error:` line naming the file (and line), exit 2, nothing
written."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from helpers import TINY, metrics, run_dirs

from trainer.data.cache import load_tokens
from trainer.data.corpus import load_corpus
from trainer.data.encodings import get_encoding
from trainer.data.sources import Source

DOCS = ["fix(parser): handle `None` in strict mode (#12)", "feat: add a `limit` param (#21)",
        "docs: tidy the README (#15)", "Bump numpy from 1.26 to 2.0 (#30)"] * 60


def source(path, fmt=None, column=None, sep=None, **more) -> Source:
    return Source.of({"data_path": str(path), "format": fmt, "text_column": column, "document_separator": sep, **more})


def ids_of(src: Source) -> np.ndarray:
    t = load_tokens(src, "cl100k_base")
    return np.array(t.memmap())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_every_format(d):
    """The same documents as a CSV, JSONL, gzipped JSONL, parquet and an HF dataset dir."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir(exist_ok=True)
    (d / "t.csv").write_text("title,n\n" + "".join(f'"{t}",{i}\n' for i, t in enumerate(DOCS)))
    lines = "".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(DOCS))
    (d / "t.jsonl").write_text(lines)
    (d / "t.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    pq.write_table(pa.table({"text": DOCS}), d / "t.parquet", row_group_size=50)  # several row groups
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(d / "hf"))


def test_every_record_format_reads_the_same_documents_and_tokens(tmp_path, cache):
    write_every_format(tmp_path)
    want = "".join(t + "\n" for t in DOCS)  # each row a document, a newline after each (as the book's CSV)
    sources = [source(tmp_path / "t.csv", column="title"), source(tmp_path / "t.csv", "csv", "title"),
               source(tmp_path / "t.jsonl", "jsonl", "text"), source(tmp_path / "t.jsonl.gz", "jsonl", "text"),
               source(tmp_path / "t.parquet", "parquet", "text"), source(tmp_path / "hf", "hf", "text")]
    whole = np.array(get_encoding("cl100k_base").encode(want).tolist(), dtype=np.uint32)
    for src in sources:
        assert src.text() == want, src
        assert np.array_equal(ids_of(src), whole), src
        assert load_tokens(src, "cl100k_base").documents == len(DOCS)


def test_a_directory_is_every_file_under_it_sorted_hidden_ones_skipped(tmp_path, cache, monkeypatch):
    d = tmp_path / "corpus"
    (d / "b" / "deeper").mkdir(parents=True)
    (d / ".git").mkdir()
    (d / "a.txt").write_text("first file\n")
    (d / "b" / "deeper" / "c.md").write_text("third file\n")
    (d / "b" / "b.txt").write_text("second file\n")
    (d / ".hidden.txt").write_text("never read\n")
    (d / ".git" / "config").write_text("never read\n")
    assert source(d).files() == [d / "a.txt", d / "b" / "b.txt", d / "b" / "deeper" / "c.md"]
    assert source(d).text() == "first file\nsecond file\nthird file\n"
    assert source(f"{d}/**/*.md").files() == [d / "b" / "deeper" / "c.md"]  # a glob, recursive
    assert source(f"{d}/*.txt").text() == "first file\n"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert source("~/corpus").files() == source(d).files() and source("~/corpus/*.txt").files() == [d / "a.txt"]


def test_document_separators(tmp_path, cache):
    d = tmp_path / "docs"
    d.mkdir()
    for i, text in enumerate(["one doc", "two doc\n", "three"]):
        (d / f"{i}.txt").write_text(text)
    enc = get_encoding("cl100k_base")
    # none (text's default): each file tokenized on its own, nothing between them
    assert ids_of(source(d)).tolist() == enc.tiktoken.encode_ordinary("one doc") + enc.tiktoken.encode_ordinary("two doc\n") + \
        enc.tiktoken.encode_ordinary("three")
    # eot: cl100k's <|endoftext|> after each document, as nanoGPT does
    eot = ids_of(source(d, sep="eot")).tolist()
    assert eot.count(enc.eot_token) == 3 and eot[-1] == enc.eot_token
    assert enc.decode(eot) == "one doc<|endoftext|>two doc\n<|endoftext|>three<|endoftext|>"
    # newline: a newline after each, the whole read as one text
    assert source(d, sep="newline").text() == "one doc\ntwo doc\n\nthree\n"
    # a document's literal "<|endoftext|>" is text, never the special token
    (d / "3.txt").write_text("a <|endoftext|> b")
    assert enc.eot_token not in ids_of(source(d)).tolist()


def test_a_text_file_stays_byte_for_byte_the_books(tmp_path, cache):
    text = "".join(t + ("\n" if i % 3 else "\n\n  indented\n") for i, t in enumerate(DOCS))
    (tmp_path / "book.csv").write_text(text)
    assert source(tmp_path / "book.csv").text() == text
    assert ids_of(source(tmp_path / "book.csv")).tolist() == get_encoding("cl100k_base").encode(text).tolist()


def test_trains_on_a_directory_of_jsonl_gz_files(trainer_here, tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    for k in range(3):
        lines = "".join(json.dumps({"text": t}) + "\n" for t in DOCS[k::3])
        (d / f"part-{k}.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    r = trainer_here(*TINY, "data=jsonl", f"data_path={d}", "progress=false")
    assert r.returncode == 0, r.stderr
    rows = metrics(run_dirs(tmp_path)[0])
    assert rows[-1]["valid_loss"] < rows[0]["valid_loss"]
    assert "240 documents" in (run_dirs(tmp_path)[0] / "train.log").read_text()


def test_trains_on_a_hugging_face_dataset_saved_locally(trainer_here, tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"story": DOCS}),
                          "validation": datasets.Dataset.from_dict({"story": DOCS[:8]})}).save_to_disk(str(tmp_path / "ds"))
    r = trainer_here(*TINY, "data=hf", f"data_path={tmp_path / 'ds'}", "text_column=story", "progress=false")
    assert r.returncode == 0, r.stderr
    c = load_corpus({"data_path": str(tmp_path / "ds"), "format": "hf", "text_column": "story", "hf_split": "train",
                     "encoding": "cl100k_base", "vocab_compaction": True, "train_split": 0.9, "context_length": 8})
    assert c.tokens.documents == len(DOCS)


def test_parquet_is_read_a_row_group_at_a_time(tmp_path, cache, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": DOCS, "n": list(range(len(DOCS)))}), tmp_path / "p.parquet", row_group_size=16)
    read = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, g, **kw: read.append(g) or real(self, g, **kw))
    assert source(tmp_path / "p.parquet", "parquet", "text").text() == "".join(t + "\n" for t in DOCS)
    assert read == list(range(15))


# ----------------------------------------------------------------------------- bad sources


def bad_workspace(ws):
    (ws / "empty-dir").mkdir()
    (ws / "mixed").mkdir()
    (ws / "mixed" / "a.txt").write_text("fix: fine text\n" * 50)
    (ws / "mixed" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" * 20)
    (ws / "nul").mkdir()
    (ws / "nul" / "a.txt").write_text("fix: fine text\n" * 50)
    (ws / "nul" / "b.txt").write_bytes(b"fix: x\x00y\n" * 20)
    (ws / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "fine"}\n{"text": broken\n')
    (ws / "nofield.jsonl").write_text('{"text": "fine"}\n{"body": "no text here"}\n')
    (ws / "cut.jsonl.gz").write_bytes(gzip.compress(b'{"text": "fine"}\n' * 500)[:-20])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": DOCS}), ws / "nocol.parquet")


BAD = [
    ("a directory with no files", ["data=text", "data_path=empty-dir"], "data_path=empty-dir: the directory has no files"),
    ("a glob with no files", ["data=text", "data_path=nowhere/*.txt"], "data_path=nowhere/*.txt: the glob matches no files"),
    ("a non-UTF-8 file in a directory", ["data=text", "data_path=mixed"],
     "data_path=mixed: mixed/logo.png: not UTF-8 text (byte 0) (pick the text files with a glob, e.g. "
     "data_path='mixed/**/*.txt')"),
    ("a NUL byte in a directory's file", ["data=text", "data_path=nul"], "data_path=nul: nul/b.txt: not a text file (a NUL"),
    ("a JSONL line that is not JSON", ["data=jsonl", "data_path=bad.jsonl"], "data_path=bad.jsonl: line 3 is not JSON"),
    ("a JSONL line without the field", ["data=jsonl", "data_path=nofield.jsonl"],
     "data_path=nofield.jsonl: line 2 has no field 'text' (text_column=text)"),
    ("a parquet file without the column", ["data=parquet", "data_path=nocol.parquet"],
     "text_column=text: no such column in nocol.parquet (columns: body)"),
    ("a truncated .gz", ["data=jsonl", "data_path=cut.jsonl.gz"], "data_path=cut.jsonl.gz: a truncated or damaged .gz"),
    ("a CSV format without its column", ["data=csv", "data_path=mixed/a.txt", "text_column=null"], "text_column: missing"),
    ("a column for the raw format", ["data=text", "data_path=mixed/a.txt", "format=text", "text_column=x"],
     "text_column=x: format=text reads the file raw"),
]


@pytest.mark.parametrize("args, message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_bad_source_is_one_line_exit_2_and_writes_nothing(trainer_here, tmp_path, args, message):
    bad_workspace(tmp_path)
    r = trainer_here(*TINY, *args, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "outputs").exists()


def test_an_unknown_hugging_face_dataset_offline_is_one_line(cli, tmp_path):
    """In a process of its own: datasets reads HF_HUB_OFFLINE when it is imported."""
    r = cli(*TINY, "data=hf", "data_path=nobody/no-such-dataset", extra_env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith("error: data_path=nobody/no-such-dataset: cannot load this Hugging Face dataset")
    assert "offline, pass a dir saved with save_to_disk" in line
    assert not (tmp_path / "outputs").exists()
