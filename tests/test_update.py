"""The update's planning on hand-built tensors, and the whole update against a plain one-batch reference."""

from __future__ import annotations

import pytest
import torch

from rl_reasoning.grpo import LossNormalizer, group_advantages, policy_loss, zero_variance_groups
from rl_reasoning.update import dropped_rows, loss_mask, normalizer_counts, plan_micro_batches, trained_tokens

G = 2
# Three groups of two completions, four token slots; group 1 (rows 2, 3) has equal rewards.
REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.0, 2.0])
COMPLETION_MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
TRUNCATED = torch.tensor([False, False, True, False, True, False])


def test_dropped_rows_cover_whole_zero_variance_groups_and_only_when_enabled():
    assert dropped_rows(zero_variance_groups(REWARDS, G), G, enabled=True).tolist() == [False, False, True, True, False, False]
    assert not dropped_rows(zero_variance_groups(REWARDS, G), G, enabled=False).any()
    tenths = torch.tensor([0.7] * 8 + [0.7] * 7 + [0.1])  # torch.std of eight 0.7s is 6e-8, not 0
    assert dropped_rows(zero_variance_groups(tenths, 8), 8, enabled=True).tolist() == [True] * 8 + [False] * 8
    one_valid = torch.tensor([1.0, float("nan"), 0.0, 1.0])  # a single valid reward has no baseline: no signal either
    assert dropped_rows(zero_variance_groups(one_valid, 2), 2, enabled=True).tolist() == [True, True, False, False]


def test_loss_mask_drops_nan_rewards_truncated_and_dropped_rows():
    rewards = REWARDS.clone()
    rewards[1] = float("nan")
    dropped = torch.tensor([False, False, True, True, False, False])
    mask = loss_mask(COMPLETION_MASK, rewards, TRUNCATED, dropped, mask_truncated=True)
    assert mask.sum(-1).tolist() == [3, 0, 0, 0, 0, 3]  # row 1: no reward; 2, 3: dropped; 4: truncated
    kept = loss_mask(COMPLETION_MASK, REWARDS, TRUNCATED, torch.zeros(6, dtype=torch.bool), mask_truncated=False)
    assert torch.equal(kept, COMPLETION_MASK) and kept is not COMPLETION_MASK  # a copy, never the rollout's own mask


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_dropped_groups_leave_every_normaliser(loss_type):
    """With DAPO's filter, the loss of the whole batch equals the loss of the batch without the
    zero-variance groups, for all three aggregations (grpo and dr_grpo used to keep counting them)."""
    torch.manual_seed(0)
    logp, old = torch.randn(6, 4), torch.randn(6, 4)
    adv = group_advantages(REWARDS, G, "group")
    dropped = dropped_rows(zero_variance_groups(REWARDS, G), G, enabled=True)
    mask = loss_mask(COMPLETION_MASK, REWARDS, TRUNCATED, dropped, mask_truncated=False)
    counts = normalizer_counts(mask, dropped)
    assert counts == {"sequences": 4, "tokens": 12}
    full, _ = policy_loss(logp, old, adv, mask, LossNormalizer(loss_type, counts["sequences"], counts["tokens"], 4))

    keep = torch.tensor([0, 1, 4, 5])  # the same batch without group 1
    alone = LossNormalizer(loss_type, len(keep), int(mask[keep].sum()), 4)
    expected, _ = policy_loss(logp[keep], old[keep], adv[keep], mask[keep], alone)
    assert float(full) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_a_batch_whose_groups_are_all_dropped_has_a_zero_finite_loss(loss_type):
    """Several processes run every row even when all are masked: the normalisers are 0 then, and
    the loss must be 0 with a zero gradient, not 0/0."""
    flat = torch.tensor([0.5, 0.5, 1.0, 1.0, 0.0, 0.0])
    dropped = dropped_rows(zero_variance_groups(flat, G), G, enabled=True)
    mask = loss_mask(COMPLETION_MASK, flat, TRUNCATED, dropped, mask_truncated=False)
    counts = normalizer_counts(mask, dropped)
    assert counts == {"sequences": 0, "tokens": 0}
    logp = torch.randn(6, 4, requires_grad=True)
    loss, _ = policy_loss(logp, torch.randn(6, 4), group_advantages(flat, G), mask, LossNormalizer(loss_type, 0, 0, 4))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.count_nonzero(logp.grad) == 0 and torch.isfinite(logp.grad).all()


