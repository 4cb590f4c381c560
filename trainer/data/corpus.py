"""The corpus a run trains on: the cached ids, split by position into train and valid (the book's
90/10), read as the model's ids.

With vocab_compaction the model trains over only the ids the corpus uses, which shrinks the ~100k-wide
output head to a few thousand: the vocabulary is where the cache's id counts are > 0 (sorted, as
np.unique would give), and a lookup table maps each encoding id to its model id as a batch is read.
Nothing here holds the corpus: a split is a range of the memory-mapped id file (trainer.data.cache).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from trainer.data.cache import Tokens, load_tokens
from trainer.data.encodings import Encoding, get_encoding
from trainer.data.sources import Source
from trainer.errors import UserError

SCAN_TOKENS = 16 << 20  # ids a pass when a whole split is scanned


class TokenSplit:
    """Positions [start, stop) of a cached corpus, read as model ids (int64) through a fresh memmap."""

    def __init__(self, tokens: Tokens, start: int, stop: int, lut: Optional[np.ndarray]):
        self.tokens, self.start, self.stop, self.lut = tokens, start, stop, lut

    def __len__(self) -> int:
        return self.stop - self.start

    def take(self, positions: np.ndarray) -> torch.Tensor:
        """The model ids at these positions of the split (any shape; a copy, the map is let go)."""
        raw = np.asarray(self.tokens.memmap())[positions + self.start]
        return torch.from_numpy(self._model_ids(raw))

    def __getitem__(self, s: slice) -> torch.Tensor:
        start, stop, _ = s.indices(len(self))
        return torch.from_numpy(self._model_ids(np.array(self.tokens.memmap()[self.start + start:self.start + stop])))

    def raw_chunks(self) -> Iterator[np.ndarray]:
        """The split's encoding ids, SCAN_TOKENS at a time: for a pass over all of it."""
        for start in range(self.start, self.stop, SCAN_TOKENS):
            yield np.array(self.tokens.memmap()[start:min(start + SCAN_TOKENS, self.stop)])

    def _model_ids(self, raw: np.ndarray) -> np.ndarray:
        return self.lut[raw] if self.lut is not None else raw.astype(np.int64)


@dataclass
class Corpus:
    train: TokenSplit
    valid: TokenSplit
    vocab: Optional[torch.Tensor]  # (vocab_size,) encoding id of each model id; None = identity
    max_token_value: int  # the book's: max(token id) + 1
    vocab_size: int  # the width of the model's embedding and output head
    enc: Encoding
    tokens: Tokens  # the cache entry: sizes for the first log line

    @property
    def n_tokens(self) -> int:
        return len(self.train) + len(self.valid)

    @functools.cached_property
    def token_bytes(self) -> torch.Tensor:
        """(vocab_size,) the UTF-8 length of each model id's token: what bits per byte divides by."""
        return token_byte_lengths(self.enc, self.vocab, self.vocab_size)


def token_byte_lengths(enc: Encoding, vocab: Optional[torch.Tensor], vocab_size: int) -> torch.Tensor:
    """(vocab_size,) bytes per model id; 0 for an id the encoding does not have and for a special
    token (document_separator=eot's <|endoftext|> is no text)."""
    lengths = []
    for token in (vocab.tolist() if vocab is not None else range(vocab_size)):
        try:
            lengths.append(0 if token in enc.special_ids else len(enc.token_bytes(token)))
        except KeyError:
            lengths.append(0)
    return torch.tensor(lengths, dtype=torch.int64)


def lookup_table(vocab: np.ndarray, n_vocab: int) -> np.ndarray:
    """(n_vocab,) int64: each encoding id's model id, -1 for an id outside the vocabulary."""
    lut = np.full(max(n_vocab, int(vocab[-1]) + 1), -1, dtype=np.int64)
    lut[vocab] = np.arange(len(vocab))
    return lut


def split_of(tokens: Tokens, train_split: float, split: str, lut: Optional[np.ndarray]) -> TokenSplit:
    """train (the first train_split of the ids, as the book splits), valid (the rest) or all."""
    n_train = int(tokens.n * train_split)
    start, stop = {"train": (0, n_train), "valid": (n_train, tokens.n), "all": (0, tokens.n)}[split]
    return TokenSplit(tokens, start, stop, lut)


def load_corpus(h: Mapping[str, Any], progress: Optional[bool] = None, tokenizer: Optional[str] = None) -> Corpus:
    """The corpus of a config (or a saved h_params): tokenized through the cache, split by position.
    tokenizer: an hf encoding's JSON to read it with instead of its file (a resumed checkpoint's copy)."""
    source, enc = Source.of(h), get_encoding(h["encoding"], tokenizer)
    tokens = load_tokens(source, enc, progress)
    counts = tokens.counts()
    present = np.flatnonzero(counts)  # sorted: a model id is the rank of its encoding id
    max_token_value = int(present[-1]) + 1
    if h["vocab_compaction"]:
        lut: Optional[np.ndarray] = lookup_table(present, len(counts))
        vocab: Optional[torch.Tensor] = torch.from_numpy(present.astype(np.int64))
        vocab_size = len(present)
    else:
        lut, vocab, vocab_size = None, None, max_token_value
    train, valid = split_of(tokens, h["train_split"], "train", lut), split_of(tokens, h["train_split"], "valid", lut)
    shortest, T = min(len(train), len(valid)), h["context_length"]
    if shortest < T + 1:
        split = "train" if len(train) <= len(valid) else "valid"
        culprit = f"{source.where}: too short" if source.data_path else \
            f"context_length={T}: too long for the synthetic corpus"
        raise UserError(f"{culprit}: its {split} split has {shortest} tokens, a batch needs "
                        f"context_length+1={T + 1}")
    return Corpus(train, valid, vocab, max_token_value, vocab_size, enc, tokens)
