"""The rollout contract: what an engine is given, what it returns, and the helpers both engines share.

Two engines implement `GenerationEngine`: our own (`rollout.RolloutEngine`, a KV-cached decode
loop on the policy itself) and vLLM's (`vllm_rollout.VLLMRolloutEngine`). Both take token-id
prompts and the recipe's `rollout` section (a `RolloutConfig`: G, max_new_tokens, temperature,
top_p, stop strings) and return a `RolloutBatch`, so rewards, advantages, the update, traces and
evaluation never know which engine sampled.
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
