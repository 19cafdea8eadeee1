"""Teacher-forced scoring: the log-probability a model gives to completions it is shown.

Used by the update (log-probs with gradients, `completion_logprobs` and its prefix-grouped twin
`grouped_completion_logprobs`, with the entropies the `grpo.entropy_coef` bonus needs), by the vLLM backend's recompute of the old log-probs
(`recompute_logprobs`, no gradients, with entropies) and by tests that check the rollout's own
sampling log-probs.

All log-probs are log softmax(logits / T) over the full vocabulary at the rollout's temperature
T (T = 0 is scored at T = 1), which is what the rollout records when it samples. Only the
completion positions go through the LM head, and the log-softmax is taken as
logit - logsumexp, so no second (B, L, V) tensor is materialised.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .engine import RolloutBatch, positions_from_mask


def micro_batch_inputs(rollout: RolloutBatch, mask: torch.Tensor, idx: torch.Tensor, device) -> tuple[torch.Tensor, ...]:
    """Rows `idx` of a rollout, trimmed: prompts lose their shared left padding, completions their
    right padding. Returns prompt ids (b, Lp'), prompt mask (b, Lp'), completion ids (b, T'), the
    completion's attention mask (b, T') and `mask` (the loss mask) (b, T'), on `device`. The two
    masks differ where the loss skips tokens the model must still attend to (tool results)."""
    p_mask = rollout.prompt_mask[idx]
    p_width = int(p_mask.sum(-1).max())
    c_width = max(int(rollout.completion_mask[idx].sum(-1).max()), 1)
    return (
        rollout.prompt_ids[idx, -p_width:].to(device),  # (b, Lp')
        p_mask[:, -p_width:].to(device),  # (b, Lp')
        rollout.completion_ids[idx, :c_width].to(device),  # (b, T')
        rollout.completion_mask[idx, :c_width].to(device),  # (b, T')
        mask[idx][:, :c_width].to(device),  # (b, T')
    )


def teacher_forced_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, **model_kwargs):
    """One forward over prompt + completion: (scaled logits (B, Lc, V), model outputs, attention mask (B, Lp + Lc)).
    Only the Lc + 1 last positions go through the LM head."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, Lp + Lc)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (B, Lp + Lc)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions_from_mask(attention_mask),
        logits_to_keep=completion_ids.shape[1] + 1,
        use_cache=False,
        **model_kwargs,
    )
    logits = scale_logits_(out.logits[:, :-1].float(), temperature)  # (B, Lc, V): position j predicts completion token j
    return logits, out, attention_mask


def completion_logprobs(
    model,
    prompt_ids: torch.Tensor,  # (B, Lp) left-padded
    prompt_mask: torch.Tensor,  # (B, Lp)
    completion_ids: torch.Tensor,  # (B, Lc) right-padded
    completion_mask: torch.Tensor,  # (B, Lc)
    temperature: float,
    with_entropy: bool = False,
):
    """Teacher-forced log p(completion token) under softmax(logits / T): (B, Lc); with
    `with_entropy`, (log-probs (B, Lc), entropies (B, Lc)), both with gradients."""
    logits = teacher_forced_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature)[0]
    logp, entropy = token_logprobs(logits, completion_ids, with_entropy)  # (B, Lc), (B, Lc) or None
    return (logp, entropy) if with_entropy else logp


@torch.no_grad()
def completion_logprobs_and_entropy(
    model,
    prompt_ids: torch.Tensor,  # (B, Lp) left-padded
    prompt_mask: torch.Tensor,  # (B, Lp)
    completion_ids: torch.Tensor,  # (B, Lc) right-padded
    completion_mask: torch.Tensor,  # (B, Lc)
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """No-grad log-probs (B, Lc) and entropies (B, Lc) of softmax(logits / T): `completion_logprobs`
    with `with_entropy`, for the vLLM backend's recompute and the metrics."""
    return completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, with_entropy=True)


