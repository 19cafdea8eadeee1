"""Reward functions with TRL's contract, and the registry that finds them by name.

Contract: `fn(completions, **dataset_columns) -> list[float | None]`, one value per
completion; None means "no reward for this sample" (it is skipped, and counted). The trainer
also passes `prompts` and `step` to functions that accept them (or accept **kwargs).

Lookup order for a name: the built-in registry below, then the `rl_reasoning.rewards`
entry-point group (so a separate pip package can add rewards), then a dotted path
`package.module:function` (or `package.module.function`).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Callable

from .code import code_reward
from .format import format_reward
from .length import length_reward
from .math import math_reward
from .reasoning_gym import reasoning_gym_reward
from .repetition import repetition_reward

RewardFn = Callable[..., list]

REGISTRY: dict[str, RewardFn] = {
    "math": math_reward,
    "code": code_reward,
    "format": format_reward,
    "reasoning_gym": reasoning_gym_reward,
    "length": length_reward,
    "repetition": repetition_reward,
}

ENTRY_POINT_GROUP = "rl_reasoning.rewards"


class UnknownRewardError(LookupError):
    pass


def _plugin_rewards() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_rewards() -> list[str]:
    return sorted(set(REGISTRY) | set(_plugin_rewards()))


def get_reward(name: str) -> RewardFn:
    """Resolve a reward by registry name, entry point, or dotted path."""
    if name in REGISTRY:
        return REGISTRY[name]
    plugins = _plugin_rewards()
    if name in plugins:
        return plugins[name].load()
    if "." in name or ":" in name:
        module_name, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise UnknownRewardError(f"reward {name!r}: cannot import module {module_name!r} ({e})") from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise UnknownRewardError(f"reward {name!r}: {module_name} has no callable {attr!r}")
        return fn
    raise UnknownRewardError(
        f"unknown reward {name!r}; valid names: {', '.join(available_rewards())} "
        "(or a dotted path such as my_pkg.my_module:my_reward)"
    )