def test_masked_but_kept_sequences_still_count_as_sequences():
    """A completion without a reward (or truncated and masked) stays in N, as in TRL; only dropped groups leave it."""
    rewards = REWARDS.clone()
    rewards[0] = float("nan")
    dropped = torch.zeros(6, dtype=torch.bool)
    mask = loss_mask(COMPLETION_MASK, rewards, TRUNCATED, dropped, mask_truncated=True)
    assert normalizer_counts(mask, dropped) == {"sequences": 6, "tokens": 2 + 1 + 3}


def plan(advantages, lengths, prefix_grouping, skip_zero_advantage=True, keep_every_row=False, micro=2, prompt_lengths=None):
    prompt_lengths = torch.tensor([5, 5, 3, 3, 4, 4]) if prompt_lengths is None else prompt_lengths
    out = plan_micro_batches(torch.tensor(lengths), prompt_lengths, torch.tensor(advantages), micro, G, prefix_grouping,
                             skip_zero_advantage=skip_zero_advantage, keep_every_row=keep_every_row)
    return [idx.tolist() for idx in out]


def test_micro_batches_are_length_sorted_and_skip_rows_without_gradient():
    adv = [1.0, -1.0, 0.0, 0.0, 0.5, -0.5]
    lengths = [3, 2, 4, 1, 0, 3]  # row 4 has no trained token
    # total lengths 8, 7, 7, 4, 4, 7 -> trainable rows {0, 1, 5} sorted stably by length: 1, 5, 0
    assert plan(adv, lengths, prefix_grouping=False) == [[1, 5], [0]]
    # zero-advantage rows are run when they can carry a gradient (beta > 0 or a router loss)
    assert plan(adv, lengths, prefix_grouping=False, skip_zero_advantage=False) == [[3, 1], [2, 5], [0]]
    # several processes: every row, so every rank runs the same number of micro-batches
    assert plan(adv, lengths, prefix_grouping=False, keep_every_row=True) == [[3, 4], [1, 2], [5, 0]]