def grouped_completion_logprobs(
    model,
    prompt_ids: torch.Tensor,  # (Lp,) one prompt, no padding
    completion_ids: torch.Tensor,  # (b, Lc) completions of that prompt, right-padded
    completion_mask: torch.Tensor,  # (b, Lc)
    temperature: float,
    with_entropy: bool = False,
):
    """`completion_logprobs` for b completions sharing one prompt, with the prompt run once.

    The prompt's keys/values (with gradients) are repeated b times and the completions attend to
    them, so the prompt costs one forward/backward per group instead of b (verl's "prefix
    grouping"). Autograd sums the b gradients flowing into the shared prompt activations, which
    is exactly the plain path's sum over b identical prompt copies: the loss and gradients are
    equal up to float rounding (tested).
    """
    b, Lc = completion_ids.shape
    Lp = prompt_ids.shape[0]
    prompt_out = model(input_ids=prompt_ids[None], past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
    cache = prompt_out.past_key_values
    if b > 1:
        cache.batch_repeat_interleave(b)
    first = scale_logits_(prompt_out.logits[:, -1:].float(), temperature).expand(b, 1, -1)  # (b, 1, V): predicts completion token 0
    logp, entropy = token_logprobs(first, completion_ids[:, :1], with_entropy)  # (b, 1), (b, 1) or None
    if Lc > 1:
        attention_mask = torch.cat([completion_mask.new_ones((b, Lp)), completion_mask[:, :-1]], dim=1)  # (b, Lp + Lc - 1)
        rest = model(
            input_ids=completion_ids[:, :-1],
            attention_mask=attention_mask,
            position_ids=torch.arange(Lp, Lp + Lc - 1, device=completion_ids.device).expand(b, -1),
            past_key_values=cache,
            use_cache=True,
        ).logits.float()  # (b, Lc - 1, V): position j predicts completion token j + 1
        rest_logp, rest_entropy = token_logprobs(scale_logits_(rest, temperature), completion_ids[:, 1:], with_entropy)  # (b, Lc - 1)
        logp = torch.cat([logp, rest_logp], dim=1)  # (b, Lc)
        entropy = torch.cat([entropy, rest_entropy], dim=1) if with_entropy else None  # (b, Lc)
    return (logp, entropy) if with_entropy else logp


def recompute_logprobs(policy, rollout: RolloutBatch, micro_batch_size: int, temperature: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy's own no-grad log-probs (N, Lc) and entropies (N, Lc) of every completion of a
    rollout, 0 at padding, in micro-batches of `micro_batch_size` rows (on the CPU)."""
    logprobs, entropies = torch.zeros_like(rollout.logprobs), torch.zeros_like(rollout.logprobs)  # (N, Lc)
    all_rows = torch.arange(len(rollout))
    was_training = policy.training
    policy.eval()
    for i in range(0, len(rollout), micro_batch_size):
        idx = all_rows[i : i + micro_batch_size]
        p_ids, p_mask, c_ids, c_attn, c_mask = micro_batch_inputs(rollout, rollout.sampled_mask, idx, device)
        lp, ent = completion_logprobs_and_entropy(policy, p_ids, p_mask, c_ids, c_attn, temperature)  # (b, T'), (b, T')
        width = c_ids.shape[1]
        logprobs[idx, :width] = (lp * c_mask).cpu()
        entropies[idx, :width] = (ent * c_mask).cpu()
    policy.train(was_training)
    return logprobs, entropies


def scale_logits_(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / T, in place: `logits` is a fresh LM-head output that autograd does not save
    (a matmul's backward needs its inputs, not its output), so no (B, L, V) copy is made."""
    return logits.div_(temperature) if temperature > 0 else logits


def token_logprobs(scaled_logits: torch.Tensor, tokens: torch.Tensor, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For (B, L, V) logits already divided by T and tokens (B, L): log softmax(scaled_logits)[token]
    (B, L), as logit - logsumexp so no second (B, L, V) tensor is materialised; and with
    `with_entropy` the entropy of softmax(scaled_logits) at each position (B, L), as
    logsumexp - sum p * logit, with gradients (one (B, L, V) softmax is materialised), else None.
    The one place both formulas are written."""
    lse = torch.logsumexp(scaled_logits, dim=-1)  # (B, L)
    logp = scaled_logits.gather(-1, tokens[..., None]).squeeze(-1) - lse  # (B, L)
    if not with_entropy:
        return logp, None
    return logp, lse - (torch.softmax(scaled_logits, dim=-1) * scaled_logits).sum(-1)  # (B, L) each
