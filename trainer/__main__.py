"""`python -m trainer`: see trainer/cli.py."""

import gc

from trainer.cli import main

if __name__ == "__main__":
    gc.freeze()  # the imports' ~180k objects live to the end: no collection need scan them again
    try:
        main()
    finally:
        gc.freeze()  # and the run's: the exit skips a last full scan, 0.3 s of every run's teardown
