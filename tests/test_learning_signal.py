"""GSPO's sequence-level ratio, the top-entropy token selection and the entropy bonus (issue #19):
hand-computed tensors first, then the tiny dense model and the tiny Mixtral."""

from __future__ import annotations

import math

import pytest
import torch

from rl_reasoning.config import load_config
from rl_reasoning.errors import ConfigError
from rl_reasoning.grpo import AdaptiveEntropy, LossNormalizer, policy_loss, sequence_log_ratio
from rl_reasoning.jsonl import read_records
from rl_reasoning.logprobs import (
    completion_logprobs,
    completion_logprobs_and_entropy,
    grouped_completion_logprobs,
    token_logprobs,
)
from rl_reasoning.update import entropy_selection
from tests.test_trainer import train


class OneProcess:
    world = 1


# --------------------------------------------------------------------------- GSPO on hand-built tensors


def test_sequence_log_ratio_is_the_masked_mean_of_token_log_ratios():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    old = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # row 0: (0.5 + 0 - 1) / 3; row 1: (1 + 0) / 2, the padded token (0 - 5) ignored
    assert sequence_log_ratio(logp, old, mask).tolist() == pytest.approx([-0.5 / 3, 0.5])
    assert sequence_log_ratio(torch.tensor([[50.0]]), torch.tensor([[0.0]]), torch.ones(1, 1)).item() == 10.0  # clamped, as verl


def test_gspo_loss_and_gradient_by_hand():
    """loss_type grpo: J = (1/N) sum_i min(s_i A_i, clip(s_i) A_i); gradient s_i A_i / |y_i| on each
    token of an unclipped sequence, 0 on every token of a clipped one."""
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.02, 0.01, 0.0], [0.6, 0.6, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([1.0, 1.0])
    norm = LossNormalizer("grpo", num_sequences=2, num_tokens=5, max_new_tokens=3)
    loss, stats = policy_loss(logp, old, adv, mask, norm, epsilon=0.2, importance_sampling_level="sequence")
    s0 = math.exp(0.01)  # row 1's s = exp(0.6) is above 1 + 0.2: clipped at 1.2
    assert loss.item() == pytest.approx(-(s0 * 1.0 + 1.2 * 1.0) / 2)
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-s0 / 3 / 2] * 3)
    assert logp.grad[1].tolist() == pytest.approx([0.0, 0.0, 0.0])
    assert stats["sequences"] == 2 and stats["clipped_sequences"] == 1
    # token level on the same tensors clips token by token instead: row 0 is not clipped at all
    _, token_stats = policy_loss(logp.detach(), old, adv, mask, norm, epsilon=0.2)
    assert token_stats["clip_high_tokens"] == 2 and "sequences" not in token_stats


def test_gspo_equals_grpo_on_policy():
    """With logp == logp_old every ratio is 1: the sequence and token levels give the same loss and gradient."""
    torch.manual_seed(0)
    old = torch.randn(3, 5)
    mask = (torch.rand(3, 5) > 0.2).float()
    adv = torch.tensor([0.5, -1.0, 2.0])
    grads = []
    for level in ("token", "sequence"):
        logp = old.clone().requires_grad_(True)
        loss, _ = policy_loss(logp, old, adv, mask, LossNormalizer("grpo", 3, int(mask.sum()), 5), importance_sampling_level=level)
        loss.backward()
        grads.append((loss.item(), logp.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0])
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-7)


# --------------------------------------------------------------------------- entropy selection


