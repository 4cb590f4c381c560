"""`python -m trainer.tokenizer <data keys> vocab_size=N out=DIR`: train a byte-level BPE tokenizer
(GPT-2's kind, with the `tokenizers` library) on the corpus and write DIR/tokenizer.json, to train with:

    python -m trainer.tokenizer data=jsonl data_path='corpus/**/*.jsonl.gz' vocab_size=8192 out=tokenizers/mine
    python -m trainer data=jsonl data_path='corpus/**/*.jsonl.gz' encoding=hf:tokenizers/mine/tokenizer.json

The data keys are the training command's (none: the synthetic corpus), read as training reads them
(trainer.data.sources), a segment at a time. Every byte has a token (any text encodes), <|endoftext|>
is id 0, and a merge is learned only from a pair seen at least MIN_FREQUENCY times: a corpus too small
for vocab_size is refused, naming the size it can give. Nothing is written unless it all went well.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from trainer import rundir
from trainer.config import CONF_DIR, plain, register_configs, validate
from trainer.data.encodings import EOT, EXTRA
from trainer.data.sources import Source
from trainer.data.tokenize import Progress
from trainer.errors import UserError, one_line, writing
from trainer.prepare import log_to_stderr

MIN_VOCAB = 257  # the 256 bytes and <|endoftext|>
MIN_FREQUENCY = 2  # a pair seen once would make a token that spells only that one place
FILE = "tokenizer.json"
log = logging.getLogger("trainer")


@dataclass
class Request:
    """The command line: this command's two keys, and the training command's keys (the data keys)."""

    vocab_size: int
    out: Path
    overrides: list[str]


def parse(argv: list[str]) -> Request:
    """vocab_size= and out= taken out of the command line (they are no training keys), both checked."""
    own: dict[str, Optional[str]] = {"vocab_size": None, "out": None}
    rest = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key in own:
            own[key] = value
        else:
            rest.append(arg)
    if not own["vocab_size"]:
        raise UserError("vocab_size: missing: how many tokens to learn, e.g. vocab_size=4096")
    if not own["out"]:
        raise UserError(f"out: missing: where to write {FILE}, e.g. out=tokenizers/mine")
    try:
        n = int(own["vocab_size"])
    except ValueError:
        n = 0
    if n < MIN_VOCAB:
        raise UserError(f"vocab_size={own['vocab_size']}: must be an integer of at least {MIN_VOCAB} "
                        f"(the 256 bytes and {EOT})")
    return Request(n, Path(own["out"]).expanduser(), rest)


def check_out(out: Path) -> None:
    """Refuse, before the corpus is read, an out= that cannot take tokenizer.json."""
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out}: a file, not a dir ({FILE} is written into it)")
    if (out / FILE).is_dir():
        raise UserError(f"out={out}: {out / FILE} is a dir")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"out={out}: {existing} is a file, not a dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"out={out}: cannot write there ({existing} is not writable)")


def composed(overrides: list[str]) -> DictConfig:
    """The training command's config, as one run composes it (no sweep: one corpus, one tokenizer), checked."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    one = "python -m trainer.tokenizer trains one tokenizer on one corpus"
    for arg in overrides:
        if arg in ("-m", "--multirun"):
            raise UserError(f"{arg}: {one}, not a sweep (drop {arg})")
        if arg.startswith("-"):
            raise UserError(f"{arg}: no such option (the command takes vocab_size=, out= and the data keys)")
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_sweep_override() or (o.key_or_group == "hparams_search" and o.value() not in ("", None)):
            raise UserError(f"{o.input_line}: a sweep; {one} (give one value)")
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    if OmegaConf.select(cfg, "hydra.mode") == RunMode.MULTIRUN:
        raise UserError(f"hydra.mode=MULTIRUN: a sweep; {one}")
    validate(cfg)
    return cfg


@dataclass
class Read:
    """What feeding the trainer read: the corpus's UTF-8 bytes."""

    bytes: int = 0


def texts(source: Source, files: list[Path], progress: Progress, read: Read) -> Iterator[str]:
    """The corpus's text, a segment at a time, counted; a line once it is all read (the merges come next)."""
    try:
        for s in source.segments(files):
            n = len(s.text.encode("utf-8"))
            read.bytes += n
            progress(s.nbytes or n)
            yield s.text
    finally:
        progress.close()
    log.info(f"Read {read.bytes / 1e6:,.1f} MB of {source.where}; computing the merges")


def trained(source: Source, vocab_size: int, bar: Optional[bool]) -> tuple[Any, Read]:
    """The tokenizer learned from the corpus, and what was read; a UserError when it is too small for vocab_size."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise UserError(f"python -m trainer.tokenizer needs the tokenizers package: {EXTRA}") from None
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's: its regex splits the text
    tok.decoder = decoders.ByteLevel()
    bpe = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], min_frequency=MIN_FREQUENCY,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    files = source.files()
    read = Read()
    tok.train_from_iterator(texts(source, files, Progress(source.total_bytes(files), bar, source.where), read), bpe)
    if not read.bytes:
        raise UserError(f"{source.where}: no text to train a tokenizer on")
    got = tok.get_vocab_size()
    if got < vocab_size:
        raise UserError(f"vocab_size={vocab_size}: larger than this corpus can give (training stopped at {got} "
                        f"tokens); use vocab_size={got} or less")
    return tok, read


def write(tok: Any, out: Path) -> Path:
    """out/tokenizer.json, whole or not at all."""
    path = out / FILE
    with writing(path):
        out.mkdir(parents=True, exist_ok=True)
    rundir.write_atomic(path, tok.to_str())
    return path


def run(argv: list[str]) -> str:
    """Train and write the tokenizer; the line that says what was made."""
    start = time.monotonic()
    request = parse(argv)
    check_out(request.out)
    cfg = composed(request.overrides)
    log_to_stderr()
    source = Source.of(cfg)
    tok, read = trained(source, request.vocab_size, plain(cfg.progress))
    path = write(tok, request.out)
    return (f"Trained a byte-level BPE of {tok.get_vocab_size():,} tokens on {source.where} "
            f"({read.bytes / 1e6:,.1f} MB) in {time.monotonic() - start:.1f} s: {path}; "
            f"train with encoding=hf:{path}")


def main(argv: Optional[list[str]] = None) -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args = sys.argv[1:] if argv is None else list(argv)
    if "-h" in args or "--help" in args:
        print(__doc__)
        return
    try:
        line = run(args)
    except (UserError, HydraException, OmegaConfBaseException) as e:
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code if isinstance(e, UserError) else 2)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr, flush=True)
        sys.exit(130)
    print(line, flush=True)


if __name__ == "__main__":
    main()
