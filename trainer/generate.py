"""`python -m trainer.generate RUN_DIR_OR_CKPT --prompt "fix: "`: sample text from a trained model.

The book's next chapter: rebuild the model from the checkpoint's h_params, load its weights
(weights_only, so a checkpoint cannot run code), encode the prompt, sample, decode. A run dir means
its model.ckpt (--which best: best.ckpt); without --prompt the text starts at a line boundary; the ids
(mapped back from a compacted vocabulary) are decoded with the run's own tokenizer (trainer.data.encodings).
"""

from __future__ import annotations

import argparse
import sys

import torch

from trainer import checkpoint
from trainer.data.encodings import Encoding, of_checkpoint
from trainer.errors import UserError
from trainer.model import GPT


def load_model(path: str, which: str = "last") -> tuple[GPT, dict]:
    """The trained model (eval mode, CPU) and its checkpoint, from a run dir (its model.ckpt, or
    best.ckpt with which="best") or a .ckpt file."""
    state = checkpoint.load(path, which=which)
    try:
        model = GPT(state["h_params"])
        model.load_state_dict(state["model_state_dict"])
    except Exception as e:  # noqa: BLE001 - h_params or weights that do not make this model, whatever the type
        raise UserError(f"{path}: not a model this trainer can rebuild ({type(e).__name__}: "
                        f"{checkpoint.first_line(e)})") from None
    return model.eval(), state


def _line_start(enc: Encoding, vocab: torch.Tensor | None) -> int:
    """A token that ends a line, to start from when there is no prompt: ")\n" if "\n" was never alone."""
    if vocab is None:
        return int(enc.encode("\n")[0])
    ends = [i for i in vocab.tolist() if i not in enc.special_ids and enc.token_bytes(i).endswith(b"\n")]
    return min(ends, key=lambda i: len(enc.token_bytes(i))) if ends else int(vocab[0])


def sample(path: str, prompt: str = "", max_new_tokens: int = 100, temperature: float = 0.8,
           top_k: int | None = 50, seed: int = 1337, num_samples: int = 1, which: str = "last") -> list[str]:
    model, state = load_model(path, which)
    vocab = state.get("vocab")
    enc = of_checkpoint(state)
    ids = enc.encode(prompt).tolist() if prompt else [_line_start(enc, vocab)]
    if vocab is not None:  # the model works in compact ids: map the encoding's ids in, and back out
        known = torch.isin(torch.tensor(ids, dtype=torch.long), vocab)
        if not bool(known.all()):
            unknown = [enc.decode([i]) for i, k in zip(ids, known.tolist(), strict=True) if not k]
            raise UserError(f"--prompt: the tokens {unknown!r} never occur in the training corpus, so this "
                            "model cannot read them (rephrase, or train with vocab_compaction=false)")
        ids = torch.searchsorted(vocab, torch.tensor(ids, dtype=torch.long)).tolist()
    if not ids:
        raise UserError("--prompt: empty after tokenization")
    g = torch.Generator().manual_seed(seed)
    idx = torch.tensor([ids] * num_samples, dtype=torch.long)  # (num_samples, T)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=g)
    if vocab is not None:
        out = vocab[out]
    skip = 0 if prompt else 1  # the line-start token is ours, not the user's
    return [enc.decode(row[skip:].tolist()) for row in out]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m trainer.generate", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a run dir (outputs/<date>/<time>) or a model.ckpt file")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new line)")
    p.add_argument("--max_new_tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=50, help="sample among the k likeliest (0 = all)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--which", choices=tuple(checkpoint.WHICH), default="last",
                   help="a run dir's latest checkpoint (model.ckpt) or its best (best.ckpt)")
    a = p.parse_args(argv)
    try:
        if a.max_new_tokens < 0 or a.temperature < 0 or a.top_k < 0 or a.num_samples < 1:
            raise UserError("--max_new_tokens, --temperature and --top_k must be >= 0, --num_samples >= 1")
        texts = sample(a.checkpoint, a.prompt, a.max_new_tokens, a.temperature, a.top_k or None, a.seed,
                       a.num_samples, a.which)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    for i, text in enumerate(texts):
        if i:
            print("-" * 40)
        print(text)


if __name__ == "__main__":
    main()
