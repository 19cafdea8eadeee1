"""What one training step logs: per-completion values gathered from every process, and the metrics built from them.

`gather_rows` collects the step's completions, rewards, lengths and entropies from every
process into one `StepRows` (global row order: row i is completion i % G of prompt i // G);
`step_metrics` turns those and the update's statistics into the `metrics.jsonl` line. The
names follow TRL where it has one (`reward/mean`, `completions/mean_length`, `clip/high_frac`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rewards.format import is_well_formatted

from .distributed import Collective
from .engine import RolloutBatch
from .grpo import zero_variance_groups
from .reward_runner import CORRECT
from .traces.alarms import format_summary


@dataclass
class StepRows:
    """Per-completion values of one step's whole generation batch (all processes), in row order:
    row i is completion i % G of prompt i // G."""

    completions: list[str]
    rewards: torch.Tensor  # (B*G,) weighted total, NaN = no reward
    components: dict[str, torch.Tensor]  # name -> (B*G,)
    lengths: torch.Tensor  # (B*G,) completion tokens
    prompt_lengths: torch.Tensor  # (B*G,) prompt tokens
    truncated: torch.Tensor  # (B*G,) bool
    entropy_sums: torch.Tensor | None  # (B*G,) summed token entropy; None when the sampler gave none
    group_size: int
    reward_seconds: dict[str, float]  # slowest process
    reward_metrics: dict[str, dict]  # averaged over processes
    zero_variance: torch.Tensor  # (B,) groups whose valid rewards are all equal
    advantages: torch.Tensor | None = None  # (B*G,)
    episodes: list[dict] | None = None  # multi-turn rollouts: each row's tool calls, turns, verdicts (multiturn.py)


def gather_rows(collective: Collective, rollout: RolloutBatch, rewards, completions: list[str], has_entropy: bool) -> StepRows:
    """Per-completion values of the whole generation batch, gathered from every process."""
    c = collective
    total = c.gather(rewards.total)  # (B*G,)
    return StepRows(
        completions=c.gather_objects(completions),
        rewards=total,
        components={name: c.gather(v) for name, v in rewards.components.items()},
        lengths=c.gather(rollout.sampled_mask.sum(-1)),  # sampled tokens (tool results excluded)
        prompt_lengths=c.gather(rollout.prompt_mask.sum(-1)),
        truncated=c.gather(rollout.truncated),
        entropy_sums=c.gather(rollout.entropies.sum(-1)) if has_entropy else None,
        group_size=rollout.group_size,
        reward_seconds=c.max(rewards.seconds),
        reward_metrics=c.mean_of_dicts(rewards.metrics),
        zero_variance=zero_variance_groups(total, rollout.group_size),
        episodes=c.gather_objects(rollout.episodes) if rollout.episodes is not None else None,
    )


def step_metrics(rows: StepRows, stats: dict, accuracy_reward: str, lr: float, num_parameters: int, mu: int, beta: float) -> dict:
    """The metrics of one step from its gathered rows and the update's summed statistics."""
    G = rows.group_size
    total = rows.rewards
    lengths = rows.lengths.float()
    completion_tokens = rows.lengths.sum()
    acc = rows.components[accuracy_reward]
    m = {
        "reward/mean": nanmean(total),
        "reward/std": nanstd(total),
        "accuracy": float((acc >= CORRECT).float().mean()),
        "format_rate": sum(is_well_formatted(c) for c in rows.completions) / len(rows.completions),
        "completions/mean_length": float(lengths.mean()),
        "completions/max_length": float(lengths.max()),
        "completions/min_length": float(lengths.min()),
        "completions/truncated_frac": float(rows.truncated.float().mean()),
        "groups/zero_std_frac": float(rows.zero_variance.float().mean()),
        "advantage/abs_mean": float(rows.advantages.abs().mean()),
        "loss": stats["loss"],
        "clip/low_frac": stats["clip_low_tokens"] / max(stats["tokens"], 1),
        "clip/high_frac": stats["clip_high_tokens"] / max(stats["tokens"], 1),
        "ratio/mean": stats["ratio_sum"] / stats["tokens"] if stats["tokens"] else 1.0,
        "grad_norm": stats["grad_norm"],
        "lr": lr,
        "update/trained_sequences": stats["trained_sequences"],
        "update/micro_batches": stats["micro_batches"],
        "tokens/generated": int(completion_tokens),
        "tokens/prompt": int(rows.prompt_lengths[::G].sum()),  # prefilled once per group
        "tokens/trained": stats["trained_tokens"],
    }
    m.update(stats.get("moe", {}))
    m.update(stats.get("entropy", {}))  # token-entropy percentiles; the top_entropy_quantile threshold and kept share
    if stats.get("policy_entropy_sum"):  # the entropy bonus: the trained policy's mean token entropy (before the step)
        m["entropy/policy_mean"] = stats["policy_entropy_sum"] / max(stats["tokens"], 1)
    if stats.get("sequences"):  # GSPO: sequences clipped as a whole
        m["clip/sequence_frac"] = stats["clipped_sequences"] / stats["sequences"]
    if rows.entropy_sums is not None:  # vLLM without recompute returns no entropies
        m["entropy"] = float(rows.entropy_sums.sum() / completion_tokens.clamp(min=1))
    m["flops/step"] = step_flops(num_parameters, m["tokens/prompt"], m["tokens/generated"], m["tokens/trained"], mu, reference=beta > 0)
    m["clip/region_frac"] = m["clip/low_frac"] + m["clip/high_frac"]
    if beta > 0:
        m["kl"] = stats["kl_sum"] / max(stats["tokens"], 1)
    for name, values in rows.components.items():
        m[f"rewards/{name}/mean"] = nanmean(values)
        m[f"rewards/{name}/std"] = nanstd(values)
        m[f"rewards/{name}/frac_none"] = float(torch.isnan(values).float().mean())
        m[f"time/reward/{name}"] = rows.reward_seconds[name]
        for key, value in rows.reward_metrics[name].items():
            m[f"rewards/{name}/{key}"] = float(value)
    return m


