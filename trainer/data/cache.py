"""The token cache: each corpus tokenized once, into a flat file of ids that runs memory-map.

    load_tokens(source, encoding, progress)  -> Tokens, tokenizing first if it is not cached yet

An entry is three files in $TRAINER_CACHE_DIR/tokens (default ~/.cache/gpt-trainer/tokens), named
`<encoding>-<key>` (an hf tokenizer's <encoding> is a hash of its JSON, so two tokenizers' ids never
mix): `.bin` the ids (uint16 where every id fits, else uint32: cl100k's pass 65,535),
`.counts.npy` each id's count, and `.json` the sizes; the key hashes the source's fingerprint (its
keys, and each file's path, size and mtime), so a changed file is never served stale and nothing is
re-read to check it. A hub dataset (data=hf, a hub name) has no files here: its key is its name, config
and split, so when the dataset changes on the hub, delete its entry or point TRAINER_CACHE_DIR elsewhere.
The `.json` is written last: an entry without it is not there.

Safe to share. Each file is written to a temp name and renamed, so a run killed mid-tokenization
leaves no half entry (the next one starts over). Jobs that start together on one uncached corpus
(a sweep's jobs, torchrun's ranks, SLURM array jobs on a shared file system) tokenize it once: the
first takes `<name>.lock` (an flock) and tokenizes, the others wait, saying so, then read its entry.
Where flock is local to each node (old NFS), jobs on several nodes are not told apart: prepare the
corpus first (python -m trainer.prepare), and the jobs only read.
A failed write (a full disk) is one error line, with the partial files removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from trainer.data.encodings import Encoding, get_encoding
from trainer.data.sources import Source
from trainer.data.tokenize import Progress, threads, tokenize_to
from trainer.errors import UserError, write_failure
from trainer.lock import exclusive

CACHE_DIR_ENV = "TRAINER_CACHE_DIR"
VERSION = 1  # of the entry's layout and of how segments are tokenized: a change makes new keys
COPY_TOKENS = 16 << 20  # ids per pass when a uint32 file is narrowed to uint16
log = logging.getLogger("trainer")


def cache_dir() -> Path:
    """Where tokenized corpora are cached: $TRAINER_CACHE_DIR or ~/.cache/gpt-trainer."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt-trainer"
    return Path(os.environ.get(CACHE_DIR_ENV, default))


@dataclass
class Tokens:
    """A cached, tokenized corpus: its id file and what tokenizing it counted."""

    path: Path  # the .bin of ids
    dtype: np.dtype
    n: int  # tokens
    documents: int
    bytes: int  # UTF-8 bytes of its text
    counts_path: Path
    fresh: bool = False  # tokenized by this process (not read from the cache)

    def counts(self) -> np.ndarray:
        """(n_vocab,) int64: how often each id occurs."""
        return np.load(self.counts_path)

    def memmap(self) -> np.ndarray:
        """The ids, mapped afresh: a long-lived map would count every page it ever touched in the
        process's memory (nanoGPT re-opens its memmap per batch for this)."""
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.n,))


def load_tokens(source: Source, encoding: Encoding | str, progress: Optional[bool] = None) -> Tokens:
    """The corpus's ids, from the cache, tokenizing it first (once, whoever else asks at the same time)."""
    encoding = get_encoding(encoding) if isinstance(encoding, str) else encoding
    files = source.files()
    entry = entry_of(source, files, encoding)
    found = entry.read()
    if found is not None:
        return found
    entry.dir_ready()
    with exclusive(entry.lock, waiting=lambda holder: log.info(
            f"Waiting for {holder} to tokenize {source.where} into {entry.bin}")):
        found = entry.read()  # the one that held the lock may have just written it
        if found is not None:
            return found
        return entry.build(source, files, encoding, progress)


def entry_of(source: Source, files: list[Path], encoding: Encoding | str) -> Entry:
    """The cache entry of this source's files, tokenized with this encoding (by its content, for an hf one)."""
    name = (get_encoding(encoding) if isinstance(encoding, str) else encoding).cache_name
    key = json.dumps({"version": VERSION, "encoding": name, **source.fingerprint(files)}, sort_keys=True)
    return Entry(cache_dir() / "tokens", f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:32]}")


