"""rl-reasoning: reproduce "reward correctness and let the model learn to think" (DeepSeek-R1-Zero) at small scale."""

__version__ = "0.1.0"
