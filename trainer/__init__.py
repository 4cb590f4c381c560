"""A Hydra-configured trainer for small GPT-style language models (the book's train.py, grown up)."""

__version__ = "0.1.0"