def timing_metrics(seconds: dict[str, float], rows: StepRows) -> dict:
    """time/* (slowest process) and throughput/* of a step; `old_logprobs` and `teacher` only when they ran."""
    m = {f"time/{phase}": seconds[phase] for phase in ("generation", "reward", "teacher", "update", "step", "old_logprobs") if phase in seconds}
    m["throughput/generated_tokens_per_s"] = float(rows.lengths.sum()) / max(seconds["generation"], 1e-9)
    m["throughput/tokens_per_s"] = float(rows.lengths.sum() + rows.prompt_lengths.sum()) / max(seconds["step"], 1e-9)
    return m


def distill_sums(student_logp: torch.Tensor, teacher_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """This process's sums behind the distill/* metrics: the reverse-KL estimate (logp_student -
    logp_teacher) and the teacher's log-prob over the trained tokens (N, T), and their count."""
    m = mask.to(teacher_logp.dtype)
    return {"reverse_kl_sum": float(((student_logp - teacher_logp) * m).sum()),
            "teacher_logprob_sum": float((teacher_logp * m).sum()), "tokens": float(m.sum())}


def distill_metrics(sums: dict[str, float]) -> dict[str, float]:
    """distill/reverse_kl and distill/teacher_logprob: means over the step's trained tokens (all
    processes' `distill_sums`, summed), before the update."""
    tokens = max(sums["tokens"], 1.0)
    return {"distill/reverse_kl": sums["reverse_kl_sum"] / tokens, "distill/teacher_logprob": sums["teacher_logprob_sum"] / tokens}


def step_flops(n_params: int, prompt_tokens: int, generated_tokens: int, trained_tokens: int, mu: int, reference: bool) -> float:
    """Model FLOPs of one step (Kaplan et al.'s 2N per forward token, 6N per trained token; attention
    ignored): prefill + decode, mu forward/backward passes, and a reference forward when beta > 0."""
    return 2.0 * n_params * (prompt_tokens + generated_tokens + (trained_tokens if reference else 0)) + 6.0 * n_params * trained_tokens * mu


def summary_line(m: dict) -> str:
    """The one-line step summary printed every `log_every` steps."""
    fmt_name, fmt_value = format_summary(m)
    return (
        f"step {m['step']:>4}  reward {m['reward/mean']:.3f}±{m['reward/std']:.3f}  acc {m['accuracy']:.2f}  "
        f"{fmt_name} {fmt_value:.2f}  len {m['completions/mean_length']:.0f}  trunc {m['completions/truncated_frac']:.2f}  "
        f"zero-std {m['groups/zero_std_frac']:.2f}  loss {m['loss']:+.4f}  |g| {m['grad_norm']:.3f}  "
        f"gen {m['time/generation']:.1f}s rew {m['time/reward']:.1f}s upd {m['time/update']:.1f}s  "
        f"{m['throughput/generated_tokens_per_s']:.0f} tok/s"
    )


def nanmean(x: torch.Tensor) -> float:
    v = x[~torch.isnan(x)]
    return float(v.mean()) if v.numel() else float("nan")


def nanstd(x: torch.Tensor) -> float:
    v = x[~torch.isnan(x)]
    return float(v.std()) if v.numel() > 1 else 0.0
