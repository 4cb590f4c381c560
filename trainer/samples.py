"""What the model writes, at each eval: continuations of fixed prompts, into a W&B Table and samples.md.

With W&B on and `wandb.samples=N` (default 2, 0 = off), every eval continues the same N prompts, the
first tokens at N places spread evenly over the valid split (each moved to the next line start when
one is near). The places depend on the corpus alone, not on TORCH_SEED, so every job of a sweep
writes from the same prompts, and sweeps compare by what their models write. The rows go into
`samples.md` in the run dir and one W&B Table per run (key `samples`, columns step, prompt, sample),
re-logged whole at each eval ("MUTABLE": the latest version holds every row so far).

Sampling never touches training's random streams: it draws from a generator of its own, seeded
afresh at each eval (so two evals differ only by the model), in eval mode (no dropout), without
gradients. A resumed run keeps the rows up to its checkpoint and logs them again with its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from trainer import rundir

if TYPE_CHECKING:
    from trainer.run import Run
    from trainer.tracking import WandbRun

PROMPT_TOKENS = 16  # at most: never longer than the context
NEW_TOKENS = 48
TEMPERATURE, TOP_K, SEED = 0.8, 50, 1337  # trainer.generate's defaults
LINE_SEARCH = 256  # tokens to look ahead from a place for the next line start
COLUMNS = ["step", "prompt", "sample"]


class Samples:
    """The run's fixed prompts, continued and reported at each eval (rank 0, W&B on)."""

    def __init__(self, run: Run, n: int, wandb_run: WandbRun):
        self.model, self.device, self.dir, self.wandb = run.model, run.device, run.dir, wandb_run
        self.enc, self.vocab = run.corpus.enc, run.corpus.vocab
        length = min(PROMPT_TOKENS, run.cfg.context_length)
        starts = prompt_starts(run.corpus.valid, n, length, self._ends_line)
        self.prompts = torch.stack([run.corpus.valid[s:s + length] for s in starts])  # (n, length) model ids
        self.texts = [self.decode(p) for p in self.prompts]
        kept = [r for r in rundir.read_samples(run.dir) if r[0] <= run.resumed_at] if run.resumed_at is not None else []
        rundir.write_samples(run.dir, intro(n, length), kept)
        self.table = wandb_run.wandb.Table(columns=COLUMNS, data=[list(r) for r in kept], log_mode="MUTABLE")

    def decode(self, ids: torch.Tensor) -> str:
        ids = self.vocab[ids] if self.vocab is not None else ids  # compact ids back to the encoding's
        return self.enc.decode(ids.tolist())

    def _ends_line(self, model_id: int) -> bool:
        token = int(self.vocab[model_id]) if self.vocab is not None else model_id
        return token not in self.enc.special_ids and self.enc.token_bytes(token).endswith(b"\n")

    @torch.no_grad()
    def generate(self) -> list[str]:
        """Each prompt's continuation by the model as it is now."""
        self.model.eval()
        try:
            g = torch.Generator(self.device).manual_seed(SEED)  # never the global one: dropout draws from it
            out = self.model.generate(self.prompts.to(self.device), NEW_TOKENS, TEMPERATURE, TOP_K, generator=g)
        finally:
            self.model.train()
        return [self.decode(row) for row in out[:, self.prompts.shape[1]:].cpu()]

    def add(self, step: int) -> None:
        """This eval's rows: into samples.md, and the whole table so far into W&B at this step."""
        rows = [(step, prompt, sample) for prompt, sample in zip(self.texts, self.generate(), strict=True)]
        rundir.append_samples(self.dir, rows)
        for row in rows:
            self.table.add_data(*row)
        self.wandb.run.log({"samples": self.table}, step=step)


def prompt_starts(valid, n: int, length: int, ends_line) -> list[int]:
    """n places spread evenly over the valid split (model ids: a tensor or a memory-mapped split),
    each moved just past the next line end if one is near."""
    span = len(valid) - length  # the last place a whole prompt fits
    starts = []
    for i in range(n):
        start = i * span // n
        ahead = valid[start:min(start + LINE_SEARCH, span)].tolist()  # one read, not one per token
        for j, model_id in enumerate(ahead):
            if ends_line(model_id):
                start += j + 1
                break
        starts.append(start)
    return starts


def intro(n: int, length: int) -> str:
    return (f"# Samples\n\nAt each eval the model continues the same {n} prompt{'s' if n != 1 else ''}: the first "
            f"{length} tokens at {n} fixed place{'s' if n != 1 else ''} of the valid split; {NEW_TOKENS} new tokens, "
            f"temperature {TEMPERATURE}, top_k {TOP_K}, seed {SEED}. In a cell, \\n is a line break.")
