"""Reward functions used by the tests through the dotted-path lookup (tests.reward_fns:NAME)."""


def char_variety(completions, **_):
    """A deterministic, non-constant score for random text: share of distinct characters."""
    return [len(set(c)) / (len(c) + 1) for c in completions]


def explodes_at_step_3(completions, step, **_):
    if step >= 3:
        raise RuntimeError("boom")
    return [0.0 if i % 2 else 1.0 for i in range(len(completions))]


def wrong_length(completions, **_):
    return [1.0]


def returns_nan(completions, **_):
    return [float("nan")] * len(completions)


def skips_odd(completions, **_):
    return [None if i % 2 else float(len(c) % 5) for i, c in enumerate(completions)]


def with_metrics(completions, **_):
    from rewards.scored import ScoredList

    return ScoredList([float(len(c) % 2) for c in completions], {"odd_frac": 0.25})


def constant(completions, **_):
    """Every completion scores the same: every advantage is 0."""
    return [1.0] * len(completions)