def test_entropy_selection_keeps_the_top_quantile_of_trained_tokens():
    entropies = torch.tensor([[0.1, 0.9, 0.5, 7.0], [0.3, 0.7, 0.2, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # the 7.0 is padding: not a candidate
    keep, stats = entropy_selection(entropies, mask, 0.25, OneProcess())
    # trained entropies: 0.1 0.9 0.5 0.3 0.7 0.2 0.0 -> the 0.75 quantile is 0.6: 0.9 and 0.7 kept
    assert keep.tolist() == [[0, 1, 0, 0], [0, 1, 0, 0]]
    assert stats["entropy/selection_threshold"] == pytest.approx(0.6)
    assert stats["entropy/selected_frac"] == pytest.approx(2 / 7)
    assert stats["entropy/token_p50"] == pytest.approx(0.3)
    everything, stats = entropy_selection(entropies, mask, 1.0, OneProcess())
    assert everything.tolist() == [[1.0] * 4] * 2 and "entropy/selection_threshold" not in stats


def test_entropy_selection_zeroes_the_policy_gradient_of_low_entropy_tokens_only():
    logp = torch.zeros(1, 4, requires_grad=True)
    keep = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    loss, _ = policy_loss(logp, torch.zeros(1, 4), torch.tensor([1.0]), torch.ones(1, 4), LossNormalizer("dapo", 1, 4, 4), token_weights=keep)
    loss.backward()
    assert logp.grad.tolist() == [[-0.25, 0.0, -0.25, 0.0]]  # the normaliser still counts all 4 tokens, as in TRL


# --------------------------------------------------------------------------- entropy bonus


def test_entropy_and_its_gradient_by_hand():
    """H = -sum p log p of softmax(z), and dH/dz_k = -p_k (log p_k + H), from the fused form."""
    z = torch.tensor([[[2.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]]], requires_grad=True)  # (1, 2, 4)
    logp, entropy = token_logprobs(z, torch.tensor([[0, 3]]), with_entropy=True)
    p = torch.softmax(z.detach(), -1)
    assert entropy.detach()[0].tolist() == pytest.approx((-(p * p.log()).sum(-1))[0].tolist())
    assert entropy[0, 1].item() == pytest.approx(math.log(4))  # uniform over 4
    assert logp.detach()[0].tolist() == pytest.approx([p[0, 0, 0].log().item(), math.log(0.25)])
    entropy[0, 0].backward()
    h = entropy[0, 0].item()
    expected = -p[0, 0] * (p[0, 0].log() + h)
    assert z.grad[0, 0].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert z.grad[0, 1].abs().max() == 0


def test_entropy_bonus_loss_and_gradient_by_hand():
    """DAPO aggregation: loss = sum m (pg - c H) / sum m; with advantage 0 only the bonus is left,
    and its gradient on H is -c / tokens at trained tokens, 0 at padding."""
    logp = torch.zeros(2, 3, requires_grad=True)
    entropy = torch.tensor([[0.5, 1.0, 2.0], [0.25, 0.25, 9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    norm = LossNormalizer("dapo", num_sequences=2, num_tokens=5, max_new_tokens=3)
    loss, stats = policy_loss(logp, torch.zeros(2, 3), torch.zeros(2), mask, norm, entropy=entropy, entropy_coef=0.1)
    assert loss.item() == pytest.approx(-0.1 * (0.5 + 1.0 + 2.0 + 0.25 + 0.25) / 5)
    assert stats["policy_entropy_sum"] == pytest.approx(4.0)
    loss.backward()
    assert entropy.grad.flatten().tolist() == pytest.approx([-0.02] * 3 + [-0.02, -0.02, 0.0])
    # the bonus adds to the policy-gradient term and leaves it unchanged
    adv = torch.tensor([1.0, -1.0])
    plain, _ = policy_loss(logp.detach(), torch.zeros(2, 3), adv, mask, norm)
    both, _ = policy_loss(logp.detach(), torch.zeros(2, 3), adv, mask, norm, entropy=entropy.detach(), entropy_coef=0.1)
    assert both.item() == pytest.approx(plain.item() - 0.1 * 4.0 / 5)
    # the bonus is the batch's token mean whatever the loss type (TRL): under "grpo" too
    grpo_norm = LossNormalizer("grpo", num_sequences=2, num_tokens=5, max_new_tokens=3)
    bonus_only, _ = policy_loss(logp.detach(), torch.zeros(2, 3), torch.zeros(2), mask, grpo_norm, entropy=entropy.detach(), entropy_coef=0.1)
    assert bonus_only.item() == pytest.approx(-0.1 * 4.0 / 5)
    with pytest.raises(ValueError, match="needs the policy's entropy"):
        policy_loss(logp, torch.zeros(2, 3), adv, mask, norm, entropy_coef=0.1)


def test_adaptive_entropy_gates_and_moves_the_coefficient():
    """Skywork-OR1 / TRL: applied only at or below the target; +delta then, -delta above; clamped."""
    ctl = AdaptiveEntropy(coef=0.0, target=0.2, delta=0.005, low=0.0, high=0.012)
    applied = [ctl.for_step(h) for h in (0.5, 0.1, 0.1, 0.2, 0.1, 0.3, 0.05)]
    # 0.5: above, coef 0 -> 0 (clamped at low); 0.1: applies 0, -> 0.005; applies 0.005 -> 0.01;
    # 0.2 (equal: at or below) applies 0.01 -> 0.012 (high); 0.1 applies 0.012 -> 0.012; 0.3: 0, -> 0.007; 0.05 applies 0.007
    assert applied == pytest.approx([0.0, 0.0, 0.005, 0.01, 0.012, 0.0, 0.007])
    assert ctl.coef == pytest.approx(0.012)


def test_entropies_with_gradients_equal_the_no_grad_reference_on_both_paths(tiny):
    """The plain and prefix-grouped paths give the reference path's entropies (1e-5), and the
    grouped path's entropy gradients equal the plain path's."""
    from rl_reasoning.config import RolloutConfig
    from tests.test_rollout import QUESTIONS, engine_for, prompts_for

    model, tok = tiny
    model.train()
    prompt = torch.tensor(prompts_for(tok, QUESTIONS[1:2])[0])
    batch = engine_for(model, tok).generate([prompt.tolist()], RolloutConfig(num_generations=3, max_new_tokens=8), torch.Generator().manual_seed(1))
    ids, mask = batch.completion_ids.clone(), batch.completion_mask.clone()
    mask[1, 4:] = 0
    ids[mask == 0] = tok.pad_token_id
    m = mask.bool()
    ref = completion_logprobs_and_entropy(model, batch.prompt_ids, batch.prompt_mask, ids, mask, 0.8)[1]

    def entropy_and_grads(fn):
        model.zero_grad()
        _, entropy = fn()
        (entropy * mask).sum().backward()
        return entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, g_plain = entropy_and_grads(lambda: completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, ids, mask, 0.8, with_entropy=True))
    grouped, g_grouped = entropy_and_grads(lambda: grouped_completion_logprobs(model, prompt, ids, mask, 0.8, with_entropy=True))
    assert (plain[m] - ref[m]).abs().max() < 1e-5 and (grouped[m] - ref[m]).abs().max() < 1e-5
    assert g_plain.keys() == g_grouped.keys() and g_plain
    for name, grad in g_plain.items():
        assert torch.allclose(grad, g_grouped[name], atol=1e-4 * max(1.0, float(grad.abs().max()))), name


def test_entropy_bonus_trains_every_row_and_raises_the_sampling_entropy(tiny_model_dir, arithmetic_jsonl, tmp_path):
    """On the tiny model a strong bonus (c = 1) keeps the rows with advantage 0 in the update and
    leaves the policy more random than the same run without it."""
    runs = {}
    for coeff in ("0.0", "1.0"):
        train(tiny_model_dir, arithmetic_jsonl, tmp_path / coeff, max_steps=3, eval__at_start="false", grpo__entropy_coef=coeff)
        runs[coeff] = list(read_records(tmp_path / coeff / "metrics.jsonl"))
    off, on = runs["0.0"], runs["1.0"]
    assert "entropy/policy_mean" not in off[0]
    assert on[0]["entropy/policy_mean"] == pytest.approx(on[0]["entropy"], rel=1e-3)  # before the first step: the sampler's own
    assert on[0]["update/trained_sequences"] == 8  # 2 prompts x 4: every row, whatever its advantage
    assert off[0]["entropy"] == pytest.approx(on[0]["entropy"])  # same seed, same first rollout
    assert on[-1]["entropy"] > off[-1]["entropy"] + 0.05


def test_adaptive_entropy_on_the_tiny_model_logs_the_coefficient_and_resumes_it(tiny_model_dir, arithmetic_jsonl, tmp_path):
    """Target above the tiny model's entropy: the bonus applies from step 1 and the coefficient
    climbs by delta per step; a run resumed from step 2's checkpoint continues from its coefficient."""
    extra = dict(eval__at_start="false", grpo__use_adaptive_entropy="true", grpo__entropy_target="50", grpo__entropy_coef="0.01",
                 grpo__entropy_coef_delta="0.02", save_every=2)
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=3, **extra)
    metrics = list(read_records(tmp_path / "run" / "metrics.jsonl"))
    assert [m["entropy/coef"] for m in metrics] == pytest.approx([0.01, 0.03, 0.05])
    assert all("entropy/policy_mean" in m for m in metrics)
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=4, resume="true", **extra)
    resumed = list(read_records(tmp_path / "run" / "metrics.jsonl"))
    assert [m["entropy/coef"] for m in resumed] == pytest.approx([0.01, 0.03, 0.05, 0.07])
    # below the target of a collapsed policy it never applies and decays to entropy_coef_min
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "off", max_steps=2, **{**extra, "grpo__entropy_target": "0.001", "save_every": 0})
    off = list(read_records(tmp_path / "off" / "metrics.jsonl"))
    assert [m["entropy/coef"] for m in off] == [0.0, 0.0] and all("entropy/policy_mean" not in m for m in off)


def test_entropy_bonus_on_the_tiny_mixtral(tiny_moe_dir, arithmetic_jsonl, tmp_path):
    train(tiny_moe_dir, arithmetic_jsonl, tmp_path / "moe", max_steps=1, eval__at_start="false", grpo__entropy_coef="0.01")
    (m,) = read_records(tmp_path / "moe" / "metrics.jsonl")
    assert m["entropy/policy_mean"] == pytest.approx(m["entropy"], rel=1e-3) and m["moe/aux_loss"] > 0


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("overrides, message", [
    (["grpo.importance_sampling_level=sequence"], "grpo.importance_sampling_level: 'sequence' has no effect on-policy"),
    (["grpo.importance_sampling_level=segment"], "grpo.importance_sampling_level"),
    (["grpo.top_entropy_quantile=0"], "grpo.top_entropy_quantile: must be in (0, 1]"),
    (["grpo.top_entropy_quantile=1.5"], "grpo.top_entropy_quantile: must be in (0, 1]"),
    (["grpo.entropy_coef=-0.001"], "grpo.entropy_coef: must be in [0, 1]"),
    (["grpo.entropy_target=0.3"], "grpo.entropy_target: has no effect without grpo.use_adaptive_entropy"),
    (["grpo.use_adaptive_entropy=true", "grpo.entropy_coef_min=0.5", "grpo.entropy_coef_max=0.1"],
     "grpo.entropy_coef_min: must be in [0, grpo.entropy_coef_max]"),
    (["grpo.use_adaptive_entropy=true", "rollout.backend=vllm", "rollout.vllm.recompute_logprobs=false"], "grpo.use_adaptive_entropy: needs"),
    (["rollout.backend=vllm", "rollout.vllm.recompute_logprobs=false", "grpo.top_entropy_quantile=0.2"], "needs token entropies"),
])
def test_bad_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config(None, overrides)
    assert load_config(None, ["grpo.importance_sampling_level=sequence", "grpo.num_iterations=2"]).grpo.importance_sampling_level == "sequence"


# --------------------------------------------------------------------------- on the tiny models


def test_gspo_trains_the_tiny_model_and_logs_sequence_clipping(tiny_model_dir, arithmetic_jsonl, tmp_path):
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=2, eval__at_start="false", grpo__num_iterations=2,
          grpo__importance_sampling_level="sequence", grpo__epsilon="0.0003", grpo__epsilon_high="0.0004")
    metrics = list(read_records(tmp_path / "run" / "metrics.jsonl"))
    assert all(0 <= m["clip/sequence_frac"] <= 1 for m in metrics)
    assert any(m["clip/sequence_frac"] > 0 for m in metrics), "at epsilon 3e-4 the second iteration clips some sequence"
    assert all(math.isfinite(m["loss"]) for m in metrics)


def test_top_entropy_quantile_changes_the_update_and_logs_the_selection(tiny_model_dir, arithmetic_jsonl, tmp_path):
    def weights_after(quantile, name):
        trainer, summary = train(tiny_model_dir, arithmetic_jsonl, tmp_path / name, max_steps=1, eval__at_start="false",
                                 grpo__top_entropy_quantile=quantile)
        return trainer, list(read_records(tmp_path / name / "metrics.jsonl"))[0]

    full, m_full = weights_after("1.0", "all")
    top, m_top = weights_after("0.2", "top")
    assert "entropy/selected_frac" not in m_full and m_full["entropy/token_p10"] <= m_full["entropy/token_p50"] <= m_full["entropy/token_p90"]
    assert 0.15 <= m_top["entropy/selected_frac"] <= 0.35
    assert m_top["entropy/selection_threshold"] >= m_top["entropy/token_p50"]
    differ = [n for (n, a), (_, b) in zip(full.model.named_parameters(), top.model.named_parameters()) if not torch.equal(a, b)]
    assert differ, "training on 20 % of the tokens must give a different update"


def test_gspo_on_the_tiny_mixtral(tiny_moe_dir, arithmetic_jsonl, tmp_path):
    """GSPO is recommended for MoE policies (its paper's headline); the sequence ratio and the router loss coexist."""
    train(tiny_moe_dir, arithmetic_jsonl, tmp_path / "moe", max_steps=2, eval__at_start="false", grpo__num_iterations=2,
          grpo__importance_sampling_level="sequence", grpo__epsilon="0.0003", grpo__epsilon_high="0.0004")
    metrics = list(read_records(tmp_path / "moe" / "metrics.jsonl"))
    assert all(0 <= m["clip/sequence_frac"] <= 1 and m["moe/aux_loss"] > 0 for m in metrics)
