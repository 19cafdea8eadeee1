"""DAPO's dynamic sampling with refill (`grpo.dynamic_sampling`): keep sampling until the batch carries signal.

A group is *informative* when its `grpo.dynamic_sampling_metric` values (the accuracy reward,
or the total reward) are not all equal: only those groups give GRPO a non-zero advantage. The
trainer samples and scores one round of B = `prompts_per_step` prompts; `DynamicSampling.refill`
then asks it for more rounds of B new prompts until B informative groups are in hand or
`grpo.max_num_gen_batches` rounds ran (verl's name), and keeps B groups (`keep_groups`).
Everything after the refill (advantages, the update, metrics, traces) sees only the kept batch.

Departures from DAPO (Yu et al., 2025) and verl:
- When the rounds run out, the batch is filled up with the earliest uninformative groups instead
  of training on fewer groups or failing (verl raises); the shortfall is logged every step in
  `dynamic_sampling/kept_informative_groups` and warned about once (`ran_out_warning`).
- Surplus informative groups of the last round are discarded, as in DAPO; they are counted in
  `dynamic_sampling/informative_groups`.
- Under several processes the decision is taken on values gathered from every process, so all
  take it alike; the kept batch is then re-split over the processes in the usual contiguous way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .distributed import Collective
from .engine import RolloutBatch, concat_rollouts, select_groups
from .grpo import zero_variance_groups
from .metrics import step_flops
from .reward_runner import RewardResult


@dataclass
class Sampled:
    """A generation batch: the global prompts, and this process's completions of them with their rewards."""

    problems: list[dict]  # (P,) the global batch, identical on every process
    prompt_texts: list[str]  # (P,)
    rollout: RolloutBatch  # this process's rows: its slice of the prompts, G completions each
    rewards: RewardResult  # of this process's rows
    completions: list[str]  # this process's rows as the rewards judged them (prefill + text)


@dataclass
class Refill:
    """What dynamic sampling did in one step: the kept batch and the counts behind its metrics."""

    batch: Sampled  # B groups
    rounds: int  # generation rounds run, the first included (verl's num_gen_batches)
    informative: int  # informative groups among the sampled ones, surplus included
    kept_informative: int  # informative groups in the kept batch (< B: the rounds ran out)
    sampled_groups: int  # rounds * B
    generated_tokens: int  # over every round and process
    prompt_rows_tokens: int  # prompt tokens summed over every sampled row
    prompt_groups_tokens: int  # prompt tokens prefilled, once per sampled group

    def metrics(self, so_far: dict, seconds: dict, num_parameters: int) -> dict:
        """dynamic_sampling/*, and throughput/* and flops/step recounted over every round (the
        other metrics, tokens/* included, describe the kept batch). `so_far`: the step's metrics."""
        unkept = (self.prompt_groups_tokens - so_far["tokens/prompt"]) + (self.generated_tokens - so_far["tokens/generated"])
        return {
            "dynamic_sampling/rounds": self.rounds,
            "dynamic_sampling/sampled_groups": self.sampled_groups,
            "dynamic_sampling/informative_groups": self.informative,
            "dynamic_sampling/kept_informative_groups": self.kept_informative,
            "dynamic_sampling/informative_frac": self.informative / self.sampled_groups,
            "dynamic_sampling/generated_tokens": self.generated_tokens,
            "throughput/generated_tokens_per_s": self.generated_tokens / max(seconds["generation"], 1e-9),
            "throughput/tokens_per_s": (self.generated_tokens + self.prompt_rows_tokens) / max(seconds["step"], 1e-9),
            "flops/step": so_far["flops/step"] + step_flops(num_parameters, unkept, 0, 0, 1, reference=False),
        }


