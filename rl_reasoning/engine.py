"""The rollout contract: what an engine is given, what it returns, and the helpers both engines share.

Two engines implement `GenerationEngine`: our own (`rollout.RolloutEngine`, a KV-cached decode
loop on the policy itself) and vLLM's (`vllm_rollout.VLLMRolloutEngine`). Both take token-id
prompts and the recipe's `rollout` section (a `RolloutConfig`: G, max_new_tokens, temperature,
top_p, stop strings) and return a `RolloutBatch`, so rewards, advantages, the update, traces and
evaluation never know which engine sampled. `concat_rollouts` and `select_groups` assemble one
batch from several (dynamic sampling's refill rounds, and the slices of several processes);
`rollout_seed` is the sampling seed of a step's generation round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .config import RolloutConfig


@dataclass
class RolloutBatch:
    """N = P * G completions; row i belongs to prompt i // G."""

    prompt_ids: torch.Tensor  # (N, Lp) left-padded with pad_id
    prompt_mask: torch.Tensor  # (N, Lp) 1 = real prompt token
    completion_ids: torch.Tensor  # (N, Lc) right-padded with pad_id
    completion_mask: torch.Tensor  # (N, Lc) 1 = sampled token (EOS / stop token included)
    logprobs: torch.Tensor  # (N, Lc) sampling log-probs log softmax(logits/T)[token]; 0 at padding
    entropies: torch.Tensor  # (N, Lc) entropy of softmax(logits/T) at each sampled position; 0 at padding
    truncated: torch.Tensor  # (N,) bool: hit max_new_tokens without EOS or stop string
    texts: list[str]  # decoded completions, special tokens removed, cut after the stop string
    group_size: int
    sampler_logprobs: torch.Tensor | None = None  # (N, Lc) another engine's (vLLM) log-probs when `logprobs` were recomputed
    tool_mask: torch.Tensor | None = None  # (N, Lc) 1 = observation token (tool result, environment feedback): attended to, never trained
    episodes: list[dict] | None = None  # multi-turn rollouts (multiturn.py): per row, its tool calls, turns and verdicts

    @property
    def sampled_mask(self) -> torch.Tensor:  # (N, Lc) 1 = a token the policy sampled (what the loss may train)
        return self.completion_mask if self.tool_mask is None else self.completion_mask * (1 - self.tool_mask)

    @property
    def lengths(self) -> torch.Tensor:  # (N,)
        return self.completion_mask.sum(-1)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]


@runtime_checkable
class GenerationEngine(Protocol):
    """Samples `params.num_generations` completions for each prompt."""

    device: torch.device  # where the engine draws its random numbers (the trainer's generator lives there)

    def generate(
        self,
        prompts: list[list[int]],
        params: RolloutConfig,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] | None = None,
    ) -> RolloutBatch:
        """`shard` = (offset, total): these rows are rows offset.. of a batch of `total` completions
        sampled across processes, so a process draws the noise a single process would for them."""
        ...


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) ids and mask, padded on the left."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore padding: 0 at each row's first real token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def cut_at_stop(text: str, stop: list[str]) -> str:
    """`text` cut right after the first place a stop string ends in it (unchanged if none occurs)."""
    cut = min((text.find(s) + len(s) for s in stop if s in text), default=None)
    return text[:cut] if cut is not None else text


def finished_batch(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
                   logprobs: torch.Tensor, entropies: torch.Tensor, truncated: torch.Tensor, tokenizer, stop: list[str],
                   group_size: int, pad_id: int) -> RolloutBatch:
    """The batch a decode loop returns: prompts (P, Lp) repeated G times, and each row's first
    `lengths` tokens (N, T) kept (padding, and log-probs / entropies of 0, after them), its text
    decoded without special tokens and cut at the first stop string."""
    width = max(int(lengths.max()), 1)
    completion_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()  # (N, width)
    completion_ids = torch.where(completion_mask.bool(), tokens[:, :width], pad_id)
    return RolloutBatch(
        prompt_ids=prompt_ids.repeat_interleave(group_size, dim=0),
        prompt_mask=prompt_mask.repeat_interleave(group_size, dim=0),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        logprobs=logprobs[:, :width] * completion_mask,
        entropies=entropies[:, :width] * completion_mask,
        truncated=truncated,
        texts=[cut_at_stop(tokenizer.decode(completion_ids[i, : lengths[i]], skip_special_tokens=True), stop)
               for i in range(len(lengths))],
        group_size=group_size,
    )


