"""GRPO maths on hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from rl_reasoning.grpo import LossNormalizer, group_advantages, group_reward_std, k3_kl, policy_loss


def test_group_advantages_scaled_by_group_std():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, group_size=4, scale_rewards="group")
    std = math.sqrt(((0.5**2) * 4) / 3)  # unbiased std of [1,0,0,1]
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]) / torch.tensor([std + 1e-4] * 4 + [1e-4] * 4)
    torch.testing.assert_close(adv, expected)


def test_group_advantages_batch_and_none():
    r = torch.tensor([1.0, 0.0, 3.0, 3.0])
    none = group_advantages(r, 2, "none")
    torch.testing.assert_close(none, torch.tensor([0.5, -0.5, 0.0, 0.0]))
    batch = group_advantages(r, 2, "batch")
    std = torch.tensor([1.0, 0.0, 3.0, 3.0]).std()
    torch.testing.assert_close(batch, torch.tensor([0.5, -0.5, 0.0, 0.0]) / (std + 1e-4))


def test_nan_rewards_are_left_out():
    r = torch.tensor([1.0, float("nan"), 0.0, 5.0, float("nan"), float("nan")])
    adv = group_advantages(r, 3, "none")
    torch.testing.assert_close(adv, torch.tensor([0.5, 0.0, -0.5, 0.0, 0.0, 0.0]))
    std = group_reward_std(r, 3)
    torch.testing.assert_close(std, torch.tensor([math.sqrt(0.5), 0.0]))


def test_k3_kl_values():
    logp = torch.tensor([[0.0, -1.0]])
    ref = torch.tensor([[0.0, -2.0]])
    # delta = ref - logp = [0, -1] -> exp(-1) + 1 - 1
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor([[0.0, math.exp(-1)]]))


# Two sequences, three token slots; the second sequence has two real tokens.
LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def _norm(loss_type):
    return LossNormalizer(loss_type, num_sequences=2, num_tokens=5, max_new_tokens=4)


@pytest.mark.parametrize(
    "loss_type, expected",
    [
        # on-policy ratio = 1: per-token loss = -A; A = [1, -2]
        ("grpo", ((-1 * 3) / 3 + (2 * 2) / 2) / 2),  # mean over sequences of token means = (-1 + 2) / 2
        ("dr_grpo", (-1 * 3 + 2 * 2) / (2 * 4)),  # token sum / (N * max_new_tokens)
        ("dapo", (-1 * 3 + 2 * 2) / 5),  # token sum / tokens in batch
    ],
)
def test_loss_aggregation_on_policy(loss_type, expected):
    adv = torch.tensor([1.0, -2.0])
    loss, stats = policy_loss(LOGP, LOGP, adv, MASK, _norm(loss_type))
    assert float(loss) == pytest.approx(expected)
    assert stats["clip_low_tokens"] == 0 and stats["clip_high_tokens"] == 0 and stats["tokens"] == 5


def test_clipping_and_clip_higher():
    old = torch.zeros(1, 4)
    # ratios: e^0.5=1.65, e^0.1=1.105, e^-0.5=0.61, e^0.25=1.28
    logp = torch.tensor([[0.5, 0.1, -0.5, 0.25]])
    mask = torch.ones(1, 4)
    norm = LossNormalizer("dapo", 1, 4, 4)
    pos = torch.tensor([1.0])
    loss, stats = policy_loss(logp, old, pos, mask, norm, epsilon=0.2, epsilon_high=0.28)
    # A > 0: min(r*A, clip(r, 0.8, 1.28)*A) -> [1.28, 1.105, 0.61, 1.28]  (0.61 is below 0.8 but min keeps r)
    expected = -(1.28 + math.exp(0.1) + math.exp(-0.5) + 1.28) / 4
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert stats["clip_high_tokens"] == 2 and stats["clip_low_tokens"] == 0
    # Symmetric clipping clips the 1.28 ratio too
    loss_sym, stats_sym = policy_loss(logp, old, pos, mask, norm, epsilon=0.2)
    assert float(loss_sym) == pytest.approx(-(1.2 + math.exp(0.1) + math.exp(-0.5) + 1.2) / 4, abs=1e-6)
    assert stats_sym["clip_high_tokens"] == 2
    # A < 0: max(r*|A|, clip*|A|) form -> ratio 0.61 clipped to 0.8 (low clip active), large ratios unclipped
    neg = torch.tensor([-1.0])
    loss_neg, stats_neg = policy_loss(logp, old, neg, mask, norm, epsilon=0.2, epsilon_high=0.28)
    expected_neg = (math.exp(0.5) + math.exp(0.1) + 0.8 + math.exp(0.25)) / 4
    assert float(loss_neg) == pytest.approx(expected_neg, abs=1e-6)
    assert stats_neg["clip_low_tokens"] == 1 and stats_neg["clip_high_tokens"] == 0


def test_clipped_tokens_get_no_gradient():
    old = torch.zeros(1, 2)
    logp = torch.tensor([[0.5, 0.0]], requires_grad=True)
    loss, _ = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), LossNormalizer("dapo", 1, 2, 2), epsilon=0.2)
    loss.backward()
    assert logp.grad[0, 0] == 0  # ratio 1.65 > 1.2 with A > 0: clipped
    assert logp.grad[0, 1] == pytest.approx(-0.5)  # d(-r*A/2)/dlogp at r=1


def test_kl_term_added_with_beta():
    logp = torch.tensor([[0.0, -1.0]])
    ref = torch.tensor([[0.0, -2.0]])
    mask = torch.ones(1, 2)
    norm = LossNormalizer("dapo", 1, 2, 2)
    loss, stats = policy_loss(logp, logp, torch.tensor([0.0]), mask, norm, beta=0.5, ref_logp=ref)
    assert float(loss) == pytest.approx(0.5 * math.exp(-1) / 2)
    assert stats["kl_sum"] == pytest.approx(math.exp(-1))
    with pytest.raises(ValueError):
        policy_loss(logp, logp, torch.tensor([0.0]), mask, norm, beta=0.5)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batches_sum_to_the_full_batch_gradient(loss_type):
    torch.manual_seed(0)
    N, T = 6, 5
    base = torch.randn(N, T)
    old = base + 0.1 * torch.randn(N, T)
    adv = torch.randn(N)
    mask = (torch.rand(N, T) > 0.3).long()
    mask[:, 0] = 1
    norm = LossNormalizer(loss_type, N, int(mask.sum()), T)

    full = base.clone().requires_grad_(True)
    policy_loss(full, old, adv, mask, norm, epsilon=0.2, epsilon_high=0.3)[0].backward()

    split = base.clone().requires_grad_(True)
    for idx in (torch.tensor([0, 3]), torch.tensor([1, 2, 5]), torch.tensor([4])):
        policy_loss(split[idx], old[idx], adv[idx], mask[idx], norm, epsilon=0.2, epsilon_high=0.3)[0].backward()
    torch.testing.assert_close(full.grad, split.grad)


def test_group_std_matches_a_per_group_reference():
    """The vectorised std (shared with the advantages) equals torch.std group by group, NaNs left out."""
    torch.manual_seed(0)
    r = torch.randn(40)
    r[torch.rand(40) < 0.3] = float("nan")
    r[:4] = float("nan")  # a group with no valid reward
    expected = []
    for group in r.view(-1, 4):
        valid = group[~torch.isnan(group)]
        expected.append(float(valid.std()) if valid.numel() > 1 else 0.0)
    torch.testing.assert_close(group_reward_std(r, 4), torch.tensor(expected))


def test_equal_rewards_give_exactly_zero_advantage():
    """torch.std of eight 0.7s is 6e-8, not 0: the advantages of an all-equal group are set to exactly 0."""
    r = torch.tensor([0.7] * 8 + [0.7] * 7 + [0.1])
    for scale in ("group", "batch", "none"):
        adv = group_advantages(r, 8, scale)
        assert torch.count_nonzero(adv[:8]) == 0 and torch.count_nonzero(adv[8:]) == 8


# ---- other advantage estimators (grpo.advantage_estimator), hand-computed ----


def test_rloo_baseline_is_the_mean_of_the_other_samples():
    from rl_reasoning.grpo import rloo_advantages

    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4)
    # A_0 = 1 - (0 + 0 + 1) / 3 = 2/3; A_1 = 0 - (1 + 0 + 1) / 3 = -2/3; no std scaling
    assert torch.allclose(adv, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    # NaN rewards leave the baseline: A_0 = 1 - (0 + 0) / 2; a group with one valid reward has none
    adv = rloo_advantages(torch.tensor([1.0, float("nan"), 0.0, 0.0, 5.0, float("nan"), float("nan"), float("nan")]), 4)
    assert torch.allclose(adv, torch.tensor([1.0, 0.0, -0.5, -0.5, 0.0, 0.0, 0.0, 0.0]))
    assert torch.equal(rloo_advantages(torch.tensor([0.3, 0.3, 0.3, 0.3]), 4), torch.zeros(4))  # equal rewards: no signal


def test_reinforce_scores_and_the_batch_normalisation():
    from rl_reasoning.grpo import reinforce_scores, whiten, whitening_sums

    rewards = torch.tensor([1.0, 0.0, float("nan"), 3.0])
    assert torch.equal(reinforce_scores(rewards, 2, baseline=False), torch.tensor([1.0, 0.0, 0.0, 3.0]))
    assert torch.equal(reinforce_scores(rewards, 2, baseline=True), torch.tensor([0.5, -0.5, 0.0, 0.0]))
    # per-row values weigh by their trained tokens: [1] x 1 token and [3] x 3 tokens -> tokens 1, 3, 3, 3:
    # mean 2.5, unbiased variance (1.5^2 + 3 * 0.5^2) / 3 = 1
    values, mask = torch.tensor([1.0, 3.0]), torch.tensor([[1, 0, 0], [1, 1, 1]])
    sums = whitening_sums(values, mask)
    assert sums == {"count": 4.0, "sum": 10.0, "sum_sq": 28.0}
    assert torch.allclose(whiten(values, sums), torch.tensor([-1.5, 0.5]), atol=1e-6)
    # the same values given per token whiten alike
    per_token = values[:, None].expand(2, 3) * mask
    assert whitening_sums(per_token, mask) == sums
    # sums from several processes add up to the whole batch's
    halves = [whitening_sums(values[i : i + 1], mask[i : i + 1]) for i in range(2)]
    assert {k: sum(h[k] for h in halves) for k in sums} == sums
    assert torch.equal(whiten(torch.tensor([2.0]), {"count": 1.0, "sum": 2.0, "sum_sq": 4.0}), torch.zeros(1))


def test_reinforce_plus_plus_folds_the_kl_into_the_return():
    from rl_reasoning.grpo import kl_folded_returns

    sampler = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0]])  # KL_t = log pi_old - log pi_ref = 0.5, 0, -1
    returns, kl = kl_folded_returns(torch.tensor([1.0]), sampler, ref, torch.ones(1, 3), beta=0.5)
    # G_t = 1 - 0.5 * sum_{i >= t} KL_i: to go 0.5 + 0 - 1 = -0.5, then -1, -1
    assert torch.allclose(returns, torch.tensor([[1.25, 1.5, 1.5]]))
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, -1.0]]))
    returns, _ = kl_folded_returns(torch.tensor([1.0]), sampler, ref, torch.tensor([[1, 1, 0]]), beta=0.5)
    assert torch.allclose(returns, torch.tensor([[0.75, 1.0, 0.0]]))  # an untrained token neither pays nor is trained
