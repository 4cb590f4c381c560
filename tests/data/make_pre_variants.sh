#!/bin/sh
# How tests/data/pre_variants/ was made: a tiny run of the code from before the architecture keys
# (commit 8e94b43), kept as a run dir (model.ckpt, .hydra/, metrics.jsonl; best.ckpt, the log,
# summary.json and hydra.yaml left out) for tests/test_variants.py. Its checkpoint is < 100 KB.
# pre_variants.txt is trainer.synthetic.generate(1500, seed=7). The same command with max_iters=30
# logged train_loss 5.228204369544983 and valid_loss 5.2827852964401245 at step 30: the values a
# resume of this checkpoint to 30 must reproduce. Run from the repository root.
set -e
old=$(mktemp -d)
git archive 8e94b43 | tar -x -C "$old"
work=$(mktemp -d)
cp tests/data/pre_variants.txt "$work"
(cd "$work" && PYTHONPATH="$old" python -m trainer d_model=8 num_blocks=1 num_heads=2 context_length=16 \
    batch_size=4 max_iters=20 eval_interval=10 eval_iters=2 device=cpu num_threads=1 data=text \
    data_path=pre_variants.txt hydra.run.dir=pre_variants)
rm -rf tests/data/pre_variants
mkdir -p tests/data/pre_variants/.hydra
cp "$work"/pre_variants/model.ckpt "$work"/pre_variants/metrics.jsonl tests/data/pre_variants/
cp "$work"/pre_variants/.hydra/config.yaml "$work"/pre_variants/.hydra/overrides.yaml tests/data/pre_variants/.hydra/
rm -rf "$old" "$work"