class Entry:
    """One corpus's files in the cache."""

    def __init__(self, root: Path, name: str):
        self.root = root
        self.bin, self.counts, self.meta = (root / f"{name}{ext}" for ext in (".bin", ".counts.npy", ".json"))
        self.lock = root / f"{name}.lock"
        self.tmp = [p.with_name(f"{p.name}.{os.getpid()}.tmp") for p in (self.bin, self.counts, self.meta)]

    def read(self) -> Optional[Tokens]:
        """The entry, if it is whole (a damaged or partial one reads as missing, and is rebuilt)."""
        try:
            meta = json.loads(self.meta.read_text())
            dtype = np.dtype(meta["dtype"])
            if self.bin.stat().st_size != meta["tokens"] * dtype.itemsize or not self.counts.is_file():
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return Tokens(self.bin, dtype, meta["tokens"], meta["documents"], meta["bytes"], self.counts)

    def dir_ready(self) -> None:
        """The cache dir made, and writable: a read-only one is one line, not a traceback at the lock."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            writable = os.access(self.root, os.W_OK)
        except OSError as e:
            writable, why = False, e.strerror or str(e)
        else:
            why = "read-only"
        if not writable:
            raise UserError(f"{self.root}: cannot write the token cache here ({why}); "
                            f"set {CACHE_DIR_ENV} to a writable dir")

    def build(self, source: Source, files: list[Path], enc: Encoding, bar: Optional[bool]) -> Tokens:
        """Tokenize the source into temp files, then rename them into place, the .json last."""
        for stale in self.root.glob(f"{self.bin.stem}.*.tmp"):  # left by a killed run (we hold the lock)
            stale.unlink(missing_ok=True)
        progress = Progress(source.total_bytes(files), bar, f"{source.where} on {threads()} threads")
        tmp_bin, tmp_counts, tmp_meta = self.tmp
        try:
            with open(tmp_bin, "wb") as out:
                counts = tokenize_to(out, source.segments(files), enc, source.separator, progress)
            if counts.tokens == 0:
                raise UserError(f"{source.where}: no tokens in the text")
            dtype = np.dtype(np.uint16 if len(counts.ids) <= 1 << 16 or not counts.ids[1 << 16:].any()
                             else np.uint32)
            if dtype == np.uint16:
                _narrow(tmp_bin, counts.tokens)
            with open(tmp_counts, "wb") as f:
                np.save(f, counts.ids)
            meta = {"dtype": dtype.name, "tokens": counts.tokens, "documents": counts.documents,
                    "bytes": counts.bytes, "encoding": enc.name, "source": source.where, "files": len(files)}
            tmp_meta.write_text(json.dumps(meta, indent=1) + "\n")
            self.meta.unlink(missing_ok=True)  # a damaged entry's: never beside the new .bin
            for tmp, final in zip(self.tmp, (self.bin, self.counts, self.meta), strict=True):
                os.replace(tmp, final)  # the .json last: until it is there, the entry is not
        except OSError as e:
            raise UserError(f"{self.bin}: cannot write the token cache ({write_failure(e)}); the partial files "
                            f"were removed (free some space, or set {CACHE_DIR_ENV})") from None
        finally:
            progress.close()
            for tmp in self.tmp:
                tmp.unlink(missing_ok=True)
        return Tokens(self.bin, dtype, counts.tokens, counts.documents, counts.bytes, self.counts, fresh=True)


def _narrow(path: Path, n: int) -> None:
    """Rewrite a file of n uint32 ids as uint16, in place, a pass of COPY_TOKENS at a time (each
    pass writes behind what it reads)."""
    with open(path, "r+b") as f:
        for start in range(0, n, COPY_TOKENS):
            f.seek(4 * start)
            ids = np.frombuffer(f.read(4 * min(COPY_TOKENS, n - start)), dtype=np.uint32)
            f.seek(2 * start)
            f.write(ids.astype(np.uint16).tobytes())
        f.truncate(2 * n)
