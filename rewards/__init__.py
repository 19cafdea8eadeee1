"""Reward functions with TRL's contract, and the registry that finds them by name.

Contract: `fn(completions, **dataset_columns) -> list[float | None]`, one value per
completion; None means "no reward for this sample" (it is skipped, and counted). The trainer
also passes `prompts` and `step` to functions that accept them (or accept **kwargs).
The lookup (built-in name, entry point, dotted path) lives in `rewards/registry.py`.
"""

from __future__ import annotations

from .code import code_reward
from .format import format_reward
from .length import length_reward
from .math import math_reward
from .reasoning_gym import reasoning_gym_reward
from .registry import ENTRY_POINT_GROUP, REGISTRY, RewardFn, UnknownRewardError, available_rewards, get_reward
from .repetition import repetition_reward

__all__ = [
    "ENTRY_POINT_GROUP", "REGISTRY", "RewardFn", "UnknownRewardError", "available_rewards", "get_reward",
    "code_reward", "format_reward", "length_reward", "math_reward", "reasoning_gym_reward", "repetition_reward",
]
