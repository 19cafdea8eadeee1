"""DAPO dynamic sampling with refill (`grpo.dynamic_sampling`): the batch helpers on hand-built
tensors, the keep rule, the config checks, and the trainer end to end on the tiny model."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from rl_reasoning.config import load_config
from rl_reasoning.dynamic_sampling import keep_groups
from rl_reasoning.engine import RolloutBatch, concat_rollouts, rollout_seed, select_groups
from rl_reasoning.errors import ConfigError
from rl_reasoning.jsonl import read_records

from .test_trainer import learning_metrics, train

PAD = 0
ACC = "tests.reward_fns:letter_e_if_answer_even"  # 0 for odd answers: those groups never carry signal
# the accuracy reward first (it defines "informative"), plus a continuous one that makes the total vary in nearly every group
REWARDS = f"[{{name: '{ACC}'}}, {{name: 'tests.reward_fns:char_variety', weight: 0.1}}]"
QUIET = dict(eval__at_start="false", eval__at_end="false", rollout__max_new_tokens=6)


def batch(prompts: list[list[int]], completions: list[list[int]], G: int, sampler: bool = False) -> RolloutBatch:
    """A hand-built rollout: P prompts (token lists), P * G completions; log-probs -0.1 * id, entropies 0.5."""
    p_width = max(len(p) for p in prompts)
    c_width = max(max(len(c) for c in completions), 1)
    p_ids = torch.full((len(prompts), p_width), PAD)
    p_mask = torch.zeros((len(prompts), p_width), dtype=torch.long)
    for i, p in enumerate(prompts):
        p_ids[i, p_width - len(p):] = torch.tensor(p)
        p_mask[i, p_width - len(p):] = 1
    c_ids = torch.full((len(completions), c_width), PAD)
    c_mask = torch.zeros((len(completions), c_width), dtype=torch.long)
    for i, c in enumerate(completions):
        c_ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        c_mask[i, : len(c)] = 1
    logprobs = -0.1 * c_ids.float() * c_mask
    return RolloutBatch(
        prompt_ids=p_ids.repeat_interleave(G, 0), prompt_mask=p_mask.repeat_interleave(G, 0), completion_ids=c_ids, completion_mask=c_mask,
        logprobs=logprobs, entropies=0.5 * c_mask.float(), truncated=torch.tensor([len(c) == c_width for c in completions]),
        texts=[" ".join(map(str, c)) for c in completions], group_size=G, sampler_logprobs=logprobs - 0.01 if sampler else None,
    )


def rows_of(b: RolloutBatch) -> list[tuple]:
    """Each row without its padding: (prompt tokens, completion tokens, log-probs, entropies, truncated, text)."""
    out = []
    for i in range(len(b)):
        p, c = b.prompt_mask[i].bool(), b.completion_mask[i].bool()
        assert not c[int(c.sum()):].any() and not p[: len(p) - int(p.sum())].any()  # right- and left-padded
        assert (b.logprobs[i][~c] == 0).all() and (b.entropies[i][~c] == 0).all()
        assert (b.prompt_ids[i][~p] == PAD).all() and (b.completion_ids[i][~c] == PAD).all()
        out.append((b.prompt_ids[i][p].tolist(), b.completion_ids[i][c].tolist(), b.logprobs[i][c].tolist(),
                    b.entropies[i][c].tolist(), bool(b.truncated[i]), b.texts[i],
                    None if b.sampler_logprobs is None else b.sampler_logprobs[i][c].tolist()))
    return out


# ------------------------------------------------------------------ concat_rollouts / select_groups


def test_concat_left_pads_prompts_and_right_pads_completions():
    a = batch([[5, 6], [7]], [[1, 2], [3], [4, 4, 4], [9]], G=2, sampler=True)  # widths Lp 2, Lc 3
    b = batch([[8, 8, 8, 8]], [[2, 3, 4, 5, 6], [7]], G=2, sampler=True)  # widths Lp 4, Lc 5
    c = concat_rollouts([a, b], PAD)
    assert c.prompt_ids.shape == (6, 4) and c.completion_ids.shape == (6, 5) and c.logprobs.shape == (6, 5)
    assert c.group_size == 2 and len(c) == 6
    assert rows_of(c) == rows_of(a) + rows_of(b)
    assert c.prompt_ids[0].tolist() == [PAD, PAD, 5, 6] and c.prompt_mask[0].tolist() == [0, 0, 1, 1]
    assert c.completion_ids[2].tolist() == [4, 4, 4, PAD, PAD] and c.completion_mask[2].tolist() == [1, 1, 1, 0, 0]
    assert c.lengths.tolist() == [2, 1, 3, 1, 5, 1]
    assert c.prompt_ids.dtype == a.prompt_ids.dtype and c.completion_mask.dtype == a.completion_mask.dtype and c.truncated.dtype == torch.bool
    assert rows_of(concat_rollouts([a], PAD)) == rows_of(a)


def test_concat_refuses_batches_that_do_not_fit_together():
    a = batch([[5]], [[1], [2]], G=2)
    with pytest.raises(ValueError, match="group sizes differ"):
        concat_rollouts([a, batch([[5]], [[1], [2], [3]], G=3)], PAD)
    with pytest.raises(ValueError, match="sampler_logprobs"):
        concat_rollouts([a, batch([[5]], [[1], [2]], G=2, sampler=True)], PAD)
    with pytest.raises(ValueError, match="no batches"):
        concat_rollouts([], PAD)


def test_select_groups_keeps_whole_groups_in_the_given_order_and_trims_padding():
    a = batch([[5, 6], [7], [1, 2, 3]], [[1, 2], [3], [4], [9], [6, 6, 6, 6], [5]], G=2, sampler=True)
    kept = select_groups(a, [1, 0])
    assert rows_of(kept) == rows_of(a)[2:4] + rows_of(a)[0:2]
    assert kept.prompt_ids.shape == (4, 2) and kept.completion_ids.shape == (4, 2)  # the wider group 2 is gone
    one = select_groups(a, [1])
    assert one.prompt_ids.tolist() == [[7], [7]] and one.completion_ids.tolist() == [[4], [9]]
    # selecting a concatenation's second part gives that part back, padding included
    b = batch([[8, 8]], [[2, 3], [7]], G=2)
    both = concat_rollouts([batch([[1, 2, 3, 4]], [[1, 1, 1, 1, 1], [2]], G=2), b], PAD)
    back = select_groups(both, [1])
    assert rows_of(back) == rows_of(b) and back.prompt_ids.shape == b.prompt_ids.shape and back.completion_ids.shape == b.completion_ids.shape


# ------------------------------------------------------------------ the keep rule, seeds, config


@pytest.mark.parametrize("flags, size, kept", [
    ([1, 1, 0, 0], 2, [0, 1]),  # the first round suffices
    ([0, 1, 0, 1, 1, 1], 2, [1, 3]),  # informative first, in draw order; the surplus (4, 5) is discarded
    ([1, 0, 0, 1, 1, 0], 3, [0, 3, 4]),
    ([0, 1, 0, 0, 0, 0], 2, [0, 1]),  # exhausted: the earliest uninformative group fills the batch
    ([0, 0, 0, 1, 0, 0], 3, [0, 1, 3]),
    ([0, 0, 0, 0], 2, [0, 1]),  # nothing informative: the first round's groups
])
def test_keep_groups(flags, size, kept):
    assert keep_groups(torch.tensor(flags, dtype=torch.bool), size) == kept


def test_every_generation_round_has_its_own_seed():
    assert rollout_seed(3, 5) == rollout_seed(3, 5, 0) == (3 * 1_000_003 + 5 * 7_919 + 1)  # round 0: the seed of a run without refill
    seeds = {rollout_seed(seed, step, r) for seed in range(3) for step in range(200) for r in range(8)}
    assert len(seeds) == 3 * 200 * 8 and all(0 <= s < 2**63 for s in seeds)


@pytest.mark.parametrize("override, message", [
    ("grpo.max_num_gen_batches=6", "grpo.max_num_gen_batches: has no effect without grpo.dynamic_sampling: true"),
    ("grpo.dynamic_sampling_metric=reward", "grpo.dynamic_sampling_metric: has no effect without grpo.dynamic_sampling: true"),
    ("grpo.dynamic_sampling=true grpo.max_num_gen_batches=1", "grpo.max_num_gen_batches: must be >= 2"),
    ("grpo.dynamic_sampling=true grpo.max_num_gen_batches=0", "grpo.max_num_gen_batches: must be >= 2"),
    ("grpo.dynamic_sampling=true grpo.dynamic_sampling_metric=acc", "grpo.dynamic_sampling_metric: 'acc' is not valid; choose one of 'accuracy', 'reward'"),
])
def test_config_refuses_knobs_that_do_nothing(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, override.split())
    assert message in str(e.value)


def test_config_defaults():
    cfg = load_config(None, ["grpo.dynamic_sampling=true"])
    assert cfg.grpo.dynamic_sampling and cfg.grpo.dynamic_sampling_metric == "accuracy" and cfg.grpo.max_num_gen_batches == 4
    assert not load_config(None).grpo.dynamic_sampling


# ------------------------------------------------------------------ the trainer on the tiny model


def groups_by_step(run) -> dict[int, dict[str, list[dict]]]:
    out: dict[int, dict[str, list[dict]]] = {}
    for t in read_records(run / "traces.jsonl"):
        out.setdefault(t["step"], {}).setdefault(t["prompt_id"], []).append(t)
    return out


def informative(group: list[dict], name: str = ACC) -> bool:
    return len({t["rewards"][name] for t in group}) > 1


def test_refill_fills_the_batch_with_informative_groups(tiny_model_dir, arithmetic_jsonl, tmp_path):
    """Half the problems (odd answers) never carry signal, yet each step trains on B informative
    groups, with the advantages of the kept batch; the rounds that found them are counted."""
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "on", max_steps=3, rewards=REWARDS, grpo__dynamic_sampling="true", **QUIET)
    on = list(read_records(tmp_path / "on" / "metrics.jsonl"))
    assert [m["dynamic_sampling/kept_informative_groups"] for m in on] == [2] * 3
    rounds = [m["dynamic_sampling/rounds"] for m in on]
    assert max(rounds) > 1 and all(1 <= r <= 4 for r in rounds), rounds  # uninformative groups were sampled, and left out
    for m in on:
        r = m["dynamic_sampling/rounds"]
        assert m["dynamic_sampling/sampled_groups"] == 2 * r and m["dynamic_sampling/informative_groups"] >= 2
        assert m["dynamic_sampling/informative_frac"] == m["dynamic_sampling/informative_groups"] / (2 * r)
        assert m["dynamic_sampling/generated_tokens"] >= m["tokens/generated"] and m["tokens/generated"] <= 2 * 4 * 6
        assert m["groups/zero_std_frac"] == 0.0 and m["update/trained_sequences"] > 0
        assert m["time/generation"] > 0 and m["time/reward"] > 0
    for step, groups in groups_by_step(tmp_path / "on").items():
        assert len(groups) == 2 and all(len(g) == 4 and informative(g) for g in groups.values()), step
        for g in groups.values():  # advantages centred within each kept group
            assert abs(sum(t["advantage"] for t in g)) < 1e-3 and any(t["advantage"] != 0 for t in g)


def test_rounds_are_capped_and_the_first_round_fills_an_exhausted_batch(tiny_model_dir, arithmetic_jsonl, tmp_path, caplog):
    """A constant accuracy reward never gives an informative group: every step runs the capped
    number of rounds and trains on its first round's groups, with one warning for the run; without
    the knob nothing dynamic_sampling/* is logged."""
    common = dict(max_steps=2, rewards="[{name: 'tests.reward_fns:constant'}, {name: 'tests.reward_fns:char_variety', weight: 0.1}]", **QUIET)
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "off", **common)
    with caplog.at_level(logging.WARNING, logger="rl_reasoning"):
        train(tiny_model_dir, arithmetic_jsonl, tmp_path / "on", grpo__dynamic_sampling="true", grpo__max_num_gen_batches=3, **common)
    on = list(read_records(tmp_path / "on" / "metrics.jsonl"))
    assert not any(k.startswith("dynamic_sampling/") for m in read_records(tmp_path / "off" / "metrics.jsonl") for k in m)
    assert [m["dynamic_sampling/rounds"] for m in on] == [3, 3]
    assert [m["dynamic_sampling/kept_informative_groups"] for m in on] == [0, 0]
    assert [m["dynamic_sampling/sampled_groups"] for m in on] == [6, 6]
    warnings = [r.getMessage() for r in caplog.records if "dynamic sampling found" in r.getMessage()]
    assert len(warnings) == 1 and "step 1: dynamic sampling found 0 informative groups of 2 in 3 rounds" in warnings[0]
    # step 1 trains on its first round: exactly the plain run's step 1 (the total reward varies, so the update is not empty)
    off_metrics = learning_metrics(tmp_path / "off")[0]
    on_metrics = {k: v for k, v in learning_metrics(tmp_path / "on")[0].items() if not k.startswith("dynamic_sampling/") and k != "flops/step"}
    assert on_metrics == {k: v for k, v in off_metrics.items() if k != "flops/step"} and off_metrics["grad_norm"] > 0
    assert on[0]["flops/step"] > off_metrics["flops/step"]  # the two extra rounds are counted
    t_off = [t for t in read_records(tmp_path / "off" / "traces.jsonl") if t["step"] == 1]
    t_on = [t for t in read_records(tmp_path / "on" / "traces.jsonl") if t["step"] == 1]
    assert t_on == t_off
    # the extra rounds consumed prompts: step 2 starts 3 rounds later in the data than the plain run's step 2
    assert groups_by_step(tmp_path / "on")[2].keys() != groups_by_step(tmp_path / "off")[2].keys()


def test_reward_metric_filters_on_the_total(tiny_model_dir, arithmetic_jsonl, tmp_path):
    """With a continuous second reward the total varies in every group, so `dynamic_sampling_metric:
    reward` never refills, where the default (the accuracy reward) does."""
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=3, rewards=REWARDS, grpo__dynamic_sampling="true",
          grpo__dynamic_sampling_metric="reward", **QUIET)
    metrics = list(read_records(tmp_path / "run" / "metrics.jsonl"))
    assert [m["dynamic_sampling/rounds"] for m in metrics] == [1, 1, 1]
    assert [m["dynamic_sampling/kept_informative_groups"] for m in metrics] == [2, 2, 2]


def test_resume_with_refill_reproduces_an_uninterrupted_run(tiny_model_dir, arithmetic_jsonl, tmp_path):
    common = dict(rewards=REWARDS, rollout__temperature=0.9, grpo__dynamic_sampling="true", **QUIET)
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "straight", max_steps=4, **common)
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "split", max_steps=2, **common)
    train(tiny_model_dir, arithmetic_jsonl, tmp_path / "split", max_steps=4, resume="true", **common)
    straight, split = learning_metrics(tmp_path / "straight"), learning_metrics(tmp_path / "split")
    assert [m["step"] for m in split] == [1, 2, 3, 4]
    assert max(m["dynamic_sampling/rounds"] for m in straight[2:]) > 1  # refill happened after the resume
    assert straight == split
    assert list(read_records(tmp_path / "straight" / "traces.jsonl")) == list(read_records(tmp_path / "split" / "traces.jsonl"))


@pytest.mark.slow
def test_two_processes_refill_like_one(tiny_model_dir, tmp_path):
    """Data parallel: the keep decision is taken on gathered values and the kept groups are
    re-split over the processes, so 2 processes train on what 1 process does (about 15 s)."""
    from .test_distributed import launch, learning, write_recipe

    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n" for a in range(10) for b in range(4)))
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_model_dir, data, max_steps=3,
                          rewards=[{"name": ACC}, {"name": "tests.reward_fns:char_variety", "weight": 0.1}],
                          grpo={"loss_type": "dapo", "scale_rewards": "batch", "dynamic_sampling": True})
    launch(recipe, tmp_path / "single", 1)
    launch(recipe, tmp_path / "ddp", 2)
    single, ddp = learning(tmp_path / "single"), learning(tmp_path / "ddp")
    assert max(m["dynamic_sampling/rounds"] for m in single) > 1  # refilled, and the kept groups came from several rounds
    for s, d in zip(single, ddp, strict=True):
        assert {k: v for k, v in d.items() if k.startswith("dynamic_sampling/")} == {k: v for k, v in s.items() if k.startswith("dynamic_sampling/")}
        for key in ("reward/mean", "accuracy", "tokens/generated", "tokens/prompt", "update/trained_sequences", "loss", "grad_norm",
                    "advantage/abs_mean", "entropy"):
            assert d[key] == pytest.approx(s[key], rel=1e-4, abs=1e-6), key
    t_single, t_ddp = (list(read_records(tmp_path / r / "traces.jsonl")) for r in ("single", "ddp"))
    assert [(t["step"], t["prompt_id"], t["completion"]) for t in t_ddp] == [(t["step"], t["prompt_id"], t["completion"]) for t in t_single]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert len(set(summary["replica_checksums"])) == 1


@pytest.mark.slow
def test_refill_with_the_vllm_backend(vllm, vllm_model_dir, arithmetic_jsonl, tmp_path):
    """The vLLM engine goes through the same rounds: the recomputed log-probs, vLLM's own ones and
    the mismatch metrics follow the kept groups, with and without the recompute pass."""
    common = dict(max_steps=3, rewards=REWARDS, rollout__backend="vllm", grpo__dynamic_sampling="true", **QUIET)
    train(vllm_model_dir, arithmetic_jsonl, tmp_path / "recompute", grpo__num_iterations=2, **common)
    metrics = list(read_records(tmp_path / "recompute" / "metrics.jsonl"))
    assert max(m["dynamic_sampling/rounds"] for m in metrics) > 1 and max(m["dynamic_sampling/kept_informative_groups"] for m in metrics) > 0
    traces = groups_by_step(tmp_path / "recompute")
    for m in metrics:
        groups = traces[m["step"]]
        assert len(groups) == 2 and sum(informative(g) for g in groups.values()) == m["dynamic_sampling/kept_informative_groups"]
        assert m["entropy"] > 0 and m["grad_norm"] > 0 and m["vllm/logprob_abs_diff"] < 5e-3 and m["time/old_logprobs"] > 0
    train(vllm_model_dir, arithmetic_jsonl, tmp_path / "direct", rollout__vllm__recompute_logprobs="false", **common)
    direct = list(read_records(tmp_path / "direct" / "metrics.jsonl"))
    assert all("entropy" not in m for m in direct) and max(m["dynamic_sampling/rounds"] for m in direct) > 1
    assert direct[0]["ratio/mean"] == pytest.approx(1.0, abs=5e-3)


def test_batch_scaled_advantages_come_from_the_kept_batch_alone(tiny_model_dir, arithmetic_jsonl, tmp_path):
    """With `scale_rewards: batch` the advantages are divided by the std of the whole batch: after
    a refill, of the kept groups' rewards, not of every round's (the dropped groups, mostly odd
    answers scoring near 0, would change it). The recording rewards see every round."""
    from rl_reasoning.grpo import group_advantages
    from tests import reward_fns

    G, run = 4, tmp_path / "run"
    reward_fns.RECORDED.clear()
    recorded = "[{name: 'tests.reward_fns:recorded_letter_e_if_answer_even'}, {name: 'tests.reward_fns:recorded_char_variety', weight: 0.1}]"
    train(tiny_model_dir, arithmetic_jsonl, run, max_steps=3, rewards=recorded, grpo__dynamic_sampling="true",
          grpo__scale_rewards="batch", **QUIET)
    rounds = {m["step"]: m["dynamic_sampling/rounds"] for m in read_records(run / "metrics.jsonl")}
    assert max(rounds.values()) > 1, rounds
    for step in (s for s, r in rounds.items() if r > 1):
        calls = [c for c in reward_fns.RECORDED if c["step"] == step]
        accuracy, variety = ([c for c in calls if c["reward"] == name] for name in ("accuracy", "variety"))
        assert len(accuracy) == len(variety) == rounds[step]  # one call per round
        sampled = [text for c in accuracy for text in c["completions"]]  # every round's completions, in draw order
        totals = torch.tensor([s for c in accuracy for s in c["scores"]]) + 0.1 * torch.tensor([s for c in variety for s in c["scores"]])
        traces = [t for t in read_records(run / "traces.jsonl") if t["step"] == step]  # the kept batch
        groups = [sampled[g * G : (g + 1) * G] for g in range(len(sampled) // G)]
        kept = [groups.index([t["completion"] for t in traces[k * G : (k + 1) * G]]) for k in range(len(traces) // G)]
        rows = [g * G + j for g in kept for j in range(G)]
        kept_rewards = torch.tensor([t["reward"] for t in traces])
        assert kept_rewards.tolist() == pytest.approx(totals[rows].tolist(), abs=1e-6)  # the traces hold recorded rows
        advantages = [t["advantage"] for t in traces]
        assert advantages == pytest.approx(group_advantages(kept_rewards, G, "batch").tolist(), abs=1e-5)
        assert advantages != pytest.approx(group_advantages(totals, G, "batch")[rows].tolist(), abs=1e-3)  # every round's std
