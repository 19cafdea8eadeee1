"""Rewards that read a multi-turn rollout's columns (rl_reasoning/multiturn.py), with TRL's signature.

`tool_errors`: -penalty for each tool call of the completion that failed (an exception, a timeout,
a malformed call, a non-text result), 0 for a completion without failures. The `tool_calls`
column holds each completion's calls as {name, arguments, output, error, seconds}.
`env_reward`: the environment's own reward (`get_reward()` after the episode; `retry` gives 1.0
when the episode ends right), None when the environment gives none.
"""

from __future__ import annotations


def tool_errors(completions, tool_calls, penalty: float = 0.1, **kwargs) -> list[float]:
    failed = [sum(1 for call in calls if call.get("error")) for calls in tool_calls]
    return [-penalty * n if n else 0.0 for n in failed]


def env_reward(completions, env_reward, **kwargs) -> list[float | None]:
    return [None if r is None else float(r) for r in env_reward]
