"""Call the configured reward functions on a batch and combine them into one reward per sample.

Each function gets the completions plus every dataset column (repeated once per completion),
and `prompts` / `step` when its signature accepts them. Its output is checked: one float or
None per completion, no NaN. The total is the weighted sum over the components that are not
None; a sample whose components are all None gets NaN (no advantage, not trained).
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import time
from dataclasses import dataclass

import torch

from rewards import registry as reward_registry

from .config import Config, RewardSpec
from .errors import ConfigError, RewardError

CORRECT = 1.0 - 1e-6  # a completion is correct when the accuracy reward gives it full credit (>= 1)


@dataclass
class RewardComponent:
    name: str
    fn: object
    weight: float
    accepts_any: bool  # has **kwargs
    accepted: frozenset


@dataclass
class RewardResult:
    total: torch.Tensor  # (N,) weighted sum, NaN where every component is None
    components: dict[str, torch.Tensor]  # name -> (N,), NaN = None
    seconds: dict[str, float]
    metrics: dict[str, dict]  # name -> extra metrics a reward reported (rewards.scored.ScoredList)


def _component(spec: RewardSpec, weight: float) -> RewardComponent:
    try:
        fn = reward_registry.get_reward(spec.name)
    except reward_registry.UnknownRewardError as e:
        raise ConfigError(f"rewards: {e}") from None
    sig = _reward_signature(spec.name, fn)
    params = sig.parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if spec.kwargs:
        # Recipe parameters must be named in the signature: **kwargs also receives dataset
        # columns, so accepting anything there would hide typos.
        named = {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        unknown = [k for k in spec.kwargs if k not in named or k == "completions"]
        if unknown:
            raise ConfigError(
                f"rewards: {spec.name!r} takes no parameter {', '.join(map(repr, unknown))} "
                f"(its parameters: {', '.join(p for p in params if p != 'completions')})"
            )
        fn = functools.partial(fn, **spec.kwargs)
    return RewardComponent(spec.name, fn, weight, accepts_any, frozenset(params))


SHAPE = "a reward is fn(completions, **columns) -> list[float | None], as in TRL"
PROVIDED = frozenset({"prompts", "step", "completion_ids"})  # passed besides the dataset columns


def _reward_signature(name: str, fn) -> inspect.Signature:
    """The signature of a reward, refused unless it has a reward's shape: a first positional
    parameter named `completions` (or any first positional parameter, or *args, plus **kwargs).
    Checked when the recipe is loaded, so a slip such as `os:system` or `builtins:print` fails
    before the model loads. This guards against mistakes, not attacks: naming `pkg.mod:fn` imports
    `pkg.mod`, which runs its code; a recipe is trusted as much as the code it names."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise ConfigError(f"rewards: {name!r} is not a reward function (its signature cannot be read; {SHAPE})") from None
    params = list(sig.parameters.values())
    first = params[0] if params else None
    positional = first is not None and first.kind in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD, first.VAR_POSITIONAL)
    kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    if "completions" in sig.parameters and first.name != "completions":
        raise ConfigError(f"rewards: {name!r} takes `completions` as a later parameter (signature {sig}); "
                          "it must come first: fn(completions, **columns)")
    if not positional or not (first.name == "completions" or kwargs):  # (*args, **kwargs): a decorator without functools.wraps
        raise ConfigError(f"rewards: {name!r} is not a reward function (signature {sig}; {SHAPE})")
    return sig


class RewardRunner:
    def __init__(self, specs: list[RewardSpec], weights: list[float]):
        self.components = [_component(s, w) for s, w in zip(specs, weights)]
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ConfigError(f"rewards: each reward may appear once, got {names}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    def check_columns(self, columns, where: str) -> None:
        """Every parameter a reward requires (no default) must be a dataset column or one we pass."""
        available = set(columns) | PROVIDED
        for comp in self.components:
            fn = comp.fn
            bound = getattr(fn, "keywords", {})  # recipe parameters given with functools.partial
            sig = inspect.signature(fn)
            params = list(sig.parameters.values())[1:]
            missing = [repr(p.name) for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                       and p.name not in available and p.name not in bound]
            if missing:
                raise ConfigError(f"rewards: {comp.name!r} needs {', '.join(missing)}, which {where} does not have "
                                  f"(its columns: {', '.join(sorted(columns))})")

    def __call__(
        self, completions: list, columns: dict[str, list], prompts: list, step: int, where: str | None = None, completion_ids: list | None = None
    ) -> RewardResult:
        """`step` is passed to reward functions; `where` names the call in error messages (default 'step N')."""
        n = len(completions)
        where = where or f"step {step}"
        extra = {"prompts": prompts, "step": step}
        if completion_ids is not None:
            extra["completion_ids"] = completion_ids  # TRL passes these too
        values, seconds, metrics = {}, {}, {}
        for comp in self.components:
            kwargs = {k: v for k, v in {**columns, **extra}.items() if comp.accepts_any or k in comp.accepted}
            start = time.perf_counter()
            try:
                out = comp.fn(completions, **kwargs)
            except Exception as e:  # noqa: BLE001 - any failure of user code is reported, not swallowed
                raise RewardError(
                    f"reward {comp.name!r} raised {type(e).__name__}: {e} ({where})"
                ) from e
            seconds[comp.name] = time.perf_counter() - start
            values[comp.name] = self._check(comp.name, out, n, where)
            metrics[comp.name] = dict(getattr(out, "metrics", {}) or {})
        stacked = torch.stack([values[c.name] * c.weight for c in self.components])  # (R, N)
        all_none = torch.isnan(stacked).all(0)
        total = torch.nansum(stacked, 0).masked_fill(all_none, float("nan"))  # (N,)
        return RewardResult(total=total, components=values, seconds=seconds, metrics=metrics)

    @staticmethod
    def _check(name: str, out, n: int, where: str) -> torch.Tensor:
        if not isinstance(out, (list, tuple)):
            raise RewardError(f"reward {name!r} returned {type(out).__name__}, expected a list of {n} floats ({where})")
        if len(out) != n:
            raise RewardError(f"reward {name!r} returned {len(out)} values for {n} completions ({where})")
        vals = []
        for i, v in enumerate(out):
            if v is None:
                vals.append(float("nan"))
                continue
            if not isinstance(v, numbers.Real) and not (torch.is_tensor(v) and v.numel() == 1):
                raise RewardError(f"reward {name!r} returned {v!r} for sample {i}, expected a float or None ({where})")
            v = float(v)
            if math.isnan(v) or math.isinf(v):
                raise RewardError(f"reward {name!r} returned {v} for sample {i} ({where}); use None to skip a sample")
            vals.append(v)
        return torch.tensor(vals, dtype=torch.float32)


def accuracy_runner(cfg: Config) -> RewardRunner:
    """The recipe's accuracy reward alone, weight 1: what decides "correct" in training metrics,
    traces, held-out evaluation and distillation's filter."""
    spec = next(r for r in cfg.rewards if r.name == cfg.accuracy_reward_name)
    return RewardRunner([RewardSpec(spec.name, 1.0, spec.kwargs)], [1.0])


def answer_fallback(accuracy: RewardRunner) -> str:
    """How the accuracy reward extracts an answer when there is no <answer> tag (its `fallback`
    parameter, if any); traces and maj@k extract answers the same way."""
    fn = accuracy.components[0].fn
    return getattr(fn, "keywords", {}).get("fallback", "none")
