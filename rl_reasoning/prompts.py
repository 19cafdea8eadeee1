"""Turn a question into the exact prompt text the policy sees.

Three templates: the model's own chat template (with an optional system prompt), the raw
R1-Zero template from the DeepSeek-R1 paper (Table 1), or a custom string with `{question}`.
An optional assistant prefill (e.g. "<think>") is appended to the prompt: it is part of the
prompt (never trained) but rewards see it in front of the completion, so a think/answer
format check works the same with or without a prefill.
"""

from __future__ import annotations

from .config import PromptConfig

R1ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: {question}. Assistant:"
)


def render_prompt(tokenizer, question: str, cfg: PromptConfig) -> str:
    """The full prompt text for one question, prefill included."""
    if cfg.template == "chat":
        messages = []
        if cfg.system_prompt:
            messages.append({"role": "system", "content": cfg.system_prompt})
        messages.append({"role": "user", "content": question})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    elif cfg.template == "r1zero":
        text = R1ZERO_TEMPLATE.format(question=question)
    else:
        text = cfg.template.replace("{question}", question)
    if cfg.prefill:
        text = text + cfg.prefill if cfg.template == "chat" or text.endswith((" ", "\n")) else text + " " + cfg.prefill
    return text


def encode_prompt(tokenizer, text: str, template: str) -> list[int]:
    """Token ids of a rendered prompt. Chat templates already contain the special tokens."""
    return tokenizer(text, add_special_tokens=template != "chat")["input_ids"]
