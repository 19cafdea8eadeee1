"""Rollout engine on the tiny random model: shapes, masks, EOS, stop strings, truncation, seeds, log-probs."""

from __future__ import annotations

import pytest
import torch

from rl_reasoning.config import RolloutConfig
from rl_reasoning.logprobs import completion_logprobs, grouped_completion_logprobs
from rl_reasoning.rollout import RolloutEngine
from rl_reasoning.sampling import inverse_cdf_sample


def prompts_for(tokenizer, questions):
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


QUESTIONS = ["What is 3 + 4?", "Calculate 12 - 5, and then check the answer carefully please.", "9 * 8"]


def engine_for(model, tokenizer, eos=None):
    return RolloutEngine(model, tokenizer, eos if eos is not None else [tokenizer.eos_token_id], tokenizer.pad_token_id)


def test_shapes_masks_and_grouping(tiny):
    model, tok = tiny
    engine = engine_for(model, tok)
    prompts = prompts_for(tok, QUESTIONS)
    batch = engine.generate(prompts, RolloutConfig(num_generations=4, max_new_tokens=12), torch.Generator().manual_seed(0))
    N = len(QUESTIONS) * 4
    assert batch.completion_ids.shape[0] == N and batch.prompt_ids.shape[0] == N
    assert batch.completion_mask.shape == batch.completion_ids.shape == batch.logprobs.shape == batch.entropies.shape
    # prompts are repeated G times, in group order, left-padded
    for i in range(N):
        real = batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist()
        assert real == prompts[i // 4]
        assert batch.prompt_mask[i, -1] == 1
    # the mask is a prefix of ones; padding has zero log-prob and the pad id
    lengths = batch.completion_mask.sum(-1)
    for i in range(N):
        L = int(lengths[i])
        assert batch.completion_mask[i, :L].all() and not batch.completion_mask[i, L:].any()
        assert (batch.logprobs[i, L:] == 0).all() and (batch.completion_ids[i, L:] == tok.pad_token_id).all()
        assert (batch.logprobs[i, :L] <= 0).all()
    assert len(batch.texts) == N


def test_truncation_flag_when_no_eos(tiny):
    model, tok = tiny
    engine = engine_for(model, tok, eos=[10**6])  # an id outside the vocabulary: nothing can end early
    batch = engine.generate(prompts_for(tok, QUESTIONS[:2]), RolloutConfig(num_generations=2, max_new_tokens=7), torch.Generator().manual_seed(1))
    assert batch.truncated.all()
    assert (batch.completion_mask.sum(-1) == 7).all()


def test_eos_ends_completion_and_is_trained(tiny):
    model, tok = tiny
    # Declare half the vocabulary "EOS": completions end early, at different lengths.
    eos_ids = list(range(0, len(tok), 2))
    engine = engine_for(model, tok, eos=eos_ids)
    batch = engine.generate(prompts_for(tok, QUESTIONS), RolloutConfig(num_generations=4, max_new_tokens=20), torch.Generator().manual_seed(2))
    lengths = batch.completion_mask.sum(-1)
    assert lengths.min() < 20 and len(set(lengths.tolist())) > 1
    for i in range(len(batch)):
        L = int(lengths[i])
        last = int(batch.completion_ids[i, L - 1])
        if not batch.truncated[i]:
            assert last in eos_ids  # the EOS token is part of the completion (and of its mask)
            assert all(int(t) not in eos_ids for t in batch.completion_ids[i, : L - 1])
        else:
            assert L == 20


def test_greedy_is_deterministic_and_argmax(tiny):
    model, tok = tiny
    engine = engine_for(model, tok)
    prompts = prompts_for(tok, QUESTIONS[:1])
    params = RolloutConfig(num_generations=1, max_new_tokens=5, temperature=0.0)
    a = engine.generate(prompts, params)
    b = engine.generate(prompts, params)
    assert torch.equal(a.completion_ids, b.completion_ids)
    ids = torch.tensor([prompts[0]])
    for t in range(5):
        nxt = model(ids).logits[0, -1].argmax()
        assert int(nxt) == int(a.completion_ids[0, t])
        ids = torch.cat([ids, nxt.view(1, 1)], 1)


def test_stop_string_cuts_completion(tiny):
    model, tok = tiny
    engine = engine_for(model, tok)
    prompts = prompts_for(tok, QUESTIONS[:1])
    free = engine.generate(prompts, RolloutConfig(num_generations=1, max_new_tokens=30, temperature=0.0))
    text = free.texts[0]
    assert len(text) > 10
    stop = text[4:7]
    stopped = engine.generate(prompts, RolloutConfig(num_generations=1, max_new_tokens=30, temperature=0.0, stop=[stop]))
    assert stopped.texts[0] == text[: text.find(stop) + len(stop)]
    assert not stopped.truncated[0]
    L = int(stopped.completion_mask.sum())
    assert L < int(free.completion_mask.sum())
    assert torch.equal(stopped.completion_ids[0, :L], free.completion_ids[0, :L])
    assert stop in tok.decode(stopped.completion_ids[0, :L]) and stop not in tok.decode(stopped.completion_ids[0, : L - 1])


def test_same_seed_same_samples_other_seed_differs(tiny):
    model, tok = tiny
    engine = engine_for(model, tok)
    prompts = prompts_for(tok, QUESTIONS)
    params = RolloutConfig(num_generations=3, max_new_tokens=10, temperature=1.0, top_p=0.9)
    a = engine.generate(prompts, params, torch.Generator().manual_seed(5))
    b = engine.generate(prompts, params, torch.Generator().manual_seed(5))
    c = engine.generate(prompts, params, torch.Generator().manual_seed(6))
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_shared_prefix_equals_repeated_prompts(tiny):
    """Prefilling once and expanding the cache gives the same samples as prefilling G copies."""
    model, tok = tiny
    engine = engine_for(model, tok, eos=list(range(0, len(tok), 3)))
    prompts = prompts_for(tok, QUESTIONS)
    shared = engine.generate(prompts, RolloutConfig(num_generations=3, max_new_tokens=12), torch.Generator().manual_seed(9))
    repeated = engine.generate([p for p in prompts for _ in range(3)], RolloutConfig(num_generations=1, max_new_tokens=12), torch.Generator().manual_seed(9))
    assert torch.equal(shared.completion_ids, repeated.completion_ids)
    torch.testing.assert_close(shared.logprobs, repeated.logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_match_teacher_forcing(tiny, temperature):
    model, tok = tiny
    # Variable lengths (so batch compaction happens) and variable prompt lengths (left padding).
    engine = engine_for(model, tok, eos=list(range(0, len(tok), 4)))
    params = RolloutConfig(num_generations=4, max_new_tokens=16, temperature=temperature)
    batch = engine.generate(prompts_for(tok, QUESTIONS), params, torch.Generator().manual_seed(3))
    assert len(set(batch.completion_mask.sum(-1).tolist())) > 1
    with torch.no_grad():
        forced = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask, temperature)
    mask = batch.completion_mask.bool()
    assert (forced[mask] - batch.logprobs[mask]).abs().max() < 1e-4


def test_prefix_grouped_logprobs_and_gradients_equal_the_plain_path(tiny):
    """verl-style prefix grouping: the prompt run once for its G completions gives the same
    log-probs (1e-5) and the same parameter gradients as G separate prompt copies; so do both
    with the CPU shared-head attention the trainer uses (cpu_kernels.gqa_attention)."""
    from rl_reasoning.cpu_kernels import gqa_attention

    model, tok = tiny
    sharpen_attention(model)
    model.train()
    prompt = torch.tensor(prompts_for(tok, QUESTIONS[1:2])[0])
    batch = engine_for(model, tok).generate([prompt.tolist()], RolloutConfig(num_generations=4, max_new_tokens=10), torch.Generator().manual_seed(3))
    ids, mask = batch.completion_ids.clone(), batch.completion_mask.clone()
    mask[1, 6:] = 0  # ragged completions exercise the right padding
    mask[2, 2:] = 0
    ids[mask == 0] = tok.pad_token_id
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(0))

    def run(fn):
        model.zero_grad()
        logp = fn()
        (logp * weights * mask).sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    def with_gqa(fn):
        with gqa_attention(model):
            assert model.config._attn_implementation != "sdpa"
            return fn()

    plain, g_plain = run(lambda: completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, ids, mask, 0.8))
    m = mask.bool()
    others = {
        "grouped": lambda: grouped_completion_logprobs(model, prompt, ids, mask, 0.8),
        "plain+gqa": lambda: with_gqa(lambda: completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, ids, mask, 0.8)),
        "grouped+gqa": lambda: with_gqa(lambda: grouped_completion_logprobs(model, prompt, ids, mask, 0.8)),
    }
    for label, fn in others.items():
        logp, grads = run(fn)
        assert (plain[m] - logp[m]).abs().max() < 1e-5, label
        for name, grad in g_plain.items():
            scale = float(grad.abs().max())  # sharpened attention: gradients up to ~100, float rounding ~1e-3
            assert (grad - grads[name]).abs().max() <= 3e-5 * scale + 1e-6, (label, name)