def concat_rollouts(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """The rows of `batches`, in order, as one batch (on the CPU): prompts left-padded and
    completions right-padded to the widest of them. All batches must share G, and either all or
    none carry `sampler_logprobs`."""
    if not batches:
        raise ValueError("concat_rollouts: no batches")
    G = batches[0].group_size
    if any(b.group_size != G for b in batches):
        raise ValueError(f"concat_rollouts: group sizes differ ({sorted({b.group_size for b in batches})})")
    has_sampler = [b.sampler_logprobs is not None for b in batches]
    if any(has_sampler) and not all(has_sampler):
        raise ValueError("concat_rollouts: some batches carry sampler_logprobs and some do not")
    multi_turn = [b.tool_mask is not None for b in batches]
    if any(multi_turn) and not all(multi_turn):
        raise ValueError("concat_rollouts: some batches are multi-turn (tool_mask) and some are not")
    p_width = max(b.prompt_ids.shape[1] for b in batches)
    c_width = max(b.completion_ids.shape[1] for b in batches)

    def left(x: torch.Tensor, fill) -> torch.Tensor:  # (n, Lp) -> (n, p_width)
        return torch.nn.functional.pad(x.cpu(), (p_width - x.shape[1], 0), value=fill)

    def right(x: torch.Tensor, fill) -> torch.Tensor:  # (n, Lc) -> (n, c_width)
        return torch.nn.functional.pad(x.cpu(), (0, c_width - x.shape[1]), value=fill)

    return RolloutBatch(
        prompt_ids=torch.cat([left(b.prompt_ids, pad_id) for b in batches]),
        prompt_mask=torch.cat([left(b.prompt_mask, 0) for b in batches]),
        completion_ids=torch.cat([right(b.completion_ids, pad_id) for b in batches]),
        completion_mask=torch.cat([right(b.completion_mask, 0) for b in batches]),
        logprobs=torch.cat([right(b.logprobs, 0.0) for b in batches]),
        entropies=torch.cat([right(b.entropies, 0.0) for b in batches]),
        truncated=torch.cat([b.truncated.cpu() for b in batches]),
        texts=[t for b in batches for t in b.texts],
        group_size=G,
        sampler_logprobs=torch.cat([right(b.sampler_logprobs, 0.0) for b in batches]) if all(has_sampler) else None,
        tool_mask=torch.cat([right(b.tool_mask, 0) for b in batches]) if all(multi_turn) else None,
        episodes=[e for b in batches for e in b.episodes] if all(multi_turn) else None,
    )


def select_groups(batch: RolloutBatch, groups: list[int]) -> RolloutBatch:
    """The rows of prompt groups `groups` (indices into the batch's P groups, in the order given),
    with the padding columns no kept row needs removed: prompts keep the widest kept prompt,
    completions the longest kept completion (at least one column, as the engines return)."""
    G = batch.group_size
    rows = torch.tensor([g * G + j for g in groups for j in range(G)], dtype=torch.long)  # (n,)
    p_mask = batch.prompt_mask[rows]
    p_width = int(p_mask.sum(-1).max()) if len(rows) else 0
    c_width = max(int(batch.completion_mask[rows].sum(-1).max()) if len(rows) else 0, 1)
    p_cols = slice(batch.prompt_ids.shape[1] - p_width, None)
    return RolloutBatch(
        prompt_ids=batch.prompt_ids[rows][:, p_cols],
        prompt_mask=p_mask[:, p_cols],
        completion_ids=batch.completion_ids[rows, :c_width],
        completion_mask=batch.completion_mask[rows, :c_width],
        logprobs=batch.logprobs[rows, :c_width],
        entropies=batch.entropies[rows, :c_width],
        truncated=batch.truncated[rows],
        texts=[batch.texts[i] for i in rows.tolist()],
        group_size=G,
        sampler_logprobs=batch.sampler_logprobs[rows, :c_width] if batch.sampler_logprobs is not None else None,
        tool_mask=batch.tool_mask[rows, :c_width] if batch.tool_mask is not None else None,
        episodes=[batch.episodes[i] for i in rows.tolist()] if batch.episodes is not None else None,
    )


def rollout_seed(seed: int, step: int, generation_round: int = 0) -> int:
    """The sampling seed of training step `step` (0-based), generation round `generation_round`
    (0 unless dynamic sampling refills): a function of the run seed, the step and the round only,
    so every process, and a resumed run, draws the same noise for the same rows. Refill rounds
    hash (step seed, round) with splitmix64, so their seeds practically never meet another step's."""
    base = (seed * 1_000_003 + step * 7_919 + 1) % (2**63)
    if generation_round == 0:
        return base
    z = (base + generation_round * 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % (2**63)
