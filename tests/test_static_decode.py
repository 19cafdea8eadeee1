"""The fixed-buffer decode (static_decode.py) against today's engine, and the properties a CUDA
graph needs, checked on CPU: no host sync inside a step, the same ops on the same shapes every
step, buffers that never move, and the capture/replay runner's bookkeeping with a fake graph."""

from __future__ import annotations

import copy
import random
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rl_reasoning.config import Config, ConfigError, RolloutConfig
from rl_reasoning.rollout import RolloutEngine
from rl_reasoning.static_decode import GraphRunner, StaticDecoder, prompt_width

QUESTIONS = ["What is 3 + 4?", "Calculate 12 - 5, and then check the answer carefully please.", "9 * 8"]


def encode(tok, questions=QUESTIONS):
    return [tok(q, add_special_tokens=False)["input_ids"] for q in questions]


def both(model, tok, params: RolloutConfig, prompts, eos=None, seed=7, shard=None):
    """The dynamic engine's and the static decoder's rollouts from the same generator seed, and
    each generator's state afterwards."""
    out = []
    for static in (False, True):
        engine = RolloutEngine(model, tok, eos or [tok.eos_token_id], tok.pad_token_id)
        generator = torch.Generator().manual_seed(seed)
        p = RolloutConfig(**{**vars(params), "static_decode": static})
        batch = engine.generate(prompts, p, generator, shard=shard)
        out.append((batch, generator.get_state()))
    return out


def assert_same_rollout(dynamic, static):
    (a, a_gen), (b, b_gen) = dynamic, static
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert torch.equal(a.truncated, b.truncated)
    assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.prompt_mask, b.prompt_mask)
    assert a.texts == b.texts
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)
    assert torch.allclose(a.entropies, b.entropies, atol=1e-5)
    assert torch.equal(a_gen, b_gen)  # the generator is left where the dynamic engine leaves it


def frequent_tokens(model, tok, prompts, k: int) -> list[int]:
    """The k tokens the model samples most (as extra EOS ids, rows end at different steps)."""
    batch = RolloutEngine(model, tok, [tok.eos_token_id], tok.pad_token_id).generate(
        prompts, RolloutConfig(num_generations=4, max_new_tokens=24), torch.Generator().manual_seed(1))
    ids, counts = batch.completion_ids[batch.completion_mask.bool()].unique(return_counts=True)
    return ids[counts.argsort(descending=True)][:k].tolist()


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_whole_rollouts_equal_the_dynamic_engine(tiny, temperature, top_p):
    """Tokens, log-probs, entropies, lengths and truncation flags, with rows ending at different
    steps (several EOS ids), the dynamic engine compacting its batch and the static one polling
    every 3 steps."""
    model, tok = tiny
    prompts = encode(tok)
    eos = [tok.eos_token_id, *frequent_tokens(model, tok, prompts, 3)]
    params = RolloutConfig(num_generations=4, max_new_tokens=20, temperature=temperature, top_p=top_p, poll_every=3)
    dynamic, static = both(model, tok, params, prompts, eos=eos)
    lengths = dynamic[0].lengths
    if temperature > 0:
        assert len(set(lengths.tolist())) >= 3 and bool(dynamic[0].truncated.any())  # the case is exercised
    assert_same_rollout(dynamic, static)


@pytest.mark.parametrize("poll_every", [1, 4, 16])
def test_stop_strings_cut_where_the_dynamic_engine_cuts(tiny, poll_every):
    """Multi-token stop strings taken from sampled text, found up to poll_every - 1 steps late and
    cut exactly; a row that ends on a stop string is not truncated."""
    model, tok = tiny
    prompts = encode(tok)
    free = RolloutEngine(model, tok, [tok.eos_token_id], tok.pad_token_id).generate(
        prompts, RolloutConfig(num_generations=4, max_new_tokens=24), torch.Generator().manual_seed(7))
    stops = []
    for i in (0, 5, 9):  # a span of each of three rows' text that covers several tokens
        ids = free.completion_ids[i, 6:9].tolist()
        stops.append(tok.decode(ids))
    stops = [s for s in stops if s.strip()]
    params = RolloutConfig(num_generations=4, max_new_tokens=24, temperature=1.0, stop=stops, poll_every=poll_every)
    dynamic, static = both(model, tok, params, prompts)
    assert (dynamic[0].lengths < 24).sum() >= 3  # the stop strings fired
    assert_same_rollout(dynamic, static)