class DynamicSampling:
    """The refill of one run: `refill` once per step, `ran_out_warning` after it."""

    def __init__(self, batch_size: int, group_size: int, metric: str, accuracy_reward: str, max_rounds: int,
                 collective: Collective, pad_token_id: int):
        self.B, self.G, self.max_rounds = batch_size, group_size, max_rounds
        self.metric, self.accuracy_reward = metric, accuracy_reward
        self.collective, self.pad_token_id = collective, pad_token_id
        self.warned = False

    def refill(self, first: Sampled, sample_round: Callable[[int], Sampled], seconds: dict) -> Refill:
        """Round 0 is `first`; `sample_round(r)` samples and scores round r (B new prompts). Rounds
        run until B informative groups are in hand or `max_rounds` ran; then B groups are kept.
        The time spent gathering and re-splitting is added to `seconds["generation"]`."""
        rounds, informative = [first], [self.informative_groups(first)]  # (B,) bool per round
        while int(sum(m.sum() for m in informative)) < self.B and len(rounds) < self.max_rounds:
            rounds.append(sample_round(len(rounds)))
            informative.append(self.informative_groups(rounds[-1]))
        t_start = time.perf_counter()
        flags = torch.cat(informative)  # (R*B,) in draw order
        keep = keep_groups(flags, self.B)
        batch = first if len(rounds) == 1 else self.kept_batch(rounds, keep)
        sampled = self.collective.sum({  # every round's tokens, for throughput and FLOPs
            "generated": sum(float(s.rollout.sampled_mask.sum()) for s in rounds),
            "prompt_rows": sum(float(s.rollout.prompt_mask.sum()) for s in rounds),
            "prompt_groups": sum(float(s.rollout.prompt_mask[:: self.G].sum()) for s in rounds),
        })
        seconds["generation"] += time.perf_counter() - t_start
        return Refill(batch, rounds=len(rounds), informative=int(flags.sum()), kept_informative=int(flags[keep].sum()),
                      sampled_groups=len(flags), **{f"{k}_tokens": int(v) for k, v in sampled.items()})

    def informative_groups(self, sampled: Sampled) -> torch.Tensor:
        """(B,) True where a group's metric values (gathered: the global batch) are not all equal."""
        rewards = sampled.rewards
        values = rewards.total if self.metric == "reward" else rewards.components[self.accuracy_reward]  # (n,)
        return ~zero_variance_groups(self.collective.gather(values), self.G)

    def kept_batch(self, rounds: list[Sampled], keep: list[int]) -> Sampled:
        """Groups `keep` (indices into the rounds' prompts, in draw order) as this process's batch.
        Every process gathers every round's rows and takes its own slice of the kept groups, so the
        split of the kept batch over processes is the usual contiguous one. Reward seconds are
        summed over the rounds; what a reward reports about its batch is averaged over them."""
        c, G, first = self.collective, self.G, rounds[0].rewards
        mine = keep[c.shard.prompt_slice(len(keep))]  # this process's kept groups
        rows = torch.tensor([g * G + j for g in mine for j in range(G)], dtype=torch.long)
        everything = concat_rollouts([r for s in rounds for r in c.gather_objects([s.rollout])], self.pad_token_id)
        rewards = RewardResult(
            total=torch.cat([c.gather(s.rewards.total) for s in rounds])[rows],
            components={name: torch.cat([c.gather(s.rewards.components[name]) for s in rounds])[rows] for name in first.components},
            seconds={name: sum(s.rewards.seconds[name] for s in rounds) for name in first.seconds},
            metrics={name: {k: sum(s.rewards.metrics[name][k] for s in rounds) / len(rounds) for k in m}
                     for name, m in first.metrics.items()},
        )
        completions = [t for s in rounds for t in c.gather_objects(s.completions)]
        problems = [p for s in rounds for p in s.problems]
        prompt_texts = [t for s in rounds for t in s.prompt_texts]
        return Sampled([problems[g] for g in keep], [prompt_texts[g] for g in keep], select_groups(everything, mine), rewards,
                       [completions[i] for i in rows.tolist()])

    def ran_out_warning(self, metrics: dict) -> str | None:
        """The warning of the first step whose refill found fewer than B informative groups; None
        otherwise and after it (dynamic_sampling/kept_informative_groups in metrics.jsonl has every step)."""
        kept = metrics.get("dynamic_sampling/kept_informative_groups", self.B)
        if self.warned or kept >= self.B:
            return None
        self.warned = True
        return (f"dynamic sampling found {kept} informative groups of {self.B} in {metrics['dynamic_sampling/rounds']} rounds "
                f"(grpo.max_num_gen_batches); groups whose {self.metric} is constant filled the batch (warned once; "
                "dynamic_sampling/kept_informative_groups in metrics.jsonl has every step)")


def keep_groups(informative: torch.Tensor, size: int) -> list[int]:
    """Dynamic sampling's choice among a step's sampled groups ((R*B,) bool, True = informative,
    in draw order): the first `size` informative groups, and when fewer were found, the earliest
    uninformative ones to make up `size`. Returned in draw order."""
    order = torch.cat([torch.nonzero(informative).flatten(), torch.nonzero(~informative).flatten()])
    return sorted(order[:size].tolist())
