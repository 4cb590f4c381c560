"""Tokenizing a stream of segments on every core, in order, into a flat file of token ids.

Segments are grouped into blocks of about BLOCK_BYTES, each cut only before a safe segment (see
trainer.data.sources) where the encoding allows it (trainer.data.encodings), and the blocks are
encoded by a pool of threads: tiktoken's `encode_to_numpy` and tokenizers' `encode_batch_fast`
release the GIL while they encode (threads beat processes here: scripts/bench_data.py measures both).
Each thread has an encoding of its own (PerThread). The main thread reads the next segments
meanwhile, then writes each block's ids in order and adds its id counts: the vocabulary the run
trains over (vocab_compaction) is where the counts are > 0. At most 2 x threads blocks are in
flight, so memory stays a few blocks whatever the corpus."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Optional

import numpy as np

from trainer.data.encodings import EOT, Encoding
from trainer.data.sources import Segment
from trainer.errors import UserError

BLOCK_BYTES = 1 << 20  # one thread's unit of work: small enough that a 10 MB corpus keeps every core busy
THREADS_ENV = "TRAINER_TOKENIZER_THREADS"  # how many threads tokenize (default: every core this process may use)
log = logging.getLogger("trainer")


def threads() -> int:
    wanted = os.environ.get(THREADS_ENV)
    if wanted:
        return max(1, int(wanted))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass
class Counts:
    """What tokenizing found: sizes for the first log line, and each id's count."""

    documents: int = 0
    bytes: int = 0  # UTF-8 bytes of the text tokenized
    tokens: int = 0
    ids: Optional[np.ndarray] = None  # (n_vocab,) int64: how often each id occurs


def blocks(segments: Iterator[Segment], enc: Encoding, size: int = BLOCK_BYTES) -> Iterator[list[Segment]]:
    """Consecutive segments grouped into blocks of about `size` characters, each starting where the
    encoding may cut (a safe segment)."""
    block: list[Segment] = []
    length = 0
    for s in segments:
        if block and length >= size and s.safe and enc.can_cut(block[-1].text):
            yield block
            block, length = [], 0
        block.append(s)
        length += len(s.text)
    if block:
        yield block


def pieces(enc: Encoding, block: list[Segment], separator: str) -> list[tuple[str, bool]]:
    """(text, an eot after it) for each piece of a block the encoding encodes apart. `newline`: the
    block as one text (its documents already end in a newline); `none` and `eot`: each document
    apart (eot: followed by <|endoftext|>); an encoding with pieces_apart also cuts at safe segments."""
    out: list[tuple[str, bool]] = []
    text: list[str] = []
    for s in block:
        if text and enc.pieces_apart and s.safe and enc.can_cut(text[-1]):
            out.append(("".join(text), False))
            text = []
        text.append(s.text)
        if s.doc_end and separator != "newline":
            out.append(("".join(text), separator == "eot"))
            text = []
    if text:
        out.append(("".join(text), False))
    return out


def encode_block(enc: Encoding, block: list[Segment], separator: str) -> np.ndarray:
    """(n,) uint32: a block's ids, "<|endoftext|>" in a document as text, not the token."""
    cut = pieces(enc, block, separator)
    if any(eot for _, eot in cut) and enc.eot_token is None:
        raise UserError(f"document_separator=eot: encoding={enc.name} has no {EOT} token "
                        "(use document_separator=newline)")
    parts = []
    for ids, (_, eot) in zip(enc.encode_pieces([t for t, _ in cut]), cut, strict=True):
        parts.append(ids)
        if eot:
            parts.append(np.array([enc.eot_token], dtype=np.uint32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)


def _encoded(enc: Encoding, block: list[Segment], separator: str) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """What a thread returns: the ids, their counts, and the block's documents, bytes and disk bytes."""
    ids = encode_block(enc, block, separator)
    nbytes = sum(len(s.text.encode("utf-8")) for s in block)
    return ids, np.bincount(ids), sum(s.doc_end for s in block), nbytes, sum(s.nbytes for s in block)


class PerThread:
    """An encoding of its own for each thread (Encoding.for_thread)."""

    def __init__(self, enc: Encoding):
        self.enc, self.local = enc, threading.local()

    def get(self) -> Encoding:
        mine = getattr(self.local, "enc", None)
        if mine is None:
            mine = self.local.enc = self.enc.for_thread()
        return mine


def tokenize_to(out: BinaryIO, segments: Iterator[Segment], enc: Encoding, separator: str,
                progress: Callable[[int], None]) -> Counts:
    """Write the ids of every segment, in order, to `out` as uint32; return what was counted."""
    counts = Counts(ids=np.zeros(0, dtype=np.int64))  # as long as the largest id seen
    n = threads()
    own = PerThread(enc)
    pending: deque[Future] = deque()

    def take_one() -> None:
        ids, c, docs, nbytes, disk = pending.popleft().result()
        out.write(memoryview(ids).cast("B"))
        if len(c) > len(counts.ids):
            counts.ids = np.pad(counts.ids, (0, len(c) - len(counts.ids)))
        counts.ids[:len(c)] += c
        counts.documents += docs
        counts.bytes += nbytes
        counts.tokens += len(ids)
        progress(disk or nbytes)

    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="tokenize") as pool:
        try:
            for block in blocks(segments, enc):
                pending.append(pool.submit(lambda b: _encoded(own.get(), b, separator), block))
                while len(pending) >= 2 * n:
                    take_one()
            while pending:
                take_one()
        finally:
            for f in pending:
                f.cancel()
    return counts


class Progress:
    """MB done, MB/s and ETA while a corpus is tokenized: a tqdm bar on a terminal (or with
    progress=true), else a plain log line every PLAIN_EVERY_S seconds. Quiet for what takes a moment."""

    PLAIN_EVERY_S = 10.0
    DELAY_S = 2.0

    def __init__(self, total: Optional[int], bar: Optional[bool], label: str):
        self.total, self.label, self.done = total, label, 0
        self.start = self.last = time.monotonic()
        use_bar = bar if bar is not None else sys.stderr.isatty()
        self.bar = None
        if use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc="tokenizing",
                            delay=self.DELAY_S, file=sys.stderr, dynamic_ncols=True)

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        if self.bar is not None:
            self.bar.update(nbytes)
            return
        now = time.monotonic()
        if now - self.last >= self.PLAIN_EVERY_S:
            self.last = now
            log.info(self.line(now))

    def line(self, now: float) -> str:
        rate = self.done / max(now - self.start, 1e-9)
        if not self.total:
            return f"tokenizing {self.label}: {self.done / 1e6:,.1f} MB, {rate / 1e6:.1f} MB/s"
        eta = (self.total - self.done) / rate if rate else 0
        return (f"tokenizing {self.label}: {self.done / 1e6:,.1f} of {self.total / 1e6:,.1f} MB "
                f"({100 * self.done / self.total:.0f}%), {rate / 1e6:.1f} MB/s, ETA {eta:.0f} s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