def test_prefix_grouped_micro_batches_never_mix_prompts():
    adv = [1.0, -1.0, 1.0, -1.0, 0.5, -0.5]
    lengths = [3, 2, 4, 1, 2, 3]
    batches = plan(adv, lengths, prefix_grouping=True, micro=4)
    assert batches == [[1, 0], [3, 2], [4, 5]]
    assert all(len({row // G for row in idx}) == 1 for idx in batches)
    assert plan(adv, lengths, prefix_grouping=True, micro=1) == [[1], [0], [3], [2], [4], [5]]


def test_a_token_budget_packs_length_sorted_rows_while_their_padded_size_fits():
    lengths, prompts = torch.tensor([3, 2, 4, 1, 2, 3]), torch.tensor([5, 5, 3, 3, 4, 4])
    adv = torch.ones(6)

    def budget_plan(budget, grouped):
        out = plan_micro_batches(lengths, prompts, adv, 99, G, grouped, skip_zero_advantage=True, keep_every_row=False,
                                 token_budget=budget)
        return [idx.tolist() for idx in out]

    # sorted by prompt + completion: rows 3 (3+1), 4 (4+2), 1 (5+2), 2 (3+4), 5 (4+3), 0 (5+3);
    # padded size = rows x (widest prompt + longest completion): [3, 4] = 2 x 6 = 12, adding 1 makes 3 x 7 = 21 > 16
    assert budget_plan(16, grouped=False) == [[3, 4], [1], [2, 5], [0]]
    assert budget_plan(1, grouped=False) == [[3], [4], [1], [2], [5], [0]]  # a row larger than the budget runs alone
    assert budget_plan(10_000, grouped=False) == [[3, 4, 1, 2, 5, 0]]
    # grouped: one prompt per micro-batch, the prompt counted once: [4, 5] = 4 + 2 x 3 = 10; [1, 0] = 5 + 2 x 3 = 11
    assert budget_plan(10, grouped=True) == [[1], [0], [3], [2], [4, 5]]
    assert budget_plan(11, grouped=True) == [[1, 0], [3, 2], [4, 5]]


def test_trained_tokens_count_a_grouped_prompt_once_per_micro_batch():
    micro = [torch.tensor([1, 0]), torch.tensor([5])]
    lengths, prompt_lengths = torch.tensor([3, 2, 4, 1, 2, 3]), torch.tensor([5, 5, 3, 3, 4, 4])
    assert trained_tokens(micro, lengths, prompt_lengths, prefix_grouping=False) == (3 + 2 + 5 + 5) + (3 + 4)
    assert trained_tokens(micro, lengths, prompt_lengths, prefix_grouping=True) == (3 + 2 + 5) + (3 + 4)


def sgd_update(cfg, model, rollout, advantages, mask, dropped):
    """One PolicyUpdate call with plain SGD at lr 1 (so the weights move by exactly minus the
    gradient); returns (the update, its statistics)."""
    from accelerate import Accelerator

    from rl_reasoning.distributed import Collective
    from rl_reasoning.update import PolicyUpdate

    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    update = PolicyUpdate(cfg, accelerator, model, optimizer, scheduler, Collective(accelerator), moe=None)
    return update, update(rollout, advantages, mask, dropped)


@pytest.mark.parametrize("plan", ["rows", "tokens"])
@pytest.mark.parametrize("prefix_grouping", [True, False])
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_the_update_equals_one_plain_full_batch_step(tiny, prefix_grouping, loss_type, plan):
    """PolicyUpdate (micro-batches of 3 rows, or planned by a 14-token budget; length-sorted,
    prefix-grouped or not, zero-advantage rows skipped, a dropped group) moves the weights exactly
    as one SGD step on the plain full-batch loss of the same rollout does."""

    from rl_reasoning.config import load_config
    from rl_reasoning.engine import RolloutBatch
    from rl_reasoning.logprobs import completion_logprobs

    model, tok = tiny
    torch.manual_seed(1)
    P, Lp, Lc = 3, 4, 5
    prompt_ids = torch.randint(3, len(tok), (P, Lp)).repeat_interleave(G, 0)  # (N, Lp)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[2:4, 0] = 0  # a shorter prompt, left-padded
    completion_ids = torch.randint(3, len(tok), (P * G, Lc))  # (N, Lc)
    lengths = torch.tensor([5, 3, 4, 2, 5, 1])
    completion_mask = (torch.arange(Lc)[None] < lengths[:, None]).long()
    rewards = torch.tensor([1.0, 0.0, 0.3, 0.3, 0.0, 1.0])  # group 1 has zero variance
    with torch.no_grad():
        old = completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, 1.0) + 0.05  # off-policy
    rollout = RolloutBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, old * completion_mask, torch.zeros(P * G, Lc),
                           torch.zeros(P * G, dtype=torch.bool), [""] * (P * G), G)
    advantages = group_advantages(rewards, G, "group")
    dropped = dropped_rows(zero_variance_groups(rewards, G), G, enabled=True)
    mask = loss_mask(completion_mask, rewards, rollout.truncated, dropped, mask_truncated=False)

    cfg = load_config(None, [f"grpo.loss_type={loss_type}", "rollout.max_new_tokens=5", "rollout.temperature=1.0",
                             "optim.micro_batch_size=3" if plan == "rows" else "optim.micro_batch_tokens=14",
                             f"optim.prefix_grouping={str(prefix_grouping).lower()}",
                             "optim.max_grad_norm=0", "grpo.epsilon_high=0.3"])
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    update, stats = sgd_update(cfg, model, rollout, advantages, mask, dropped)
    assert update.prefix_grouping == prefix_grouping
    assert stats["trained_sequences"] == 4  # group 1 dropped, no row has advantage 0 otherwise
    # rows 5, 1, 0, 4 (prompts of 4 tokens; 1, 3, 5, 5 trained): 3 rows a pass and one prompt a
    # pass give 2 passes; a 14-token budget [5, 1] (2 x (4 + 3)), [0], [4], or grouped [1, 0] (4 + 2 x 5), [5, 4]
    assert stats["micro_batches"] == {"rows": 2, "tokens": 2 if prefix_grouping else 3}[plan]

    reference = {n: p.detach().clone().requires_grad_(True) for n, p in start.items()}
    logp = torch.func.functional_call(model, reference, (), dict(
        input_ids=torch.cat([prompt_ids, completion_ids], 1), attention_mask=torch.cat([prompt_mask, completion_mask], 1),
        position_ids=(torch.cat([prompt_mask, completion_mask], 1).cumsum(-1) - 1).clamp(min=0), use_cache=False,
    )).logits[:, Lp - 1 : -1].float().log_softmax(-1).gather(-1, completion_ids[..., None]).squeeze(-1)  # (N, Lc)
    counts = normalizer_counts(mask, dropped)
    loss, _ = policy_loss(logp, rollout.logprobs, advantages, mask, LossNormalizer(loss_type, counts["sequences"], counts["tokens"], 5),
                          epsilon=0.2, epsilon_high=0.3)
    loss.backward()
    assert stats["loss"] == pytest.approx(float(loss.detach()), rel=1e-4, abs=1e-6)  # grpo: ~0 by symmetry (G = 2)
    moved = 0
    for name, p in model.named_parameters():
        expected = start[name] - reference[name].grad
        torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-6)
        moved += int(not torch.equal(p.detach(), start[name]))
    assert moved > 0


