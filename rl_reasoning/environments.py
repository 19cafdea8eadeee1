"""Multi-turn environments: after each turn the environment reads what the model wrote and either
answers (the answer becomes the start of the model's next turn) or ends the episode.

The shape is the one TRL users know from `environment_factory`: one environment object per
completion, built by a factory with no arguments, then
    reset(**columns) -> None            # the problem's dataset columns (question, answer, ...)
    step(turn_text) -> str | None       # this turn's text (prefill included) -> feedback, or None = done
    get_reward() -> float | None        # read after the episode; rewards see it as the `env_reward` column
(`rollout.environment: my_envs:MyEnv` names a class or factory; a module next to the recipe is
importable). The rollout (multiturn.py) calls `step` when a turn ends with a stop string or the
end-of-turn token, appends the feedback as tokens the loss ignores (a new user turn of the chat
template when the recipe uses one) and lets the model answer again, at most `rollout.max_turns`
turns in all.

Built in: `retry` ("check and retry"): a wrong final answer is answered with
`rollout.retry_feedback` and the model gets another turn; a right one ends the episode. Its
reward is (1 - `rollout.retry_cost`)^(retries) when the episode ends right, else 0: with a cost,
an answer right at once beats a fixed one (SCoRe, Kumar et al. 2024, shapes the second turn's
reward for the same reason: without it, multi-turn RL may trade first-turn accuracy for fixes).
Whether an answer is right is decided by the recipe's accuracy reward on that turn alone, so it
agrees with training and evaluation. The rollout records each turn's verdict, which gives the "second turn fixes a wrong first answer" rate.
Departure from TRL: TRL's environments expose their methods as tools; here tools (tools.py) and
environments are separate and can be combined.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol

from .dotted import load_dotted
from .errors import ConfigError


class Environment(Protocol):
    def reset(self, **columns) -> None: ...

    def step(self, turn_text: str) -> str | None: ...

    def get_reward(self) -> float | None: ...


class RetryEnvironment:
    """A wrong final answer gets `feedback` and another turn; a right one ends the episode.
    `{question}` in the feedback is replaced by the problem's question (the environment restates it)."""

    def __init__(self, judge: Callable[[str, dict], bool], feedback: str, cost: float = 0.0):
        self.judge, self.feedback, self.cost = judge, feedback, cost
        self.columns: dict = {}
        self.verdicts: list[bool] = []

    def reset(self, **columns) -> None:
        self.columns, self.verdicts = columns, []

    def step(self, turn_text: str) -> str | None:
        right = self.judge(turn_text, self.columns)
        self.verdicts.append(right)
        return None if right else self.feedback.replace("{question}", str(self.columns.get("question", "")))

    def get_reward(self) -> float | None:
        if not self.verdicts:
            return None
        return float(self.verdicts[-1]) * (1.0 - self.cost) ** (len(self.verdicts) - 1)


BUILTIN_ENVIRONMENTS = ("retry",)


def environment_factory(target: str, judge: Callable[[str, dict], bool] | None = None, feedback: str = "",
                        cost: float = 0.0) -> Callable[[], Environment]:
    """A factory of fresh environments for `rollout.environment` (built-in name or dotted path);
    a ConfigError naming the key when the target does not exist or lacks the methods."""
    if target == "retry":
        if judge is None:
            raise ConfigError("rollout.environment: 'retry' needs the recipe's accuracy reward to judge answers")
        return lambda: RetryEnvironment(judge, feedback, cost)
    factory = load_dotted(target, "rollout.environment", "environment",
                          f"built-in: {', '.join(BUILTIN_ENVIRONMENTS)} (or a dotted path such as my_envs:MyEnv)")
    if inspect.isclass(factory):
        missing = [m for m in ("reset", "step", "get_reward") if not callable(getattr(factory, m, None))]
        if missing:
            raise ConfigError(f"rollout.environment: {target!r} lacks {', '.join(missing)} (needs reset, step, get_reward)")
    return factory
