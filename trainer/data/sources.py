"""Where the text comes from: `data_path` (a file, a directory or a glob) read in its `format`, as
documents, streamed in segments (about 1 MB of a raw file, or a record) so that no corpus is ever held whole.

    Source.of(cfg)       the data keys of a config (or of a saved h_params) as one value
    source.files()       the files behind data_path: a file; every regular file under a directory,
                         recursively, sorted by path, hidden ones skipped; or a glob's matches
    source.segments()    the corpus as Segments, in order, each validated as it is read
    source.fingerprint() what the token cache is keyed by: the keys and each file's path, size and
                         mtime (a changed file gets a new key; nothing is re-hashed at start)

Formats: `text` (a file read raw, as the book reads its CSV), `csv` (one column), `jsonl` (one field a
line), `parquet` (one column, by row groups) and `hf` (a Hugging Face dataset: a dir saved with
`save_to_disk`, or a hub name, streamed). `.gz` files are read decompressed. Each file, row or record
is a document; `document_separator` says what comes after each: `newline`, `eot` (the encoding's
<|endoftext|> token) or `none`.

A bad source is one UserError naming data_path, the file (inside a directory or glob) and the line
where there is one: a missing file, a directory or glob with no files, a file that is not UTF-8 text or
holds a NUL byte (inside a directory, with a hint to pick the text files with a glob), an empty file,
a CSV row with more fields than its header, a JSONL line that is not JSON or lacks the field, a CSV,
parquet or dataset without the column, a truncated .gz, a Hugging Face dataset that cannot be loaded
(offline: pass a dir saved with save_to_disk), and parquet or hf without their packages (the `data`
extra). A FIFO, socket or device is never opened: refused as data_path, skipped under a dir or glob.

A segment may only start where cutting the text leaves tiktoken's pieces as they are in the whole
text (`safe`): after a newline, before a printable ASCII character (no piece of cl100k's pattern
reaches across such a place). So a corpus tokenized in segments, on several threads, gives exactly
the ids of the whole text tokenized at once, as the book does.
"""

from __future__ import annotations

import csv
import functools
import glob as globlib
import gzip
import hashlib
import io
import json
import logging
import os
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from trainer.config import plain
from trainer.errors import UserError

SEGMENT_BYTES = 1 << 20  # read this much at a time: a segment is about this size
LONGEST_LINE = 64 << 20  # past this without a safe cut (one huge line), cut between two words
SAFE_CUT = re.compile(rb"\n[\x21-\x7e]")  # a newline, then a printable ASCII character
WORD_CUT = re.compile(rb"[A-Za-z0-9] [A-Za-z]")  # before the space: "bar| foo" keeps " foo" whole
FORMATS = ("text", "csv", "jsonl", "parquet", "hf")
SEPARATORS = ("newline", "eot", "none")
EXTRA = "pip install -e '.[data]'"  # what brings pyarrow and datasets


@dataclass
class Segment:
    """A piece of the corpus, in order."""

    text: str
    doc_end: bool  # the last piece of a document: its separator follows it
    safe: bool  # tokenizing from here on apart from what came before gives the same ids as together
    nbytes: int = 0  # input bytes consumed (on disk: compressed for .gz), for the progress bar