def test_byte_fallback_stop_strings_cut_like_the_tail_rule(tiny):
    """A stop string that is a multi-byte character: the static decoder's lagged check against
    the dynamic engine's per-token rule, on token sequences where the character's bytes arrive as
    separate tokens, with decoys (other characters sharing its lead byte)."""
    model, tok = tiny
    byte = {b: tok.convert_tokens_to_ids(c) for b, c in zip(range(256), _byte_alphabet())}
    e_acute, e_grave = [byte[0xC3], byte[0xA9]], [byte[0xC3], byte[0xA8]]
    rng = random.Random(0)
    words = [tok.encode(w) for w in ("is", " 7", "wait", " the", "12")]
    stop = ["é", "wait"]
    decoder = StaticDecoder(model, tok, torch.tensor([tok.eos_token_id]), tok.pad_token_id, 1, 16,
                            RolloutConfig(max_new_tokens=40), graphed=False)
    window = max(len(s) for s in stop) + 2
    for _ in range(200):
        seq = []
        while len(seq) < 40:
            seq += rng.choice([e_acute, e_grave, [byte[0xC3]], *words, [byte[rng.randrange(32, 127)]]])
        seq = seq[:40]
        expected = next((t + 1 for t in range(40) if any(s in tok.decode(seq[max(0, t + 1 - window): t + 1]) for s in stop)), None)
        tokens = torch.tensor([seq])
        found = None
        for start in range(0, 40, 5):  # polls every 5 steps, as generate does
            cuts = decoder._stop_cuts(tokens, torch.tensor([True]), torch.tensor([True]), torch.tensor([start + 5]),
                                      start, start + 5, stop, window)
            if cuts:
                found = cuts[0]
                break
        assert found == expected, (seq, found, expected)


def _byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table (the ByteLevel pre-tokenizer's alphabet), in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def test_sharded_rows_draw_what_the_whole_batch_draws(tiny):
    model, tok = tiny
    prompts = encode(tok)
    params = RolloutConfig(num_generations=2, max_new_tokens=12, temperature=1.0, static_decode=True)
    engine = RolloutEngine(model, tok, [tok.eos_token_id], tok.pad_token_id)
    whole = engine.generate(prompts, params, torch.Generator().manual_seed(3))
    part = engine.generate(prompts[1:], params, torch.Generator().manual_seed(3), shard=(2, 6))
    assert part.texts == whole.texts[2:]
    dynamic, static = both(model, tok, RolloutConfig(num_generations=2, max_new_tokens=12), prompts[1:], shard=(2, 6))
    assert_same_rollout(dynamic, static)


def test_a_decoder_is_reused_across_batches_and_its_buffers_never_move(tiny):
    """Two batches of the same shape reuse one decoder (one graph on CUDA): same addresses, and
    the second batch's rollout equals a fresh decoder's (no state leaks between rollouts)."""
    model, tok = tiny
    params = RolloutConfig(num_generations=2, max_new_tokens=10, temperature=1.0, static_decode=True)
    engine = RolloutEngine(model, tok, [tok.eos_token_id], tok.pad_token_id)
    engine.generate(encode(tok)[:2], params, torch.Generator().manual_seed(1))
    (decoder,) = engine._decoders.values()
    addresses = [t.data_ptr() for t in decoder._runner_state()]
    second = engine.generate(encode(tok)[1:], params, torch.Generator().manual_seed(2))
    assert list(engine._decoders.values()) == [decoder]
    assert [t.data_ptr() for t in decoder._runner_state()] == addresses
    fresh = RolloutEngine(model, tok, [tok.eos_token_id], tok.pad_token_id).generate(encode(tok)[1:], params, torch.Generator().manual_seed(2))
    assert second.texts == fresh.texts and torch.equal(second.logprobs, fresh.logprobs)


# ---- what a CUDA graph needs, traced at the ATen level ----

SYNC_OPS = ("_local_scalar_dense", "item", "nonzero", "masked_select", "multinomial", "is_nonzero", "unique",
            "_unique2", "unique_consecutive", "unique_dim", "equal", "allclose", "_assert_async", "repeat_interleave.Tensor")


class OpTrace(TorchDispatchMode):
    """Records (op, input shapes, dtypes) and flags host syncs: the ops above, and any copy that
    names a device (a `.cpu()` or `.to(device)`). Run on the meta device, `.cpu()` and `.item()`
    dispatch as they would on CUDA (on a CPU tensor they are no-ops)."""

    def __init__(self):
        super().__init__()
        self.ops, self.syncs = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        flat = [*args, *kwargs.values()]
        self.ops.append((name, tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else type(a).__name__ for a in flat)))
        if any(name == f"aten.{op}" or name.startswith(f"aten.{op}.") for op in SYNC_OPS):
            self.syncs.append(name)
        if name.startswith(("aten._to_copy", "aten.to.", "aten._copy_from")) and kwargs.get("device") is not None:
            self.syncs.append(f"{name} to {kwargs['device']}")
        return func(*args, **kwargs)


