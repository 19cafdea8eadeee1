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


def has_letter_e(completions, **_):
    """1.0 when the completion contains an 'e' (a known, checkable pass/fail for filter tests)."""
    return [1.0 if "e" in (c if isinstance(c, str) else c[-1]["content"]) else 0.0 for c in completions]


def letter_e_share(completions, **_):
    """Share of the completion's characters that are 'e': trivially learnable by a tiny model."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [t.count("e") / max(1, len(t)) for t in texts]


def letter_e_if_answer_even(completions, answer, **_):
    """has_letter_e for problems with an even answer, 0.0 for the rest: some groups mixed, some constant."""
    return [score if int(float(a)) % 2 == 0 else 0.0 for score, a in zip(has_letter_e(completions), answer)]


def needs_difficulty(completions, difficulty, **_):
    """Requires a `difficulty` column: a recipe pairing it with data without one must fail at start-up."""
    return [float(d) for d in difficulty]


def _timed(fn):
    def wrapper(*args, **kwargs):  # no functools.wraps: the signature is (*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


@_timed
def decorated_char_variety(completions, **_):
    return char_variety(completions)


def completions_second(prompts, completions, **_):
    """TRL passes both by name; our runner passes completions first, so this shape is refused up front."""
    return [0.0] * len(completions)


RECORDED: list[dict] = []  # every call of the recording rewards below, in call order (the trainer runs in-process); clear it first


def recorded_letter_e_if_answer_even(completions, answer, step, **_):
    """letter_e_if_answer_even, recording each call (every generation round of dynamic sampling)."""
    scores = letter_e_if_answer_even(completions, answer)
    RECORDED.append({"reward": "accuracy", "step": step, "completions": list(completions), "scores": scores})
    return scores


def recorded_char_variety(completions, step, **_):
    """char_variety, recording each call."""
    scores = char_variety(completions)
    RECORDED.append({"reward": "variety", "step": step, "completions": list(completions), "scores": scores})
    return scores


def recorded_completion_ids(completions, completion_ids, **_):
    """0 for every completion; records the `completions` and `completion_ids` it is given."""
    RECORDED.append({"completions": list(completions), "completion_ids": [list(ids) for ids in completion_ids]})
    return [0.0] * len(completions)