@dataclass(frozen=True)
class Source:
    data_path: Optional[str]  # None: the synthetic corpus
    format: str
    text_column: Optional[str]
    separator: str
    hf_split: str = "train"
    hf_config: Optional[str] = None

    @classmethod
    def of(cls, h: Mapping[str, Any]) -> Source:
        """A config's data keys; a saved h_params from before `format` existed reads as it did then
        (a CSV column when text_column is set, else the file raw)."""
        fmt = plain(h.get("format")) or ("csv" if h.get("text_column") else "text")
        sep = plain(h.get("document_separator")) or ("none" if fmt == "text" else "newline")
        return cls(h.get("data_path"), fmt, h.get("text_column"), sep,
                   h.get("hf_split") or "train", h.get("hf_config"))

    @property
    def where(self) -> str:
        return f"data_path={self.data_path}" if self.data_path is not None else "the synthetic corpus"

    # ------------------------------------------------------------------ which files

    def files(self) -> list[Path]:
        """The files to read, in order; a UserError naming data_path when there are none."""
        if self.data_path is None or (self.format == "hf" and not Path(self.data_path).exists()):
            return []  # the synthetic corpus, or a hub dataset: no files here
        path = Path(self.data_path).expanduser()  # a ~ that reaches us (quoted, or from a YAML file)
        if any(c in self.data_path for c in "*?["):
            found = [Path(p) for p in sorted(globlib.glob(str(path), recursive=True)) if Path(p).is_file()]
            if not found:
                raise UserError(f"{self.where}: the glob matches no files")
            return found
        if path.is_dir():
            if self.format == "hf":
                return sorted(p for p in path.rglob("*") if p.is_file())
            found = _files_under(path)
            if not found:
                raise UserError(f"{self.where}: the directory has no files (hidden ones are skipped)")
            return found
        if not path.exists():
            raise UserError(f"{self.where}: file not found")
        if not path.is_file():  # is_file follows links and is false for FIFOs, sockets and devices
            raise UserError(f"{self.where}: not a regular file")
        return [path]

    def fingerprint(self, files: list[Path]) -> dict[str, Any]:
        """What identifies this corpus for the token cache, without reading it: the keys, and each
        file's resolved path, size and mtime; the synthetic corpus by a hash of its (small) text."""
        keys = {"format": self.format, "text_column": self.text_column, "separator": self.separator}
        if self.format == "hf":
            keys.update(hf_split=self.hf_split, hf_config=self.hf_config, data_path=self.data_path)
        if self.data_path is None:
            keys["synthetic"] = hashlib.sha256(_synthetic().encode()).hexdigest()
        stats = []
        for f in files:
            try:
                st = f.stat()
            except OSError as e:
                raise UserError(f"{self.where}: {f}: cannot read it ({e.strerror or e})") from None
            stats.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
        return {**keys, "files": stats}

    def total_bytes(self, files: list[Path]) -> Optional[int]:
        """The bytes the progress bar counts to (on disk); None where unknown (a hub dataset)."""
        if self.data_path is None:
            return None
        return sum(f.stat().st_size for f in files) if files else None

    # ------------------------------------------------------------------ reading

    def segments(self, files: list[Path]) -> Iterator[Segment]:
        """The corpus, in order, with the separator's newline already added after each document."""
        if self.data_path is None:
            yield from self._documents([(_synthetic(), 0)])
            return
        if self.format == "hf":
            yield from self._documents(_hf_records(self))
            return
        several = len(files) > 1
        for f in files:
            shown = f"{self.where}: {f}" if several else self.where
            hint = f" (pick the text files with a glob, e.g. data_path='{self.data_path}/**/*.txt')" if several else ""
            if self.format == "text":
                yield from _text_file(f, shown, hint, several, self.separator == "newline")
            else:
                read = {"csv": _csv_records, "jsonl": _jsonl_records, "parquet": _parquet_records}[self.format]
                yield from self._documents(read(f, shown, self.text_column))

    def _documents(self, records: Iterable[tuple[str, int]]) -> Iterator[Segment]:
        """Records (their text, and the bytes read for them) as one Segment each; empty ones are skipped."""
        newline = self.separator == "newline"
        for text, nbytes in records:
            if not text:
                continue
            if newline:
                text += "\n"
            yield Segment(text, True, not newline or _starts_safe(text), nbytes)

    def text(self) -> str:
        """The whole corpus as one string, as the tokenizer sees it (without eot tokens): for small
        corpora and tests only; training streams segments."""
        return "".join(s.text for s in self.segments(self.files()))


@functools.cache
def _synthetic() -> str:
    """The default corpus, generated once a process (its hash keys the cache, then it is read)."""
    from trainer.synthetic import generate

    return generate()


def _starts_safe(text: str) -> bool:
    return "\x21" <= text[0] <= "\x7e"


