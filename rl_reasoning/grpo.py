"""GRPO maths as pure tensor functions: group-relative advantages and the clipped policy loss.

Notation: N = B*G completions in a generation batch (less the groups `drop_zero_variance_groups`
takes out), T = completion length (padded),
l_it = per-token loss of completion i at token t, m_it = its mask (1 = trained token).

Advantages (`scale_rewards`, names as in TRL):
    A_i = r_i - mean(r in i's group), divided by (std + 1e-4) where std is the unbiased
    standard deviation of i's group ("group"), of the whole batch ("batch"), or 1 ("none",
    the Dr. GRPO recommendation). Completions whose reward is NaN (every reward function
    returned None) are left out of the statistics and get advantage 0, and so does every
    completion of a group whose valid rewards are all equal.

Other estimators (`advantage_estimator`, verl's names): RLOO, A_i = r_i - mean of the other
rewards of i's group = G/(G-1) (r_i - mean), no std scaling (`rloo_advantages`). REINFORCE++
(Hu 2025): no group baseline; the reward, with beta > 0 a per-token KL penalty to the reference
folded into the return (G_t = r_i - beta * sum_{t' >= t} KL_t', KL = log pi_old - log pi_ref, k1,
instead of the k3 loss term), then normalised over every trained token of the whole batch
(`kl_folded_returns`, `whiten`). REINFORCE++-baseline: the group-centred reward, then the same
batch normalisation (GRPO's centring with a batch-level scale).

Per-token loss, with ratio rho = exp(logp - logp_old):
    l_it = -min(rho * A_it, clip(rho, 1 - epsilon, 1 + epsilon_high) * A_it) + beta * KL_it
    KL_it = exp(ref - logp) - (ref - logp) - 1           (k3 estimator, Schulman 2020)
where A_it = A_i on every token (advantages (b,), GRPO) or a per-token advantage (advantages (b, T)).
GSPO (`importance_sampling_level="sequence"`, Zheng et al. 2025, TRL's name): rho_it is replaced
by the sequence ratio s_i = exp(sum_t m_it (logp - logp_old) / sum_t m_it) for every token of i
(log s_i clamped at 10, as verl does), so a sequence is clipped as a whole; with loss_type "grpo"
this is the paper's objective exactly.
On-policy distillation (Tinker's form; `distillation_advantages`): the per-token advantage is
    A_it = task_coef * A_i - coef * k_it,   k_it = logp_student_it - logp_teacher_it
the negative single-sample estimate of the reverse KL(student || teacher) on the sampled token
(kl_discount 0: no sum over later tokens). It is fixed before the update (from the sampling
log-probs) and goes through the same clipped surrogate; Tinker uses an unclipped
importance-sampling loss, which is the same on-policy (rho = 1 at mu = 1).
Entropy bonus (`entropy_coef` c > 0, TRL's name and form): loss -= c * sum_it m_it H_it / sum_it m_it,
where H_it is the entropy of the policy's own softmax(logits / T) at token t, with gradients: the
mean token entropy of the batch's trained tokens, whatever the loss_type (as in TRL; TRL takes
the mean per micro-batch, here over the whole batch). `AdaptiveEntropy` is Skywork-OR1's
controller (TRL's `use_adaptive_entropy`): the bonus applies only while the batch's entropy is
at or below `entropy_target`, and c moves by `entropy_coef_delta` after every step, up while the
entropy is at or below the target, down otherwise, within [entropy_coef_min, entropy_coef_max].
Token selection (`top_entropy_quantile` rho < 1, Wang et al. 2025 "80/20"): the policy-gradient
term of tokens whose sampling entropy is below the batch's (1 - rho) quantile is multiplied by
0 (`update.entropy_selection`, passed in as `token_weights`); the normalisers still count every
token, as in TRL.

Aggregation (`loss_type`), always over the whole generation batch, so splitting it into
micro-batches for gradient accumulation gives the same gradient as one big batch:
    grpo    : (1/N) sum_i [ sum_t m_it l_it / sum_t m_it ]     sequence-mean of token-means (GRPO paper)
    dr_grpo : sum_it m_it l_it / (N * max_new_tokens)          constant normaliser (Dr. GRPO)
    dapo    : sum_it m_it l_it / sum_it m_it                   token-mean over the batch (DAPO)
Departure from TRL: none in the formulas; the normalisers are passed in explicitly (see
`LossNormalizer`) instead of being inferred per micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STD_EPS = 1e-4


def _centred_groups(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards (N,) -> (r - group mean over valid rewards, 0 where NaN) (B, G) and valid counts (B, 1)."""
    r = rewards.view(-1, group_size)  # (B, G)
    valid = ~torch.isnan(r)  # (B, G)
    count = valid.sum(-1, keepdim=True)  # (B, 1)
    r0 = torch.where(valid, r, torch.zeros_like(r))
    mean = r0.sum(-1, keepdim=True) / count.clamp(min=1)  # (B, 1)
    return torch.where(valid, r - mean, torch.zeros_like(r)), count  # (B, G), (B, 1)


