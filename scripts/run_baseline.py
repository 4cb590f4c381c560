"""Run the book's seed_train.py unchanged, then save its final model for scripts/bench.py.

    python scripts/run_baseline.py BASELINE_DIR OUT.pt DATA_PATH MAX_ITERS

The script runs as `python seed_train.py DATA_PATH MAX_ITERS` would (same module, same
`__main__`, nothing patched); afterwards its globals give the trained model and h_params, saved
(and fsynced, as our checkpoints are) so that the bench can evaluate both models on the same
fixed windows. The files in BASELINE_DIR are only read.
"""

import os
import runpy
import sys

baseline_dir, out, data_path, max_iters = sys.argv[1:5]
sys.path.insert(0, baseline_dir)  # for `from seed_model import Model`
sys.argv = [os.path.join(baseline_dir, "seed_train.py"), data_path, max_iters]
g = runpy.run_path(sys.argv[0], run_name="__main__")

import torch  # noqa: E402  (already imported by the script; here for the save)

with open(out, "wb") as f:
    torch.save({"model_state_dict": g["model"].state_dict(), "h_params": g["h_params"]}, f)
    f.flush()
    os.fsync(f.fileno())
