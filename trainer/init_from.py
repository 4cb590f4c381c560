"""`init_from=<a transformers GPT-2 dir, or a hub name>`: start training from pretrained weights,
nanoGPT's finetune:

    python -m trainer init_from=models/gpt2 data=text data_path=corpus.txt learning_rate=3e-5 max_iters=200

The pretrained model fixes its architecture, so its keys join the command line before Hydra
composes it (`with_init_from`), where the user did not type them: d_model, num_blocks, num_heads,
context_length (n_positions; a smaller one typed crops the position table), the architecture
variants (trainer.pretrained.architecture_of), its tokenizer (encoding=hf:<dir>) and no
vocabulary compaction (its vocabulary is the tokenizer's). A typed key that contradicts the
weights is refused in one line. Plans, prepare, sweeps and resumes then see the config the
run trains with. The weights are loaded once the model is built (`load_into`), unless resuming,
whose checkpoint holds newer ones.

A name that is no local dir is looked up on the Hugging Face hub (huggingface_hub, which
transformers brings); offline, one line says to pass a local dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from trainer.data.encodings import EXTRA, HF
from trainer.errors import UserError

KEY = "init_from"
FILES = ["config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"]  # what a run reads
FIXED = ("d_model", "num_blocks", "num_heads", "activation", "norm", "positions", "tie_weights", "bias",
         "qkv_bias", "head_bias", "vocab_compaction")  # what the weights fix (context_length may crop)


def local_dir(name: str) -> Path:
    """The dir init_from names: a local one, or the hub's download of a model name."""
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        return path  # trainer.pretrained names what is wrong with it
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(f"{KEY}={name}: no such dir; a hub name needs huggingface_hub: {EXTRA}") from None
    try:
        return Path(snapshot_download(name, allow_patterns=FILES))
    except Exception as e:  # noqa: BLE001 - offline, no such repo, no access: the hub's many error types
        raise UserError(f"{KEY}={name}: no such dir, and the hub did not give it ({type(e).__name__}); "
                        "pass a local dir saved with save_pretrained") from None


def with_init_from(argv: list[str]) -> list[str]:
    """The command line with the pretrained model's keys added where the user did not type them."""
    from trainer.argv import value_of
    from trainer.pretrained import architecture_of

    name = value_of(argv, KEY)
    if name in (None, "", "null"):
        return argv
    if "," in name:
        raise UserError(f"{KEY}={name}: one pretrained model per command (a sweep over {KEY} is not supported)")
    path = local_dir(name)
    arch = architecture_of(path)
    extra = [_context(value_of(argv, "context_length"), arch["context_length"], name)]
    for key in FIXED:
        typed, fixed = value_of(argv, key), _override_value(arch[key])
        if typed is None:
            extra.append(f"{key}={fixed}")
        elif typed.lower() != fixed:
            raise UserError(f"{key}={typed}: {KEY}={name} fixes it at {fixed} (drop {key}=)")
    if value_of(argv, "encoding") is None:
        extra.append(f"encoding='{HF}{_tokenizer(path, name)}'")
    at = max(i for i, a in enumerate(argv) if a.startswith(f"{KEY}=")) + 1  # beside it: argparse takes the
    return [*argv[:at], *(e for e in extra if e), *argv[at:]]  # overrides in one run, not split by a flag


def _context(typed: Optional[str], n_positions: int, name: str) -> str:
    """context_length=n_positions, or nothing where a typed one fits in the position table."""
    if typed is None:
        return f"context_length={n_positions}"
    if typed.isdigit() and int(typed) > n_positions:
        raise UserError(f"context_length={typed}: {KEY}={name} has {n_positions} positions (use at most that)")
    return ""


def _override_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _tokenizer(path: Path, name: str) -> Path:
    if (path / "tokenizer.json").is_file() or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()):
        return path
    raise UserError(f"{KEY}={name}: no tokenizer in it (tokenizer.json, or vocab.json and merges.txt); "
                    "name one with encoding=hf:<file>")


def vocab_size(name: str, max_token_value: int) -> int:
    """The pretrained model's vocabulary, which the corpus's ids must fit in."""
    from trainer.pretrained import architecture_of

    size = architecture_of(local_dir(name))["vocab_size"]
    if max_token_value > size:
        raise UserError(f"{KEY}={name}: the corpus has token id {max_token_value - 1}, past its vocabulary of "
                        f"{size:,} (encoding= names another tokenizer than the model's)")
    return size


def load_into(model: Any, name: str) -> None:
    """The pretrained weights copied into the model built from the composed config."""
    from trainer.pretrained import load_weights

    load_weights(model, local_dir(name))
