"""Find a reward function by name: the built-in table, then installed entry points, then a dotted path.

Lookup order for a name: the built-in registry below, then the `rl_reasoning.rewards`
entry-point group (so a separate pip package can add rewards), then a dotted path
`package.module:function` (or `package.module.function`). Built-in rewards are listed as
"module:function" strings and imported on first use, so this module imports none of them (the
`length` reward looks its correctness reward up here without an import cycle).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

RewardFn = Callable[..., list]

# name -> the function, or "module:function" imported on first use
REGISTRY: dict[str, RewardFn | str] = {
    "math": "rewards.math:math_reward",
    "code": "rewards.code:code_reward",
    "format": "rewards.format:format_reward",
    "reasoning_gym": "rewards.reasoning_gym:reasoning_gym_reward",
    "length": "rewards.length:length_reward",
    "repetition": "rewards.repetition:repetition_reward",
    "tool_errors": "rewards.tools:tool_errors",
    "env_reward": "rewards.tools:env_reward",
}

ENTRY_POINT_GROUP = "rl_reasoning.rewards"


class UnknownRewardError(LookupError):
    pass


def _plugin_rewards() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_rewards() -> list[str]:
    return sorted(set(REGISTRY) | set(_plugin_rewards()))


def _load_dotted(name: str) -> RewardFn:
    module_name, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UnknownRewardError(f"reward {name!r}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UnknownRewardError(f"reward {name!r}: {module_name} has no callable {attr!r}")
    return fn


def get_reward(name: str) -> RewardFn:
    """Resolve a reward by registry name, entry point, or dotted path."""
    if name in REGISTRY:
        entry = REGISTRY[name]
        return _load_dotted(entry) if isinstance(entry, str) else entry
    plugins = _plugin_rewards()
    if name in plugins:
        return plugins[name].load()
    if "." in name or ":" in name:
        return _load_dotted(name)
    raise UnknownRewardError(
        f"unknown reward {name!r}; valid names: {', '.join(available_rewards())} "
        "(or a dotted path such as my_pkg.my_module:my_reward)"
    )