def _group_std(centred: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Unbiased std (B, 1) from `_centred_groups`' output; 0 for groups with fewer than two valid rewards."""
    var = (centred**2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)  # (B, 1)
    return torch.where(count > 1, var.sqrt(), torch.zeros_like(var))


def group_reward_std(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Unbiased std of each group's valid rewards (B,); 0 for groups with fewer than two."""
    return _group_std(*_centred_groups(rewards, group_size)).squeeze(-1)  # (B,)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) True where a group's valid rewards are all equal (or fewer than two are valid).
    Compared exactly (max == min): a float std of equal values can come out as 1e-8, not 0."""
    r = rewards.view(-1, group_size)  # (B, G)
    valid = ~torch.isnan(r)
    high = torch.where(valid, r, torch.full_like(r, -torch.inf)).amax(-1)  # (B,)
    low = torch.where(valid, r, torch.full_like(r, torch.inf)).amin(-1)  # (B,)
    return (valid.sum(-1) < 2) | (high == low)


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group") -> torch.Tensor:
    """rewards (N,) with N = B*G, NaN = no reward -> advantages (N,); exactly 0 in a group whose
    rewards are all equal."""
    centred, count = _centred_groups(rewards, group_size)  # (B, G), (B, 1)
    if scale_rewards == "group":
        adv = centred / (_group_std(centred, count) + STD_EPS)
    elif scale_rewards == "batch":
        flat = rewards[~torch.isnan(rewards)]
        std = flat.std() if flat.numel() > 1 else torch.tensor(0.0)
        adv = centred / (std + STD_EPS)
    elif scale_rewards == "none":
        adv = centred
    else:
        raise ValueError(f"scale_rewards must be group, batch or none, got {scale_rewards!r}")
    flat_groups = zero_variance_groups(rewards, group_size)[:, None]  # (B, 1); includes groups of one valid reward
    adv = torch.where(flat_groups, torch.zeros_like(adv), adv)  # no baseline, or no signal
    return adv.reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = r_i - the mean of the other valid rewards of i's group
    = n/(n-1) (r_i - group mean) for n valid rewards; no std scaling. (N,); 0 for NaN rewards and
    for groups with fewer than two valid rewards."""
    centred, count = _centred_groups(rewards, group_size)  # (B, G), (B, 1)
    adv = centred * count / (count - 1).clamp(min=1)
    return torch.where(count < 2, torch.zeros_like(adv), adv).reshape(-1)


def reinforce_scores(rewards: torch.Tensor, group_size: int, baseline: bool) -> torch.Tensor:
    """REINFORCE++'s sequence scores before the batch normalisation (N,): the rewards
    (`reinforce_plus_plus`), or the rewards less their group's mean valid reward
    (`reinforce_plus_plus_baseline`); 0 where the reward is NaN."""
    if baseline:
        return _centred_groups(rewards, group_size)[0].reshape(-1)
    return torch.nan_to_num(rewards, nan=0.0)


def kl_folded_returns(scores: torch.Tensor, sampler_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                      beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++'s token returns with the KL penalty folded in (gamma = 1): the reward arrives at
    the last token and every token t pays beta * KL_t, KL_t = log pi_old - log pi_ref (k1, at the
    sampled token), so G_t = score - beta * sum_{i >= t} m_i KL_i. Returns (G (N, T), KL * m (N, T))."""
    kl = (sampler_logp - ref_logp) * mask  # (N, T)
    to_go = kl.flip(-1).cumsum(-1).flip(-1)  # (N, T): sum over i >= t
    return (scores[:, None] - beta * to_go) * mask, kl


def whitening_sums(values: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """This process's share of the batch statistics `whiten` needs: trained tokens, and the sums of
    the values and their squares over them. values: (N,) one per row (weighted by its trained
    tokens) or (N, T) per token."""
    m = mask.double()
    v = values.double()[:, None].expand_as(m) if values.dim() == 1 else values.double()
    return {"count": float(m.sum()), "sum": float((v * m).sum()), "sum_sq": float((v * v * m).sum())}


def whiten(values: torch.Tensor, sums: dict[str, float]) -> torch.Tensor:
    """(values - mean) / sqrt(var + 1e-8) with the mean and unbiased variance over every trained
    token of the (global) batch (`whitening_sums`, summed over processes): verl's masked_whiten."""
    n = sums["count"]
    if n < 2:
        return torch.zeros_like(values)
    mean = sums["sum"] / n
    var = max(sums["sum_sq"] / n - mean * mean, 0.0) * n / (n - 1)
    return ((values.double() - mean) / (var + 1e-8) ** 0.5).to(values.dtype)


@dataclass
class LossNormalizer:
    """Batch-level constants of the aggregation, fixed before the micro-batches are split."""

    loss_type: str
    num_sequences: int  # N: the completions of the generation batch, less the groups drop_zero_variance_groups takes out
    num_tokens: int  # sum of the trained-token mask over the whole batch
    max_new_tokens: int  # the configured completion budget (Dr. GRPO's constant)

    def aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """per_token_loss, mask: (b, T) for one micro-batch -> its share of the batch loss (scalar)."""
        masked = per_token_loss * mask  # (b, T)
        if self.loss_type == "grpo":
            per_seq = masked.sum(-1) / mask.sum(-1).clamp(min=1)  # (b,)
            return per_seq.sum() / max(self.num_sequences, 1)  # 0 when every group was dropped
        if self.loss_type == "dr_grpo":
            return masked.sum() / (max(self.num_sequences, 1) * self.max_new_tokens)
        if self.loss_type == "dapo":
            return masked.sum() / max(self.num_tokens, 1)
        raise ValueError(f"loss_type must be grpo, dr_grpo or dapo, got {self.loss_type!r}")


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference), >= 0: (b, T)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO's log s_i = mean over the trained tokens of logp - logp_old (b,), clamped at 10 (verl)."""
    return (((logp - old_logp) * mask).sum(-1) / mask.sum(-1).clamp(min=1)).clamp(max=10.0)


def distillation_advantages(
    advantages: torch.Tensor,  # (N,) the task's group advantages A_i
    student_logp: torch.Tensor,  # (N, T) sampling log-probs of the sampled tokens
    teacher_logp: torch.Tensor,  # (N, T) the teacher's log-probs of the same tokens
    mask: torch.Tensor,  # (N, T) trained tokens
    coef: float,
    task_coef: float,
) -> torch.Tensor:
    """Per-token advantages (N, T): task_coef * A_i - coef * (logp_student - logp_teacher) at
    trained tokens, 0 elsewhere."""
    mask = mask.to(student_logp.dtype)
    reverse_kl = (student_logp - teacher_logp) * mask  # (N, T)
    return (task_coef * advantages[:, None].to(student_logp.dtype) - coef * reverse_kl) * mask


@dataclass
class AdaptiveEntropy:
    """Skywork-OR1's adaptive entropy control (TRL's `use_adaptive_entropy`, same names): `coef`
    is the current coefficient; `for_step` gives the coefficient a step applies, given the mean
    token entropy of the batch it trains on (0 when the entropy is above the target), and moves
    `coef` for the next step. Departure from TRL: the entropy is the sampling entropy of the
    step's own batch, known before its update (TRL gates on the previous step's)."""

    coef: float
    target: float
    delta: float
    low: float
    high: float

    def for_step(self, entropy: float) -> float:
        applied = self.coef if entropy <= self.target else 0.0
        step = self.delta if entropy <= self.target else -self.delta
        self.coef = min(max(self.coef + step, self.low), self.high)
        return applied


def policy_loss(
    logp: torch.Tensor,  # (b, T) current policy, with grad
    old_logp: torch.Tensor,  # (b, T) policy that sampled the completions
    advantages: torch.Tensor,  # (b,) one per sequence, or (b, T) one per token
    mask: torch.Tensor,  # (b, T) trained tokens
    normalizer: LossNormalizer,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,  # (b, T), required when beta > 0
    token_weights: torch.Tensor | None = None,  # (b, T) importance weights of the policy-gradient term
    importance_sampling_level: str = "token",
    entropy: torch.Tensor | None = None,  # (b, T) the current policy's token entropies, with grad
    entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate loss for one micro-batch plus summed statistics for logging, as detached
    0-d tensors on the loss's device (the update reads them once per step, not per micro-batch).

    `token_weights` multiply the clipped policy-gradient term only (not the KL, not the entropy
    bonus): the truncated importance-sampling correction when another engine sampled the
    completions, and the entropy selection mask. Per-token advantages (b, T) need the token-level
    ratio: one ratio per sequence would sum them into a sequence-level advantage."""
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logp.dtype)
    if advantages.dim() == 1:
        adv = advantages[:, None].to(logp.dtype)  # (b, 1)
    elif advantages.shape == logp.shape:
        if importance_sampling_level == "sequence":
            raise ValueError("per-token advantages need importance_sampling_level='token'")
        adv = advantages.to(logp.dtype)  # (b, T)
    else:
        raise ValueError(f"advantages must be (b,) or (b, T) = {tuple(logp.shape)}, got {tuple(advantages.shape)}")
    if importance_sampling_level == "sequence":
        ratio = torch.exp(sequence_log_ratio(logp, old_logp, mask))[:, None].expand_as(logp)  # (b, T): s_i on every token
    elif importance_sampling_level == "token":
        ratio = torch.exp(logp - old_logp)  # (b, T)
    else:
        raise ValueError(f"importance_sampling_level must be token or sequence, got {importance_sampling_level!r}")
    clipped = ratio.clamp(1 - epsilon, 1 + epsilon_high)  # (b, T)
    per_token = -torch.min(ratio * adv, clipped * adv)  # (b, T)
    if token_weights is not None:
        per_token = per_token * token_weights.to(per_token.dtype)  # (b, T)
    stats = {"tokens": mask.sum().detach()}
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp")
        kl = k3_kl(logp, ref_logp)  # (b, T)
        per_token = per_token + beta * kl
        stats["kl_sum"] = (kl.detach() * mask).sum()
    loss = normalizer.aggregate(per_token, mask)
    if entropy_coef > 0:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs the policy's entropy")
        loss = loss - entropy_coef * (entropy * mask).sum() / max(normalizer.num_tokens, 1)  # the batch's token mean
        stats["policy_entropy_sum"] = (entropy.detach() * mask).sum()
    with torch.no_grad():
        low = (ratio < 1 - epsilon) & (adv < 0)  # pessimistic bound active on the low side
        high = (ratio > 1 + epsilon_high) & (adv > 0)
        stats["clip_low_tokens"] = (low * mask).sum()
        stats["clip_high_tokens"] = (high * mask).sum()
        stats["ratio_sum"] = (ratio * mask).sum()
        if importance_sampling_level == "sequence":
            rows = mask.sum(-1) > 0  # (b,)
            stats["sequences"] = rows.sum()
            stats["clipped_sequences"] = ((low | high)[:, 0] & rows).sum()
    return loss, stats
