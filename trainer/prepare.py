"""`python -m trainer.prepare <data keys>` (or `python -m trainer ... prepare=true`): tokenize the
corpus into the token cache (trainer.data.cache) and exit, training nothing and writing nothing
under outputs/. For clusters where the login node prepares and the jobs only read:

    python -m trainer.prepare data=jsonl data_path='corpus/**/*.jsonl.gz'
    sbatch ... python -m trainer -m data=jsonl data_path='corpus/**/*.jsonl.gz' learning_rate=1e-3,3e-4

The keys are the training command's: a sweep's command line prepares each corpus its jobs read.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

from trainer.config import plain, validate
from trainer.plan import composed_jobs


def prepared(argv: list[str]) -> bool:
    """Fill the cache and return True when the command line says prepare=true; else False (train)."""
    jobs = composed_jobs(argv, "prepare")
    if jobs is None:
        return False
    from trainer.data.corpus import load_corpus
    from trainer.data.sources import Source

    log_to_stderr()
    _, _, configs, _ = jobs
    for cfg in configs:  # every mistake before any tokenizing
        validate(cfg)
    seen = set()
    for cfg in configs:
        source = Source.of(cfg)
        key = (source, cfg.encoding, cfg.vocab_compaction, cfg.train_split)  # what the line below reports
        if key in seen:
            continue
        seen.add(key)
        c = load_corpus(cfg, progress=plain(cfg.progress))
        t = c.tokens
        print(f"Prepared {source.where}: {t.documents:,} documents, {t.bytes:,} bytes, {t.n:,} tokens "
              f"(vocab {c.vocab_size:,} of {c.max_token_value:,} ids), split {len(c.train):,} / {len(c.valid):,}; "
              f"{'tokenized into' if t.fresh else 'already in'} the cache {t.path}", flush=True)
    return True


def log_to_stderr() -> None:
    """The cache's lines (waiting for another job, plain progress) on stderr: no Hydra run sets up logging here."""
    log = logging.getLogger("trainer")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def main(argv: Optional[list[str]] = None) -> None:
    from trainer.cli import main as cli_main

    cli_main([*(sys.argv[1:] if argv is None else argv), "prepare=true"])


if __name__ == "__main__":
    main()
