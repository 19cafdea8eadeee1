"""A custom reward used by recipes/custom_reward.yaml and shown in the README."""

from rewards.extract import completion_text, extract_answer


def short_and_right(completions, answer, max_chars: int = 400, **kwargs):
    """1 for a right final answer minus up to 0.5 for length; 0 for a wrong or missing one."""
    scores = []
    for completion, gold in zip(completions, answer):
        text = completion_text(completion)
        right = extract_answer(text, fallback="last_number") == str(gold).strip()
        scores.append(1.0 - 0.5 * min(len(text), max_chars) / max_chars if right else 0.0)
    return scores