def test_inverse_cdf_sampling_matches_the_distribution_and_skips_zero_probabilities():
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 2.0]]).repeat(50_000, 1)  # rows need not be normalised
    def uniforms():
        return torch.rand(len(probs), generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    tokens = inverse_cdf_sample(probs, uniforms()).view(50_000, 2)
    freq = torch.bincount(tokens[:, 0], minlength=4).float() / 50_000
    assert torch.allclose(freq, torch.tensor([0.1, 0.0, 0.6, 0.3]), atol=0.01) and freq[1] == 0
    assert (tokens[:, 1] == 3).all()
    assert torch.equal(tokens, inverse_cdf_sample(probs, uniforms()).view(50_000, 2))  # a function of the uniforms
    edges = inverse_cdf_sample(torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([0.0, 1.0 - 1e-12]))
    assert edges.tolist() == [0, 1]


def test_sharded_generation_draws_what_the_whole_batch_draws(tiny):
    """Rows [offset, offset + N) of a sharded batch sample exactly the tokens the single-process
    batch samples for them: the noise is drawn for the global batch and indexed by row."""
    model, tok = tiny
    engine = RolloutEngine(model, tok, [tok.eos_token_id], tok.pad_token_id)
    params = RolloutConfig(num_generations=3, max_new_tokens=12, temperature=1.0)
    prompts = [tok.encode("What is 3 + 4?"), tok.encode("Calculate 12 - 5. What is"), tok.encode("wait"), tok.encode("A conversation")]
    whole = engine.generate(prompts, params, torch.Generator().manual_seed(7))
    for offset_prompts in (0, 2):
        part = engine.generate(prompts[offset_prompts : offset_prompts + 2], params, torch.Generator().manual_seed(7), shard=(offset_prompts * 3, 12))
        rows = slice(offset_prompts * 3, offset_prompts * 3 + 6)
        assert part.texts == whole.texts[rows]
        assert torch.allclose(part.logprobs, whole.logprobs[rows, : part.logprobs.shape[1]], atol=1e-5)
    other = engine.generate(prompts[2:], params, torch.Generator().manual_seed(7))  # unsharded: different noise
    assert other.texts != whole.texts[6:]
    with pytest.raises(ValueError, match="shard"):
        engine.generate(prompts[:2], params, torch.Generator(), shard=(8, 12))


def test_packed_weights_decode_like_the_plain_weights(tiny):
    """The CPU fast path (oneDNN-packed linear weights) samples the same tokens with the same
    log-probs as plain nn.Linear, and leaves the model as it was."""
    from rl_reasoning.cpu_kernels import packed_linear_weights, packing_available

    model, tok = tiny
    assert packing_available(model)
    engine = RolloutEngine(model, tok, [tok.eos_token_id], tok.pad_token_id)
    prompts = [tok.encode("What is 3 + 4?"), tok.encode("Calculate 12 - 5. What is")]
    runs = {}
    for packed in (True, False):
        params = RolloutConfig(num_generations=4, max_new_tokens=16, temperature=1.0, packed_weights=packed)
        runs[packed] = engine.generate(prompts, params, torch.Generator().manual_seed(3))
    assert runs[True].texts == runs[False].texts
    assert torch.allclose(runs[True].logprobs, runs[False].logprobs, atol=1e-5)

    x = torch.randn(3, model.config.hidden_size)
    layer = model.model.layers[0].mlp.up_proj
    with packed_linear_weights(model, batch_hint=3):
        assert "forward" in vars(layer)  # routed through the packed weight
        inside = layer(x)
    assert "forward" not in vars(layer)  # restored
    assert torch.allclose(inside, layer(x), atol=1e-5)


def sharpen_attention(model, factor: float = 30.0):
    """The random tiny model attends almost uniformly, which would hide a wrong key or scale;
    larger query/key weights make every attention score matter."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(factor)
            layer.self_attn.k_proj.weight.mul_(factor)


def test_preallocated_cache_and_cpu_gqa_decode_like_transformers_defaults(tiny, monkeypatch):
    """In-place KV appends and the shared-head SDPA kernel sample the same tokens with the same
    log-probs as DynamicCache + transformers' repeat_kv path, with batch compaction exercised."""
    model, tok = tiny
    sharpen_attention(model)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA is exercised
    engine = RolloutEngine(model, tok, [tok.eos_token_id, tok.encode("e")[0]], tok.pad_token_id)  # an EOS that fires: rows finish early
    prompts = prompts_for(tok, QUESTIONS)
    params = RolloutConfig(num_generations=4, max_new_tokens=24, temperature=1.0, packed_weights=False)
    runs = {}
    for fast in (True, False):
        monkeypatch.setattr(engine, "preallocated_cache", fast)
        monkeypatch.setattr(engine, "cpu_gqa_attention", fast)
        runs[fast] = engine.generate(prompts, params, torch.Generator().manual_seed(5))
    fast, plain = runs[True], runs[False]
    assert 0 < int(fast.truncated.sum()) < len(fast)  # some rows left the batch early, some ran to the cap
    assert torch.equal(fast.completion_ids, plain.completion_ids)
    assert torch.allclose(fast.logprobs, plain.logprobs, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # restored after the rollout


def test_preallocated_cache_grows_repeats_and_selects_like_dynamic_cache(tiny):
    """Same logits as DynamicCache through prefill, G-fold repeat, row selection, and more decode
    steps than the reserved room (the buffer must grow)."""
    from transformers import DynamicCache

    from rl_reasoning.kv_cache import PreallocatedCache

    model, _ = tiny
    sharpen_attention(model)
    model.eval()
    torch.manual_seed(0)
    prompt = torch.randint(3, 100, (2, 5))
    steps = torch.randint(3, 100, (6, 6))  # 6 decode steps for 6 rows
    logits = {}
    for name, cache in (("prealloc", PreallocatedCache(room=2)), ("dynamic", DynamicCache())):
        with torch.no_grad():
            model(input_ids=prompt, past_key_values=cache, use_cache=True)
            cache.batch_repeat_interleave(3)  # (6 rows)
            outs = []
            for t in range(6):
                if t == 3:
                    cache.batch_select_indices(torch.tensor([0, 2, 5]))
                ids = steps[t][:, None] if t < 3 else steps[t, [0, 2, 5]][:, None]
                pos = torch.full((ids.shape[0], 1), 5 + t)
                outs.append(model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True).logits[:, -1])
        logits[name] = outs
        assert cache.get_seq_length() == 11
    for a, b in zip(logits["prealloc"], logits["dynamic"]):
        assert torch.allclose(a, b, atol=1e-5)


def test_stop_strings_cut_after_the_first_one_to_end():
    """One function cuts completions for both engines."""
    from rl_reasoning.engine import cut_at_stop

    assert cut_at_stop("<answer>7</answer> more", ["</answer>"]) == "<answer>7</answer>"
    assert cut_at_stop("a STOP b END", ["END", "STOP"]) == "a STOP"
    assert cut_at_stop("xabc", ["abc", "b"]) == "xab"  # "b" ends first
    assert cut_at_stop("no stop here", ["</answer>"]) == "no stop here" and cut_at_stop("text", []) == "text"


def test_our_engine_implements_the_engine_contract(tiny):
    from rl_reasoning.engine import GenerationEngine

    model, tok = tiny
    assert isinstance(RolloutEngine(model, tok, [tok.eos_token_id], tok.pad_token_id), GenerationEngine)
    assert not isinstance(object(), GenerationEngine)
