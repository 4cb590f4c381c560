"""`python -m trainer [overrides]`: train a GPT model; see conf/config.yaml for every key."""

from trainer.cli import main

if __name__ == "__main__":
    main()
