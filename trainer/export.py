"""`python -m trainer.export RUN_DIR_OR_CKPT --to safetensors|hf OUT_DIR`: a trained model out of this trainer.

    --to safetensors   model.safetensors (the weights, under our GPT's names) and h_params.json (the
                       checkpoint's h_params, with `vocab`: the encoding id of each model id, or null),
                       for any model: rebuild it with GPT(h_params) and load the weights.
    --to hf            a GPT-2 directory for transformers (config.json, model.safetensors,
                       generation_config.json, the tokenizer: trainer.hf_tokenizer), for any model
                       GPT-2's architecture can express (the rest is refused, naming the keys):
                       AutoModelForCausalLM and AutoTokenizer.from_pretrained(OUT_DIR) load it.

A compacted vocabulary (vocab_compaction) goes back to the tokenizer's ids for --to hf, so that the
tokenizer is used unchanged: the embedding (and an untied head) gets a row per tokenizer id, ours where
the run saw the id and zeros where it did not, and generation_config.json's suppress_tokens lists those
unseen ids, so that generate never picks one. encoding=char is the exception (a code point per id is
far too wide): its tokenizer is remapped to the model's ids instead.

The weights come from the checkpoint (weights_only, like every load); `--which best` takes best.ckpt.
`--check` (with --to hf) loads the export back with transformers and compares it with our model: the
largest logit difference on random windows, and a greedy continuation token by token.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from trainer import checkpoint, hf_tokenizer, pretrained, rundir
from trainer.data.encodings import EXTRA, of_checkpoint
from trainer.errors import UserError

WEIGHTS, H_PARAMS = "model.safetensors", "h_params.json"
CONFIG, GENERATION = "config.json", "generation_config.json"
EMBEDDINGS = ("transformer.wte.weight", "lm_head.weight")  # the rows a vocabulary indexes
TOLERANCE = 1e-4  # --check: the largest logit difference (float32) that counts as the same model
NEW_TOKENS = 20  # --check: the greedy continuation compared


def to_safetensors(source: str, out: Path, which: str = "last") -> Path:
    """Write the checkpoint's weights and h_params into out; return out."""
    from trainer.generate import load_model

    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError(f"--to safetensors: needs the safetensors package: {EXTRA}") from None
    model, state = load_model(source, which)
    out.mkdir(parents=True, exist_ok=True)
    # safetensors stores no shared tensors: a tied head is the embedding once, and tied again on load
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if not (model.tied and k == "head.weight")}
    vocab = state.get("vocab")
    save_file(weights, str(out / WEIGHTS), metadata={"format": "pt", "source": str(source)})
    h: dict[str, Any] = {**state["h_params"], "vocab": vocab.tolist() if vocab is not None else None}
    rundir.write_atomic(out / H_PARAMS, json.dumps(h, indent=1) + "\n")
    return out


def load_safetensors(path: str | Path):
    """The GPT an export holds, and its h_params: the way back, for a user's own code (and the tests)."""
    from safetensors.torch import load_file

    from trainer.model import GPT

    h = json.loads((Path(path) / H_PARAMS).read_text())
    model = GPT(h)
    weights = load_file(str(Path(path) / WEIGHTS))
    if model.tied:
        weights["head.weight"] = weights["tok.weight"]
    model.load_state_dict(weights)
    return model.eval(), h


def to_hf(source: str, out: Path, which: str = "last") -> list[str]:
    """Write a GPT-2 directory that transformers loads with our model's logits; return the files' names.
    A refused model or a missing package writes nothing."""
    from trainer.generate import load_model

    model, state = load_model(source, which)
    h = state["h_params"]
    cannot = pretrained.unexportable(h)
    if cannot:
        raise UserError(f"--to hf: GPT-2 cannot express {'; '.join(cannot)}; --to safetensors writes any model")
    save_file, transformers = _hf_packages()
    tok = hf_tokenizer.for_run(of_checkpoint(state), state.get("vocab"), model.head.out_features)
    weights = {k: expanded(w, tok.rows, tok.size) if k in EMBEDDINGS else w
               for k, w in pretrained.as_gpt2(model).items()}
    out.mkdir(parents=True, exist_ok=True)
    transformers.GPT2Config(**pretrained.gpt2_config(h, tok.size, tok.eot)).save_pretrained(out)
    save_file(weights, str(out / WEIGHTS), metadata={"format": "pt", "source": str(source)})
    written = [CONFIG, WEIGHTS]
    unseen = unseen_ids(tok.rows, tok.size)
    if unseen or tok.eot is not None:
        transformers.GenerationConfig(suppress_tokens=unseen or None, bos_token_id=tok.eot, eos_token_id=tok.eot,
                                      pad_token_id=tok.eot).save_pretrained(out)
        written.append(GENERATION)
    return written + hf_tokenizer.save(tok, out, h["context_length"])