def _files_under(root: Path) -> list[Path]:
    """Every regular file under root, recursively, sorted by path; hidden files and dirs skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            p = Path(dirpath) / name
            if not name.startswith(".") and p.is_file():
                found.append(p)
    return sorted(found)


class _Reader:
    """A file's bytes, decompressed when it ends in .gz, with the bytes read from disk so far."""

    def __init__(self, path: Path, shown: str):
        self.shown = shown
        try:
            self.raw = open(path, "rb")
        except OSError as e:
            raise UserError(f"{shown}: cannot read it ({e.strerror or e})") from None
        self.stream = gzip.GzipFile(fileobj=self.raw) if path.name.endswith(".gz") else self.raw
        self.consumed = 0

    def read(self, n: int) -> bytes:
        try:
            data = self.stream.read(n)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise UserError(f"{self.shown}: a truncated or damaged .gz file ({e})") from None
        except OSError as e:
            raise UserError(f"{self.shown}: cannot read it ({e.strerror or e})") from None
        return data

    def progress(self) -> int:
        """Bytes read from disk since the last call."""
        now = self.raw.tell()
        done, self.consumed = now - self.consumed, now
        return done

    def text_stream(self) -> io.TextIOWrapper:
        """The text, decoded as it is read (a damaged .gz still reads as one UserError)."""
        return io.TextIOWrapper(io.BufferedReader(_Checked(self)), encoding="utf-8", newline="")

    def close(self) -> None:
        self.raw.close()


class _Checked(io.RawIOBase):
    """A _Reader as a raw stream, for the text layers on top of it."""

    def __init__(self, reader: _Reader):
        self.reader, self.offset = reader, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.reader.read(len(b))
        if b"\x00" in data:  # valid UTF-8, but a binary file, not text (Python's csv reads NULs as text)
            raise UserError(f"{self.reader.shown}: not a text file (a NUL byte at byte {self.offset + data.index(0)})")
        b[:len(data)] = data
        self.offset += len(data)
        return len(data)


def _text_file(path: Path, shown: str, hint: str, skip_empty: bool, newline: bool) -> Iterator[Segment]:
    """A file read raw, in segments cut at safe places; refused if it is not UTF-8 text or is empty."""
    f = _Reader(path, shown)
    try:
        carry, offset, any_text, safe = b"", 0, False, None
        while True:
            buf = f.read(SEGMENT_BYTES)
            data = carry + buf
            cut, next_safe = (len(data), True) if not buf else _cut(data)
            if cut is None:
                carry = data
                continue
            piece, carry = data[:cut], data[cut:]
            text = _decode(piece, shown, hint, offset)
            any_text = any_text or bool(text.strip())
            if not buf and newline:
                text += "\n"
            if safe is None:  # the file's first segment: a document of its own, or joined after a newline
                safe = not newline or bool(text) and _starts_safe(text)
            if text:
                yield Segment(text, not buf, safe, f.progress())
            offset, safe = offset + len(piece), next_safe
            if not buf:
                break
    finally:
        f.close()
    if not any_text and not skip_empty:
        raise UserError(f"{shown}: the file is empty")


def _cut(data: bytes) -> tuple[Optional[int], bool]:
    """Where to end this segment, and whether the cut is safe: the last safe place in data (None:
    read on), or, in a line longer than LONGEST_LINE, the last place between two words (a piece
    boundary too), else between two characters (the only cut that may change a token)."""
    for pattern in (SAFE_CUT, WORD_CUT):
        tail = max(0, len(data) - (1 << 20))
        while True:
            found = [m.start() for m in pattern.finditer(data, tail)]
            if found:
                return found[-1] + 1, True
            if tail == 0:
                break
            tail = max(0, tail - (8 << 20))
        if len(data) < LONGEST_LINE:
            return None, True
    cut = len(data) - 1
    while cut > 0 and (data[cut] & 0xC0) == 0x80:  # never inside a UTF-8 character
        cut -= 1
    return max(cut, 1), False


