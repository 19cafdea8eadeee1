"""`python -m rl_reasoning.train RECIPE [key=value ...]` — the entry point for `accelerate launch`."""

import sys

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