def _hf_packages():
    """safetensors' save_file and transformers (which brings tokenizers), or one line naming the extra."""
    try:
        import tokenizers  # noqa: F401 - hf_tokenizer's, checked here with the rest
        import transformers
        from safetensors.torch import save_file
    except ImportError as e:
        raise UserError(f"--to hf: needs the {e.name} package: {EXTRA}") from None
    return save_file, transformers


def expanded(w: torch.Tensor, rows: torch.Tensor, size: int) -> torch.Tensor:
    """(V, C) model rows -> (size, C) tokenizer rows: row rows[i] is w[i], the others zero."""
    if len(rows) == size and torch.equal(rows, torch.arange(size)):
        return w  # the tokenizer's ids are the model's: as it is
    out = w.new_zeros(size, w.shape[1])
    out[rows] = w
    return out


def unseen_ids(rows: torch.Tensor, size: int) -> list[int]:
    """The tokenizer ids no model row landed on: a zero row that generate must never pick."""
    seen = torch.zeros(size, dtype=torch.bool)
    seen[rows] = True
    return torch.nonzero(~seen).flatten().tolist()


@dataclass
class Check:
    max_diff: float  # the largest |logit difference| over the windows
    positions: int  # how many next-token predictions were compared
    same_greedy: bool  # transformers' greedy continuation is ours, token for token

    @property
    def ok(self) -> bool:
        return self.max_diff <= TOLERANCE and self.same_greedy

    def line(self) -> str:
        greedy = "the same" if self.same_greedy else "DIFFERENT"
        return (f"transformers vs ours: max |logit difference| {self.max_diff:.2e} over {self.positions} positions "
                f"(float32; within {TOLERANCE:g}: {'yes' if self.max_diff <= TOLERANCE else 'NO'}), "
                f"greedy continuation of {NEW_TOKENS} tokens {greedy}")


def check_hf(source: str, out: Path, which: str = "last", seed: int = 0) -> Check:
    """Our model and transformers' load of its export, on the same random ids: two context-long windows
    of the ids the model has rows for (at the tokenizer's ids on their side), and a greedy continuation
    of NEW_TOKENS from the first 8 ids of the first window."""
    import transformers

    from trainer.generate import load_model

    ours, state = load_model(source, which)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    V, T = ours.head.out_features, ours.context_length
    rows = hf_tokenizer.model_rows(of_checkpoint(state), state.get("vocab"), V)
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(seed))  # (B, T) our ids
    prompt = idx[:1, :8]  # (1, 8)
    with torch.no_grad():
        diff = (ours(idx)[0] - theirs(rows[idx]).logits[..., rows]).abs().max().item()  # (B, T, V) ours
        mine = rows[ours.generate(prompt, NEW_TOKENS, temperature=0)]  # (1, 8 + NEW_TOKENS)
        greedy = theirs.generate(rows[prompt], attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=NEW_TOKENS)
    # transformers stops at the end-of-text token, where ours writes on
    n = greedy.shape[1]
    stopped = n == mine.shape[1] or int(greedy[0, -1]) == theirs.generation_config.eos_token_id
    return Check(diff, idx.numel(), stopped and torch.equal(greedy, mine[:, :n]))


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a run dir (its model.ckpt) or a .ckpt file")
    p.add_argument("--to", choices=["safetensors", "hf"], required=True, help="what to write")
    p.add_argument("out", help="the dir to write into (made if missing)")
    p.add_argument("--which", choices=tuple(checkpoint.WHICH), default="last",
                   help="a run dir's latest checkpoint (model.ckpt) or its best (best.ckpt)")
    p.add_argument("--check", action="store_true",
                   help="with --to hf: load the export with transformers and compare its logits and greedy "
                        "continuation with ours (exit 1 if they differ)")
    a = p.parse_args(argv)
    if a.check and a.to != "hf":
        p.error("--check: only with --to hf")
    try:
        if a.to == "hf":
            written = to_hf(a.checkpoint, Path(a.out), a.which)
        else:
            out = to_safetensors(a.checkpoint, Path(a.out), a.which)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    if a.to == "hf":
        print(f"Wrote {', '.join(written)} into {a.out}: load it with transformers' "
              f"AutoModelForCausalLM.from_pretrained({a.out!r}) and AutoTokenizer.from_pretrained({a.out!r})")
        if a.check:
            check = check_hf(a.checkpoint, Path(a.out), a.which)
            print(check.line())
            if not check.ok:
                sys.exit(1)
    else:
        print(f"Wrote {out / WEIGHTS} and {out / H_PARAMS}")


if __name__ == "__main__":
    main()