def _decode(raw: bytes, shown: str, hint: str, offset: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{shown}: not UTF-8 text (byte {offset + e.start}){hint}") from None
    if "\x00" in text:  # valid UTF-8, but a binary file (a zip, an image), not text to train on
        raise UserError(f"{shown}: not a text file (a NUL byte at byte {offset + raw.index(0)}){hint}")
    return text


def _csv_records(path: Path, shown: str, column: Optional[str]) -> Iterator[tuple[str, int]]:
    """One column of a CSV, row by row; a row with more fields than the header (an unquoted comma,
    most likely) is refused rather than read shifted."""
    f = _Reader(path, shown)
    reader = csv.DictReader(f.text_stream())
    rows = 0
    try:
        if column not in (reader.fieldnames or []):
            raise UserError(f"text_column={column}: no such column in {path} "
                            f"(columns: {', '.join(reader.fieldnames or [])})")
        for row in reader:
            if None in row:  # DictReader files the fields beyond the header under the key None
                raise UserError(f"{shown}: line {reader.line_num} has {len(reader.fieldnames) + len(row[None])} "
                                f"fields, the header {len(reader.fieldnames)} (an unquoted comma?)")
            if row[column]:
                rows += 1
                yield row[column], f.progress()
    except csv.Error as e:
        raise UserError(f"{shown}: not a readable CSV (line {reader.line_num}: {e})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{shown}: not UTF-8 text (near line {reader.line_num + 1}: {e.reason})") from None
    finally:
        f.close()
    if not rows:
        raise UserError(f"text_column={column}: the column is empty in {path}")


def _jsonl_records(path: Path, shown: str, field: Optional[str]) -> Iterator[tuple[str, int]]:
    """One field of each line's JSON object; blank lines are skipped."""
    f = _Reader(path, shown)
    n = 0
    try:
        for n, line in enumerate(f.text_stream(), 1):  # noqa: B007 (n: the line an error names)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise UserError(f"{shown}: line {n} is not JSON ({getattr(e, 'msg', e)})") from None
            if not isinstance(record, dict) or field not in record:
                raise UserError(f"{shown}: line {n} has no field {field!r} (text_column={field})")
            value = record[field]
            if value is not None and not isinstance(value, str):
                raise UserError(f"{shown}: line {n}: the field {field!r} is not a string")
            yield value or "", f.progress()
    except UnicodeDecodeError as e:
        raise UserError(f"{shown}: not UTF-8 text (near line {n + 1}: {e.reason})") from None
    finally:
        f.close()


def _import(module: str, fmt: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise UserError(f"format={fmt}: needs the {module.split('.')[0]} package: {EXTRA}") from None


def _parquet_records(path: Path, shown: str, column: Optional[str]) -> Iterator[tuple[str, int]]:
    """One column of a parquet file, read a row group at a time."""
    pq = _import("pyarrow.parquet", "parquet")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's ArrowInvalid and friends: not a parquet file
        raise UserError(f"{shown}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    names = pf.schema_arrow.names
    if column not in names:
        raise UserError(f"text_column={column}: no such column in {path} (columns: {', '.join(names)})")
    size, groups = path.stat().st_size, max(pf.num_row_groups, 1)
    for g in range(pf.num_row_groups):
        values = pf.read_row_group(g, columns=[column]).column(0).to_pylist()
        for i, value in enumerate(values):
            if value is not None and not isinstance(value, str):
                raise UserError(f"{shown}: the column {column!r} is not text (row group {g}: {type(value).__name__})")
            yield value or "", (size // groups if i == len(values) - 1 else 0)


def _hf_records(source: Source) -> Iterator[tuple[str, int]]:
    """A Hugging Face dataset's text column: a local dir saved with save_to_disk, or a hub dataset,
    streamed (a 40 GB corpus never needs a second copy in the HF cache)."""
    datasets = _import("datasets", "hf")
    where, column = source.where, source.text_column
    try:
        if Path(source.data_path).is_dir():
            ds = datasets.load_from_disk(source.data_path)
            if isinstance(ds, datasets.DatasetDict):
                if source.hf_split not in ds:
                    raise UserError(f"hf_split={source.hf_split}: no such split in {source.data_path} "
                                    f"(splits: {', '.join(ds)})")
                ds = ds[source.hf_split]
        else:  # offline, huggingface_hub retries for ~25 s, a warning each time: the error line says it all
            hub_log = logging.getLogger("huggingface_hub")
            level = hub_log.level
            hub_log.setLevel(logging.ERROR)
            try:
                ds = datasets.load_dataset(source.data_path, source.hf_config, split=source.hf_split, streaming=True)
            finally:
                hub_log.setLevel(level)
    except UserError:
        raise
    except Exception as e:  # no such dataset, offline, not a dataset dir: datasets' own errors
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{where}: cannot load this Hugging Face dataset ({first}); offline, pass a dir "
                        "saved with save_to_disk") from None
    names = list(ds.column_names or []) if ds.column_names is not None else None
    if names is not None and column not in names:
        raise UserError(f"text_column={column}: no such column in {where} (columns: {', '.join(names)})")
    for batch in ds.iter(batch_size=1000):
        for value in batch[column]:
            yield value or "", len(value or "")  # a hub dataset's size is unknown: the progress counts text
