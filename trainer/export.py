"""`python -m trainer.export RUN_DIR_OR_CKPT --to safetensors OUT_DIR`: a trained model out of this trainer.

    --to safetensors   model.safetensors (the weights, under our GPT's names) and h_params.json (the
                       checkpoint's h_params, with `vocab`: the encoding id of each model id, or null),
                       for any model: rebuild it with GPT(h_params) and load the weights.

The weights come from the checkpoint (weights_only, like every load); `--which best` takes best.ckpt.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from trainer import checkpoint, rundir
from trainer.data.encodings import EXTRA
from trainer.errors import UserError

WEIGHTS, H_PARAMS = "model.safetensors", "h_params.json"


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


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a run dir (its model.ckpt) or a .ckpt file")
    p.add_argument("--to", choices=["safetensors"], required=True, help="what to write")
    p.add_argument("out", help="the dir to write into (made if missing)")
    p.add_argument("--which", choices=tuple(checkpoint.WHICH), default="last",
                   help="a run dir's latest checkpoint (model.ckpt) or its best (best.ckpt)")
    a = p.parse_args(argv)
    try:
        out = to_safetensors(a.checkpoint, Path(a.out), a.which)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    print(f"Wrote {out / WEIGHTS} and {out / H_PARAMS}")


if __name__ == "__main__":
    main()