def test_top_entropy_quantile_trains_exactly_the_highest_entropy_tokens(tiny, monkeypatch):
    """grpo.top_entropy_quantile = 0.25 through the whole update (two micro-batches): d loss / d log p
    is non-zero at exactly the quarter of the trained tokens whose sampling entropy (the rollout's,
    hand-built here, not the model's) is highest, and exactly 0 at every other token, including
    the highest-entropy tokens of all, in a row without a reward (never trained)."""
    import rl_reasoning.update as update_module
    from rl_reasoning.config import load_config
    from rl_reasoning.engine import RolloutBatch
    from rl_reasoning.logprobs import completion_logprobs

    model, tok = tiny
    torch.manual_seed(2)
    groups, size, Lp, Lc = 2, 3, 4, 6
    N = groups * size
    prompt_ids = torch.randint(3, len(tok), (groups, Lp)).repeat_interleave(size, 0)  # (N, Lp)
    prompt_mask = torch.ones_like(prompt_ids)
    completion_ids = torch.randint(3, len(tok), (N, Lc))  # (N, Lc), rows distinct
    lengths = torch.tensor([5, 4, 6, 4, 3, 4])
    completion_mask = (torch.arange(Lc)[None] < lengths[:, None]).long()
    rewards = torch.tensor([1.0, 0.0, float("nan"), 0.2, 0.9, 0.5])  # row 2: no reward; every other advantage is non-zero
    entropies = (torch.randperm(N * Lc).float().view(N, Lc) / 10 + 0.05) * completion_mask  # distinct, in no order
    entropies[2] = (100.0 + torch.arange(Lc)) * completion_mask[2]  # the untrained row holds the highest entropies
    with torch.no_grad():
        old = completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, 1.0) * completion_mask  # on-policy
    rollout = RolloutBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, old, entropies,
                           torch.zeros(N, dtype=torch.bool), [""] * N, size)
    advantages = group_advantages(rewards, size, "group")
    dropped = torch.zeros(N, dtype=torch.bool)
    mask = loss_mask(completion_mask, rewards, rollout.truncated, dropped, mask_truncated=False)
    assert int(mask.sum()) == 20 and (advantages[mask.sum(-1) > 0] != 0).all()

    grads, seen = torch.zeros(N, Lc), []  # d loss / d log p of each token, summed over micro-batches

    def recording(*args, **kwargs):  # the update's own log-prob function, with a hook on its output
        out = completion_logprobs(*args, **kwargs)
        logp, c_ids = (out[0] if isinstance(out, tuple) else out), args[3]  # (b, T'), (b, T')
        rows = [next(r for r in range(N) if torch.equal(completion_ids[r, : c_ids.shape[1]], ids)) for ids in c_ids]
        seen.extend(rows)

        def keep(grad):
            for k, r in enumerate(rows):
                grads[r, : grad.shape[1]] += grad[k].detach()

        logp.register_hook(keep)
        return out

    monkeypatch.setattr(update_module, "completion_logprobs", recording)
    cfg = load_config(None, ["grpo.top_entropy_quantile=0.25", "rollout.temperature=1.0", "rollout.max_new_tokens=6",
                             "optim.prefix_grouping=false", "optim.micro_batch_size=2", "optim.max_grad_norm=0"])
    _, stats = sgd_update(cfg, model, rollout, advantages, mask, dropped)
    assert sorted(seen) == [0, 1, 3, 4, 5]  # every trained row ran through the wrapped function, in three micro-batches

    trained = [(r, t) for r in range(N) for t in range(Lc) if mask[r, t]]
    top = sorted(trained, key=lambda rt: -float(entropies[rt]))[:5]  # the highest-entropy quarter of the 20 trained tokens
    assert {(r, t) for r in range(N) for t in range(Lc) if grads[r, t] != 0} == set(top)
    assert stats["entropy"]["entropy/selected_frac"] == 0.25


def test_a_token_budget_is_refused_with_several_processes(tiny):
    """Every DDP rank must run the same number of micro-batches; a token budget plans them per rank."""
    from types import SimpleNamespace

    from rl_reasoning.config import load_config
    from rl_reasoning.errors import UserError
    from rl_reasoning.update import PolicyUpdate

    model, _ = tiny
    cfg = load_config(None, ["optim.micro_batch_tokens=512"])
    two_ranks = SimpleNamespace(world=2)
    with pytest.raises(UserError, match="optim.micro_batch_tokens: single-process only"):
        PolicyUpdate(cfg, None, model, None, None, two_ranks, moe=None)
