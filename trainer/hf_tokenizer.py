"""A run's encoding as a transformers tokenizer (tokenizer.json + tokenizer_config.json), for `trainer.export --to hf`.

    hf:<file>      its saved JSON, unchanged
    cl100k_base    (any tiktoken encoding) the same byte-level BPE through transformers' TikTokenConverter,
                   fed the in-memory ranks, its special tokens at tiktoken's ids
    char           a WordLevel tokenizer over the characters the model has rows for, each at its model id,
                   one token per character: a code-point tokenizer (0x110001 ids) is far too wide to
                   give the model, so the tokenizer is remapped to the model's ids instead

`for_run` says where each model row goes in the tokenizer's ids (`rows`) and how many ids the tokenizer
has (`size`): the exported embedding is that wide, zero where no model row lands, and generate is told
to suppress those ids. The exported tokenizer reads "<|endoftext|>" in a text as the special token, as
transformers' tokenizers do; the run's own encoding reads it as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from trainer.data.encodings import CHAR_EOT, EOT, Char, Encoding, Tiktoken

UNK = "<unk>"


@dataclass
class Exported:
    tokenizer: Any  # a tokenizers.Tokenizer
    rows: torch.Tensor  # (V,) the tokenizer id of each model id
    size: int  # every tokenizer id is below it: the exported embedding's rows
    eot: Optional[int]  # <|endoftext|>'s tokenizer id, or None where it has none
    unk: Optional[str] = None  # the token an unseen character becomes (char only)


def for_run(enc: Encoding, vocab: Optional[torch.Tensor], vocab_size: int) -> Exported:
    """The tokenizer of a run whose model has vocab_size rows; vocab: each row's encoding id (None: row i is id i)."""
    import tokenizers

    rows = model_rows(enc, vocab, vocab_size)
    if isinstance(enc, Char):
        tok = char_level(vocab.tolist() if vocab is not None else list(range(vocab_size)))
        return Exported(tok, rows, vocab_size + 1, tok.token_to_id(EOT), UNK)
    tok = tiktoken_bpe(enc) if isinstance(enc, Tiktoken) else tokenizers.Tokenizer.from_str(enc.saved)  # hf:
    return Exported(tok, rows, max(enc.n_vocab, vocab_size), enc.eot_token)


def model_rows(enc: Encoding, vocab: Optional[torch.Tensor], vocab_size: int) -> torch.Tensor:
    """(vocab_size,) the exported tokenizer's id of each model id: the encoding's id, but for char,
    whose tokenizer is remapped to the model's ids."""
    return vocab if vocab is not None and not isinstance(enc, Char) else torch.arange(vocab_size)


def tiktoken_bpe(enc: Tiktoken):
    """The tiktoken encoding as a tokenizers byte-level BPE with the same ids. tiktoken's patterns use
    possessive bounds (`\\p{N}{1,3}+`), which Oniguruma reads as `(\\p{N}{1,3})+` (any run of digits):
    ending an alternative, a possessive bound matches what the plain one does, so it is dropped."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    t = enc.tiktoken

    class InMemory(TikTokenConverter):
        def load_tiktoken_bpe(self, _path):  # the ranks are in memory; it would read a .tiktoken file
            return t._mergeable_ranks

        def extract_vocab_merges_from_model(self, path):
            vocab, merges = super().extract_vocab_merges_from_model(path)
            # in the vocabulary, the special tokens keep their ids when added (else they would be
            # numbered on from the last rank, and cl100k's leave gaps)
            return {**vocab, **t._special_tokens}, merges

    pattern = re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", t._pat_str)
    return InMemory(pattern=pattern, extra_special_tokens=t._special_tokens).converted()


def char_level(chars: list[int]):
    """One token per character, the token of chars[i] being id i; char's eot becomes <|endoftext|>.

    A character the run never saw becomes <unk>, id len(chars): the model has no row for it, so export
    gives it a zero one (the model reads the position alone) and generate suppresses it, as it does a
    tiktoken id the run never saw. The alternative, a tokenizer with no unk, raises on any text with a
    new character, which breaks every pipeline that tokenizes user text; <unk> is special, so
    decode(skip_special_tokens=True) drops it. Lone surrogates (which no Rust string holds) are left out."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {EOT if c == CHAR_EOT else chr(c): i for i, c in enumerate(chars) if not 0xD800 <= c <= 0xDFFF}
    vocab[UNK] = len(chars)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character apart
    tok.decoder = decoders.Fuse()  # and joined back, with nothing between
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (UNK, EOT) if t in vocab])
    return tok


def save(exported: Exported, out: Path, context_length: int) -> list[str]:
    """tokenizer.json and tokenizer_config.json, as AutoTokenizer.from_pretrained reads them; their names."""
    from transformers import PreTrainedTokenizerFast

    eot = EOT if exported.eot is not None else None
    fast = PreTrainedTokenizerFast(tokenizer_object=exported.tokenizer, eos_token=eot, bos_token=eot,
                                   unk_token=exported.unk, model_max_length=context_length)
    return sorted(Path(f).name for f in fast.save_pretrained(str(out)) if Path(f).is_file())