def meta_decoder(model, tok, temperature: float, top_p: float, N: int = 6):
    model = copy.deepcopy(model).eval().to("meta")
    params = RolloutConfig(num_generations=N, max_new_tokens=8, temperature=temperature, top_p=top_p, static_decode=True)
    decoder = StaticDecoder(model, tok, torch.tensor([tok.eos_token_id, 5]), tok.pad_token_id, N, 16, params, graphed=False)
    kv = torch.empty(N, model.config.num_key_value_heads, 1, model.config.hidden_size // model.config.num_attention_heads, device="meta")
    for layer in decoder.cache.layers:
        layer.lazy_initialization(kv, kv)
    return decoder


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_a_decode_step_has_no_host_sync_and_repeats_the_same_ops(tiny, temperature, top_p):
    """Check 2: no host sync inside the step. Check 3: step t and t + 1 run the same (op, shape)
    sequence, and every buffer (state and K/V cache) keeps its address."""
    model, tok = tiny
    decoder = meta_decoder(model, tok, temperature, top_p)
    buffers = [*decoder._runner_state(), *(t for layer in decoder.cache.layers for t in (layer.keys, layer.values))]
    addresses = [t.data_ptr() for t in buffers]
    traces = []
    for _ in range(3):
        with torch.no_grad(), OpTrace() as trace:
            decoder._step()
        traces.append(trace)
    assert all(t.syncs == [] for t in traces), traces[0].syncs
    assert len(traces[0].ops) > 50
    assert traces[0].ops == traces[1].ops == traces[2].ops
    assert [t.data_ptr() for t in buffers] == addresses


def test_the_sync_lint_catches_host_reads(tiny):
    """The lint can fail: each of these would stall a CUDA stream, and each is flagged."""
    flagged = {}
    x = torch.zeros(4, device="meta")
    cases = {
        "item": lambda: torch.ones(1).sum().item(),
        "bool": lambda: bool(torch.ones(1).any()),
        "nonzero": lambda: torch.nonzero(torch.ones(3)),
        "cpu": lambda: x.cpu(),
        "multinomial": lambda: torch.multinomial(torch.ones(2, 3), 1),
        "repeat_interleave": lambda: torch.ones(3).repeat_interleave(torch.tensor([1, 2, 1])),
    }
    for name, op in cases.items():
        with OpTrace() as trace:
            try:
                op()
            except (RuntimeError, NotImplementedError):  # meta tensors have no data to read back
                pass
        flagged[name] = bool(trace.syncs)
    assert all(flagged.values()), flagged


# ---- the capture/replay runner, with a fake CUDA graph ----


class FakeGraph:
    """Stands in for torch.cuda.CUDAGraph: the captured call runs for real here (CUDA only records
    it; the runner restores the state after it either way), and replay runs the step again."""

    def __init__(self, step):
        self.step = step
        self.replays = 0

    def replay(self):
        self.replays += 1
        self.step()


class FakeBackend:
    def __init__(self, step, fail: bool = False):
        self.step, self.fail = step, fail
        self.events, self.graphs = [], []

    def warmup_context(self):
        return _Recorded(self, "warmup")

    def synchronize(self):
        self.events.append("sync")

    def new_graph(self):
        graph = FakeGraph(self.step)
        self.graphs.append(graph)
        return graph

    def capture_context(self, graph):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        return _Recorded(self, "capture", graph)


class _Recorded:
    def __init__(self, backend, name, graph=None):
        self.backend, self.name, self.graph = backend, name, graph

    def __enter__(self):
        self.backend.events.append(f"enter {self.name}")

    def __exit__(self, *exc):
        self.backend.events.append(f"exit {self.name}")


def counter_step(state, calls):
    """A step that mutates its state like the decode step (a counter and a column write)."""

    def step():
        calls.append(int(state[0]))
        state[1][int(state[0])] = 10 * (int(state[0]) + 1)
        state[0].add_(1)

    return step


def test_the_runner_warms_up_captures_once_restores_the_state_and_replays():
    state = [torch.zeros(1, dtype=torch.long), torch.zeros(8, dtype=torch.long)]
    calls = []
    step = counter_step(state, calls)
    backend = FakeBackend(step)
    runner = GraphRunner(step, state, graphed=True, backend=backend)
    for _ in range(4):
        runner()
    assert backend.events == ["enter warmup", "exit warmup", "sync", "enter capture", "exit capture", "sync"]
    assert len(backend.graphs) == 1 and runner.captures == 1
    assert calls == [0, 1, 0, 0, 1, 2, 3]  # warm-up on the real state, restored; capture, restored; 4 replays
    assert backend.graphs[0].replays == 4
    assert int(state[0]) == 4 and state[1][:4].tolist() == [10, 20, 30, 40]  # replays continue from step 0


def test_a_failed_capture_warns_once_and_runs_eagerly_from_the_same_state():
    state = [torch.zeros(1, dtype=torch.long), torch.zeros(8, dtype=torch.long)]
    calls = []
    step = counter_step(state, calls)
    runner = GraphRunner(step, state, graphed=True, backend=FakeBackend(step, fail=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            runner()
    assert len([w for w in caught if "CUDA graph capture failed" in str(w.message)]) == 1
    assert not runner.graphed and runner.graph is None
    assert int(state[0]) == 3 and state[1][:3].tolist() == [10, 20, 30]  # the warm-up's writes were undone


def test_eager_runner_never_touches_cuda():
    state = [torch.zeros(1, dtype=torch.long), torch.zeros(4, dtype=torch.long)]
    runner = GraphRunner(counter_step(state, []), state, graphed=False, backend=None)
    runner()
    runner()
    assert int(state[0]) == 2 and runner.captures == 0


# ---- settings ----


def test_static_decode_settings_resolve_and_refuse_what_does_nothing(tiny):
    model, tok = tiny
    engine = RolloutEngine(model, tok, [tok.eos_token_id], tok.pad_token_id)
    assert engine.static_decode_on(RolloutConfig()) is False  # auto on CPU: the dynamic loop
    assert engine.static_decode_on(RolloutConfig(static_decode=True)) is True
    with pytest.raises(ValueError, match="rollout.cuda_graphs: true needs a CUDA device"):
        engine.static_decode_on(RolloutConfig(cuda_graphs=True))
    assert prompt_width(1, 64) == 64 and prompt_width(64, 64) == 64 and prompt_width(65, 64) == 128
    for bad, key in [({"static_decode": False, "cuda_graphs": True}, "rollout.cuda_graphs"),
                     ({"static_decode": False, "poll_every": 4}, "rollout.poll_every"),
                     ({"poll_every": 0}, "rollout.poll_every"),
                     ({"backend": "vllm", "static_decode": True}, "rollout.static_decode")]:
        with pytest.raises(ConfigError, match=key):
            Config(rollout=RolloutConfig(**bad)).validate()


def test_the_token_budget_settings_are_checked():
    from rl_reasoning.config import OptimConfig
    from rl_reasoning.update import AUTO_MICRO_BATCH_TOKENS, micro_batch_tokens_on, prefix_grouping_on

    Config(optim=OptimConfig(micro_batch_tokens=4096)).validate()
    with pytest.raises(ConfigError, match="optim.micro_batch_size: has no effect with optim.micro_batch_tokens"):
        Config(optim=OptimConfig(micro_batch_tokens=4096, micro_batch_size=4)).validate()
    with pytest.raises(ConfigError, match="optim.micro_batch_tokens"):
        Config(optim=OptimConfig(micro_batch_tokens=0)).validate()
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert micro_batch_tokens_on(OptimConfig(), cuda, 1) == AUTO_MICRO_BATCH_TOKENS
    assert micro_batch_tokens_on(OptimConfig(), cpu, 1) is None
    assert micro_batch_tokens_on(OptimConfig(), cuda, 2) is None  # DDP ranks need equal micro-batch counts
    assert micro_batch_tokens_on(OptimConfig(micro_batch_size=4), cuda, 1) is None  # rows chosen by the user
    assert micro_batch_tokens_on(OptimConfig(micro_batch_tokens=None), cuda, 1) is None
    assert micro_batch_tokens_on(OptimConfig(micro_batch_tokens=512), cpu, 1) == 512
    assert prefix_grouping_on("auto", torch.device("cpu")) is True
    assert prefix_grouping_on("auto", torch.device("cuda")) is False
    assert prefix_grouping_on(False, torch.device("cpu")) is False
